//! Watch events → caches → Service keys.
//!
//! The dispatcher owns the cache writers: it looks the previous version of an object up in the
//! cache, applies the event, and only then decides which Services to queue. That gives pod
//! updates upstream's old/new comparison without a second copy of every pod.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use tokio_util::sync::CancellationToken;

use crate::{Context, Which, cache, lock};
use portico_controllers::ServiceKey;
use portico_controllers::endpointslice::{
    service_key_for_slice, topology_auto, topology_inputs, zone_cpu_shares,
};
use portico_controllers::keys::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME};
use portico_controllers::triggers::{services_for_pod, services_for_pod_update};

/// Upstream's `endpointSliceChangeMinSyncDelay`: slice events are mostly echoes of our own
/// writes, so they are never acted on sooner than this.
const SLICE_EVENT_MIN_DELAY: Duration = Duration::from_secs(1);

pub(crate) struct Writers {
    pub(crate) services: Writer<Service>,
    pub(crate) pods: Writer<Pod>,
    pub(crate) nodes: Option<Writer<Node>>,
    pub(crate) slices: Option<Writer<EndpointSlice>>,
    pub(crate) endpoints: Option<Writer<Endpoints>>,
}

// Boxed: the variants differ a lot in size and events are moved through the merged stream.
enum Ev {
    Service(Box<Event<Service>>),
    Pod(Box<Event<Pod>>),
    Node(Box<Event<Node>>),
    Slice(Box<Event<EndpointSlice>>),
    Endpoints(Box<Event<Endpoints>>),
}

fn watch<K>(
    client: &kube::Client,
    trim: fn(&mut K),
    wrap: fn(Event<K>) -> Ev,
    resource: &'static str,
) -> BoxStream<'static, Ev>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watch_api(Api::all(client.clone()), trim, wrap, resource)
}

fn watch_ns<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    trim: fn(&mut K),
    wrap: fn(Event<K>) -> Ev,
    resource: &'static str,
) -> BoxStream<'static, Ev>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watch_api(api, trim, wrap, resource)
}

fn watch_api<K>(
    api: Api<K>,
    trim: fn(&mut K),
    wrap: fn(Event<K>) -> Ev,
    resource: &'static str,
) -> BoxStream<'static, Ev>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    // any_semantic: the initial list may come from the apiserver's watch cache, not etcd.
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .filter_map(move |r| async move {
            match r {
                Ok(ev) => Some(wrap(ev)),
                Err(e) => {
                    tracing::warn!(resource, error = %e, "watch failed, retrying with backoff");
                    None
                }
            }
        })
        .boxed()
}

pub(crate) async fn run(ctx: Arc<Context>, mut w: Writers, shutdown: CancellationToken) {
    let client = &ctx.client;
    let ns = ctx.cfg.namespace.as_deref();
    let mut streams: Vec<BoxStream<'static, Ev>> = vec![
        watch_ns(
            client,
            ns,
            cache::trim_service,
            |e| Ev::Service(Box::new(e)),
            "services",
        ),
        watch_ns(client, ns, cache::trim_pod, |e| Ev::Pod(Box::new(e)), "pods"),
    ];
    if w.nodes.is_some() {
        streams.push(watch(
            client,
            cache::trim_node,
            |e| Ev::Node(Box::new(e)),
            "nodes",
        ));
    }
    if w.slices.is_some() {
        streams.push(watch_ns(
            client,
            ns,
            cache::drop_managed_fields,
            |e| Ev::Slice(Box::new(e)),
            "endpointslices",
        ));
    }
    if w.endpoints.is_some() {
        streams.push(watch_ns(
            client,
            ns,
            cache::drop_managed_fields,
            |e| Ev::Endpoints(Box::new(e)),
            "endpoints",
        ));
    }
    let mut events = futures::stream::select_all(streams);
    // Beats while idle too, so a silent dispatcher means a stuck one (liveness).
    let mut beat = tokio::time::interval(crate::liveness::DISPATCH_BEAT);
    loop {
        ctx.heartbeats.dispatcher_beat();
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = beat.tick() => continue,
            () = shutdown.cancelled() => return,
        };
        let Some(ev) = ev else { return };
        match ev {
            Ev::Service(e) => on_service(&ctx, &mut w.services, *e),
            Ev::Pod(e) => on_pod(&ctx, &mut w.pods, *e),
            Ev::Node(e) => {
                restarted(&ctx, &e, "nodes");
                if let Some(nw) = w.nodes.as_mut() {
                    on_node(&ctx, nw, *e);
                }
            }
            Ev::Slice(e) => {
                if let Some(sw) = w.slices.as_mut() {
                    on_slice(&ctx, sw, *e);
                }
            }
            Ev::Endpoints(e) => {
                if let Some(ew) = w.endpoints.as_mut() {
                    on_endpoints(&ctx, ew, *e);
                }
            }
        }
    }
}

fn restarted<K>(ctx: &Context, e: &Event<K>, resource: &str) {
    if matches!(e, Event::Init) {
        ctx.metrics.watch_restarts.with_label_values(&[resource]).inc();
    }
}

fn on_service(ctx: &Context, w: &mut Writer<Service>, e: Event<Service>) {
    restarted(ctx, &e, "services");
    if matches!(e, Event::InitDone) {
        // A relist may have missed deletions: sync every Service known before or after it
        // (cheap: unchanged Services cost no writes), so the vanished ones are cleaned up.
        let before = ctx.caches.services.state();
        w.apply_watcher_event(&e);
        ctx.caches.services_by_ns.apply(&ctx.caches.services, &e);
        for svc in before {
            if let Some(key) = ServiceKey::of_service(&svc) {
                ctx.enqueue_both(&key, Duration::ZERO);
            }
        }
        ctx.enqueue_all_services();
        return;
    }
    w.apply_watcher_event(&e);
    ctx.caches.services_by_ns.apply(&ctx.caches.services, &e);
    if let Event::Apply(s) | Event::Delete(s) = &e
        && let Some(key) = ServiceKey::of_service(s)
    {
        ctx.enqueue_both(&key, Duration::ZERO);
    }
}

fn on_pod(ctx: &Context, w: &mut Writer<Pod>, e: Event<Pod>) {
    restarted(ctx, &e, "pods");
    // Only the Services of the pod's namespace, and only for events that can requeue any:
    // a relist's InitApply events (one per pod) need none.
    let in_ns = |p: &Pod| {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        ctx.caches.services_by_ns.filter(ns, |_| true)
    };
    let keys = match &e {
        Event::Apply(new) => {
            let services = in_ns(new);
            let services = services.iter().map(AsRef::as_ref);
            match ctx.caches.pods.get(&ObjectRef::from_obj(new)) {
                Some(old) => services_for_pod_update(&old, new, services),
                None => services_for_pod(new, services),
            }
        }
        Event::Delete(p) => services_for_pod(p, in_ns(p).iter().map(AsRef::as_ref)),
        Event::InitDone => {
            w.apply_watcher_event(&e);
            ctx.caches.pods_by_ns.apply(&ctx.caches.pods, &e);
            ctx.enqueue_all_services();
            return;
        }
        Event::Init | Event::InitApply(_) => Default::default(),
    };
    w.apply_watcher_event(&e);
    ctx.caches.pods_by_ns.apply(&ctx.caches.pods, &e);
    for key in keys {
        ctx.enqueue_both(&key, ctx.cfg.batch_period);
    }
}

/// Applies a Node event. When it changes the zones' CPU shares, the Services with
/// topology-aware hints are resynced at once. Upstream requeues only the Services whose hints
/// became overloaded; a resync of the others finds every zone within its maximum, keeps their
/// hints and writes nothing for them. Upstream also reacts only to Nodes coming, going, or
/// changing readiness or zone, and keeps its CPU shares until then; Portico recomputes them on
/// any change of their inputs, allocatable CPU and control-plane labels included.
fn on_node(ctx: &Context, w: &mut Writer<Node>, e: Event<Node>) {
    let reshares = match &e {
        Event::Apply(new) => {
            let old = ctx.caches.nodes.get(&ObjectRef::from_obj(new));
            old.as_deref().map(topology_inputs) != Some(topology_inputs(new))
        }
        Event::Delete(_) | Event::InitDone => true,
        Event::Init | Event::InitApply(_) => false,
    };
    w.apply_watcher_event(&e);
    if reshares {
        let shares = zone_cpu_shares(ctx.caches.nodes.state().iter().map(AsRef::as_ref));
        *ctx.zone_shares
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = shares;
        // The hinted Services, and those asking for hints but refused them (e.g. while a Node
        // had no zone label yet): the change may be what lets them have hints again.
        let mut keys: std::collections::BTreeSet<ServiceKey> = lock(&ctx.hinted).keys().cloned().collect();
        for svc in ctx.caches.services.state_filter(topology_auto) {
            keys.extend(ServiceKey::of_service(&svc));
        }
        for key in keys {
            ctx.enqueue(Which::Slices, key, Duration::ZERO);
        }
    }
}

fn label<'a>(s: &'a EndpointSlice, k: &str) -> Option<&'a String> {
    s.metadata.labels.as_ref().and_then(|l| l.get(k))
}

fn on_slice(ctx: &Context, w: &mut Writer<EndpointSlice>, e: Event<EndpointSlice>) {
    restarted(ctx, &e, "endpointslices");
    let delay = SLICE_EVENT_MIN_DELAY.max(ctx.cfg.batch_period);
    let cfg = &ctx.cfg.slices;
    // The index follows the store before anything is queued: a sync reads the index.
    let apply = |w: &mut Writer<EndpointSlice>, e: &Event<EndpointSlice>| {
        w.apply_watcher_event(e);
        ctx.caches.slices_by_ns.apply(&ctx.caches.slices, e);
    };
    match &e {
        Event::Apply(new) => {
            let old = ctx.caches.slices.get(&ObjectRef::from_obj(new));
            apply(w, &e);
            let moved = old.as_ref().is_some_and(|o| {
                label(o, LABEL_SERVICE_NAME) != label(new, LABEL_SERVICE_NAME)
                    || label(o, LABEL_MANAGED_BY) != label(new, LABEL_MANAGED_BY)
            });
            if moved {
                // Both the Service it left and the one it joined may need a sync.
                if let Some(old) = old.as_ref().filter(|o| cfg.manages(o)) {
                    lock(&ctx.slice_tracker).slice_left(old);
                    if let Some(key) = service_key_for_slice(old) {
                        ctx.enqueue(Which::Slices, key, delay);
                    }
                }
                if cfg.manages(new)
                    && let Some(key) = service_key_for_slice(new)
                {
                    ctx.enqueue(Which::Slices, key, delay);
                }
            } else if cfg.manages(new)
                && new.metadata.deletion_timestamp.is_some()
                && let Some(key) = service_key_for_slice(new)
            {
                // Being deleted (held by a finalizer): it leaves the Service's listing now, so
                // the Service must not wait for the write recorded for it.
                lock(&ctx.slice_tracker).slice_left(new);
                ctx.enqueue(Which::Slices, key, delay);
            } else if cfg.manages(new)
                && lock(&ctx.slice_tracker).should_sync(new)
                && let Some(key) = service_key_for_slice(new)
            {
                ctx.enqueue(Which::Slices, key, delay);
            }
        }
        Event::Delete(s) => {
            apply(w, &e);
            if cfg.manages(s) {
                let requeue = {
                    let mut t = lock(&ctx.slice_tracker);
                    // Untracked (e.g. after a restart) means nobody expected it: recreate.
                    !t.has(s) || t.handle_deletion(s)
                };
                if requeue && let Some(key) = service_key_for_slice(s) {
                    ctx.enqueue(Which::Slices, key, Duration::ZERO);
                }
            }
        }
        Event::InitDone => {
            // A relist brings no deletion events: slices deleted while the watch was down just
            // vanish. Forget them as deleted, or the tracker would wait forever for them to
            // show up (upstream's informer delivers such deletions as DeletedFinalStateUnknown).
            let before = ctx.caches.slices.state();
            apply(w, &e);
            let mut tracker = lock(&ctx.slice_tracker);
            for gone in before
                .iter()
                .filter(|s| ctx.caches.slices.get(&ObjectRef::from_obj(s.as_ref())).is_none())
            {
                tracker.handle_deletion(gone);
            }
            drop(tracker);
            ctx.enqueue_all_services();
        }
        Event::Init | Event::InitApply(_) => apply(w, &e),
    }
}

fn on_endpoints(ctx: &Context, w: &mut Writer<Endpoints>, e: Event<Endpoints>) {
    restarted(ctx, &e, "endpoints");
    w.apply_watcher_event(&e);
    match &e {
        // As upstream, only deletions requeue: an edit by hand is reverted at the next sync.
        // Unlike upstream, only for a Service still there: for a Service that is gone this is
        // the deletion its sync made, and syncing again would only send a second DELETE (404).
        // A Service that comes back requeues itself.
        Event::Delete(ep) => {
            if let (Some(ns), Some(name)) = (ep.metadata.namespace.as_ref(), ep.metadata.name.as_ref()) {
                let key = ServiceKey::new(ns, name);
                if crate::cached_service(ctx, &key).is_some() {
                    ctx.enqueue(Which::Endpoints, key, Duration::ZERO);
                }
            }
        }
        Event::InitDone => ctx.enqueue_all_services(),
        Event::Apply(_) | Event::Init | Event::InitApply(_) => {}
    }
}
