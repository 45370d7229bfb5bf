//! The admission adapter of allocation: an AdmissionReview in, [`ServiceAllocator::decide`]
//! (crate `portico-allocation`) in the middle, a [`Verdict`] out. Everything about which values a
//! Service gets lives in that crate; this module only reads reviews and shapes answers.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use kube::core::admission::Operation as AdmissionOperation;
use kube::core::response::Status;
use portico_allocation::{Decision, Denial, Operation, ServiceAllocator};

use crate::admission::Mutate;
use crate::review::{AdmissionRequest, Verdict};
use crate::status;

/// A Service admission, decoded from a review.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// CREATE, UPDATE or DELETE.
    pub op: Operation,
    /// `request.object`, with `metadata.namespace` (and `name`) filled from the request when the
    /// object lacks them (the apiserver sends a CREATE's object without namespace).
    pub new: Option<Service>,
    /// `request.oldObject`.
    pub old: Option<Service>,
    /// `request.dryRun`.
    pub dry_run: bool,
}

/// The Service admission in a review: `Ok(None)` for anything allocation does not handle
/// (other kinds, subresources, CONNECT, DELETE); `Err` with a message (answer 400) when the
/// review cannot be genuine or its object is not a valid Service. The apiserver always sends
/// `object` on CREATE and both objects on UPDATE: a review without them is refused before it
/// can touch any claim.
pub fn service_request(request: &AdmissionRequest) -> Result<Option<ServiceRequest>, String> {
    if !request.kind.group.is_empty() || request.kind.kind != "Service" || request.sub_resource.is_some() {
        return Ok(None);
    }
    let op = match request.operation {
        AdmissionOperation::Create => Operation::Create,
        AdmissionOperation::Update => Operation::Update,
        // Values come back when the watch sees the Service gone: nothing to do on DELETE.
        AdmissionOperation::Delete | AdmissionOperation::Connect => return Ok(None),
    };
    if request.object.is_none() {
        return Err(format!(
            "a {:?} review of a Service must carry request.object",
            request.operation
        ));
    }
    if op == Operation::Update && request.old_object.is_none() {
        return Err("an UPDATE review of a Service must carry request.oldObject".to_owned());
    }
    let decode = |field: &str, v: &Option<serde_json::Value>| -> Result<Option<Service>, String> {
        let Some(v) = v else { return Ok(None) };
        let mut svc: Service = serde_json::from_value(v.clone())
            .map_err(|e| format!("request.{field} is not a valid Service: {e}"))?;
        if svc.metadata.namespace.as_deref().unwrap_or_default().is_empty() {
            svc.metadata.namespace = request.namespace.clone();
        }
        if svc.metadata.name.as_deref().unwrap_or_default().is_empty() && !request.name.is_empty() {
            svc.metadata.name = Some(request.name.clone());
        }
        Ok(Some(svc))
    };
    Ok(Some(ServiceRequest {
        op,
        new: decode("object", &request.object)?,
        old: decode("oldObject", &request.old_object)?,
        dry_run: request.dry_run,
    }))
}

/// The `Status` of a refusal: 422 `Invalid` with one cause per field error, or 500
/// `InternalError`.
pub fn denial_status(denial: &Denial) -> Status {
    if let Some(message) = denial.internal() {
        return status::internal(message);
    }
    let errs: Vec<_> = denial
        .refusals
        .iter()
        .filter_map(|r| r.field_error().cloned())
        .collect();
    status::invalid("", "Service", &denial.name, &errs)
}

/// The answer for a decision.
pub fn verdict(decision: &Decision) -> Verdict {
    match decision {
        Decision::Allow { patch, .. } if patch.0.is_empty() => Verdict::allow(),
        Decision::Allow { patch, .. } => match serde_json::to_value(patch) {
            Ok(p) => Verdict::allow().with_patch(p),
            Err(e) => Verdict::deny(status::internal(format!("cannot encode the patch: {e}"))),
        },
        Decision::Deny(d) => Verdict::deny(denial_status(d)),
    }
}

/// Answers one review of the mutating endpoint with `allocator`. Anything but a CREATE or
/// UPDATE of a core/v1 Service (no subresource) is admitted unchanged; infrastructure failures
/// are refused with a 500.
pub async fn admit(allocator: &ServiceAllocator, request: &AdmissionRequest) -> Verdict {
    let req = match service_request(request) {
        Ok(Some(req)) => req,
        Ok(None) => return Verdict::allow(),
        Err(message) => return Verdict::deny(status::bad_request(message)),
    };
    match allocator
        .decide(req.op, req.new.as_ref(), req.old.as_ref(), req.dry_run)
        .await
    {
        Ok(decision) => verdict(&decision),
        Err(e) => {
            tracing::warn!(error = %e, name = %request.object_name(), "allocation failed");
            Verdict::deny(status::internal(format!(
                "portico could not allocate for this Service: {e}"
            )))
        }
    }
}

/// A [`ServiceAllocator`] behind `/mutate`.
impl Mutate for ServiceAllocator {
    fn mutate<'a>(&'a self, request: &'a AdmissionRequest) -> BoxFuture<'a, Verdict> {
        Box::pin(admit(self, request))
    }
}

#[cfg(test)]
mod tests;
