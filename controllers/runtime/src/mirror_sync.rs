//! One sync of the EndpointSlice mirroring controller: an Endpoints object of a Service
//! without a selector → its mirrored slices.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::slice_writes::{SliceWriter, stale_gate};
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
        ctx.mirror_gauges.record(key, None);
        let gone: Vec<EndpointSlice> = existing.into_iter().cloned().collect();
        return writer.apply(&[], &[], &gone).await;
    };
    stale_gate(&ctx.mirror_tracker, &ctx.mirror_stale_since, key, svc, &existing)?;
    let mut plan = reconcile(endpoints, &existing, &ctx.cfg.mirroring)?;
    let m = &ctx.metrics.mirror;
    m.endpoints_added_per_sync.observe(plan.endpoints_added as f64);
    m.endpoints_updated_per_sync
        .observe(plan.endpoints_updated as f64);
    m.endpoints_removed_per_sync
        .observe(plan.endpoints_removed as f64);
    m.addresses_skipped_per_sync
        .observe(plan.addresses_skipped as f64);
    // Every slice deleted is one of `existing`.
    let slices = existing.len() + plan.create.len() - plan.delete.len();
    let share = [plan.desired_endpoints, plan.desired_slices, slices];
    ctx.mirror_gauges.record(key, Some(share));
    // On every sync, as upstream: the skipped addresses are still skipped.
    for event in &plan.events {
        publish(ctx, endpoints, event.reason, event.message.clone()).await;
    }
    lock(&ctx.mirror_tracker).name_creates(key, &existing, &mut plan.create, |base| {
        generated_name(base, rand::random)
    });
    writer.apply(&plan.create, &plan.update, &plan.delete).await
}

/// A Warning on the Endpoints object, reported as upstream's mirroring controller.
async fn publish(ctx: &Context, endpoints: &Arc<Endpoints>, reason: &str, note: String) {
    let regarding = endpoints.object_ref(&());
    ctx.mirror_events
        .publish(&regarding, EventType::Warning, reason, "Mirror", note)
        .await;
}
