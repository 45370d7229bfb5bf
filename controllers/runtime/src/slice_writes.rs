//! Writing a plan of EndpointSlice changes, for the two controllers that manage slices (the
//! EndpointSlice and the mirroring controller): creates under names of the controller's own
//! choosing, conditional updates and deletes, each reported to the controller's tracker.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Service;
use tokio::time::Instant;

use crate::{Context, SyncError, lock};
use portico_controllers::ServiceKey;
use portico_controllers::endpointslice::{CreateOutcome, GenerationTracker};

/// Where one sync's slice writes go and whom they are reported to.
pub(crate) struct SliceWriter<'a> {
    pub(crate) api: &'a Api<EndpointSlice>,
    /// The Service (or mirrored Endpoints) the slices belong to.
    pub(crate) key: &'a ServiceKey,
    pub(crate) tracker: &'a Mutex<GenerationTracker>,
    /// `*_changes{operation}` of the controller.
    pub(crate) changes: &'a IntCounterVec,
    /// Whether a slice is the controller's own (its manager name or the adopted one).
    pub(crate) manages: fn(&Context, &EndpointSlice) -> bool,
    pub(crate) ctx: &'a Context,
}

impl SliceWriter<'_> {
    /// Sends the creates, then the updates, then the deletes of a plan, stopping at the first
    /// error, and tells the tracker what each one did.
    pub(crate) async fn apply(
        &self,
        create: &[EndpointSlice],
        update: &[EndpointSlice],
        delete: &[EndpointSlice],
    ) -> Result<(), SyncError> {
        let (api, key, changes) = (self.api, self.key, self.changes);
        for slice in create {
            let name = slice.metadata.name.as_deref().unwrap_or_default();
            match api.create(&PostParams::default(), slice).await {
                Ok(created) => {
                    lock(self.tracker).record_write(&created);
                    changes.with_label_values(&["create"]).inc();
                }
                // Creating in a namespace being deleted fails until it is gone; nothing to do.
                Err(kube::Error::Api(s)) if namespace_terminating(&s) => {
                    lock(self.tracker).create_failed(key, name, CreateOutcome::Refused);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Our own earlier create under this name (cut off before its answer) landed,
                    // unless the cache shows someone else's slice holding the name.
                    let held = self
                        .ctx
                        .caches
                        .slices
                        .get(&ObjectRef::new(name).within(&key.namespace));
                    // A slice of ours on its way out (held by a finalizer) keeps the name too,
                    // and for as long as someone else decides: draw a fresh one.
                    let foreign = held.is_some_and(|h| {
                        !(self.manages)(self.ctx, &h) || h.metadata.deletion_timestamp.is_some()
                    });
                    let outcome = CreateOutcome::Exists { foreign };
                    lock(self.tracker).create_failed(key, name, outcome);
                    if foreign {
                        return Err(api_error("create", slice, kube::Error::Api(s)));
                    }
                    return Err(SyncError::Stale("EndpointSlice"));
                }
                Err(kube::Error::Api(s)) if s.code < 500 => {
                    lock(self.tracker).create_failed(key, name, CreateOutcome::Refused);
                    return Err(api_error("create", slice, kube::Error::Api(s)));
                }
                // No answer, or a server error: the create may have landed. Its name stays
                // pending, so the next create is sent under it (see `name_creates`).
                Err(source) => return Err(api_error("create", slice, source)),
            }
        }
        for slice in update {
            let name = slice.metadata.name.clone().unwrap_or_default();
            match api.replace(&name, &PostParams::default(), slice).await {
                Ok(updated) => {
                    lock(self.tracker).record_write(&updated);
                    changes.with_label_values(&["update"]).inc();
                }
                Err(source) => return Err(api_error("update", slice, source)),
            }
        }
        for slice in delete {
            let name = slice.metadata.name.clone().unwrap_or_default();
            // Preconditions: delete only the version the plan was made from.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: slice.metadata.uid.clone(),
                    resource_version: slice.metadata.resource_version.clone(),
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => changes.with_label_values(&["delete"]).inc(),
                // Gone already: if the cache saw it go, no deletion event is left to settle a
                // record, so none is made.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    let cached = self.ctx.caches.slices.get(&ObjectRef::from_obj(slice));
                    if cached.is_none() {
                        continue;
                    }
                }
                Err(source) => return Err(api_error("delete", slice, source)),
            }
            lock(self.tracker).expect_deletion(slice);
        }
        Ok(())
    }
}

pub(crate) fn namespace_terminating(s: &kube::core::Status) -> bool {
    s.code == 403
        && (s.message.contains("because it is being terminated")
            || s.details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

fn api_error(verb: &'static str, slice: &EndpointSlice, source: kube::Error) -> SyncError {
    let m = &slice.metadata;
    let name = m
        .name
        .clone()
        .or_else(|| m.generate_name.clone())
        .unwrap_or_default();
    SyncError::Api {
        verb,
        kind: "EndpointSlice",
        name,
        source,
    }
}

/// Refuses to sync from a cache that has not caught up with the controller's own writes
/// (`SyncError::Stale`, polled again soon), unless it has stayed behind for
/// [`crate::STALE_LIMIT`]: then the record of those writes is dropped and the sync goes on from
/// the cache, since a write can be undone in a way no event explains.
pub(crate) fn stale_gate(
    tracker: &Mutex<GenerationTracker>,
    stale_since: &Mutex<HashMap<ServiceKey, Instant>>,
    key: &ServiceKey,
    svc: &Service,
    existing: &[&EndpointSlice],
) -> Result<(), SyncError> {
    if lock(tracker).is_stale(svc, existing) {
        let now = Instant::now();
        let since = *lock(stale_since).entry(key.clone()).or_insert(now);
        if now.duration_since(since) < crate::STALE_LIMIT {
            return Err(SyncError::Stale("EndpointSlice"));
        }
        tracing::warn!(
            key = %key,
            "the cache stayed behind this controller's own slice writes for {:?}; forgetting them and syncing from the cache",
            crate::STALE_LIMIT
        );
        lock(tracker).delete_service(key);
    }
    lock(stale_since).remove(key);
    Ok(())
}
