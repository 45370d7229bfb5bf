//! Watch events → caches → Service keys.
//!
//! The dispatcher owns the cache writers: it looks the previous version of an object up in the
//! cache, applies the event, and only then asks [`portico_controllers::routing`] which Services
//! to queue. That gives pod updates upstream's old/new comparison without a second copy of
//! every pod. Every decision is the routing's; this module only feeds it and carries out its
//! [`Routes`].

use std::sync::{Arc, PoisonError};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use tokio_util::sync::CancellationToken;

use crate::index::ByNamespace;
use crate::{Context, Which, cache, lock};
use portico_controllers::ServiceKey;
use portico_controllers::endpointslice::zone_cpu_shares;
use portico_controllers::routing::{self, Change, Controller, Route, Routes, SliceOwner};

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
        let c = &ctx.caches;
        let lookup = Cached(&ctx);
        let routes = match ev {
            Ev::Service(e) => {
                restarted(&ctx, &e, "services");
                let by_ns = Some(&*c.services_by_ns);
                observe(&c.services, &mut w.services, by_ns, &e, routing::on_service)
            }
            Ev::Pod(e) => {
                restarted(&ctx, &e, "pods");
                let by_ns = Some(&*c.pods_by_ns);
                observe(&c.pods, &mut w.pods, by_ns, &e, |ch| routing::on_pod(ch, &lookup))
            }
            Ev::Node(e) => {
                restarted(&ctx, &e, "nodes");
                let Some(nw) = w.nodes.as_mut() else { continue };
                observe(&c.nodes, nw, None, &e, |ch| routing::on_node(ch, &lookup))
            }
            Ev::Slice(e) => {
                let Some(sw) = w.slices.as_mut() else { continue };
                restarted(&ctx, &e, "endpointslices");
                let by_ns = Some(&*c.slices_by_ns);
                observe(&c.slices, sw, by_ns, &e, |ch| {
                    let mut tracker = lock(&ctx.slice_tracker);
                    let mut mirror_tracker = lock(&ctx.mirror_tracker);
                    let mut owners = [
                        SliceOwner::endpointslice(&ctx.cfg.slices, &mut tracker),
                        SliceOwner::mirroring(&ctx.cfg.mirroring, &mut mirror_tracker),
                    ];
                    routing::on_slice(ch, &mut owners, &lookup)
                })
            }
            Ev::Endpoints(e) => {
                let Some(ew) = w.endpoints.as_mut() else { continue };
                restarted(&ctx, &e, "endpoints");
                observe(&c.endpoints, ew, None, &e, |ch| {
                    routing::on_endpoints(ch, &lookup)
                })
            }
        };
        carry_out(&ctx, routes);
    }
}

fn restarted<K>(ctx: &Context, e: &Event<K>, resource: &str) {
    if matches!(e, Event::Init) {
        ctx.metrics.watch_restarts.with_label_values(&[resource]).inc();
    }
}

/// Applies `e` to a cache (the store, then its by-namespace index if it has one) and hands it
/// to `route` as a [`Change`]. The previous version of an object is read from the store before
/// the event replaces it; the index follows the store before anything is decided or queued (a
/// sync reads the index).
fn observe<K, R>(
    store: &Store<K>,
    w: &mut Writer<K>,
    index: Option<&ByNamespace<K>>,
    e: &Event<K>,
    route: impl FnOnce(Change<'_, K>) -> R,
) -> R
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let mut apply = || {
        w.apply_watcher_event(e);
        if let Some(index) = index {
            index.apply(store, e);
        }
    };
    match e {
        Event::Apply(new) => {
            let old = store.get(&ObjectRef::from_obj(new));
            apply();
            route(Change::Applied {
                old: old.as_deref(),
                new,
            })
        }
        Event::Delete(obj) => {
            apply();
            route(Change::Deleted(obj))
        }
        Event::Init | Event::InitApply(_) => {
            apply();
            route(Change::Relisting)
        }
        Event::InitDone => {
            let before = store.state();
            apply();
            let after = store.state();
            let before: Vec<&K> = before.iter().map(AsRef::as_ref).collect();
            let after: Vec<&K> = after.iter().map(AsRef::as_ref).collect();
            route(Change::Relisted {
                before: &before,
                after: &after,
            })
        }
    }
}

/// The caches (and the hinted Services), as the routing reads them.
struct Cached<'a>(&'a Context);

impl routing::Lookup for Cached<'_> {
    type Service<'s>
        = Arc<Service>
    where
        Self: 's;

    fn services(&self) -> Vec<Arc<Service>> {
        self.0.caches.services.state()
    }

    fn services_in(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.0.caches.services_by_ns.filter(namespace, |_| true)
    }

    fn has_service(&self, key: &ServiceKey) -> bool {
        crate::cached_service(self.0, key).is_some()
    }

    fn hinted_services(&self) -> Vec<ServiceKey> {
        lock(&self.0.hinted).keys().cloned().collect()
    }
}

/// Carries out what the routing decided: the zones' CPU shares first (upstream's `SetNodes`;
/// the syncs queued next read them), then the keys, each after its delay.
fn carry_out(ctx: &Context, routes: Routes) {
    if routes.reshare_zones() {
        let shares = zone_cpu_shares(ctx.caches.nodes.state().iter().map(AsRef::as_ref));
        *ctx.zone_shares.write().unwrap_or_else(PoisonError::into_inner) = shares;
    }
    for Route {
        controller,
        key,
        delay,
    } in routes
    {
        // `Batch` is each controller's own batch period: the pods' for the first two, the
        // slices' (`--mirroring-endpointslice-updates-batch-period`) for mirroring.
        let (which, batch) = match controller {
            Controller::EndpointSlice => (Which::Slices, ctx.cfg.batch_period),
            Controller::Endpoints => (Which::Endpoints, ctx.cfg.batch_period),
            Controller::Mirroring => (Which::Mirroring, ctx.cfg.mirroring_batch_period),
        };
        ctx.enqueue(which, key, delay.duration(batch));
    }
}
