//! The legacy Endpoints controller's reconcile, as pure functions.
//!
//! # How the caller drives it
//!
//! For one Service key:
//! 1. Service gone: DELETE `Endpoints <ns>/<name>` (ignore 404), `stale.delete(&key)`,
//!    `trigger_times.delete_service(&key)`. Done.
//! 2. [`crate::is_service_handled`] false: do nothing (the object, if any, stays).
//! 3. `existing` = the cached Endpoints of the same name. If `stale.is_stale(existing)`, return
//!    a retryable error (the cache has not seen our last write yet).
//! 4. `let trigger = trigger_times.compute(&svc, &pods);`
//! 5. `match reconcile(&svc, &pods, existing, trigger.as_ref())?`:
//!    `Create(e)` → POST; `Update(e)` → PUT (name and resourceVersion are set, so a conflict
//!    is a 409 to retry); `Unchanged` → nothing. After a successful write call
//!    `stale.record_write(existing, &returned)`.
//!
//! At start-up, once the caches are synced, enqueue every cached Endpoints for which
//! [`is_leftover_candidate`] is true; step 1 then deletes those whose Service is gone.
//!
//! Fields read from cached objects are listed in [`crate::fields`].

mod subsets;
mod tracker;
mod truncate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

pub use self::tracker::StaleEndpointsTracker;
use crate::keys::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, ANNOTATION_LEADER, ANNOTATION_OVER_CAPACITY,
    ENDPOINTS_MANAGED_BY_VALUE, LABEL_ENDPOINTS_MANAGED_BY, LABEL_HEADLESS, OVER_CAPACITY_TRUNCATED,
};
use crate::reconcile_error::ReconcileError;
use crate::service_predicates::{ServiceId, is_service_handled, is_service_ip_set};
use crate::trigger_time::format_trigger_time;

/// Most addresses (ready plus not ready) an Endpoints object may carry; beyond this it is
/// truncated and annotated `endpoints.kubernetes.io/over-capacity: truncated`.
pub const MAX_CAPACITY: usize = 1000;

/// What to do with a Service's Endpoints object.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointsAction {
    /// POST this object (no Endpoints exists yet).
    Create(Endpoints),
    /// PUT this object: the existing one with subsets, labels and our annotations replaced;
    /// name and resourceVersion are those of the existing object.
    Update(Endpoints),
    /// The existing object is already right (the trigger-time annotation is not compared).
    Unchanged,
}

/// The desired Endpoints for a Service: name and namespace of the Service, labels copied from
/// the Service plus the headless label (when it has no cluster IP) and the managed-by label,
/// the trigger-time annotation (when `trigger_time` is set), subsets packed and sorted, and
/// truncated to [`MAX_CAPACITY`] with the over-capacity annotation if needed.
///
/// Pods not selected by the Service (other namespace, labels not matching) are ignored.
/// Errors only for a Service without name or namespace.
pub fn desired(
    svc: &Service,
    pods: &[&Pod],
    trigger_time: Option<&Time>,
) -> Result<Endpoints, ReconcileError> {
    let id = match ServiceId::of(svc) {
        Ok(id) => id,
        // The uid is not needed here: Endpoints are not owner-referenced.
        Err(ReconcileError::MissingServiceUid { namespace, name }) => ServiceId {
            namespace,
            name,
            uid: String::new(),
        },
        Err(e) => return Err(e),
    };
    let mut subsets = subsets::build(svc, pods);
    let truncated = truncate::truncate(&mut subsets, MAX_CAPACITY);

    let mut labels: BTreeMap<String, String> = svc.metadata.labels.clone().unwrap_or_default();
    if is_service_ip_set(svc) {
        labels.remove(LABEL_HEADLESS);
    } else {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    labels.insert(
        LABEL_ENDPOINTS_MANAGED_BY.to_string(),
        ENDPOINTS_MANAGED_BY_VALUE.to_string(),
    );

    let mut annotations = BTreeMap::new();
    if let Some(t) = trigger_time {
        annotations.insert(
            ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(),
            format_trigger_time(t),
        );
    }
    if truncated {
        annotations.insert(
            ANNOTATION_OVER_CAPACITY.to_string(),
            OVER_CAPACITY_TRUNCATED.to_string(),
        );
    }

    Ok(Endpoints {
        metadata: ObjectMeta {
            name: Some(id.name),
            namespace: Some(id.namespace),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        subsets: Some(subsets),
    })
}

fn labels_without_headless(meta: &ObjectMeta) -> BTreeMap<&str, &str> {
    meta.labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LABEL_HEADLESS)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Decides between create, update and no write.
///
/// No write when the existing subsets equal the desired ones (semantically: order, `null`
/// versus `[]` and targetRef resourceVersions aside), the labels are equal apart from the
/// headless label, and the over-capacity annotation is as desired. The trigger-time annotation
/// is never a reason to write. Unlike upstream, a truncated object that is still correctly
/// truncated is not rewritten at every sync: the desired side is compared after truncation.
///
/// An update starts from the existing object (so resourceVersion, other annotations, owner
/// references and the like are kept), then replaces subsets and labels, and sets or removes
/// the trigger-time and over-capacity annotations as in `desired`.
pub fn plan(desired: Endpoints, existing: Option<&Endpoints>) -> EndpointsAction {
    let Some(existing) = existing else {
        return EndpointsAction::Create(desired);
    };
    let unchanged = subsets::subsets_equal(existing.subsets.as_deref(), desired.subsets.as_deref())
        && labels_without_headless(&existing.metadata) == labels_without_headless(&desired.metadata)
        && annotation(&existing.metadata, ANNOTATION_OVER_CAPACITY)
            == annotation(&desired.metadata, ANNOTATION_OVER_CAPACITY);
    if unchanged {
        return EndpointsAction::Unchanged;
    }
    let mut updated = existing.clone();
    updated.subsets = desired.subsets;
    updated.metadata.labels = desired.metadata.labels.clone();
    let mut annotations = updated.metadata.annotations.take().unwrap_or_default();
    for key in [ANNOTATION_LAST_CHANGE_TRIGGER_TIME, ANNOTATION_OVER_CAPACITY] {
        match annotation(&desired.metadata, key) {
            Some(v) => annotations.insert(key.to_string(), v.to_string()),
            None => annotations.remove(key),
        };
    }
    updated.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    EndpointsAction::Update(updated)
}

/// [`desired`] then [`plan`]; `Unchanged` for a Service that is not handled (no selector or
/// ExternalName: an existing object is left alone).
pub fn reconcile(
    svc: &Service,
    pods: &[&Pod],
    existing: Option<&Endpoints>,
    trigger_time: Option<&Time>,
) -> Result<EndpointsAction, ReconcileError> {
    if !is_service_handled(svc) {
        return Ok(EndpointsAction::Unchanged);
    }
    Ok(plan(desired(svc, pods, trigger_time)?, existing))
}

/// Whether an Endpoints object found at start-up must be checked for a missing Service (it
/// is not a leader-election lock). Enqueue its key; the sync deletes it if the Service is gone.
pub fn is_leftover_candidate(endpoints: &Endpoints) -> bool {
    annotation(&endpoints.metadata, ANNOTATION_LEADER).is_none()
}

/// Whether an Endpoints object was truncated (carries the over-capacity annotation).
pub fn is_truncated(endpoints: &Endpoints) -> bool {
    annotation(&endpoints.metadata, ANNOTATION_OVER_CAPACITY) == Some(OVER_CAPACITY_TRUNCATED)
}
