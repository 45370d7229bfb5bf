//! Which Service keys a watch event queues, for which controller and how soon: the event
//! routing of the controllers, as a pure state machine.
//!
//! The caller owns the watches and caches. For every event it reads the previous version of
//! the object from its cache, applies the event to the cache (and to any index a sync reads),
//! and only then describes the event as a [`Change`] and calls the function for the kind:
//! [`on_service`], [`on_pod`], [`on_node`], [`on_slice`] or [`on_endpoints`]. What they return,
//! [`Routes`], is what to do: keys to queue per [`Controller`] with a [`Delay`] class, and
//! whether the zones' CPU shares must be recomputed. The state the decisions consult comes in
//! as arguments: the caches through the small [`Lookup`] trait (plain vectors in the tests, the
//! reflector stores in the runtime), and the slice controllers' [`GenerationTracker`]s as
//! `&mut` (see [`SliceOwner`]).
//!
//! A relist (the watch restarted) brings no event for what changed while the watch was down:
//! the caller hands over the cache before and after it ([`Change::Relisted`]), and each
//! function decides from those what the missing events would have asked for.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::endpointslice::{self, GenerationTracker, service_key_for_slice, topology_auto, topology_inputs};
use crate::keys::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME};
use crate::mirroring::{MirrorConfig, service_wants_mirror, should_mirror};
use crate::service_predicates::ServiceKey;
use crate::triggers::{services_for_pod, services_for_pod_update};

/// Upstream's `endpointSliceChangeMinSyncDelay`: slice events are mostly echoes of our own
/// writes, so they are never acted on sooner than this.
pub const SLICE_EVENT_MIN_DELAY: Duration = Duration::from_secs(1);

/// A watch event, as the routing sees it. The caller has already applied it to its cache.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// An object was added or updated. `old` is the version the cache held before this event
    /// (`None`: the object is new to the cache).
    Applied {
        /// The cached version this event replaced.
        old: Option<&'a K>,
        /// The object as the event brought it.
        new: &'a K,
    },
    /// An object was deleted; the object as last seen.
    Deleted(&'a K),
    /// A relist is under way: its start, or one of the objects it lists. The cache keeps its
    /// old content until the relist ends, so nothing is decided yet.
    Relisting,
    /// A relist ended and replaced the cache's content. It brings no event for what changed
    /// while the watch was down: deletions in particular just vanish.
    Relisted {
        /// The cache's objects before the relist.
        before: &'a [&'a K],
        /// The cache's objects after it.
        after: &'a [&'a K],
    },
}

/// The controllers a key can be queued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    /// The EndpointSlice controller (key: the Service).
    EndpointSlice,
    /// The legacy Endpoints controller (key: the Service).
    Endpoints,
    /// The EndpointSliceMirroring controller (key: the Endpoints object, which is named after
    /// its Service).
    Mirroring,
}

/// How soon a queued key is synced. In the order of their durations for any batch period:
/// `Now` ≤ `Batch` ≤ `SliceEcho`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Delay {
    /// At once.
    Now,
    /// After the batch period of the controller the key is queued for, so that a burst of
    /// changes costs one sync: `--endpoint-updates-batch-period` for the EndpointSlice and
    /// Endpoints controllers (pod events), `--mirroring-endpointslice-updates-batch-period`
    /// for the mirroring controller (its slice events, as upstream's `AddAfter`).
    Batch,
    /// An EndpointSlice event for the EndpointSlice controller: the batch period, but at
    /// least [`SLICE_EVENT_MIN_DELAY`].
    SliceEcho,
}

impl Delay {
    /// The delay, given the batch period of the controller the key is queued for.
    pub fn duration(self, batch_period: Duration) -> Duration {
        match self {
            Delay::Now => Duration::ZERO,
            Delay::Batch => batch_period,
            Delay::SliceEcho => SLICE_EVENT_MIN_DELAY.max(batch_period),
        }
    }
}

/// One key to queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// The controller whose queue takes the key.
    pub controller: Controller,
    /// The Service (for mirroring: Endpoints) namespace and name.
    pub key: ServiceKey,
    /// How soon.
    pub delay: Delay,
}

/// What to do about one event.
///
/// Carry it out in this order: when [`Routes::reshare_zones`] holds, recompute the zones' CPU
/// shares from the Nodes now cached (and publish them to the syncs) first; then queue every
/// [`Route`]. A key is routed at most once per controller, with the soonest delay asked for: a
/// sync that starts after the event was applied to the cache covers every reason to sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    queue: BTreeMap<(Controller, ServiceKey), Delay>,
    reshare_zones: bool,
}

impl Routes {
    /// No key to queue and nothing to recompute.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.reshare_zones
    }

    /// Whether the zones' CPU shares must be recomputed (the event changed what they are made
    /// of; see [`crate::endpointslice::zone_cpu_shares`]).
    pub fn reshare_zones(&self) -> bool {
        self.reshare_zones
    }

    /// The keys to queue, by controller, then key.
    pub fn iter(&self) -> impl Iterator<Item = Route> + '_ {
        self.queue.iter().map(|((controller, key), delay)| Route {
            controller: *controller,
            key: key.clone(),
            delay: *delay,
        })
    }

    fn add(&mut self, controller: Controller, key: ServiceKey, delay: Delay) {
        self.queue
            .entry((controller, key))
            .and_modify(|d| *d = (*d).min(delay))
            .or_insert(delay);
    }

    fn add_all(
        &mut self,
        controllers: &[Controller],
        keys: impl IntoIterator<Item = ServiceKey>,
        delay: Delay,
    ) {
        for key in keys {
            for c in controllers {
                self.add(*c, key.clone(), delay);
            }
        }
    }
}

impl IntoIterator for Routes {
    type Item = Route;
    type IntoIter = std::iter::Map<
        std::collections::btree_map::IntoIter<(Controller, ServiceKey), Delay>,
        fn(((Controller, ServiceKey), Delay)) -> Route,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.queue.into_iter().map(|((controller, key), delay)| Route {
            controller,
            key,
            delay,
        })
    }
}

/// The two controllers that sync every Service with a selector.
const SERVICE_CONTROLLERS: &[Controller] = &[Controller::EndpointSlice, Controller::Endpoints];

/// What the routing reads besides the event: the caller's caches (after the event was applied)
/// and the EndpointSlice controller's record of hinted Services.
pub trait Lookup {
    /// A cached Service: `&Service` from a plain vector, `Arc<Service>` from a reflector store.
    type Service<'s>: Deref<Target = Service>
    where
        Self: 's;

    /// Every cached Service.
    fn services(&self) -> Vec<Self::Service<'_>>;

    /// The cached Services of `namespace`.
    fn services_in(&self, namespace: &str) -> Vec<Self::Service<'_>>;

    /// Whether the Service `key` is cached.
    fn has_service(&self, key: &ServiceKey) -> bool;

    /// The Services whose slices carry topology-aware hints.
    fn hinted_services(&self) -> Vec<ServiceKey>;
}

fn all_services(lookup: &impl Lookup) -> impl Iterator<Item = ServiceKey> {
    lookup
        .services()
        .into_iter()
        .filter_map(|s| ServiceKey::of_service(&s))
}

// ---------------------------------------------------------------------------------------------
// Services

/// No selector: the Service's Endpoints are the mirroring controller's to mirror.
fn selectorless(svc: &Service) -> bool {
    service_wants_mirror(Some(svc))
}

/// Routes a Service event. Both Service controllers sync the Service at once on any add,
/// update or delete. The mirroring controller cares only for Services without a selector (their
/// Endpoints are written by hand and mirrored): it syncs on the add or delete of one, and on an
/// update only when whether there is a selector changed (upstream's `onServiceUpdate`).
pub fn on_service(change: Change<'_, Service>) -> Routes {
    let mut routes = Routes::default();
    match change {
        Change::Applied { old, new } => {
            let Some(key) = ServiceKey::of_service(new) else {
                return routes;
            };
            let mirrored = match old {
                None => selectorless(new),
                Some(old) => selectorless(old) != selectorless(new),
            };
            if mirrored {
                routes.add(Controller::Mirroring, key.clone(), Delay::Now);
            }
            routes.add_all(SERVICE_CONTROLLERS, [key], Delay::Now);
        }
        Change::Deleted(svc) => {
            let Some(key) = ServiceKey::of_service(svc) else {
                return routes;
            };
            if selectorless(svc) {
                routes.add(Controller::Mirroring, key.clone(), Delay::Now);
            }
            routes.add_all(SERVICE_CONTROLLERS, [key], Delay::Now);
        }
        Change::Relisting => {}
        Change::Relisted { before, after } => {
            // A relist may have missed deletions: sync every Service known before or after it
            // (cheap: unchanged Services cost no writes), so the vanished ones are cleaned up.
            // The mirroring controller likewise syncs every Service that had no selector before
            // or has none after: vanished, new, or changed while the watch was down.
            for svc in before.iter().chain(after) {
                let Some(key) = ServiceKey::of_service(svc) else {
                    continue;
                };
                if selectorless(svc) {
                    routes.add(Controller::Mirroring, key.clone(), Delay::Now);
                }
                routes.add_all(SERVICE_CONTROLLERS, [key], Delay::Now);
            }
        }
    }
    routes
}

// ---------------------------------------------------------------------------------------------
// Pods

/// Routes a pod event to the Services selecting the pod (see [`crate::triggers`]), for both
/// Service controllers after the batch period. Only the Services of the pod's namespace are
/// looked at, and only for events that can requeue any: a relist's objects (one per pod) need
/// none. The end of a relist syncs every Service: deletions that happened while the watch was
/// down produced no event of their own.
pub fn on_pod(change: Change<'_, Pod>, lookup: &impl Lookup) -> Routes {
    let in_ns = |p: &Pod| lookup.services_in(p.metadata.namespace.as_deref().unwrap_or_default());
    let mut routes = Routes::default();
    match change {
        Change::Applied { old, new } => {
            let services = in_ns(new);
            let services = services.iter().map(|s| &**s);
            let keys = match old {
                Some(old) => services_for_pod_update(old, new, services),
                None => services_for_pod(new, services),
            };
            routes.add_all(SERVICE_CONTROLLERS, keys, Delay::Batch);
        }
        Change::Deleted(pod) => {
            let keys = services_for_pod(pod, in_ns(pod).iter().map(|s| &**s));
            routes.add_all(SERVICE_CONTROLLERS, keys, Delay::Batch);
        }
        Change::Relisting => {}
        Change::Relisted { .. } => routes.add_all(SERVICE_CONTROLLERS, all_services(lookup), Delay::Now),
    }
    routes
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// Routes a Node event. When it changes the zones' CPU shares, the shares are recomputed and
/// the Services with topology-aware hints are resynced at once (EndpointSlice controller only).
/// Upstream requeues only the Services whose hints became overloaded; a resync of the others
/// finds every zone within its maximum, keeps their hints and writes nothing for them.
/// Upstream also reacts only to Nodes coming, going, or changing readiness or zone, and keeps
/// its CPU shares until then; Portico recomputes them on any change of their inputs
/// ([`topology_inputs`]: allocatable CPU and control-plane labels included).
pub fn on_node(change: Change<'_, Node>, lookup: &impl Lookup) -> Routes {
    let reshares = match change {
        Change::Applied { old, new } => old.map(topology_inputs) != Some(topology_inputs(new)),
        Change::Deleted(_) | Change::Relisted { .. } => true,
        Change::Relisting => false,
    };
    let mut routes = Routes::default();
    if reshares {
        routes.reshare_zones = true;
        // The hinted Services, and those asking for hints but refused them (e.g. while a Node
        // had no zone label yet): the change may be what lets them have hints again.
        let auto = lookup
            .services()
            .into_iter()
            .filter(|s| topology_auto(s))
            .filter_map(|s| ServiceKey::of_service(&s));
        routes.add_all(
            &[Controller::EndpointSlice],
            lookup.hinted_services().into_iter().chain(auto),
            Delay::Now,
        );
    }
    routes
}

// ---------------------------------------------------------------------------------------------
// EndpointSlices

/// Which EndpointSlices a controller manages: its `managed-by` label value, or one it adopts.
trait SliceManager {
    fn manages(&self, slice: &EndpointSlice) -> bool;
}

impl SliceManager for endpointslice::Config {
    fn manages(&self, slice: &EndpointSlice) -> bool {
        endpointslice::Config::manages(self, slice)
    }
}

impl SliceManager for MirrorConfig {
    fn manages(&self, slice: &EndpointSlice) -> bool {
        MirrorConfig::manages(self, slice)
    }
}

/// A controller that writes EndpointSlices, as their events concern it: which slices it
/// manages, and its record of its own writes.
///
/// The tracker is borrowed `&mut` and updated in place, rather than the updates being returned
/// for the caller to apply: several decisions read the tracker's answer to an update they make
/// (a deletion requeues only if the tracker did not expect it), and a relist makes many in a
/// row, so returning them would mean simulating the tracker here or splitting one decision
/// between two places. The caller holds its tracker's lock for the call.
pub struct SliceOwner<'a> {
    controller: Controller,
    manager: &'a dyn SliceManager,
    tracker: &'a mut GenerationTracker,
}

impl<'a> SliceOwner<'a> {
    /// The EndpointSlice controller, with its configuration and tracker. Its slice add and
    /// update events queue after [`Delay::SliceEcho`], deletions at once, and the end of a
    /// relist syncs every Service.
    pub fn endpointslice(cfg: &'a endpointslice::Config, tracker: &'a mut GenerationTracker) -> Self {
        SliceOwner {
            controller: Controller::EndpointSlice,
            manager: cfg,
            tracker,
        }
    }

    /// The mirroring controller, with its configuration and its own tracker. Its slice events
    /// all queue after its batch period ([`Delay::Batch`]), as upstream's.
    pub fn mirroring(cfg: &'a MirrorConfig, tracker: &'a mut GenerationTracker) -> Self {
        SliceOwner {
            controller: Controller::Mirroring,
            manager: cfg,
            tracker,
        }
    }

    fn manages(&self, slice: &EndpointSlice) -> bool {
        self.manager.manages(slice)
    }

    fn update_delay(&self) -> Delay {
        match self.controller {
            Controller::Mirroring => Delay::Batch,
            _ => Delay::SliceEcho,
        }
    }

    fn delete_delay(&self) -> Delay {
        match self.controller {
            Controller::Mirroring => Delay::Batch,
            _ => Delay::Now,
        }
    }

    fn queue(&self, routes: &mut Routes, slice: &EndpointSlice, delay: Delay) {
        if let Some(key) = service_key_for_slice(slice) {
            routes.add(self.controller, key, delay);
        }
    }

    /// An add (`old` is `None`) or update of a slice.
    fn applied(&mut self, routes: &mut Routes, old: Option<&EndpointSlice>, new: &EndpointSlice) {
        let delay = self.update_delay();
        let moved = old.is_some_and(|o| {
            label(o, LABEL_SERVICE_NAME) != label(new, LABEL_SERVICE_NAME)
                || label(o, LABEL_MANAGED_BY) != label(new, LABEL_MANAGED_BY)
        });
        if moved {
            // Both the Service it left and the one it joined may need a sync. It left the old
            // Service's listing, whoever it belongs to now: forget it there, or that Service
            // would wait for ever for it to come back.
            if let Some(old) = old.filter(|o| self.manages(o)) {
                self.tracker.slice_left(old);
                self.queue(routes, old, delay);
            }
            if self.manages(new) {
                self.queue(routes, new, delay);
            }
        } else if self.manages(new) && new.metadata.deletion_timestamp.is_some() {
            // Being deleted (held by a finalizer): it leaves the Service's listing now, so
            // the Service must not wait for the write recorded for it.
            self.tracker.slice_left(new);
            self.queue(routes, new, delay);
        } else if self.manages(new) && self.tracker.should_sync(new) {
            // Echoes of our own writes are not news.
            self.queue(routes, new, delay);
        }
    }

    /// A deletion of a slice.
    fn deleted(&mut self, routes: &mut Routes, slice: &EndpointSlice) {
        if !self.manages(slice) {
            return;
        }
        // Untracked (e.g. after a restart) means nobody expected it: recreate.
        if !self.tracker.has(slice) || self.tracker.handle_deletion(slice) {
            self.queue(routes, slice, self.delete_delay());
        }
    }
}

fn label<'a>(s: &'a EndpointSlice, k: &str) -> Option<&'a String> {
    s.metadata.labels.as_ref().and_then(|l| l.get(k))
}

fn name_of(s: &EndpointSlice) -> (&str, &str) {
    (
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Routes an EndpointSlice event for each controller writing slices (`owners`, at most one per
/// controller), updating their trackers:
///
/// * An add or update of a slice the controller manages queues its Service when the tracker
///   says it is news (a slice it did not write, or a generation newer than its own write), or
///   when the slice is being deleted (it is forgotten by the tracker: it leaves the Service's
///   listing now).
/// * A change of its service-name or managed-by label queues the Service it left (forgotten by
///   that Service's record) and the one it joined, for the controller managing each version.
/// * A deletion of a managed slice queues its Service unless the tracker expected it (the
///   controller deleted it itself).
/// * The end of a relist: the events it hides are worked out from the cache before and after
///   it (a slice gone or replaced by a new UID is a deletion, one whose resourceVersion changed
///   an update, a new one an add) and go through the rules above; the EndpointSlice controller
///   then syncs every Service, for both Service controllers (unchanged Services cost no
///   writes). Upstream's informer delivers hidden deletions as `DeletedFinalStateUnknown`;
///   without them the tracker would wait for ever for slices that are gone, relabelled or
///   held by a finalizer.
pub fn on_slice(
    change: Change<'_, EndpointSlice>,
    owners: &mut [SliceOwner<'_>],
    lookup: &impl Lookup,
) -> Routes {
    let mut routes = Routes::default();
    match change {
        Change::Applied { old, new } => {
            for o in owners.iter_mut() {
                o.applied(&mut routes, old, new);
            }
        }
        Change::Deleted(slice) => {
            for o in owners.iter_mut() {
                o.deleted(&mut routes, slice);
            }
        }
        Change::Relisting => {}
        Change::Relisted { before, after } => {
            let now: HashMap<(&str, &str), &EndpointSlice> = after.iter().map(|s| (name_of(s), *s)).collect();
            let was: HashMap<(&str, &str), &EndpointSlice> =
                before.iter().map(|s| (name_of(s), *s)).collect();
            let same = |a: &EndpointSlice, b: &EndpointSlice| a.metadata.uid == b.metadata.uid;
            for o in owners.iter_mut() {
                for old in before {
                    match now.get(&name_of(old)) {
                        Some(new) if same(old, new) => {
                            let unchanged = old.metadata.resource_version.is_some()
                                && old.metadata.resource_version == new.metadata.resource_version;
                            if !unchanged {
                                o.applied(&mut routes, Some(old), new);
                            }
                        }
                        _ => o.deleted(&mut routes, old),
                    }
                }
                for new in after {
                    if !was.get(&name_of(new)).is_some_and(|old| same(old, new)) {
                        o.applied(&mut routes, None, new);
                    }
                }
            }
            if owners.iter().any(|o| o.controller == Controller::EndpointSlice) {
                routes.add_all(SERVICE_CONTROLLERS, all_services(lookup), Delay::Now);
            }
        }
    }
    routes
}

// ---------------------------------------------------------------------------------------------
// Endpoints

fn endpoints_key(ep: &Endpoints) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        ep.metadata.namespace.as_deref()?,
        ep.metadata.name.as_deref()?,
    ))
}

/// Routes an Endpoints event.
///
/// * Endpoints controller: as upstream, only deletions requeue (an edit by hand is reverted at
///   the next sync). Unlike upstream, only for a Service still cached: for a Service that is
///   gone this is the deletion its sync made, and syncing again would only send a second
///   DELETE (404). A Service that comes back requeues itself.
/// * Mirroring controller: an add queues the Endpoints when it is to be mirrored
///   ([`should_mirror`]), an update when
///   the old or the new version is (so that no longer mirroring it deletes its slices), a
///   delete when the deleted version was. At once, as upstream.
/// * The end of a relist syncs every Service for both Service controllers, and for the
///   mirroring controller every Endpoints to be mirrored before or after it (upstream's relist
///   delivers an update for each present one, with no resourceVersion check, and a deletion
///   for each vanished one).
pub fn on_endpoints(change: Change<'_, Endpoints>, lookup: &impl Lookup) -> Routes {
    fn mirror(routes: &mut Routes, ep: &Endpoints) {
        if let Some(key) = endpoints_key(ep) {
            routes.add(Controller::Mirroring, key, Delay::Now);
        }
    }
    let mut routes = Routes::default();
    match change {
        Change::Applied { old, new } => {
            if should_mirror(new) || old.is_some_and(should_mirror) {
                mirror(&mut routes, new);
            }
        }
        Change::Deleted(ep) => {
            if let Some(key) = endpoints_key(ep)
                && lookup.has_service(&key)
            {
                routes.add(Controller::Endpoints, key, Delay::Now);
            }
            if should_mirror(ep) {
                mirror(&mut routes, ep);
            }
        }
        Change::Relisting => {}
        Change::Relisted { before, after } => {
            routes.add_all(SERVICE_CONTROLLERS, all_services(lookup), Delay::Now);
            for ep in before.iter().chain(after).filter(|ep| should_mirror(ep)) {
                mirror(&mut routes, ep);
            }
        }
    }
    routes
}
