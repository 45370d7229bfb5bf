//! The EndpointSlice controller's reconcile algorithm, as pure functions.
//!
//! # How the caller drives it
//!
//! For one Service key taken off the work queue:
//!
//! 1. Look the Service up. If it is gone: `tracker.delete_service(&key)` and
//!    `trigger_times.delete_service(&key)`, and stop. Slices are not deleted by the controller:
//!    they carry an owner reference to the Service and the garbage collector removes them.
//! 2. If [`is_service_handled`](crate::is_service_handled) is false (no selector, or
//!    ExternalName), stop. Nothing is created or deleted.
//! 3. Collect the inputs from the reflector stores (which hold `Arc`s):
//!    `let cached = slice_store.state();`
//!    `let slices = slices_for_service(&svc, cached.iter().map(|s| s.as_ref()), &cfg);`
//!    and the pods as `Vec<&Pod>`: either [`crate::select_pods`] or all pods of the namespace
//!    (the reconcile filters by namespace and selector itself).
//! 4. If `tracker.is_stale(&svc, &slices)`, return a retryable "stale informer cache" error:
//!    the cache has not yet seen one of our own writes, and acting on it would undo or
//!    duplicate that write. Requeue with backoff.
//! 5. `let trigger = trigger_times.compute(&svc, &pods);` (always, even when nothing changes).
//! 6. `let plan = reconcile(&svc, &pods, &nodes, &slices, &cfg, trigger.as_ref())?;`
//! 7. Name the creates (the plan sets only `generateName`) with `tracker.name_creates`, then
//!    apply the plan in order: all `create` (POST), then all `update` (PUT by
//!    `metadata.name` with `metadata.resourceVersion` as precondition), then all `delete`
//!    (DELETE by name; send the resourceVersion / uid as preconditions if wanted).
//!    * A create that fails: `tracker.create_failed` with what the answer says, unless there
//!      was no answer (the create may have landed; its name stays pending and is reused).
//!    * After each successful create or update: `tracker.record_write(&returned_object)`.
//!    * After each successful delete (or a 404): `tracker.expect_deletion(&slice)`.
//!    * A create failing because the namespace is terminating can be ignored.
//!    * Any other error (409 Conflict included): stop applying, return the error, requeue
//!      with backoff. The next sync recomputes from the (newer) cache, so nothing is lost.
//! 8. If `plan.partial_error()` is `Some`, return it after applying (pods were skipped because
//!    their Node is not in the cache yet): the Service is retried with backoff.
//!
//! Event handlers ([`crate::routing`] implements them, for every watched kind): an
//! EndpointSlice add/update event requeues its Service (from
//! [`service_key_for_slice`]) only if `cfg.manages(slice)` and `tracker.should_sync(slice)`,
//! or if its service-name or managed-by label changed (then queue old and new Services, and
//! call `tracker.slice_left` with the old slice: it left the old Service's listing, whoever it
//! belongs to now). A delete event of a tracked slice
//! goes to `tracker.handle_deletion(slice)`, which says whether to requeue. Pod events map to
//! Service keys with [`crate::triggers`]. An expired watch (410 Gone) is the watcher's business
//! (it relists); while the cache catches up, step 4 keeps syncs from acting on old data.
//!
//! Fields read from cached objects are listed in [`crate::fields`].

mod hints;
mod metadata;
mod pod_endpoints;
mod ports;
mod reconcile;
mod topology;
mod tracker;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use self::hints::topology_auto;
pub(crate) use self::pod_endpoints::equal_beyond_key;
pub use self::topology::{AutoHints, topology_inputs, zone_cpu_shares};
pub use self::tracker::{CreateOutcome, GenerationTracker};
use crate::keys::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_TOPOLOGY_ZONE};
use crate::reconcile_error::{ReconcileError, SkippedPod};
use crate::service_predicates::ServiceKey;

/// Default for `--max-endpoints-per-slice`.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Upper bound of `--max-endpoints-per-slice` (the apiserver's limit per slice).
pub const MAX_ENDPOINTS_PER_SLICE_LIMIT: usize = 1000;
/// Default manager name written to `endpointslice.kubernetes.io/managed-by`. Deliberately not
/// kube-controller-manager's (see [`crate::keys::UPSTREAM_ENDPOINTSLICE_MANAGER`]) so the two
/// controllers never fight over the same slices; migrate with [`Config::adopt_from`].
pub const DEFAULT_MANAGED_BY: &str = "endpointslice-controller.portico";

/// Controller configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `--max-endpoints-per-slice`, 1..=1000.
    pub max_endpoints_per_slice: usize,
    /// Our manager name (a valid, non-empty label value).
    pub managed_by: String,
    /// `--adopt-from`: another manager whose slices are treated as ours. An adopted slice is
    /// relabelled to `managed_by` only when it has to be written anyway; unchanged adopted
    /// slices are left exactly as they are. Typically
    /// [`crate::keys::UPSTREAM_ENDPOINTSLICE_MANAGER`]. The other manager must be stopped
    /// first, or both will keep rewriting the same slices.
    pub adopt_from: Option<String>,
    /// Whether the apiserver stores endpoint hints. Before Kubernetes 1.33 that takes its
    /// `TopologyAwareHints` feature gate; without it hints are dropped on write, and writing
    /// them would only rewrite the same slices over and over. When false, no hints are written
    /// (`trafficDistribution` and `topology-mode: Auto` are then ignored, as upstream's
    /// controller ignores them with the gate off). The runtime asks the apiserver at start-up.
    pub endpoint_hints: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_endpoints_per_slice: DEFAULT_MAX_ENDPOINTS_PER_SLICE,
            managed_by: DEFAULT_MANAGED_BY.to_string(),
            adopt_from: None,
            endpoint_hints: true,
        }
    }
}

impl Config {
    /// Checks ranges and that the manager names are valid label values.
    pub fn validate(&self) -> Result<(), ReconcileError> {
        if !(1..=MAX_ENDPOINTS_PER_SLICE_LIMIT).contains(&self.max_endpoints_per_slice) {
            return Err(ReconcileError::InvalidConfig(format!(
                "max endpoints per slice must be within 1..={MAX_ENDPOINTS_PER_SLICE_LIMIT}, got {}",
                self.max_endpoints_per_slice
            )));
        }
        if self.managed_by.is_empty() || !is_label_value(&self.managed_by) {
            return Err(ReconcileError::InvalidConfig(format!(
                "managed-by {:?} is not a valid non-empty label value",
                self.managed_by
            )));
        }
        if let Some(a) = &self.adopt_from
            && (a.is_empty() || !is_label_value(a))
        {
            return Err(ReconcileError::InvalidConfig(format!(
                "adopt-from {a:?} is not a valid non-empty label value"
            )));
        }
        Ok(())
    }

    /// Whether a slice is ours to manage: its managed-by label is our name or the adopted one.
    pub fn manages(&self, slice: &EndpointSlice) -> bool {
        managed_by_either(slice, &self.managed_by, self.adopt_from.as_ref())
    }

    /// A label selector string selecting the slices of `service_name` that we manage or adopt,
    /// for list calls or `Store::state_filter_selector`-style filtering.
    pub fn label_selector(&self, service_name: &str) -> String {
        match &self.adopt_from {
            Some(a) if *a != self.managed_by => format!(
                "{LABEL_SERVICE_NAME}={service_name},{LABEL_MANAGED_BY} in ({},{a})",
                self.managed_by
            ),
            _ => format!(
                "{LABEL_SERVICE_NAME}={service_name},{LABEL_MANAGED_BY}={}",
                self.managed_by
            ),
        }
    }
}

/// Whether `slice`'s managed-by label is `managed_by` or `adopt_from`: the one test of
/// ownership for both slice controllers (no configuration is built per call).
pub(crate) fn managed_by_either(
    slice: &EndpointSlice,
    managed_by: &str,
    adopt_from: Option<&String>,
) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|m| m == managed_by || adopt_from == Some(m))
}

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_none_or(u8::is_ascii_alphanumeric)
        && b.last().is_none_or(u8::is_ascii_alphanumeric)
}

/// The existing slices of a Service that the reconcile may touch: same namespace, label
/// `kubernetes.io/service-name=<service>`, managed by us or by the adopted manager, and not
/// pending deletion (a slice held by a finalizer must not block the sync). Sorted by name.
pub fn slices_for_service<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    cfg: &Config,
) -> Vec<&'a EndpointSlice> {
    let (Some(name), ns) = (
        svc.metadata.name.as_deref(),
        svc.metadata.namespace.as_deref().unwrap_or_default(),
    ) else {
        return Vec::new();
    };
    let mut out: Vec<&EndpointSlice> = slices
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref().unwrap_or_default() == ns
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .map(String::as_str)
                    == Some(name)
                && cfg.manages(s)
                && s.metadata.deletion_timestamp.is_none()
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// The Service a slice belongs to (its namespace and `kubernetes.io/service-name` label).
pub fn service_key_for_slice(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some(ServiceKey::new(
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

/// What a node lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeZone {
    /// No such Node in the cache. The pod is skipped (and the Service retried) unless the
    /// Service publishes not-ready addresses, in which case it is kept without a zone.
    NotFound,
    /// The Node exists; its `topology.kubernetes.io/zone` label, if any.
    Found(Option<String>),
}

/// Node lookup for endpoint zones. Implemented for [`NodeZoneMap`], plain maps, and kube's
/// reflector `Store<Node>`.
pub trait NodeZones {
    /// Looks a node up by name.
    fn zone_of(&self, node_name: &str) -> NodeZone;

    /// Each zone's share of the cluster's allocatable CPU, for topology-aware hints; see
    /// [`zone_cpu_shares`]. `None`: not known (hints are then refused).
    fn zone_cpu_shares(&self) -> Option<BTreeMap<String, f64>> {
        None
    }
}

/// The zone label of a Node.
pub fn node_zone(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(LABEL_TOPOLOGY_ZONE)
        .map(String::as_str)
}

/// A node name → zone map, e.g. built once from a node list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeZoneMap(pub BTreeMap<String, Option<String>>);

impl NodeZoneMap {
    /// Builds the map from Nodes (nodes without a name are ignored).
    pub fn from_nodes<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Self {
        NodeZoneMap(
            nodes
                .into_iter()
                .filter_map(|n| Some((n.metadata.name.clone()?, node_zone(n).map(str::to_string))))
                .collect(),
        )
    }

    /// Adds or replaces a node.
    pub fn insert(&mut self, node: impl Into<String>, zone: Option<&str>) {
        self.0.insert(node.into(), zone.map(str::to_string));
    }
}

fn lookup_map(found: Option<&Option<String>>) -> NodeZone {
    match found {
        Some(z) => NodeZone::Found(z.clone()),
        None => NodeZone::NotFound,
    }
}

impl NodeZones for NodeZoneMap {
    fn zone_of(&self, node_name: &str) -> NodeZone {
        lookup_map(self.0.get(node_name))
    }
}

impl NodeZones for BTreeMap<String, Option<String>> {
    fn zone_of(&self, node_name: &str) -> NodeZone {
        lookup_map(self.get(node_name))
    }
}

impl<S: std::hash::BuildHasher> NodeZones for HashMap<String, Option<String>, S> {
    fn zone_of(&self, node_name: &str) -> NodeZone {
        lookup_map(self.get(node_name))
    }
}

/// Counters of one sync, for the controller's metrics (`endpoint_slice_controller_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Endpoints that had to be placed because no existing slice of their port mapping held
    /// them (`endpoints_added_per_sync`); a port change makes every endpoint "added".
    pub endpoints_added: usize,
    /// Endpoints dropped from existing slices of still-desired port mappings
    /// (`endpoints_removed_per_sync`).
    pub endpoints_removed: usize,
    /// Desired endpoints over all address types and port mappings (`endpoints_desired`).
    pub desired_endpoints: usize,
    /// Slices a perfect packing would need (`desired_endpoint_slices`): per address type,
    /// the sum of `ceil(endpoints / max)` per port mapping, at least 1 (the placeholder).
    pub desired_slices: usize,
    /// Slices after this plan is applied (`num_endpoint_slices`).
    pub actual_slices: usize,
}

/// The writes that bring the Service's slices to the desired state.
///
/// Apply `create`, then `update`, then `delete`. Each list is in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlicePlan {
    /// New slices: `metadata.generateName` set, no name, no resourceVersion.
    pub create: Vec<EndpointSlice>,
    /// Full replacements (PUT) of existing slices: `metadata.name` and
    /// `metadata.resourceVersion` of the existing object are set, so a concurrent change
    /// fails with 409 Conflict instead of being overwritten.
    pub update: Vec<EndpointSlice>,
    /// Existing slices to delete (as they were in the cache).
    pub delete: Vec<EndpointSlice>,
    /// Pods left out because their Node was not found; see [`SlicePlan::partial_error`].
    pub skipped_pods: Vec<SkippedPod>,
    /// For a Service with `topology-mode: Auto`: per address type (`IPv4`, `IPv6`), the
    /// hints allocated or why there are none (the caller's Events).
    pub topology: Vec<(String, AutoHints)>,
    /// Counters for metrics.
    pub metrics: SyncStats,
}

impl SlicePlan {
    /// No write is needed.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    /// Number of API writes in the plan.
    pub fn writes(&self) -> usize {
        self.create.len() + self.update.len() + self.delete.len()
    }

    /// The error to return (for a retry with backoff) *after* applying this plan, if some
    /// pods were skipped.
    pub fn partial_error(&self) -> Option<ReconcileError> {
        (!self.skipped_pods.is_empty()).then(|| ReconcileError::PodsSkipped(self.skipped_pods.clone()))
    }
}

/// Computes the writes that bring the Service's EndpointSlices to the desired state.
///
/// * `pods`: the Service's pods (others, e.g. the rest of the namespace, are filtered out).
/// * `nodes`: node lookup for zones (and for the missing-node rule, see [`NodeZone`]).
/// * `existing`: the Service's slices, e.g. from [`slices_for_service`]; slices of other
///   Services or other managers in the input are ignored, never touched.
/// * `trigger_time`: from [`crate::TriggerTimeTracker::compute`]; stamped on every written
///   slice, or removed from them when `None`.
///
/// Returns an empty plan for a Service that is not handled (see
/// [`crate::is_service_handled`]). Errors only for an invalid `cfg` or a Service lacking
/// name, namespace or uid. Never panics.
pub fn reconcile(
    svc: &Service,
    pods: &[&Pod],
    nodes: &dyn NodeZones,
    existing: &[&EndpointSlice],
    cfg: &Config,
    trigger_time: Option<&Time>,
) -> Result<SlicePlan, ReconcileError> {
    reconcile::reconcile(svc, pods, nodes, existing, cfg, trigger_time)
}
