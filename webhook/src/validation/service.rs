//! Service port rules: all of them are upstream's (`ValidateService`), with upstream's messages and
//! order; none is Portico's own. They matter for objects that did not go through the apiserver's
//! validation, and keep the warning rules of [`super::target_port`] on well-formed input.
//!
//! Cost: one pass over the ports, constant work per port but for the duplicate checks (hash
//! sets of the names and of the `(protocol, port)` and `(protocol, nodePort)` keys). From a review
//! the ports are read one by one off the body (`check_spec_doc`): nothing but the sets is
//! kept, and errors beyond the sink's cap are only counted.

use std::borrow::Cow;
use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use portico_allocators::field::{BadValue, FieldError, go_quote};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Options;
use super::findings::{Findings, bad_str};
use super::hashed::NameSet;
use super::json::{self, IntOrStr, Obj, Text};
use super::names::{
    PORT_NUM_RANGE, PortRef, check_port_num_or_name, is_dns1123_label, is_qualified_name, port_num_ok,
};
use super::workload::DecodeError;

/// The protocols a Service or container port may use, as upstream lists them.
pub const SUPPORTED_PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

/// The kubelet's port, which a LoadBalancer Service may not expose.
pub const KUBELET_PORT: i32 = 10250;

/// A port's protocol as the apiserver sees it: absent means defaulted to `TCP`.
pub(crate) fn effective_protocol(protocol: Option<&String>) -> &str {
    protocol.map_or("TCP", String::as_str)
}

/// [`effective_protocol`] for a borrowed protocol.
pub(crate) fn protocol_or_tcp(protocol: Option<&str>) -> &str {
    protocol.unwrap_or("TCP")
}

/// A set of `(protocol, number)` keys: a hash set, and after [`PortKeys::SMALL`] insertions, a
/// bitmap for the three protocols and the numbers 0-65535 (24 KiB) with the hash set for anything
/// else.
#[derive(Default)]
pub(crate) struct PortKeys<'a> {
    inserts: usize,
    bits: Vec<u64>,
    known: HashSet<(u8, i32)>,
    other: HashSet<(Cow<'a, str>, i32)>,
}

impl<'a> PortKeys<'a> {
    const SMALL: usize = 256;

    /// Adds a key; `false` when it was there already.
    pub(crate) fn insert(&mut self, protocol: Option<&Cow<'a, str>>, value: i32) -> bool {
        let proto: u8 = match protocol.map_or("TCP", |p| p.as_ref()) {
            "TCP" => 0,
            "UDP" => 1,
            "SCTP" => 2,
            _ => {
                let p = protocol.cloned().unwrap_or_default();
                return self.other.insert((p, value));
            }
        };
        self.inserts += 1;
        if self.bits.is_empty() && self.inserts > Self::SMALL {
            self.bits = vec![0; 3 * 1024];
            let small: Vec<(u8, i32)> = self
                .known
                .iter()
                .copied()
                .filter(|(_, v)| u16::try_from(*v).is_ok())
                .collect();
            for (p, v) in small {
                self.known.remove(&(p, v));
                self.set_bit(p, v);
            }
        }
        match u16::try_from(value) {
            Ok(_) if !self.bits.is_empty() => self.set_bit(proto, value),
            _ => self.known.insert((proto, value)),
        }
    }

    /// Sets the bit of `(protocol, value)` (`value` in 0-65535); `false` if it was set.
    fn set_bit(&mut self, proto: u8, value: i32) -> bool {
        let bit = usize::from(proto) * 65_536 + usize::try_from(value).unwrap_or(0);
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        let new = self.bits[word] & mask == 0;
        self.bits[word] |= mask;
        new
    }
}

/// One Service port as the rules see it: from a typed `ServicePort` or read off a review.
pub(crate) struct PortView<'a, 'p> {
    pub name: Option<Cow<'a, str>>,
    pub port: i32,
    pub protocol: Option<Cow<'a, str>>,
    pub target_port: Option<PortRef<'p>>,
    pub app_protocol: Option<&'p str>,
    pub node_port: i32,
}

impl<'a> PortView<'a, 'a> {
    fn of(p: &'a ServicePort) -> Self {
        PortView {
            name: p.name.as_deref().map(Cow::Borrowed),
            port: p.port,
            protocol: p.protocol.as_deref().map(Cow::Borrowed),
            target_port: p.target_port.as_ref().map(PortRef::of),
            app_protocol: p.app_protocol.as_deref(),
            node_port: p.node_port.unwrap_or(0),
        }
    }
}

/// One element of `spec.ports` as sent, decoded as k8s-openapi decodes a `ServicePort` (same
/// type errors, unknown fields ignored), its strings borrowed from the body.
#[derive(Deserialize, Default)]
#[serde(default, expecting = "ServicePort")]
pub(crate) struct PortDoc<'a> {
    #[serde(borrow)]
    pub name: Option<Text<'a>>,
    pub port: Option<i32>,
    #[serde(borrow)]
    pub protocol: Option<Text<'a>>,
    #[serde(rename = "targetPort", borrow)]
    pub target_port: Option<IntOrStr<'a>>,
    #[serde(rename = "appProtocol", borrow)]
    pub app_protocol: Option<Text<'a>>,
    #[serde(rename = "nodePort")]
    pub node_port: Option<i32>,
}

/// The first element of a list of strings (the others are type-checked and dropped).
#[derive(Default)]
pub(crate) struct FirstText<'a>(pub Option<Text<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FirstText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<Text<'de>>()?;
                while seq.next_element::<Text<'de>>()?.is_some() {}
                Ok(FirstText(first))
            }
        }
        d.deserialize_seq(V)
    }
}

/// What the rules read of a Service's `spec` in a review: the fields that decide which rules
/// apply, and the ports and selector left raw (read one by one, or only when needed).
#[derive(Deserialize, Default)]
#[serde(default, expecting = "ServiceSpec")]
pub(crate) struct SpecDoc<'a> {
    #[serde(rename = "type", borrow)]
    pub type_: Option<Text<'a>>,
    #[serde(rename = "clusterIP", borrow)]
    pub cluster_ip: Option<Text<'a>>,
    #[serde(rename = "clusterIPs", borrow)]
    pub cluster_ips: Option<FirstText<'a>>,
    #[serde(borrow)]
    pub ports: Option<&'a RawValue>,
    #[serde(borrow)]
    pub selector: Option<&'a RawValue>,
}

impl SpecDoc<'_> {
    /// `spec.type`, defaulted.
    pub(crate) fn service_type(&self) -> &str {
        self.type_.as_deref().unwrap_or("ClusterIP")
    }

    fn headless(&self) -> bool {
        self.cluster_ip.as_deref() == Some("None")
            || self.cluster_ips.as_ref().and_then(|ips| ips.0.as_deref()) == Some("None")
    }
}

/// The cross-port state and the per-phase findings of one Service.
struct ServiceRules<'a, 'o, 'k> {
    opts: &'o Options,
    load_balancer: bool,
    cluster_ip: bool,
    /// Port names seen (upstream compares every non-empty name, valid or not).
    names: NameSet<'a>,
    node_ports: PortKeys<'a>,
    ports: PortKeys<'a>,
    kubelet: Findings<'k>,
    own: Findings<'k>,
    forbidden: Findings<'k>,
    duplicate_node_ports: Findings<'k>,
    duplicate_ports: Findings<'k>,
}

impl<'a, 'o, 'k> ServiceRules<'a, 'o, 'k> {
    /// The rules of a Service of this type whose port names are read from `text`.
    fn new(service_type: &str, opts: &'o Options, sink: &Findings<'k>, text: &'a str) -> Self {
        ServiceRules {
            opts,
            load_balancer: service_type == "LoadBalancer",
            cluster_ip: service_type == "ClusterIP",
            names: NameSet::new(text),
            node_ports: PortKeys::default(),
            ports: PortKeys::default(),
            kubelet: sink.fork(),
            own: sink.fork(),
            forbidden: sink.fork(),
            duplicate_node_ports: sink.fork(),
            duplicate_ports: sink.fork(),
        }
    }

    /// One port, `require_name` when the Service has more than one.
    fn port(&mut self, i: usize, p: PortView<'a, '_>, require_name: bool) {
        let path = || format!("spec.ports[{i}]");
        if self.load_balancer && p.port == KUBELET_PORT {
            self.kubelet.report(|| {
                FieldError::invalid(
                    path(),
                    BadValue::Int(i64::from(p.port)),
                    format!("may not expose port {KUBELET_PORT} externally since it is used by kubelet"),
                )
            });
        }
        // Upstream compares every non-empty name, valid or not.
        let repeated = p
            .name
            .as_ref()
            .is_some_and(|n| !n.is_empty() && !self.names.insert(n));
        self.own_rules(&p, &path, require_name, repeated);
        if self.cluster_ip && p.node_port != 0 {
            self.forbidden.report(|| {
                FieldError::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                )
            });
        }
        // TCP and UDP may share a nodePort (or a port): the key includes the protocol.
        if p.node_port != 0 && !self.node_ports.insert(p.protocol.as_ref(), p.node_port) {
            self.duplicate_node_ports.report(|| {
                FieldError::duplicate(
                    format!("spec.ports[{i}].nodePort"),
                    BadValue::Int(i64::from(p.node_port)),
                )
            });
        }
        if !self.ports.insert(p.protocol.as_ref(), p.port) {
            self.duplicate_ports
                .report(|| FieldError::duplicate(path(), go_service_port(&p)));
        }
    }

    /// One port's own rules, in upstream's order; `repeated` if an earlier port has its name.
    fn own_rules(
        &mut self,
        p: &PortView<'a, '_>,
        path: &dyn Fn() -> String,
        require_name: bool,
        repeated: bool,
    ) {
        let sink = &mut self.own;
        match p.name.as_deref() {
            None | Some("") => {
                if require_name {
                    sink.report(|| FieldError::required(format!("{}.name", path()), ""));
                }
            }
            Some(name) => {
                for msg in is_dns1123_label(name) {
                    sink.report(|| FieldError::invalid(format!("{}.name", path()), bad_str(name), msg));
                }
                // Upstream checks duplicates even when the name was invalid: two `HTTP` ports
                // give two Invalid errors and a Duplicate.
                if repeated {
                    sink.report(|| FieldError::duplicate(format!("{}.name", path()), bad_str(name)));
                }
            }
        }

        if !port_num_ok(i64::from(p.port)) {
            sink.report(|| {
                FieldError::invalid(
                    format!("{}.port", path()),
                    BadValue::Int(i64::from(p.port)),
                    PORT_NUM_RANGE,
                )
            });
        }

        if let Some(protocol) = &p.protocol {
            check_protocol(protocol, || format!("{}.protocol", path()), sink);
        }

        // Absent targetPort is defaulted to `port`, whose errors are already reported.
        if let Some(target) = p.target_port {
            check_port_num_or_name(target, || format!("{}.targetPort", path()), self.opts, sink);
        }

        if let Some(app_protocol) = p.app_protocol {
            for msg in is_qualified_name(app_protocol) {
                sink.report(|| {
                    FieldError::invalid(format!("{}.appProtocol", path()), bad_str(app_protocol), msg)
                });
            }
        }
    }

    /// Appends everything to `sink`, in upstream's order, after the object-level check.
    fn finish(self, count: usize, ports_optional: bool, sink: &mut Findings<'k>) {
        if count == 0 && !ports_optional {
            sink.report(|| FieldError::required("spec.ports", ""));
        }
        sink.join(self.kubelet);
        sink.join(self.own);
        sink.join(self.forbidden);
        sink.join(self.duplicate_node_ports);
        sink.join(self.duplicate_ports);
    }
}

/// Validates the ports of a Service spec, field paths under `spec.`.
///
/// Order as upstream executes it: `spec.ports` required, the LoadBalancer kubelet-port check, each
/// port (name, port, protocol, targetPort, appProtocol), `nodePort` forbidden for ClusterIP, then
/// duplicate `(protocol, nodePort)` and duplicate `(protocol, port)`. The nodePort range is not
/// checked here: it is the allocator's business, and a flag of the apiserver.
pub fn validate_service_ports(spec: &ServiceSpec, opts: &Options) -> Vec<FieldError> {
    let mut sink = Findings::all();
    let ports: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();
    // Absent type is defaulted to ClusterIP by the apiserver.
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let mut rules = ServiceRules::new(service_type, opts, &sink, "");
    for (i, port) in ports.iter().enumerate() {
        rules.port(i, PortView::of(port), ports.len() > 1);
    }
    rules.finish(
        ports.len(),
        is_headless(spec) || service_type == "ExternalName",
        &mut sink,
    );
    sink.into_vec()
}

/// A Service object of a review, read in one pass: `kind` and `metadata` raw, `spec` decoded
/// (its ports left raw, read one by one by [`check_spec_doc`]).
#[derive(Deserialize, Default)]
#[serde(default, expecting = "Service")]
pub(crate) struct ServiceObject<'a> {
    #[serde(borrow)]
    pub kind: Option<&'a RawValue>,
    #[serde(borrow)]
    pub metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    pub spec: Option<Obj<SpecDoc<'a>>>,
}

/// Reads a Service object of a review (see [`ServiceObject`]); a `spec` that does not decode is a
/// [`DecodeError`] at `spec`.
pub(crate) fn read_service(object: &RawValue) -> Result<ServiceObject<'_>, DecodeError> {
    json::decode::<Obj<ServiceObject<'_>>>(object)
        .map(|o| o.0)
        .map_err(|e| DecodeError::new("spec", &e))
}

/// Validates the `spec` of a Service in a review (`None` for an absent or `null` spec) into
/// `sink`, reading the ports one by one off the body. Returns what the warning rule needs.
pub(crate) fn check_service_spec<'a>(
    spec: Option<&'a RawValue>,
    opts: &Options,
    sink: &mut Findings<'_>,
) -> Result<SpecDoc<'a>, DecodeError> {
    let doc = match spec {
        Some(raw) if !json::is_null(raw) => {
            json::decode::<Obj<SpecDoc<'a>>>(raw)
                .map_err(|e| DecodeError::new("spec", &e))?
                .0
        }
        _ => SpecDoc::default(),
    };
    check_spec_doc(&doc, opts, sink)?;
    Ok(doc)
}

/// Validates a decoded `spec` of a review into `sink`, reading the ports one by one off the body.
pub(crate) fn check_spec_doc<'a>(
    doc: &SpecDoc<'a>,
    opts: &Options,
    sink: &mut Findings<'_>,
) -> Result<(), DecodeError> {
    let service_type = doc.service_type();
    let mut rules = ServiceRules::new(service_type, opts, sink, doc.ports.map_or("", RawValue::get));
    // The first port needs a name only if a second one comes: it waits for it.
    let mut first: Option<PortDoc<'a>> = None;
    let count = match doc.ports {
        None => 0,
        Some(raw) => json::for_each::<Obj<PortDoc<'a>>, _>(raw, |i, Obj(port)| {
            if i == 0 {
                first = Some(port);
                return;
            }
            if let Some(first) = first.take() {
                port_doc(&mut rules, 0, first, true);
            }
            port_doc(&mut rules, i, port, true);
        })
        .map_err(|e| DecodeError::new("spec", &e))?,
    };
    if let Some(only) = first {
        port_doc(&mut rules, 0, only, false);
    }
    rules.finish(count, doc.headless() || service_type == "ExternalName", sink);
    Ok(())
}

fn port_doc<'a>(rules: &mut ServiceRules<'a, '_, '_>, i: usize, doc: PortDoc<'a>, require_name: bool) {
    let PortDoc {
        name,
        port,
        protocol,
        target_port,
        app_protocol,
        node_port,
    } = doc;
    let view = PortView {
        name: name.map(|t| t.0),
        port: port.unwrap_or(0),
        protocol: protocol.map(|t| t.0),
        target_port: target_port.as_ref().map(PortRef::of_doc),
        app_protocol: app_protocol.as_deref(),
        node_port: node_port.unwrap_or(0),
    };
    rules.port(i, view, require_name);
}

/// An explicit protocol: `""` is `Required value`, anything but TCP/UDP/SCTP (case-sensitive) is
/// unsupported. Shared with container ports.
pub(crate) fn check_protocol(protocol: &str, field: impl Fn() -> String, sink: &mut Findings<'_>) {
    if protocol.is_empty() {
        sink.report(|| FieldError::required(field(), ""));
    } else if !SUPPORTED_PROTOCOLS.contains(&protocol) {
        sink.report(|| FieldError::not_supported(field(), bad_str(protocol), &SUPPORTED_PROTOCOLS));
    }
}

/// Whether the Service is headless (`clusterIP: None`), which may have no ports.
fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .map(String::as_str)
            == Some("None")
}

/// Renders a port the way upstream's duplicate-port error prints it (Go `%#v` of the internal
/// `core.ServicePort`), so the message matches the one users already search for.
///
/// One unavoidable difference: for a set `appProtocol` Go prints a heap address
/// (`(*string)(0xc000…)`), which no one can reproduce; Portico prints the pointed-to string instead.
/// Strings longer than [`super::findings::MAX_VALUE_BYTES`] are cut.
fn go_service_port(port: &PortView<'_, '_>) -> BadValue {
    let quote = |s: &str| match bad_str(s) {
        BadValue::Raw(cut) => cut,
        _ => go_quote(s),
    };
    let app_protocol = match port.app_protocol {
        None => "(*string)(nil)".to_owned(),
        Some(p) => format!("(*string)({})", quote(p)),
    };
    let (kind, int_val, str_val) = match port.target_port {
        None => (0, 0, ""),
        Some(PortRef::Int(n)) => (0, n, ""),
        Some(PortRef::Str(s)) => (1, 0, s),
    };
    BadValue::Raw(format!(
        "core.ServicePort{{Name:{}, Protocol:{}, AppProtocol:{app_protocol}, Port:{}, \
         TargetPort:intstr.IntOrString{{Type:{kind}, IntVal:{int_val}, StrVal:{}}}, NodePort:{}}}",
        quote(port.name.as_deref().unwrap_or_default()),
        quote(protocol_or_tcp(port.protocol.as_deref())),
        port.port,
        quote(str_val),
        port.node_port,
    ))
}

/// Validates the ports of a Service. A Service without a spec is treated as an empty spec (and so
/// gets `spec.ports: Required value`).
pub fn validate_service(service: &Service, opts: &Options) -> Vec<FieldError> {
    match &service.spec {
        Some(spec) => validate_service_ports(spec, opts),
        None => validate_service_ports(&ServiceSpec::default(), opts),
    }
}

/// Validates the ports of a Service given as JSON (an AdmissionReview's `object`). Only what the
/// rules read of `spec` is decoded; a value that does not decode (wrong JSON types, numbers beyond
/// 32 bits) is a [`DecodeError`], which the apiserver itself would have refused before calling
/// the webhook.
pub fn validate_service_value(
    object: &serde_json::Value,
    opts: &Options,
) -> Result<Vec<FieldError>, DecodeError> {
    let text = serde_json::to_string(object).map_err(|e| DecodeError::new("object", &e))?;
    let raw: &RawValue = serde_json::from_str(&text).map_err(|e| DecodeError::new("object", &e))?;
    let spec = json::members(raw, ["spec"]).and_then(|[spec]| spec);
    let mut sink = Findings::all();
    check_service_spec(spec, opts, &mut sink)?;
    Ok(sink.into_vec())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    fn port(name: &str, port: i32, protocol: &str) -> ServicePort {
        ServicePort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port,
            protocol: Some(protocol.to_owned()),
            ..ServicePort::default()
        }
    }

    fn spec(ports: Vec<ServicePort>) -> ServiceSpec {
        ServiceSpec {
            ports: Some(ports),
            ..ServiceSpec::default()
        }
    }

    fn msgs(spec: &ServiceSpec) -> Vec<String> {
        validate_service_ports(spec, &Options::default())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

    #[test]
    fn valid_services() {
        assert!(msgs(&spec(vec![port("", 80, "TCP")])).is_empty());
        assert!(msgs(&spec(vec![port("http", 80, "TCP"), port("80", 443, "TCP")])).is_empty());
        // DNS: same port, different protocols.
        assert!(msgs(&spec(vec![port("dns", 53, "UDP"), port("dns-tcp", 53, "TCP")])).is_empty());
        // Names that are fine for Services although not for containers.
        assert!(msgs(&spec(vec![port("a--b", 1, "TCP"), port("xn--x", 2, "SCTP")])).is_empty());
        let mut p = port("h2", 8080, "TCP");
        p.target_port = Some(IntOrString::String("http".into()));
        p.app_protocol = Some("kubernetes.io/h2c".into());
        assert!(msgs(&spec(vec![p])).is_empty());
    }

    #[test]
    fn reference_five_errors_example() {
        // The executed Service "s27" of reference §1.2.
        let mut p0 = port("Bad_Name", 0, "HTTP");
        p0.target_port = Some(IntOrString::String("-x-".into()));
        let s = spec(vec![p0, port("", 81, "TCP")]);
        let errs = validate_service_ports(&s, &Options::default());
        assert_eq!(
            portico_allocators::field::invalid_message("Service", "s27", &errs),
            format!(
                "Service \"s27\" is invalid: [spec.ports[0].name: Invalid value: \"Bad_Name\": {LABEL}, \
                 spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, \
                 spec.ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\", \
                 spec.ports[0].targetPort: Invalid value: \"-x-\": must not begin or end with a hyphen, \
                 spec.ports[1].name: Required value]"
            )
        );
        let reasons: Vec<&str> = errs.iter().map(|e| e.kind.reason()).collect();
        assert_eq!(
            reasons,
            [
                "FieldValueInvalid",
                "FieldValueInvalid",
                "FieldValueNotSupported",
                "FieldValueInvalid",
                "FieldValueRequired"
            ]
        );
    }

    #[test]
    fn every_unnamed_port_is_required_when_several() {
        assert_eq!(
            msgs(&spec(vec![port("", 80, "TCP"), port("", 81, "TCP")])),
            [
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value"
            ]
        );
    }

    #[test]
    fn duplicate_names_even_when_invalid() {
        assert_eq!(
            msgs(&spec(vec![port("http", 80, "TCP"), port("http", 81, "TCP")])),
            [r#"spec.ports[1].name: Duplicate value: "http""#]
        );
        assert_eq!(
            msgs(&spec(vec![port("HTTP", 80, "TCP"), port("HTTP", 81, "TCP")])),
            [
                format!(r#"spec.ports[0].name: Invalid value: "HTTP": {LABEL}"#),
                format!(r#"spec.ports[1].name: Invalid value: "HTTP": {LABEL}"#),
                r#"spec.ports[1].name: Duplicate value: "HTTP""#.to_owned(),
            ]
        );
        assert_eq!(
            msgs(&spec(vec![port(&"a".repeat(64), 80, "TCP")])),
            [format!(
                r#"spec.ports[0].name: Invalid value: "{}": must be no more than 63 characters"#,
                "a".repeat(64)
            )]
        );
    }

    #[test]
    fn names_written_with_escapes_are_the_same_names() {
        let errors = |ports: &str| -> Vec<String> {
            let text = format!(r#"{{"spec": {{"ports": {ports}}}}}"#);
            let raw: &RawValue = serde_json::from_str(&text).unwrap();
            let spec = json::members(raw, ["spec"]).and_then(|[spec]| spec);
            let mut sink = Findings::all();
            check_service_spec(spec, &Options::default(), &mut sink).unwrap();
            sink.into_vec().iter().map(ToString::to_string).collect()
        };
        let dup = |i: usize| format!(r#"spec.ports[{i}].name: Duplicate value: "a""#);
        assert_eq!(
            errors(r#"[{"name": "a", "port": 1}, {"name": "\u0061", "port": 2}]"#),
            [dup(1)]
        );
        assert_eq!(
            errors(r#"[{"name": "\u0061", "port": 1}, {"name": "a", "port": 2}]"#),
            [dup(1)]
        );
        assert_eq!(
            errors(
                r#"[{"name": "\u0061", "port": 1}, {"name": "\u0061", "port": 2}, {"name": "a", "port": 3}]"#
            ),
            [dup(1), dup(2)]
        );
        assert!(errors(r#"[{"name": "a", "port": 1}, {"name": "\u0062", "port": 2}]"#).is_empty());
    }

    #[test]
    fn port_and_protocol() {
        assert_eq!(
            msgs(&spec(vec![port("", 70000, "TCP")])),
            ["spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&spec(vec![port("", -1, "TCP")])),
            ["spec.ports[0].port: Invalid value: -1: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&spec(vec![port("", 80, "")])),
            ["spec.ports[0].protocol: Required value"]
        );
        assert_eq!(
            msgs(&spec(vec![port("", 80, "tcp")])),
            [r#"spec.ports[0].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP""#]
        );
        // Absent protocol is the apiserver's default, TCP.
        let mut p = port("", 80, "TCP");
        p.protocol = None;
        assert!(msgs(&spec(vec![p])).is_empty());
    }

    #[test]
    fn target_ports() {
        let with_target = |t: IntOrString| {
            let mut p = port("", 80, "TCP");
            p.target_port = Some(t);
            spec(vec![p])
        };
        assert_eq!(
            msgs(&with_target(IntOrString::Int(0))),
            ["spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&with_target(IntOrString::Int(65536))),
            ["spec.ports[0].targetPort: Invalid value: 65536: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&with_target(IntOrString::String("8080".into()))),
            [
                r#"spec.ports[0].targetPort: Invalid value: "8080": must contain at least one letter or number (a-z, 0-9)"#
            ]
        );
        assert_eq!(
            msgs(&with_target(IntOrString::String("Metrics_Port_Long".into()))),
            [
                r#"spec.ports[0].targetPort: Invalid value: "Metrics_Port_Long": must be no more than 15 characters"#,
                r#"spec.ports[0].targetPort: Invalid value: "Metrics_Port_Long": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
            ]
        );
        // A Service port *name* may be "a--b", a targetPort may not.
        assert_eq!(
            msgs(&with_target(IntOrString::String("a--b".into()))),
            [r#"spec.ports[0].targetPort: Invalid value: "a--b": must not contain consecutive hyphens"#]
        );
    }

    #[test]
    fn app_protocol() {
        let with_app = |a: &str| {
            let mut p = port("", 80, "TCP");
            p.app_protocol = Some(a.to_owned());
            spec(vec![p])
        };
        assert!(msgs(&with_app("HTTP")).is_empty());
        assert_eq!(
            msgs(&with_app("a b")),
            [
                r#"spec.ports[0].appProtocol: Invalid value: "a b": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#
            ]
        );
        assert_eq!(
            msgs(&with_app("/x")),
            [r#"spec.ports[0].appProtocol: Invalid value: "/x": prefix part must be non-empty"#]
        );
    }

    #[test]
    fn ports_required_unless_headless_or_external_name() {
        assert_eq!(msgs(&ServiceSpec::default()), ["spec.ports: Required value"]);
        assert_eq!(msgs(&spec(vec![])), ["spec.ports: Required value"]);
        let headless = ServiceSpec {
            cluster_ip: Some("None".into()),
            ..ServiceSpec::default()
        };
        assert!(msgs(&headless).is_empty());
        let headless = ServiceSpec {
            cluster_ips: Some(vec!["None".into()]),
            ..ServiceSpec::default()
        };
        assert!(msgs(&headless).is_empty());
        let external = ServiceSpec {
            type_: Some("ExternalName".into()),
            ..ServiceSpec::default()
        };
        assert!(msgs(&external).is_empty());
        assert_eq!(
            validate_service(&Service::default(), &Options::default())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["spec.ports: Required value"]
        );
    }

    #[test]
    fn kubelet_port_on_load_balancers_comes_first() {
        let mut s = spec(vec![port("", 10250, "TCP"), port("", 0, "TCP")]);
        s.type_ = Some("LoadBalancer".into());
        assert_eq!(
            msgs(&s),
            [
                "spec.ports[0]: Invalid value: 10250: may not expose port 10250 externally since it is used by kubelet",
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value",
                "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ]
        );
        s.type_ = Some("NodePort".into());
        assert_eq!(msgs(&s).len(), 3);
    }

    #[test]
    fn node_ports() {
        let mut a = port("a", 80, "TCP");
        a.node_port = Some(30001);
        let mut b = port("b", 81, "TCP");
        b.node_port = Some(30001);
        let mut c = port("c", 82, "UDP");
        c.node_port = Some(30001);
        let s = spec(vec![a, b, c]);
        assert_eq!(
            msgs(&s),
            [
                "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.ports[1].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.ports[2].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.ports[1].nodePort: Duplicate value: 30001",
            ]
        );
        let mut s = s;
        s.type_ = Some("NodePort".into());
        assert_eq!(msgs(&s), ["spec.ports[1].nodePort: Duplicate value: 30001"]);
        // nodePort 0 is "unset" and never a duplicate.
        let mut z = port("z", 83, "TCP");
        z.node_port = Some(0);
        s.ports.as_mut().unwrap().extend([
            z.clone(),
            ServicePort {
                name: Some("y".into()),
                port: 84,
                ..z
            },
        ]);
        assert_eq!(msgs(&s), ["spec.ports[1].nodePort: Duplicate value: 30001"]);
    }

    #[test]
    fn duplicate_port_prints_go_struct() {
        assert_eq!(
            msgs(&spec(vec![port("", 80, "TCP"), port("", 80, "TCP")])),
            [
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value",
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#,
            ]
        );
        // Reference §1.3 combined example.
        assert_eq!(
            msgs(&spec(vec![
                port("web", 80, "TCP"),
                port("web", 80, "TCP"),
                port("", 80, "UDP")
            ])),
            [
                r#"spec.ports[1].name: Duplicate value: "web""#,
                "spec.ports[2].name: Required value",
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"web", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#,
            ]
        );
        let mut a = port("a", 80, "TCP");
        a.protocol = None;
        let mut b = port("b", 80, "TCP");
        b.target_port = Some(IntOrString::String("ht\"tp".into()));
        b.app_protocol = Some("h2c".into());
        b.node_port = Some(30080);
        let mut s = spec(vec![a, b]);
        s.type_ = Some("NodePort".into());
        assert_eq!(
            msgs(&s),
            [
                r#"spec.ports[1].targetPort: Invalid value: "ht\"tp": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"b", Protocol:"TCP", AppProtocol:(*string)("h2c"), Port:80, TargetPort:intstr.IntOrString{Type:1, IntVal:0, StrVal:"ht\"tp"}, NodePort:30080}"#,
            ]
        );
        let mut c = port("c", 80, "TCP");
        c.target_port = Some(IntOrString::Int(8080));
        let s = spec(vec![port("d", 80, "TCP"), c]);
        assert_eq!(
            msgs(&s),
            [
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"c", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:8080, StrVal:""}, NodePort:0}"#
            ]
        );
    }

    #[test]
    fn from_json() {
        let opts = Options::default();
        let v = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"name": "HTTP", "port": 80}]}});
        let errs = validate_service_value(&v, &opts).unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.ports[0].name");
        assert_eq!(
            validate_service_value(&serde_json::json!({}), &opts).unwrap()[0].to_string(),
            "spec.ports: Required value"
        );
        for bad in [
            serde_json::json!({"spec": {"ports": [{"port": 4294967296_u64}]}}),
            serde_json::json!({"spec": {"ports": [{"port": 80, "targetPort": 1e3}]}}),
            serde_json::json!({"spec": {"ports": "80"}}),
            serde_json::json!({"spec": 7}),
        ] {
            let err = validate_service_value(&bad, &opts).unwrap_err();
            assert!(err.to_string().starts_with("cannot decode spec: "), "{err}");
        }
    }
}
