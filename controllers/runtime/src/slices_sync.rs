//! One sync of the EndpointSlice controller: cached state → plan → API writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::slice_writes::{SliceWriter, stale_gate};
use crate::{Context, SyncError, cached_service, lock, selected_pods};
use portico_controllers::endpointslice::{
    AutoHints, NodeZone, NodeZones, node_zone, reconcile, slices_for_service, topology_auto,
};
use portico_controllers::generated_name::generated_name;
use portico_controllers::keys::LABEL_SERVICE_NAME;
use portico_controllers::{ServiceKey, is_service_handled};

pub(crate) async fn sync(ctx: &Context, key: &ServiceKey) -> Result<(), SyncError> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let Some(svc) = cached_service(ctx, key) else {
        return service_gone(ctx, &api, key).await;
    };
    if !is_service_handled(&svc) {
        return Ok(());
    }
    let pods = selected_pods(ctx, &svc);
    let pods: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let cached = ctx
        .caches
        .slices_by_ns
        .filter(&key.namespace, |s| belongs_to(s, key));
    let existing = slices_for_service(&svc, cached.iter().map(AsRef::as_ref), &ctx.cfg.slices);
    stale_gate(&ctx.slice_tracker, &ctx.slice_stale_since, key, &svc, &existing)?;
    let trigger = lock(&ctx.slice_triggers).compute(&svc, &pods);
    let mut plan = reconcile(
        &svc,
        &pods,
        &NodeView(ctx),
        &existing,
        &ctx.cfg.slices,
        trigger.as_ref(),
    )?;
    let stats = &plan.metrics;
    let share = [stats.desired_endpoints, stats.desired_slices, stats.actual_slices];
    ctx.slice_gauges.record(key, Some(share));
    let m = &ctx.metrics;
    m.endpoints_added_per_sync
        .observe(plan.metrics.endpoints_added as f64);
    m.endpoints_removed_per_sync
        .observe(plan.metrics.endpoints_removed as f64);
    let traffic = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
        .unwrap_or("");
    let auto = topology_auto(&svc);
    m.slices_changed_per_sync
        .with_label_values(&[if auto { "Auto" } else { "Disabled" }, traffic])
        .observe(plan.writes() as f64);
    topology_events(ctx, key, &svc, auto, &plan.topology).await;
    if !plan.is_empty() {
        tracing::debug!(
            creates = plan.create.len(),
            updates = plan.update.len(),
            deletes = plan.delete.len(),
            "writing EndpointSlices"
        );
    }

    lock(&ctx.slice_tracker).name_creates(key, &existing, &mut plan.create, |base| {
        generated_name(base, rand::random)
    });
    let result = slice_writer(ctx, &api, key)
        .apply(&plan.create, &plan.update, &plan.delete)
        .await;
    if let Err(e) = &result
        && !e.is_expected()
    {
        let note = format!("Error updating Endpoint Slices for Service {key}: {}", e.cause());
        warn_event(ctx, &svc, "FailedToUpdateEndpointSlices", note).await;
    }
    result?;
    match plan.partial_error() {
        // Pods on a Node not (yet) cached were left out; upstream warns with the same Event.
        Some(e) => {
            let note = format!("Error updating Endpoint Slices for Service {key}: {e}");
            warn_event(ctx, &svc, "FailedToUpdateEndpointSlices", note).await;
            Err(e.into())
        }
        None => Ok(()),
    }
}

/// Nodes as the reconcile sees them: zones from the node cache, CPU shares as last computed
/// by the dispatcher.
struct NodeView<'a>(&'a Context);

impl NodeZones for NodeView<'_> {
    fn zone_of(&self, node_name: &str) -> NodeZone {
        match self.0.caches.nodes.get(&ObjectRef::new(node_name)) {
            Some(n) => NodeZone::Found(node_zone(&n).map(str::to_string)),
            None => NodeZone::NotFound,
        }
    }

    fn zone_cpu_shares(&self) -> Option<BTreeMap<String, f64>> {
        self.0
            .zone_shares
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn belongs_to(s: &EndpointSlice, key: &ServiceKey) -> bool {
    s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
        && s.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)) == Some(&key.name)
}

/// Upstream's topology-aware hints Events: enabled when a Service first gets hints; disabled,
/// with the reason, whenever they are refused, and when the annotation goes away.
async fn topology_events(
    ctx: &Context,
    key: &ServiceKey,
    svc: &Arc<Service>,
    auto: bool,
    outcomes: &[(String, AutoHints)],
) {
    const DISABLED: &str = "TopologyAwareHintsDisabled";
    let mut events: Vec<(EventType, &str, String)> = Vec::new();
    {
        let mut hinted = lock(&ctx.hinted);
        if auto {
            for (at, outcome) in outcomes {
                match outcome {
                    AutoHints::Allocated(_) => {
                        let populated = hinted.contains_key(key);
                        hinted.entry(key.clone()).or_default().insert(at.clone());
                        if !populated {
                            let note = format!("Topology Aware Hints has been enabled, addressType: {at}");
                            events.push((EventType::Normal, "TopologyAwareHintsEnabled", note));
                        }
                    }
                    AutoHints::Refused(why) => {
                        if let Some(types) = hinted.get_mut(key) {
                            types.remove(at);
                            if types.is_empty() {
                                hinted.remove(key);
                            }
                        }
                        events.push((EventType::Warning, DISABLED, format!("{why}, addressType: {at}")));
                    }
                }
            }
        } else if let Some(types) = hinted.remove(key) {
            for at in types {
                let note = format!("Topology Aware Hints has been disabled, addressType: {at}");
                events.push((EventType::Warning, DISABLED, note));
            }
        }
    }
    for (type_, reason, note) in events {
        publish_event(ctx, svc, type_, reason, note).await;
    }
}

/// Upstream leaves slices of a deleted Service to the garbage collector (they are owned by the
/// Service). Portico also runs where no garbage collector does, so it deletes its own.
async fn service_gone(ctx: &Context, api: &Api<EndpointSlice>, key: &ServiceKey) -> Result<(), SyncError> {
    lock(&ctx.hinted).remove(key);
    lock(&ctx.slice_tracker).delete_service(key);
    lock(&ctx.slice_stale_since).remove(key);
    lock(&ctx.slice_triggers).delete_service(key);
    ctx.slice_gauges.record(key, None);
    let ours = ctx
        .caches
        .slices
        .state_filter(|s| belongs_to(s, key) && ctx.cfg.slices.manages(s));
    let ours: Vec<EndpointSlice> = ours.iter().map(|s| s.as_ref().clone()).collect();
    slice_writer(ctx, api, key).apply(&[], &[], &ours).await
}

fn slice_writer<'a>(ctx: &'a Context, api: &'a Api<EndpointSlice>, key: &'a ServiceKey) -> SliceWriter<'a> {
    SliceWriter {
        api,
        key,
        tracker: &ctx.slice_tracker,
        changes: &ctx.metrics.slice_changes,
        manages: |ctx, s| ctx.cfg.slices.manages(s),
        ctx,
    }
}

async fn warn_event(ctx: &Context, svc: &Arc<Service>, reason: &str, note: String) {
    publish_event(ctx, svc, EventType::Warning, reason, note).await;
}

async fn publish_event(ctx: &Context, svc: &Arc<Service>, type_: EventType, reason: &str, note: String) {
    let regarding = svc.object_ref(&());
    ctx.slice_events
        .publish(&regarding, type_, reason, "Sync", note)
        .await;
}
