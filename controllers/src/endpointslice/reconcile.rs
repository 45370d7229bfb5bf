//! The packing algorithm: per address type, per port mapping, minimal churn; then finalize.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::hints::{self, HintMode};
use super::metadata::{
    desired_labels, is_same_placeholder, labels_changed, new_slice, owned_by, set_trigger_time,
};
use super::pod_endpoints::{EndpointKey, address_types, build_endpoint, endpoint_key, equal_beyond_key};
use super::ports::{PortKey, endpoint_ports, port_key};
use super::topology::{self, AutoHints};
use super::{Config, NodeZone, NodeZones, SlicePlan};
use crate::address_family::AddressType;
use crate::pod_predicates::{node_name, should_be_in_endpoints};
use crate::reconcile_error::{ReconcileError, SkippedPod};
use crate::service_predicates::{ServiceId, is_service_handled, publish_not_ready, selects};

/// Everything about the Service the per-type passes need, computed once.
struct Ctx<'a> {
    svc: &'a Service,
    id: ServiceId,
    labels: BTreeMap<String, String>,
    cfg: &'a Config,
    hint_mode: HintMode,
    /// Zone CPU shares, looked up only for `HintMode::Auto`.
    zone_shares: Option<BTreeMap<String, f64>>,
}

impl Ctx<'_> {
    fn max(&self) -> usize {
        self.cfg.max_endpoints_per_slice
    }

    /// A copy of an existing slice about to be written: labels reset to ours (this is where
    /// an adopted slice changes manager), everything else kept.
    fn rewrite(&self, existing: &EndpointSlice) -> EndpointSlice {
        let mut s = existing.clone();
        s.metadata.labels = Some(self.labels.clone());
        s
    }
}

/// A pod that passed the inclusion rules, with its port group and zone resolved once for all
/// address types.
struct Candidate<'a> {
    pod: &'a Pod,
    ports: Vec<EndpointPort>,
    key: PortKey,
    /// `None`: the node is missing and the pod is skipped (its port group still exists).
    zone: Option<Option<String>>,
}

/// The endpoints wanted in one port group.
struct Group {
    ports: Vec<EndpointPort>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
}

pub(super) fn reconcile(
    svc: &Service,
    pods: &[&Pod],
    nodes: &dyn NodeZones,
    existing: &[&EndpointSlice],
    cfg: &Config,
    trigger_time: Option<&Time>,
) -> Result<SlicePlan, ReconcileError> {
    cfg.validate()?;
    if !is_service_handled(svc) {
        return Ok(SlicePlan::default());
    }
    let id = ServiceId::of(svc)?;
    let hint_mode = if cfg.endpoint_hints {
        hints::hint_mode(svc)
    } else {
        HintMode::Remove
    };
    let ctx = Ctx {
        svc,
        labels: desired_labels(svc, &id, cfg),
        id,
        cfg,
        hint_mode,
        zone_shares: (hint_mode == HintMode::Auto)
            .then(|| nodes.zone_cpu_shares())
            .flatten(),
    };
    let types = address_types(svc);

    // Only slices of this Service and manager, not being deleted; in name order so that every
    // tie below is broken the same way on every run.
    let mut mine: Vec<&EndpointSlice> = super::slices_for_service(svc, existing.iter().copied(), cfg);
    mine.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    let mut by_type: BTreeMap<AddressType, Vec<&EndpointSlice>> = BTreeMap::new();
    let mut wrong_type: Vec<EndpointSlice> = Vec::new();
    for s in mine {
        match AddressType::parse(&s.address_type) {
            Some(at) if types.contains(&at) => by_type.entry(at).or_default().push(s),
            // e.g. the Service went single-stack, or the long-gone `IP` type: delete, after
            // everything else, and never recycle (the address type of a slice is immutable).
            _ => wrong_type.push(s.clone()),
        }
    }

    let (candidates, skipped_pods) = candidates(&ctx, pods, nodes);

    let mut plan = SlicePlan {
        skipped_pods,
        ..Default::default()
    };
    for at in types {
        let existing = by_type.remove(&at).unwrap_or_default();
        reconcile_address_type(&ctx, &candidates, existing, at, trigger_time, &mut plan);
    }
    plan.delete.extend(wrong_type);
    Ok(plan)
}

/// Pods of the Service that can be endpoints, sorted by (namespace, name, uid), with ports and
/// zone. Pods whose Node is missing are marked skipped unless the Service publishes not-ready
/// addresses (then they are kept without a zone).
fn candidates<'a>(
    ctx: &Ctx<'_>,
    pods: &[&'a Pod],
    nodes: &dyn NodeZones,
) -> (Vec<Candidate<'a>>, Vec<SkippedPod>) {
    let mut selected: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| selects(ctx.svc, p) && should_be_in_endpoints(p, true))
        .collect();
    selected.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name, &a.metadata.uid).cmp(&(
            &b.metadata.namespace,
            &b.metadata.name,
            &b.metadata.uid,
        ))
    });
    let pnra = publish_not_ready(ctx.svc);
    let mut node_cache: BTreeMap<&str, NodeZone> = BTreeMap::new();
    let mut skipped = Vec::new();
    let out = selected
        .into_iter()
        .map(|pod| {
            let ports = endpoint_ports(ctx.svc, pod);
            let key = port_key(Some(&ports));
            let node = node_name(pod);
            let found = node_cache
                .entry(node)
                .or_insert_with(|| nodes.zone_of(node))
                .clone();
            let zone = match found {
                NodeZone::Found(z) => Some(z),
                NodeZone::NotFound if pnra => Some(None),
                NodeZone::NotFound => {
                    skipped.push(SkippedPod {
                        service: ctx.id.key_string(),
                        pod: pod.metadata.name.clone().unwrap_or_default(),
                        node: node.to_string(),
                    });
                    None
                }
            };
            Candidate {
                pod,
                ports,
                key,
                zone,
            }
        })
        .collect();
    (out, skipped)
}

/// Upstream's per-address-type reconcile, including the placeholder rule and finalize.
fn reconcile_address_type(
    ctx: &Ctx<'_>,
    candidates: &[Candidate<'_>],
    existing: Vec<&EndpointSlice>,
    at: AddressType,
    trigger_time: Option<&Time>,
    plan: &mut SlicePlan,
) {
    let existing_count = existing.len();
    let mut delete: Vec<EndpointSlice> = Vec::new();
    let mut existing_by_key: BTreeMap<PortKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in existing {
        if owned_by(s, &ctx.id.uid) {
            existing_by_key
                .entry(port_key(s.ports.as_deref()))
                .or_default()
                .push(s);
        } else {
            delete.push(s.clone());
        }
    }

    // The group exists as soon as one pod maps to it, even if that pod contributes no endpoint
    // of this family (or is skipped): its stale slices are then emptied rather than left.
    let mut desired: BTreeMap<PortKey, Group> = BTreeMap::new();
    for c in candidates {
        let group = desired.entry(c.key.clone()).or_insert_with(|| Group {
            ports: c.ports.clone(),
            endpoints: BTreeMap::new(),
        });
        let Some(zone) = &c.zone else { continue };
        let ep = build_endpoint(c.pod, ctx.svc, at, zone.clone());
        if !ep.addresses.is_empty() {
            // Same identity twice (should not happen): the later pod in sort order wins.
            group.endpoints.insert(endpoint_key(&ep), ep);
        }
    }

    let mut create = Vec::new();
    let mut update = Vec::new();
    let mut unchanged: Vec<&EndpointSlice> = Vec::new();
    let max = ctx.max();
    let mut desired_slices = 0;
    for (key, group) in desired {
        plan.metrics.desired_endpoints += group.endpoints.len();
        desired_slices += group.endpoints.len().div_ceil(max);
        let slices = existing_by_key.remove(&key).unwrap_or_default();
        let out = reconcile_port_group(ctx, slices, group, at);
        plan.metrics.endpoints_added += out.added;
        plan.metrics.endpoints_removed += out.removed;
        create.extend(out.create);
        update.extend(out.update);
        delete.extend(out.delete);
        unchanged.extend(out.unchanged);
    }
    // Whole port groups no pod maps to any more.
    delete.extend(existing_by_key.into_values().flatten().cloned());

    // Placeholder: a Service must always have at least one slice per address type, so that
    // consumers can tell "no endpoints" from "not processed yet".
    if existing_count == delete.len() && create.is_empty() {
        let placeholder = new_slice(&ctx.id, &ctx.labels, Vec::new(), at);
        if delete.len() == 1 && is_same_placeholder(&delete[0], &placeholder, ctx.cfg) {
            delete.clear();
        } else {
            create.push(placeholder);
        }
    }

    // Hints: written slices get the right ones; an unchanged slice is rewritten only if its
    // hints are wrong.
    let mut mode = ctx.hint_mode;
    if mode == HintMode::Auto {
        let outcome = topology::add_hints(
            &mut create,
            &mut update,
            &mut unchanged,
            ctx.zone_shares.as_ref(),
            |s| ctx.rewrite(s),
        );
        if matches!(outcome, AutoHints::Refused(_)) {
            // Upstream's RemoveHintsFromSlices: no hint anywhere.
            mode = HintMode::Remove;
        }
        plan.topology.push((at.as_str().to_owned(), outcome));
    }
    if mode != HintMode::Auto {
        for s in create.iter_mut().chain(update.iter_mut()) {
            hints::apply(s, mode);
        }
        for s in unchanged {
            if hints::needs_update(s, mode) {
                let mut u = ctx.rewrite(s);
                hints::apply(&mut u, mode);
                update.push(u);
            }
        }
    }

    finalize(
        ctx,
        create,
        update,
        delete,
        at,
        trigger_time,
        existing_count,
        desired_slices.max(1),
        plan,
    );
}

struct GroupPlan<'a> {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<EndpointSlice>,
    unchanged: Vec<&'a EndpointSlice>,
    added: usize,
    removed: usize,
}

/// The minimal-churn fill for one port group:
/// 1. keep every existing slice whose endpoints are all still desired and unchanged (and whose
///    own labels match the Service's); drop what is gone, replace what changed; an emptied
///    slice is deleted;
/// 2. top up the slices already being rewritten, fullest first (that write is paid for);
/// 3. place the rest in new full slices; the last partial batch goes into the unchanged slice
///    it fits best (ending closest to full) only if it fits entirely; otherwise a new slice
///    is created (one create beats updating two).
///
/// Never moves endpoints between slices just to balance them.
fn reconcile_port_group<'a>(
    ctx: &Ctx<'_>,
    existing: Vec<&'a EndpointSlice>,
    group: Group,
    at: AddressType,
) -> GroupPlan<'a> {
    let max = ctx.max();
    let Group {
        ports,
        endpoints: mut remaining,
    } = group;
    let mut out = GroupPlan {
        create: Vec::new(),
        update: Vec::new(),
        delete: Vec::new(),
        unchanged: Vec::new(),
        added: 0,
        removed: 0,
    };

    for s in existing {
        let mut kept = Vec::with_capacity(s.endpoints.len());
        let mut changed = false;
        for ep in &s.endpoints {
            if let Some(want) = remaining.remove(&endpoint_key(ep)) {
                changed |= !equal_beyond_key(ep, &want);
                kept.push(want);
            }
        }
        if changed || kept.len() != s.endpoints.len() {
            out.removed += s.endpoints.len() - kept.len();
            if kept.is_empty() {
                out.delete.push(s.clone());
            } else {
                let mut u = ctx.rewrite(s);
                u.endpoints = kept;
                out.update.push(u);
            }
        } else if labels_changed(s, ctx.svc) {
            out.update.push(ctx.rewrite(s));
        } else {
            out.unchanged.push(s);
        }
    }

    out.added = remaining.len();

    // Fullest first; the sort is stable, so equal sizes stay in name order.
    out.update.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
    for s in &mut out.update {
        fill(s, &mut remaining, max);
    }

    while !remaining.is_empty() {
        let reuse = if remaining.len() < max {
            slice_to_fill(&out.unchanged, remaining.len(), max)
        } else {
            None
        };
        match reuse {
            Some(i) => {
                let mut s = ctx.rewrite(out.unchanged.remove(i));
                fill(&mut s, &mut remaining, max);
                out.update.push(s);
            }
            None => {
                let mut s = new_slice(&ctx.id, &ctx.labels, ports.clone(), at);
                fill(&mut s, &mut remaining, max);
                out.create.push(s);
            }
        }
    }
    out
}

/// Moves endpoints, in identity order, into `slice` until it holds `max`.
fn fill(slice: &mut EndpointSlice, remaining: &mut BTreeMap<EndpointKey, Endpoint>, max: usize) {
    while slice.endpoints.len() < max {
        let Some((_, ep)) = remaining.pop_first() else {
            break;
        };
        slice.endpoints.push(ep);
    }
}

/// The unchanged slice that `n` endpoints fill closest to `max` without exceeding it; the
/// first exact fit wins, ties go to the first (by name).
fn slice_to_fill(unchanged: &[&EndpointSlice], n: usize, max: usize) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, s) in unchanged.iter().enumerate() {
        let Some(room) = max.checked_sub(n + s.endpoints.len()) else {
            continue;
        };
        if room == 0 {
            return Some(i);
        }
        if best.is_none_or(|(_, r)| room < r) {
            best = Some((i, room));
        }
    }
    best.map(|(i, _)| i)
}

/// Recycles slices due for deletion into updates of slices due for creation (one update
/// instead of a delete plus a create), suppresses creates for a Service being deleted, stamps
/// the trigger time, and appends everything to the plan.
#[allow(clippy::too_many_arguments)]
fn finalize(
    ctx: &Ctx<'_>,
    mut create: Vec<EndpointSlice>,
    mut update: Vec<EndpointSlice>,
    mut delete: Vec<EndpointSlice>,
    at: AddressType,
    trigger_time: Option<&Time>,
    existing_count: usize,
    desired_slices: usize,
    plan: &mut SlicePlan,
) {
    let mut i = 0;
    while i < delete.len() && !create.is_empty() {
        if delete[i].address_type == at.as_str() && owned_by(&delete[i], &ctx.id.uid) {
            let old = delete.remove(i);
            let mut recycled = create.pop().unwrap_or_default();
            // A fresh object under the old name: the old labels and annotations go, the
            // generateName stays (as upstream writes it). The old resourceVersion makes the PUT
            // conditional on our view of the slice being current.
            recycled.metadata.name = old.metadata.name;
            recycled.metadata.resource_version = old.metadata.resource_version;
            update.push(recycled);
        } else {
            i += 1;
        }
    }

    // The Service is going away: the garbage collector is about to delete whatever we create.
    if ctx.svc.metadata.deletion_timestamp.is_some() {
        create.clear();
    }

    for s in create.iter_mut().chain(update.iter_mut()) {
        set_trigger_time(&mut s.metadata, trigger_time);
    }

    plan.metrics.desired_slices += desired_slices;
    plan.metrics.actual_slices += existing_count + create.len() - delete.len();
    plan.create.extend(create);
    plan.update.extend(update);
    plan.delete.extend(delete);
}
