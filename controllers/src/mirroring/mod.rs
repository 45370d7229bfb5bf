//! The EndpointSliceMirroring controller's reconcile, as pure functions: Endpoints objects of
//! Services without a selector (written by hand or by another controller) are mirrored to
//! EndpointSlices, so that slice consumers (kube-proxy, DNS, meshes) see them too.
//!
//! # How the caller drives it
//!
//! The work-queue key is the Endpoints' `namespace/name` ([`ServiceKey`]: it is also the
//! Service's). For one key:
//!
//! 1. `let slices = mirrored_slices(&key, slice_cache.iter().map(|s| s.as_ref()), &cfg);`
//! 2. If the Endpoints is gone, or `!should_mirror(&endpoints)`, or
//!    `!service_wants_mirror(service.as_deref())` (the Service of the same name is missing or
//!    has a selector): DELETE every slice in `slices` (by name, ignore 404) and stop. This is
//!    upstream's `deleteMirroredSlices`; it also cleans up after a Service gains a selector.
//! 3. If the caller's slice tracker says the cache is behind its own writes, requeue with
//!    backoff instead of acting on old data.
//! 4. `let plan = reconcile(&endpoints, &slices, &cfg)?;`
//! 5. Record `plan.events` as Warning events on the Endpoints object (component
//!    [`EVENT_COMPONENT`]), on every sync as upstream does; observe the counters.
//! 6. Name the creates with the tracker's `name_creates` (a create cut off mid-flight is sent
//!    again under its name), then apply `create` (POST), then `update` (PUT by name, with
//!    the resourceVersion of the replaced slice as precondition), then `delete`. A create
//!    refused because the namespace is terminating can be dropped; any other error: stop,
//!    requeue.
//!
//! Which watch events queue which keys is decided in [`crate::routing`] (its mirroring rules:
//! Endpoints events, Services whose selector appears or goes, slices this controller manages,
//! through its own [`crate::endpointslice::GenerationTracker`]).
//!
//! Behaviour follows kube-controller-manager's `endpointslicemirroring` controller (v1.33 to
//! v1.37); the few deliberate differences are documented where they occur.

mod desired;
mod metadata;
mod reconcile;
mod repack;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::endpointslice;
use crate::keys::{ANNOTATION_LEADER, LABEL_SERVICE_NAME, LABEL_SKIP_MIRROR, UPSTREAM_ENDPOINTSLICE_MANAGER};
use crate::reconcile_error::ReconcileError;
use crate::service_predicates::ServiceKey;

/// Default manager name written to `endpointslice.kubernetes.io/managed-by` on mirrored slices.
/// Deliberately not kube-controller-manager's ([`crate::keys::UPSTREAM_MIRRORING_MANAGER`]), so
/// the two never fight over the same slices; migrate with [`MirrorConfig::adopt_from`].
pub const DEFAULT_MIRRORING_MANAGED_BY: &str = "endpointslicemirroring-controller.portico";
/// Default of `max_endpoints_per_subset` (upstream's `--mirroring-max-endpoints-per-subset`).
pub const DEFAULT_MAX_ENDPOINTS_PER_SUBSET: usize = 1000;
/// Upper bound of `max_endpoints_per_subset`: every subset becomes at most one slice per
/// address type, and the apiserver refuses slices of more than 1000 endpoints.
pub const MAX_ENDPOINTS_PER_SUBSET_LIMIT: usize = 1000;
/// The event source component upstream records mirroring events under.
pub const EVENT_COMPONENT: &str = "endpoint-slice-mirroring-controller";
/// Event reason: addresses that are not IPs were left out.
pub const REASON_INVALID_IP_ADDRESS: &str = "InvalidIPAddress";
/// Event reason: a subset had more addresses than `max_endpoints_per_subset`.
pub const REASON_TOO_MANY_ADDRESSES: &str = "TooManyAddressesToMirror";

/// Mirroring configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Most addresses mirrored per (repacked) Endpoints subset, 1..=1000; the rest are skipped
    /// and reported with a `TooManyAddressesToMirror` event.
    pub max_endpoints_per_subset: usize,
    /// Our manager name (a valid, non-empty label value).
    pub managed_by: String,
    /// Another mirroring manager whose slices are treated as ours, typically
    /// [`crate::keys::UPSTREAM_MIRRORING_MANAGER`]. An adopted slice is relabelled to
    /// `managed_by` only when it has to be written anyway; unchanged ones are left exactly as
    /// they are. Stop the other manager first, or both keep rewriting the same slices.
    pub adopt_from: Option<String>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            max_endpoints_per_subset: DEFAULT_MAX_ENDPOINTS_PER_SUBSET,
            managed_by: DEFAULT_MIRRORING_MANAGED_BY.to_string(),
            adopt_from: None,
        }
    }
}

impl MirrorConfig {
    /// The manager names as an EndpointSlice controller config, whose label-value validation,
    /// ownership test and selector are the same and are reused rather than repeated.
    fn as_slice_config(&self) -> endpointslice::Config {
        endpointslice::Config {
            managed_by: self.managed_by.clone(),
            adopt_from: self.adopt_from.clone(),
            ..endpointslice::Config::default()
        }
    }

    /// Checks the range of `max_endpoints_per_subset` and that the manager names are valid
    /// label values.
    pub fn validate(&self) -> Result<(), MirrorError> {
        if !(1..=MAX_ENDPOINTS_PER_SUBSET_LIMIT).contains(&self.max_endpoints_per_subset) {
            return Err(MirrorError::InvalidConfig(format!(
                "max endpoints per subset must be within 1..={MAX_ENDPOINTS_PER_SUBSET_LIMIT}, got {}",
                self.max_endpoints_per_subset
            )));
        }
        self.as_slice_config().validate().map_err(|e| match e {
            ReconcileError::InvalidConfig(m) => MirrorError::InvalidConfig(m),
            other => MirrorError::InvalidConfig(other.to_string()),
        })?;
        // The mirror deletes its slices of every Service that has a selector: with an
        // EndpointSlice controller's name it would delete that controller's slices, for good.
        let slice_managers = [UPSTREAM_ENDPOINTSLICE_MANAGER, endpointslice::DEFAULT_MANAGED_BY];
        for name in std::iter::once(&self.managed_by).chain(&self.adopt_from) {
            if slice_managers.contains(&name.as_str()) {
                return Err(MirrorError::InvalidConfig(format!(
                    "{name:?} is an EndpointSlice controller's manager name, not a mirroring one"
                )));
            }
        }
        Ok(())
    }

    /// Whether a slice is ours to manage: its managed-by label is our name or the adopted one.
    pub fn manages(&self, slice: &EndpointSlice) -> bool {
        endpointslice::managed_by_either(slice, &self.managed_by, self.adopt_from.as_ref())
    }

    /// A label selector for the slices mirrored from the Endpoints `endpoints_name` (ours and
    /// adopted ones), for list calls; the same form as
    /// [`endpointslice::Config::label_selector`].
    pub fn label_selector(&self, endpoints_name: &str) -> String {
        self.as_slice_config().label_selector(endpoints_name)
    }
}

/// Why no plan could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// The configuration is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The Endpoints object lacks a field the slices are named, placed or owner-referenced
    /// by (`name`, `namespace` or `uid`). Objects read from the apiserver always have them.
    #[error("endpoints object has no metadata.{0}")]
    MissingMetadata(&'static str),
}

/// Whether an Endpoints object is to be mirrored at all (upstream's `shouldMirror`): not when
/// it carries the skip-mirror label with the exact value `"true"`, nor when it is a
/// leader-election lock (has the leader annotation, whatever its value). Whether the Service
/// wants mirroring is a separate question: [`service_wants_mirror`].
pub fn should_mirror(endpoints: &Endpoints) -> bool {
    let meta = &endpoints.metadata;
    let skip = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .is_some_and(|v| v == "true");
    let lock = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_LEADER));
    !skip && !lock
}

/// Whether the Service of the same name wants its Endpoints mirrored: it exists and has no
/// selector (`spec.selector` absent). Its type does not matter (upstream does not special-case
/// ExternalName).
///
/// An empty selector map is a selector here. k8s-openapi reads `selector: {}` as
/// `Some(empty map)`, distinct from an absent field. The apiserver never sends `{}` (the field
/// is `omitempty`, and an empty map does not survive storage), so this only decides for
/// objects built in code; treating it as a selector keeps this function the exact complement
/// of the EndpointSlice controller's [`crate::is_service_handled`] for non-ExternalName
/// Services, so no Service ever has both controllers writing slices for it.
pub fn service_wants_mirror(service: Option<&Service>) -> bool {
    service.is_some_and(|s| s.spec.as_ref().is_none_or(|spec| spec.selector.is_none()))
}

/// The existing slices mirrored from the Endpoints `key`: same namespace, label
/// `kubernetes.io/service-name=<name>`, managed by us or by the adopted manager (see
/// [`MirrorConfig::manages`]), and not being deleted. Sorted by name, duplicates removed.
///
/// Slices pending deletion are left out (upstream lists them too): one held by a finalizer is
/// on its way out whatever we do, and counting it would keep its endpoints from being
/// written to a live slice.
pub fn mirrored_slices<'a>(
    key: &ServiceKey,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    cfg: &MirrorConfig,
) -> Vec<&'a EndpointSlice> {
    let slice_cfg = cfg.as_slice_config();
    let mut out: Vec<&EndpointSlice> = slices
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref().unwrap_or_default() == key.namespace
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .is_some_and(|n| *n == key.name)
                && slice_cfg.manages(s)
                && s.metadata.deletion_timestamp.is_none()
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    out
}

/// A Warning event to record on the Endpoints object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorEvent {
    /// [`REASON_INVALID_IP_ADDRESS`] or [`REASON_TOO_MANY_ADDRESSES`].
    pub reason: &'static str,
    /// Upstream's message text.
    pub message: String,
}

/// The writes that bring the mirrored slices of one Endpoints object to the desired state.
///
/// Apply `create`, then `update`, then `delete`. Each list is in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorPlan {
    /// New slices: `metadata.generateName` set, no name.
    pub create: Vec<EndpointSlice>,
    /// Full replacements (PUT): `metadata.name` and `metadata.resourceVersion` are those of
    /// the existing slice replaced, so a concurrent change fails with 409 Conflict.
    pub update: Vec<EndpointSlice>,
    /// Existing slices to delete, as they were given.
    pub delete: Vec<EndpointSlice>,
    /// Warning events for the Endpoints object.
    pub events: Vec<MirrorEvent>,
    /// Addresses not mirrored: invalid IPs and those beyond the per-subset maximum
    /// (`addresses_skipped_per_sync`).
    pub addresses_skipped: usize,
    /// Endpoints new to their slice (`endpoints_added_per_sync`), counted as upstream does.
    pub endpoints_added: usize,
    /// Endpoints kept with changed attributes (`endpoints_updated_per_sync`).
    pub endpoints_updated: usize,
    /// Endpoints dropped from their slice (`endpoints_removed_per_sync`).
    pub endpoints_removed: usize,
    /// Endpoints over all desired slices (`endpoints_desired`).
    pub desired_endpoints: usize,
    /// Slices wanted: one per address type and port set with endpoints.
    pub desired_slices: usize,
}

impl MirrorPlan {
    /// No write is needed.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    /// Number of API writes in the plan.
    pub fn writes(&self) -> usize {
        self.create.len() + self.update.len() + self.delete.len()
    }
}

/// Computes the writes that mirror `endpoints` to EndpointSlices.
///
/// * `existing`: the slices of this Endpoints, e.g. from [`mirrored_slices`]; slices of other
///   Endpoints or other managers in the input are ignored, never touched.
///
/// The subsets are first brought to upstream's canonical layout (equal port sets merged,
/// addresses de-duplicated, an address both ready and not ready counted not ready). Each
/// subset then yields at most one slice per address type, holding at most
/// `max_endpoints_per_subset` of its addresses (ready ones first). An Endpoints object without
/// addresses gets no slice at all (there is no placeholder, as upstream). An Endpoints object
/// being deleted gets no new slices; updates and deletes still happen.
///
/// Errors only for an invalid `cfg` or an Endpoints object without name, namespace or uid.
pub fn reconcile(
    endpoints: &Endpoints,
    existing: &[&EndpointSlice],
    cfg: &MirrorConfig,
) -> Result<MirrorPlan, MirrorError> {
    reconcile::reconcile(endpoints, existing, cfg)
}
