//! The validating path: which reviews are judged, by which rule, and how the answer is shaped.
//!
//! * CREATE and UPDATE of Services and of the pod-bearing kinds ([`WorkloadKind`]) are judged by
//!   the rules of [`crate::validation`]; a violation is a `422 Invalid` with one cause per field,
//!   at most [`MAX_CAUSES`] of them (the message then ends with `and N more`). The object is read
//!   straight off the review body, and violations beyond the first 100 are only counted.
//! * UPDATE is ratcheted: only violations the update introduces deny (the semantics of
//!   [`crate::validation::new_violations`]; the old object's violations are kept as hashes, and a
//!   probe-port violation is compared without its list of other containers), and an
//!   object being deleted (a `deletionTimestamp` on either side) is always admitted, so finalizer
//!   removal can never be blocked.
//! * DELETE, CONNECT, subresources (`status`, `ephemeralcontainers`, ...) and kinds Portico has no
//!   rule for are admitted without a word.
//! * CREATE and UPDATE of hand-written Endpoints and EndpointSlices are judged by the address rules
//!   of [`crate::validation::endpoints`] (the clusterIP rule when a [`ServiceIpIndex`] is
//!   configured); controller-managed ones ([`controller_managed`]) are admitted without a look.
//! * A Service whose named `targetPort`s the pods it selects do not declare is admitted with a
//!   warning naming the pods, when a [`PodIndex`] is configured.
//! * A review whose object cannot be read is refused `400 BadRequest`, naming the field.
//!
//! Nothing here has a side effect, so dry-run reviews get exactly the same answer.

use std::sync::Arc;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::Operation;
use kube::runtime::reflector::Store;

use crate::review::{AdmissionRequest, ObjectHead, RawObject, Verdict};
use crate::status;
use crate::validation::endpoints::EndpointsObject;
use crate::validation::findings::{Findings, Known, MAX_CAUSES};
use crate::validation::json::{self, Obj};
use crate::validation::names::PortRef;
use crate::validation::pod::PodObject;
use crate::validation::service::{PortDoc, SpecDoc, check_spec_doc, read_service};
use crate::validation::target_port::{TargetPortWarnings, selector_matches};
use crate::validation::workload::check_workload_spec;
use crate::validation::{DecodeError, Options, ServiceIpIndex, WorkloadKind};

/// The pods a Service could select, for the `targetPort` warning. Implemented for a kube-runtime
/// reflector [`Store<Pod>`] (see [`crate::pods::pod_store`]); any cache will do.
pub trait PodIndex: Send + Sync {
    /// Every pod of `namespace` (the validator applies the selector itself).
    fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>>;
}

impl PodIndex for Store<Pod> {
    fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
    }
}

impl<F> PodIndex for F
where
    F: Fn(&str) -> Vec<Arc<Pod>> + Send + Sync,
{
    fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self(namespace)
    }
}

/// What Portico validates in a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Service,
    Workload(WorkloadKind),
    /// core/v1 Endpoints.
    Endpoints,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
}

impl Target {
    fn of(group: &str, kind: &str) -> Option<Self> {
        if group.is_empty() && kind == "Service" {
            return Some(Target::Service);
        }
        match (group, kind) {
            ("", "Endpoints") => return Some(Target::Endpoints),
            ("discovery.k8s.io", "EndpointSlice") => return Some(Target::EndpointSlice),
            _ => {}
        }
        WorkloadKind::from_group_kind(group, kind).map(Target::Workload)
    }
}

/// What the rules read of an object, found in one pass over it.
enum Read<'a> {
    /// A Service: `kind` and `metadata` raw, `spec` decoded (its ports left raw), or why the
    /// object does not read as a Service.
    Service(Result<(ObjectHead<'a>, SpecDoc<'a>), DecodeError>),
    /// A Pod read in one pass, its spec decoded.
    Pod(PodObject<'a>),
    /// A pod-bearing kind: its members are [`RawObject::head`], its pod spec is read later.
    Workload(WorkloadKind),
    /// An Endpoints or an EndpointSlice.
    Endpoints(EndpointsObject<'a>),
}

impl<'a> Read<'a> {
    fn of(target: Target, object: &'a RawObject<'_>) -> Self {
        match target {
            Target::Service => Read::Service(read_service(object.raw()).map(|o| {
                let head = ObjectHead {
                    kind: o.kind,
                    metadata: o.metadata,
                    spec: None,
                };
                (head, o.spec.map(|s| s.0).unwrap_or_default())
            })),
            Target::Workload(WorkloadKind::Pod) => match PodObject::read(object.raw()) {
                Some(pod) => Read::Pod(pod),
                None => Read::Workload(WorkloadKind::Pod),
            },
            Target::Workload(kind) => Read::Workload(kind),
            Target::Endpoints => Read::Endpoints(EndpointsObject::read(object.raw(), false)),
            Target::EndpointSlice => Read::Endpoints(EndpointsObject::read(object.raw(), true)),
        }
    }

    /// The members every review reads: found by the read, or in a pass of their own.
    fn head(&self, object: &'a RawObject<'_>) -> ObjectHead<'a> {
        match self {
            Read::Service(Ok((head, _))) => *head,
            Read::Service(Err(_)) | Read::Workload(_) => object.head(),
            Read::Pod(pod) => ObjectHead {
                kind: pod.kind,
                metadata: pod.metadata,
                spec: None,
            },
            Read::Endpoints(e) => ObjectHead {
                kind: e.kind(),
                metadata: e.metadata(),
                spec: None,
            },
        }
    }
}

/// Whether Portico has rules for objects of this group and kind (the kinds a configuration should
/// send to `/validate`).
pub fn is_validated_kind(group: &str, kind: &str) -> bool {
    Target::of(group, kind).is_some()
}

/// The validating handler.
#[derive(Clone, Default)]
pub struct Validator {
    options: Options,
    pods: Option<Arc<dyn PodIndex>>,
    service_ips: Option<Arc<dyn ServiceIpIndex>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("options", &self.options)
            .field("pods", &self.pods.is_some())
            .field("service_ips", &self.service_ips.is_some())
            .finish()
    }
}

impl Validator {
    /// A validator with these rule options and no pod index (no `targetPort` warnings).
    pub fn new(options: Options) -> Self {
        Validator {
            options,
            pods: None,
            service_ips: None,
        }
    }

    /// Enables the endpoint-address clusterIP rule, looking Services up in `index` (see
    /// [`crate::service_ips::service_ip_index`]).
    pub fn with_service_ips(mut self, index: Arc<dyn ServiceIpIndex>) -> Self {
        self.service_ips = Some(index);
        self
    }

    /// Enables the `targetPort` warning, looking pods up in `pods`.
    pub fn with_pods(mut self, pods: Arc<dyn PodIndex>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Judges one review.
    ///
    /// The object is read straight off the review body (see [`crate::validation::json`]); a
    /// refusal lists at most [`MAX_CAUSES`] violations and counts the others.
    pub fn validate(&self, req: &AdmissionRequest<'_>) -> Verdict {
        let Some(target) = Target::of(&req.kind.group, &req.kind.kind) else {
            tracing::debug!(group = %req.kind.group, kind = %req.kind.kind, "no rule for this kind; allowed");
            return Verdict::allow();
        };
        if !matches!(req.operation, Operation::Create | Operation::Update) || req.sub_resource.is_some() {
            return Verdict::allow();
        }
        let Some(object) = &req.object else {
            return Verdict::deny(status::bad_request(format!(
                "request.object is required: a {} review of a {} carries the object",
                req.operation_name(),
                req.kind.kind
            )));
        };
        // The members the rules read, found in one pass over the object (with a Service's
        // `spec` decoded, an Endpoints' lists found, in the same pass).
        let read = Read::of(target, object);
        let head = read.head(object);
        if let Some(kind) = head.kind()
            && *kind != *req.kind.kind
        {
            return Verdict::deny(status::bad_request(format!(
                "request.object.kind: {} does not match request.kind.kind {}",
                status::quote_bounded(&kind),
                status::quote_bounded(&req.kind.kind)
            )));
        }
        if req.operation == Operation::Update
            && (head.terminating() || req.old_object.as_ref().is_some_and(RawObject::terminating))
        {
            return Verdict::allow();
        }
        if let Read::Endpoints(e) = &read
            && e.controller_managed(req.namespace.as_deref())
        {
            return Verdict::allow();
        }
        let mut findings = Findings::capped(MAX_CAUSES);
        if let Err(e) = self.errors(&read, &head, &mut findings) {
            return Verdict::deny(status::bad_request(decode_message(&e)));
        }
        let (errs, more) = if req.operation == Operation::Update && !findings.is_empty() {
            // Ratcheting: only the violations the update introduces deny. The old object's errors
            // are remembered as hashes; the new object is judged again without them.
            let known = self.known_errors(target, req.old_object.as_ref());
            let mut fresh = Findings::except(MAX_CAUSES, &known);
            // It decoded a moment ago, so it decodes again.
            match self.errors(&read, &head, &mut fresh) {
                Ok(_) => fresh.into_parts(),
                Err(_) => findings.into_parts(),
            }
        } else {
            findings.into_parts()
        };
        let warnings = match &read {
            Read::Service(Ok((_, spec))) => self.service_warnings(req, &head, spec),
            _ => Vec::new(),
        };
        let verdict = if errs.is_empty() {
            Verdict::allow()
        } else {
            Verdict::deny(status::invalid_with_more(
                &req.kind.group,
                &req.kind.kind,
                &req.object_name_in(Some(&head)),
                &errs,
                more,
            ))
        };
        verdict.with_warnings(warnings)
    }

    /// Reports the violations of an object into `sink`, from what was read of it (`head`: its
    /// members).
    fn errors(
        &self,
        read: &Read<'_>,
        head: &ObjectHead<'_>,
        sink: &mut Findings<'_>,
    ) -> Result<(), DecodeError> {
        match read {
            Read::Service(Ok((_, spec))) => check_spec_doc(spec, &self.options, sink),
            Read::Service(Err(e)) => Err(DecodeError::new(&e.path, &e.source)),
            Read::Pod(pod) => pod.check(&self.options, sink),
            Read::Workload(kind) => check_workload_spec(*kind, head.spec, &self.options, sink),
            Read::Endpoints(e) => e.check(self.service_ips.as_deref(), sink),
        }
    }

    /// The violations the old object of an UPDATE already had (none when it does not decode).
    fn known_errors(&self, target: Target, old: Option<&RawObject<'_>>) -> Known {
        let Some(old) = old else {
            return Known::default();
        };
        let read = Read::of(target, old);
        let head = read.head(old);
        let mut sink = Findings::record();
        match self.errors(&read, &head, &mut sink) {
            Ok(_) => sink.into_known(),
            Err(_) => Known::default(),
        }
    }

    /// The `targetPort` warnings of a Service, when a pod index is configured: the ports are read
    /// a second time off the body, and at most [`status::MAX_WARNINGS`] warnings are made.
    fn service_warnings(
        &self,
        req: &AdmissionRequest<'_>,
        head: &ObjectHead<'_>,
        spec: &SpecDoc<'_>,
    ) -> Vec<String> {
        let Some(index) = &self.pods else {
            return Vec::new();
        };
        let Some(namespace) = head
            .meta_str("namespace")
            .map(|n| n.0.into_owned())
            .or_else(|| req.namespace.clone())
        else {
            return Vec::new();
        };
        let (Some(selector), Some(ports)) = (spec.selector, spec.ports) else {
            return Vec::new();
        };
        let pods = index.pods_in(&namespace);
        // A selector selects a pod only if the pod has all of its labels: one with more entries
        // than any pod has labels selects nothing, and is not even built.
        let most_labels = pods
            .iter()
            .map(|p| p.metadata.labels.as_ref().map_or(0, BTreeMap::len))
            .max()
            .unwrap_or(0);
        if json::count_members(selector).is_none_or(|n| n == 0 || n > most_labels) {
            return Vec::new();
        }
        let Ok(selector) = json::decode::<BTreeMap<String, String>>(selector) else {
            return Vec::new();
        };
        let selected: Vec<&Pod> = pods
            .iter()
            .map(Arc::as_ref)
            .filter(|p| {
                serving(p)
                    && p.metadata.namespace.as_deref().is_none_or(|ns| ns == namespace)
                    && selector_matches(&selector, p.metadata.labels.as_ref())
            })
            .collect();
        let mut warnings = TargetPortWarnings::new(spec.type_.as_deref(), &selected, status::MAX_WARNINGS);
        if warnings.done() {
            return Vec::new();
        }
        let read = json::for_each::<Obj<PortDoc<'_>>, _>(ports, |i, Obj(p)| {
            warnings.port(
                i,
                p.target_port.as_ref().map(PortRef::of_doc),
                p.protocol.as_deref(),
            );
        });
        if read.is_err() {
            return Vec::new();
        }
        warnings.into_warnings()
    }
}

/// A pod that could be an endpoint: not being deleted and not finished.
fn serving(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// `cannot decode request.object.spec.template.spec: invalid type: ...`
fn decode_message(e: &DecodeError) -> String {
    let path = if e.path == "object" {
        "request.object".to_owned()
    } else {
        format!("request.object.{}", e.path)
    };
    format!("cannot decode {path}: {}", e.source)
}
