//! One sync of the EndpointSlice mirroring controller: an Endpoints object of a Service
//! without a selector → its mirrored slices.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;

use crate::slice_writes::SliceWriter;
use crate::{Context, SyncError, cached_service, lock};
use portico_controllers::ServiceKey;
use portico_controllers::generated_name::generated_name;
use portico_controllers::mirroring::{mirrored_slices, reconcile, service_wants_mirror, should_mirror};

pub(crate) async fn sync(ctx: &Context, key: &ServiceKey) -> Result<(), SyncError> {
    let _timer = ctx.metrics.mirror.endpoints_sync_duration.start_timer();
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let endpoints = ctx
        .caches
        .endpoints
        .get(&ObjectRef::new(&key.name).within(&key.namespace));
    let svc = cached_service(ctx, key);
    let cached = ctx
        .caches
        .slices_by_ns
        .filter(&key.namespace, |s| ctx.cfg.mirroring.manages(s));
    let existing = mirrored_slices(key, cached.iter().map(AsRef::as_ref), &ctx.cfg.mirroring);
    let writer = SliceWriter {
        api: &api,
        key,
        tracker: &ctx.mirror_tracker,
        changes: &ctx.metrics.mirror.changes,
        manages: |ctx, s| ctx.cfg.mirroring.manages(s),
        ctx,
    };
    let mirror = match (&endpoints, &svc) {
        (Some(ep), Some(svc)) if should_mirror(ep) && service_wants_mirror(Some(svc)) => Some((ep, svc)),
        _ => None,
    };
    let Some((endpoints, svc)) = mirror else {
        // Upstream's deleteMirroredSlices: the Service or its Endpoints went away, the Service
        // gained a selector, or the Endpoints asked not to be mirrored.
        lock(&ctx.mirror_tracker).delete_service(key);
        lock(&ctx.mirror_stale_since).remove(key);
        record_stats(ctx, key, None);
        let gone: Vec<EndpointSlice> = existing.into_iter().cloned().collect();
        return writer.apply(&[], &[], &gone).await;
    };
    if lock(&ctx.mirror_tracker).is_stale(svc, &existing) {
        let now = tokio::time::Instant::now();
        let since = *lock(&ctx.mirror_stale_since).entry(key.clone()).or_insert(now);
        if now.duration_since(since) < crate::STALE_LIMIT {
            return Err(SyncError::Stale("EndpointSlice"));
        }
        tracing::warn!(
            endpoints = %key,
            "the cache stayed behind this controller's own slice writes for {:?}; forgetting them and syncing from the cache",
            crate::STALE_LIMIT
        );
        lock(&ctx.mirror_tracker).delete_service(key);
    }
    lock(&ctx.mirror_stale_since).remove(key);
    let mut plan = reconcile(endpoints, &existing, &ctx.cfg.mirroring)?;
    let m = &ctx.metrics.mirror;
    m.endpoints_added_per_sync.observe(plan.endpoints_added as f64);
    m.endpoints_updated_per_sync
        .observe(plan.endpoints_updated as f64);
    m.endpoints_removed_per_sync
        .observe(plan.endpoints_removed as f64);
    m.addresses_skipped_per_sync
        .observe(plan.addresses_skipped as f64);
    record_stats(
        ctx,
        key,
        Some(Stats {
            endpoints: plan.desired_endpoints,
            desired_slices: plan.desired_slices,
            // Every slice deleted is one of `existing`.
            slices: existing.len() + plan.create.len() - plan.delete.len(),
        }),
    );
    // On every sync, as upstream: the skipped addresses are still skipped.
    for event in &plan.events {
        publish(ctx, endpoints, event.reason, event.message.clone()).await;
    }
    lock(&ctx.mirror_tracker).name_creates(key, &existing, &mut plan.create, |base| {
        generated_name(base, rand::random)
    });
    writer.apply(&plan.create, &plan.update, &plan.delete).await
}

/// One Endpoints object's share of the cluster-wide gauges.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    endpoints: usize,
    desired_slices: usize,
    slices: usize,
}

/// Keeps the cluster-wide gauges equal to the sum over Endpoints of their last sync.
fn record_stats(ctx: &Context, key: &ServiceKey, stats: Option<Stats>) {
    let old = {
        let mut map: std::sync::MutexGuard<'_, HashMap<ServiceKey, Stats>> = lock(&ctx.mirror_stats);
        match stats {
            Some(s) => map.insert(key.clone(), s),
            None => map.remove(key),
        }
    }
    .unwrap_or_default();
    let new = stats.unwrap_or_default();
    let d = |n: usize, o: usize| n as i64 - o as i64;
    let m = &ctx.metrics.mirror;
    m.endpoints_desired.add(d(new.endpoints, old.endpoints));
    m.desired_endpoint_slices
        .add(d(new.desired_slices, old.desired_slices));
    m.num_endpoint_slices.add(d(new.slices, old.slices));
}

/// A Warning on the Endpoints object, reported as upstream's mirroring controller.
async fn publish(ctx: &Context, endpoints: &Arc<Endpoints>, reason: &str, note: String) {
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Mirror".into(),
        secondary: None,
    };
    if let Err(e) = ctx.mirror_recorder.publish(&ev, &endpoints.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish event");
    }
}
