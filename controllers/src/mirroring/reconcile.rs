//! Desired state against existing slices: one slice per key, extra and stale slices deleted,
//! creates recycled into updates of slices about to be deleted.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::desired::{Group, SliceKey, desired, endpoint_id, equal_beyond_key, slice_key};
use super::metadata::{Template, set_replaced};
use super::{
    MirrorConfig, MirrorError, MirrorEvent, MirrorPlan, REASON_INVALID_IP_ADDRESS, REASON_TOO_MANY_ADDRESSES,
    mirrored_slices,
};
use crate::service_predicates::ServiceKey;

pub(super) fn reconcile(
    endpoints: &Endpoints,
    existing: &[&EndpointSlice],
    cfg: &MirrorConfig,
) -> Result<MirrorPlan, MirrorError> {
    cfg.validate()?;
    let template = Template::new(endpoints, cfg)?;
    let max = cfg.max_endpoints_per_subset;
    let d = desired(endpoints.subsets.as_deref().unwrap_or_default(), max);

    let mut plan = MirrorPlan {
        addresses_skipped: d.skipped,
        ..MirrorPlan::default()
    };
    if d.invalid > 0 {
        plan.events.push(MirrorEvent {
            reason: REASON_INVALID_IP_ADDRESS,
            message: format!(
                "Skipped {} invalid IP addresses when mirroring to EndpointSlices",
                d.invalid
            ),
        });
    }
    if d.skipped > d.invalid {
        plan.events.push(MirrorEvent {
            reason: REASON_TOO_MANY_ADDRESSES,
            message: format!(
                "A max of {max} addresses can be mirrored to EndpointSlices per Endpoints subset. {} addresses were skipped",
                d.skipped
            ),
        });
    }

    // Only this Endpoints' slices of our (or the adopted) manager, in name order: the first
    // slice of a key is the one kept, and every run picks the same one.
    let key = ServiceKey::new(
        endpoints.metadata.namespace.clone().unwrap_or_default(),
        endpoints.metadata.name.clone().unwrap_or_default(),
    );
    let mut by_key: BTreeMap<SliceKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in mirrored_slices(&key, existing.iter().copied(), cfg) {
        by_key
            .entry(slice_key(&s.address_type, s.ports.as_deref()))
            .or_default()
            .push(s);
    }

    for (key, group) in &d.groups {
        let slices = by_key.remove(key).unwrap_or_default();
        reconcile_key(&template, key, group, &slices, &mut plan);
    }
    // Slices of port sets or address types no longer wanted.
    plan.delete.extend(by_key.into_values().flatten().cloned());

    recycle(&mut plan);
    if endpoints.metadata.deletion_timestamp.is_some() {
        plan.create.clear();
    }
    Ok(plan)
}

/// Upstream's per-key step: no endpoints wanted means every slice of the key goes; otherwise
/// the first slice is kept (rewritten unless already right) or one is created, and the rest
/// go. Counters follow upstream: a new slice counts all its endpoints as added, a kept one
/// counts its diff, a key emptied counts its slices' endpoints as removed, and extra slices
/// count nothing.
fn reconcile_key(
    template: &Template,
    key: &SliceKey,
    group: &Group,
    slices: &[&EndpointSlice],
    plan: &mut MirrorPlan,
) {
    if group.endpoints.is_empty() {
        plan.endpoints_removed += slices.iter().map(|s| s.endpoints.len()).sum::<usize>();
        plan.delete.extend(slices.iter().map(|s| (*s).clone()));
        return;
    }
    plan.desired_endpoints += group.endpoints.len();
    plan.desired_slices += 1;
    let Some((first, extra)) = slices.split_first() else {
        plan.endpoints_added += group.endpoints.len();
        let new = template.slice(&key.address_type, &group.ports, group.endpoints.clone(), None);
        plan.create.push(new);
        return;
    };
    plan.delete.extend(extra.iter().map(|s| (*s).clone()));
    let diff = diff(&first.endpoints, &group.endpoints);
    plan.endpoints_added += diff.added;
    plan.endpoints_updated += diff.updated;
    plan.endpoints_removed += diff.removed;
    if diff.is_empty() && template.metadata_matches(first) {
        return;
    }
    let replacement = template.slice(
        &key.address_type,
        &group.ports,
        group.endpoints.clone(),
        Some(first),
    );
    plan.update.push(replacement);
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Diff {
    added: usize,
    updated: usize,
    removed: usize,
}

impl Diff {
    fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

/// How an existing slice's endpoints differ from the desired ones, order aside: existing
/// endpoints whose identity is not desired are removed, desired ones not present are added,
/// and those present with other attributes updated. A second existing entry of an identity
/// already matched counts as removed (upstream counts it as a second match, which makes its
/// added count negative; either way the slice is rewritten).
fn diff(existing: &[Endpoint], desired: &[Endpoint]) -> Diff {
    let wanted: HashMap<_, &Endpoint> = desired.iter().map(|e| (endpoint_id(e), e)).collect();
    let mut matched = HashSet::new();
    let mut d = Diff::default();
    for e in existing {
        let id = endpoint_id(e);
        match wanted.get(&id) {
            Some(w) if !matched.contains(&id) => {
                if !equal_beyond_key(w, e) {
                    d.updated += 1;
                }
                matched.insert(id);
            }
            _ => d.removed += 1,
        }
    }
    d.added = wanted.len() - matched.len();
    d
}

/// Turns creates into updates of slices that would otherwise be deleted, one for one per
/// address type (a slice's address type cannot change), in list order: one write instead of
/// two, and the slice name survives a port change. Upstream does the same, except that when
/// several address types are involved its bookkeeping can drop a create of another type for
/// one sync; here each create is matched on its own.
fn recycle(plan: &mut MirrorPlan) {
    let mut creates = Vec::new();
    for mut c in std::mem::take(&mut plan.create) {
        match plan.delete.iter().position(|d| d.address_type == c.address_type) {
            Some(i) => {
                let old = plan.delete.remove(i);
                set_replaced(&mut c.metadata, &old);
                plan.update.push(c);
            }
            None => creates.push(c),
        }
    }
    plan.create = creates;
}
