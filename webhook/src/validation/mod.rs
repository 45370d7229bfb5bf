//! The port rules of the validating admission webhook, as pure functions.
//!
//! Nothing here does I/O: every function takes typed objects (k8s-openapi) or a JSON value and returns
//! [`FieldError`]s (hard rules, rendered exactly like the apiserver's field errors) or warning strings
//! (soft rules). The server decides how to turn them into an AdmissionReview response; building an
//! upstream-shaped `422 Invalid` from them is [`portico_allocators::field::invalid_message`] plus one
//! `StatusCause { reason: e.kind.reason(), message: e.body(), field: e.field }` per error.
//!
//! # What the webhook actually sees
//!
//! For Services, Pods and the pod-bearing workloads, the apiserver decodes, **defaults** and runs its
//! own validation *before* it calls validating webhooks. A real request therefore carries an object
//! that already passed every upstream rule below, with `protocol` defaulted to `TCP`, `targetPort`
//! defaulted to `port` and nodePorts allocated. The upstream rules are kept anyway, with upstream's
//! exact messages, because they are cheap, they make the functions usable on objects that did not go
//! through an apiserver (tests, CRDs embedding ports, other callers), and they guard the Portico
//! rules against inputs the latter assume to be well-formed.
//!
//! # Which rules are whose
//!
//! Upstream duplicates (messages byte-for-byte those of upstream v1.24, see [`LetterMessage`]):
//! * Service ports ([`validate_service_ports`]): `spec.ports` required unless headless/ExternalName;
//!   port 10250 refused on LoadBalancers; per port: name required when there is more than one port,
//!   DNS-1123 label, unique; `port` in 1-65535; `protocol` one of TCP/UDP/SCTP; `targetPort` a port
//!   number or an IANA service name; `appProtocol` a qualified name; `nodePort` forbidden for
//!   `type: ClusterIP`; `(protocol, nodePort)` and `(protocol, port)` unique.
//! * Container ports ([`validate_pod_spec_ports`]): name an IANA service name, unique within its
//!   container; `containerPort` required and in range; `hostPort` in range; `protocol` supported;
//!   `(protocol, hostIP, hostPort)` unique across the containers (each init container on its own);
//!   `containerPort` equal to `hostPort` under `hostNetwork`; ephemeral containers may not declare
//!   ports, probes or lifecycle handlers.
//! * Probe and lifecycle handler ports: `httpGet.port`/`tcpSocket.port` a port number or an IANA
//!   service name, `grpc.port` a port number.
//!
//! Portico's own rules (upstream only discovers these at run time, if ever):
//! * a container port name is unique across the whole pod (containers and init containers), not just
//!   within its container;
//! * a named `httpGet`/`tcpSocket` port of a probe or lifecycle handler names a port declared by the
//!   same container (the kubelet resolves it there and nowhere else). `grpc.port` is numeric only.
//! * soft rule, a warning and never a denial: a Service whose named `targetPort` matches no port of
//!   the pods its selector currently selects ([`target_port_warnings`]).
//!
//! Endpoint addresses ([`endpoints`]), for hand-written Endpoints and EndpointSlices only: upstream's
//! special ranges (unspecified, loopback, link-local, link-local multicast) with its messages, and
//! Portico's own rule that an address may not be a Service's clusterIP.
//!
//! Deliberately left out: the nodePort range and allocation (the allocator's job), upstream's
//! "mixed protocols on a LoadBalancer" check (gone since 1.26), and the non-port parts of handlers
//! (path, scheme, handler count) and containers.
//!
//! # Absent versus explicit values
//!
//! A field the apiserver would have defaulted is treated as defaulted when it is absent (`None`):
//! `protocol` is `TCP`, `targetPort` is `port` and has no error of its own, `hostPort` is unset. An
//! explicit value is validated as written, so `protocol: ""` is `Required value` and `targetPort: 0`
//! is out of range, as upstream's validation reports them.
//!
//! # Ordering
//!
//! All violations are reported at once, in a deterministic order: object-level checks that upstream
//! runs first, then document order (container list, container, port, field), then the object-level
//! uniqueness checks upstream runs last. The same input always yields the same list.
//!
//! # Cost
//!
//! Every rule is linear in its input: one pass, hash sets for the uniqueness checks, nothing
//! re-scanned per element. The functions on typed objects return every violation; the webhook reads
//! objects straight off the review body ([`json`]) and reports into a [`Findings`] that keeps the
//! first [`MAX_CAUSES`] violations and only counts the others, so a hostile object with a million
//! bad ports costs one parse and a few sets, and its refusal stays small.
//!
//! Constant factors matter too: an 8 MB review may hold four million tiny elements, and each
//! nanosecond spent per element is four milliseconds. Hence: the body is checked as JSON once,
//! and the object is then read without checking it again ([`json::decode`]); an object's members
//! are found in one pass where the readers allow it (a Service's `spec`, a Pod's `spec`, an
//! Endpoints' lists); an error is built (its path formatted, its value copied) only when kept;
//! the name tables hash each name once and keep small entries.

pub mod endpoints;
pub mod findings;
mod hashed;
pub mod json;
pub mod names;
pub mod pod;
pub mod service;
pub mod target_port;
pub mod workload;

pub use endpoints::{
    ServiceIpIndex, ServiceRef, controller_managed, controller_managed_raw, validate_endpoint_ip,
    validate_endpoint_slice_raw, validate_endpoint_slice_raw_into, validate_endpoint_slice_value,
    validate_endpoints_raw, validate_endpoints_raw_into, validate_endpoints_value,
};
pub use findings::{Findings, Known, MAX_CAUSES};
pub use names::{
    is_dns1123_label, is_dns1123_subdomain, is_qualified_name, is_valid_port_name, is_valid_port_num,
    validate_port_num_or_name,
};
pub use pod::{validate_pod, validate_pod_spec_ports};
pub use portico_allocators::field::{BadValue, ErrorType, FieldError};
pub use service::{validate_service, validate_service_ports, validate_service_value};
pub use target_port::{selector_matches, service_selects, target_port_warnings};
pub use workload::{
    DecodeError, PodSpecHolder, WorkloadKind, pod_spec_path, validate_workload, validate_workload_value,
};

/// Which wording to use for the IANA service name's "at least one letter" rule.
///
/// The check itself is `[a-z]` in every upstream version; only the message changed
/// (kubernetes#107212): the v1.24-dev tree the reference executed still says "letter or number".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LetterMessage {
    /// `must contain at least one letter or number (a-z, 0-9)`: upstream v1.24-dev, the reference.
    #[default]
    LetterOrNumber,
    /// `must contain at least one letter (a-z)`: newer upstream releases.
    LetterOnly,
}

/// Knobs of the rules. `Options::default()` reproduces the reference (upstream v1.24-dev) messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// Wording of the IANA service name "at least one letter" message.
    pub letter_message: LetterMessage,
}

/// Keeps the errors of `new` that `old` does not already have (same field, same message).
///
/// For UPDATEs ("ratcheting"): an object admitted before a Portico rule existed, or before the pods
/// changed, must stay editable, in particular by the finalizer-removing UPDATE that lets it be
/// deleted. Only violations the update introduces are returned. Errors are matched on their rendered
/// form, so a violation that moves to another index (a reordered container list) counts as new.
pub fn new_violations(new: Vec<FieldError>, old: &[FieldError]) -> Vec<FieldError> {
    let old: std::collections::HashSet<String> = old.iter().map(ToString::to_string).collect();
    new.into_iter()
        .filter(|e| !old.contains(&e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratcheting_keeps_only_new_violations() {
        let a = FieldError::required("spec.ports[1].name", "");
        let b = FieldError::invalid("spec.ports[0].port", BadValue::Int(0), "x");
        assert_eq!(
            new_violations(vec![a.clone(), b.clone()], std::slice::from_ref(&a)),
            vec![b.clone()]
        );
        assert_eq!(new_violations(vec![a.clone()], &[]), vec![a.clone()]);
        assert!(new_violations(vec![], std::slice::from_ref(&b)).is_empty());
    }

    #[test]
    fn default_options_follow_the_reference() {
        assert_eq!(Options::default().letter_message, LetterMessage::LetterOrNumber);
    }
}
