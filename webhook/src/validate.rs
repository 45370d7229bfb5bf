//! The validating path: which reviews are judged, by which rule, and how the answer is shaped.
//!
//! * CREATE and UPDATE of Services and of the pod-bearing kinds ([`WorkloadKind`]) are judged by
//!   the rules of [`crate::validation`]; a violation is a `422 Invalid` with one cause per field.
//! * UPDATE is ratcheted: only violations the update introduces deny ([`new_violations`]), and an
//!   object being deleted (a `deletionTimestamp` on either side) is always admitted, so finalizer
//!   removal can never be blocked.
//! * DELETE, CONNECT, subresources (`status`, `ephemeralcontainers`, ...) and kinds Portico has no
//!   rule for are admitted without a word.
//! * A Service whose named `targetPort`s the pods it selects do not declare is admitted with a
//!   warning naming the pods, when a [`PodIndex`] is configured.
//! * A review whose object cannot be read is refused `400 BadRequest`, naming the field.
//!
//! Nothing here has a side effect, so dry-run reviews get exactly the same answer.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::admission::Operation;
use kube::runtime::reflector::Store;
use serde::Deserialize;
use serde_json::Value;

use crate::review::{AdmissionRequest, Verdict};
use crate::status;
use crate::validation::{
    DecodeError, FieldError, Options, WorkloadKind, new_violations, service_selects, target_port_warnings,
    validate_service_value, validate_workload_value,
};

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
}

impl Target {
    fn of(group: &str, kind: &str) -> Option<Self> {
        if group.is_empty() && kind == "Service" {
            return Some(Target::Service);
        }
        WorkloadKind::from_group_kind(group, kind).map(Target::Workload)
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
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("options", &self.options)
            .field("pods", &self.pods.is_some())
            .finish()
    }
}

impl Validator {
    /// A validator with these rule options and no pod index (no `targetPort` warnings).
    pub fn new(options: Options) -> Self {
        Validator { options, pods: None }
    }

    /// Enables the `targetPort` warning, looking pods up in `pods`.
    pub fn with_pods(mut self, pods: Arc<dyn PodIndex>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Judges one review.
    pub fn validate(&self, req: &AdmissionRequest) -> Verdict {
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
        if let Some(kind) = object.get("kind").and_then(Value::as_str)
            && kind != req.kind.kind
        {
            return Verdict::deny(status::bad_request(format!(
                "request.object.kind: {} does not match request.kind.kind {}",
                portico_allocators::field::go_quote(kind),
                portico_allocators::field::go_quote(&req.kind.kind)
            )));
        }
        if req.operation == Operation::Update
            && (terminating(object) || req.old_object.as_ref().is_some_and(terminating))
        {
            return Verdict::allow();
        }
        let mut errs = match self.errors(target, object) {
            Ok(errs) => errs,
            Err(e) => return Verdict::deny(status::bad_request(decode_message(&e))),
        };
        if req.operation == Operation::Update && !errs.is_empty() {
            let old = req
                .old_object
                .as_ref()
                .and_then(|old| self.errors(target, old).ok())
                .unwrap_or_default();
            errs = new_violations(errs, &old);
        }
        let warnings = match target {
            Target::Service => self.service_warnings(req, object),
            Target::Workload(_) => Vec::new(),
        };
        let verdict = if errs.is_empty() {
            Verdict::allow()
        } else {
            Verdict::deny(status::invalid(
                &req.kind.group,
                &req.kind.kind,
                &req.object_name(),
                &errs,
            ))
        };
        verdict.with_warnings(warnings)
    }

    fn errors(&self, target: Target, object: &Value) -> Result<Vec<FieldError>, DecodeError> {
        match target {
            Target::Service => validate_service_value(object, &self.options),
            Target::Workload(kind) => validate_workload_value(kind, object, &self.options),
        }
    }

    fn service_warnings(&self, req: &AdmissionRequest, object: &Value) -> Vec<String> {
        let Some(index) = &self.pods else {
            return Vec::new();
        };
        let Ok(mut service) = Service::deserialize(object) else {
            return Vec::new();
        };
        let Some(namespace) = service
            .metadata
            .namespace
            .clone()
            .or_else(|| req.namespace.clone())
        else {
            return Vec::new();
        };
        service.metadata.namespace = Some(namespace.clone());
        let pods = index.pods_in(&namespace);
        let selected: Vec<&Pod> = pods
            .iter()
            .map(Arc::as_ref)
            .filter(|p| serving(p) && service_selects(&service, p))
            .collect();
        target_port_warnings(&service, &selected)
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

fn terminating(object: &Value) -> bool {
    object
        .get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|t| !t.is_null())
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
