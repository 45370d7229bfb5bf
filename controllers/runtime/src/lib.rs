//! The I/O edge of the controllers: watches, caches, work queues, workers and API writes.
//!
//! One set of trimmed caches serves the three controllers (EndpointSlice, Endpoints,
//! EndpointSlice mirroring). A single dispatcher task applies every watch event to its cache
//! and turns it into keys, so it can compare an object with its cached predecessor (a pod's
//! old labels, a slice's old owner) before replacing it. Each controller has its own
//! [`WorkQueue`] and workers, as upstream, so one controller's backoff never delays another's
//! syncs.
//!
//! The decisions live in `portico-controllers`, a crate with no client; this crate only
//! carries them out.

mod cache;
pub mod client_limit;
mod controller_metrics;
mod dispatch;
mod endpoints_sync;
mod events;
mod index;
pub mod leader;
pub mod liveness;
mod mirror_sync;
pub mod queue;
mod retry;
mod slice_writes;
mod slices_sync;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::controller_metrics::SliceGauges;
pub use self::controller_metrics::{Metrics, MetricsError};
use self::events::EventSink;
use self::index::ByNamespace;
pub use self::liveness::Heartbeats;
pub use self::queue::{Backoff, Bucket, WorkQueue};
pub(crate) use self::retry::STALE_LIMIT;
use self::retry::{
    ENDPOINTS_BACKOFF, Loudness, MIRROR_BACKOFF, RETRY_BUCKET, Retry, SLICE_BACKOFF, error_policy,
};
use portico_controllers::ReconcileError;
use portico_controllers::endpointslice::{self, GenerationTracker};
use portico_controllers::legacy_endpoints::StaleEndpointsTracker;
use portico_controllers::mirroring::{self, MirrorConfig, MirrorError};
use portico_controllers::{ServiceKey, TriggerTimeTracker};

/// Which controllers run, and how.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Run the EndpointSlice controller.
    pub endpointslice: bool,
    /// Run the legacy Endpoints controller.
    pub endpoints: bool,
    /// Run the EndpointSlice mirroring controller.
    pub endpointslicemirroring: bool,
    /// Workers per controller (`--concurrent-service-endpoint-syncs`).
    pub workers: usize,
    /// Delay from a pod change to the sync it triggers, so a burst costs one sync
    /// (`--endpoint-updates-batch-period`).
    pub batch_period: Duration,
    /// The EndpointSlice reconcile's settings.
    pub slices: endpointslice::Config,
    /// The mirroring reconcile's settings.
    pub mirroring: MirrorConfig,
    /// Workers of the mirroring controller (`--mirroring-concurrent-service-endpoint-syncs`).
    pub mirroring_workers: usize,
    /// Delay from an EndpointSlice change to the mirroring sync it triggers
    /// (`--mirroring-endpointslice-updates-batch-period`).
    pub mirroring_batch_period: Duration,
    /// Longest one sync may take before it is abandoned and retried (a stuck request must not
    /// hold a Service forever).
    pub sync_timeout: Duration,
    /// Reporting instance for Events (e.g. the pod name).
    pub instance: String,
    /// Watch and manage one namespace only (`None`: all). Nodes are always watched cluster-wide.
    pub namespace: Option<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            endpointslice: true,
            endpoints: true,
            // Opt-in, as on the command line (see `portico run --help`).
            endpointslicemirroring: false,
            workers: 5,
            batch_period: Duration::ZERO,
            slices: endpointslice::Config::default(),
            mirroring: MirrorConfig::default(),
            mirroring_workers: 5,
            mirroring_batch_period: Duration::ZERO,
            sync_timeout: Duration::from_secs(60),
            instance: "portico".into(),
            namespace: None,
        }
    }
}

/// Why a sync failed; every variant is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The cache has not caught up with this controller's own last write.
    #[error("{0} informer cache is out of date")]
    Stale(&'static str),
    /// The reconcile refused its input, or skipped pods whose Node is not cached yet.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The mirroring reconcile refused its input.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    /// An API write failed (409 Conflict included).
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        /// create, update or delete
        verb: &'static str,
        /// EndpointSlice or Endpoints
        kind: &'static str,
        /// object name (or generateName)
        name: String,
        /// the client error
        #[source]
        source: kube::Error,
    },
    /// The sync did not finish within the sync timeout.
    #[error("sync timed out after {0:?}")]
    Timeout(Duration),
}

impl SyncError {
    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SyncError::Stale(_) => "stale",
            SyncError::Reconcile(ReconcileError::PodsSkipped(_)) => "pods_skipped",
            SyncError::Reconcile(_) | SyncError::Mirror(_) => "invalid",
            SyncError::Api {
                source: kube::Error::Api(s),
                ..
            } if s.code == 409 => "conflict",
            SyncError::Api { .. } => "api",
            SyncError::Timeout(_) => "timeout",
        }
    }

    /// The failure as upstream's Events word it: an API error is the apiserver's own message
    /// (Go's error string of a status error), anything else its description.
    pub(crate) fn cause(&self) -> String {
        match self {
            SyncError::Api {
                source: kube::Error::Api(status),
                ..
            } => status.message.clone(),
            other => other.to_string(),
        }
    }

    /// A failure that fixes itself and is retried without a Warning: a cache behind our own
    /// writes (upstream has no Event for it either), or a write conflict (upstream warns;
    /// Portico does not, on purpose: see the README).
    pub(crate) fn is_expected(&self) -> bool {
        self.is_conflict() || matches!(self, SyncError::Stale(_))
    }

    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, SyncError::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// The controllers could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Invalid settings.
    #[error("invalid controller configuration: {0}")]
    Config(#[from] ReconcileError),
    /// Invalid mirroring settings.
    #[error("invalid mirroring configuration: {0}")]
    MirrorConfig(#[from] MirrorError),
    /// The caches never synced before shutdown.
    #[error("shut down before the caches synced")]
    NotSynced,
}

/// The caches the controllers read.
#[derive(Clone)]
pub(crate) struct Caches {
    pub(crate) services: Store<Service>,
    pub(crate) pods: Store<Pod>,
    /// The same Services, pods and slices by namespace (kept by the dispatcher with the stores).
    pub(crate) services_by_ns: Arc<ByNamespace<Service>>,
    pub(crate) pods_by_ns: Arc<ByNamespace<Pod>>,
    pub(crate) slices_by_ns: Arc<ByNamespace<EndpointSlice>>,
    pub(crate) nodes: Store<Node>,
    pub(crate) slices: Store<EndpointSlice>,
    pub(crate) endpoints: Store<Endpoints>,
}

/// Shared state of the running controllers.
pub(crate) struct Context {
    pub(crate) client: kube::Client,
    pub(crate) cfg: RuntimeConfig,
    pub(crate) caches: Caches,
    pub(crate) metrics: Metrics,
    pub(crate) slice_queue: WorkQueue<ServiceKey>,
    pub(crate) endpoints_queue: WorkQueue<ServiceKey>,
    pub(crate) mirror_queue: WorkQueue<ServiceKey>,
    pub(crate) slice_tracker: Mutex<GenerationTracker>,
    pub(crate) slice_triggers: Mutex<TriggerTimeTracker>,
    pub(crate) slice_gauges: SliceGauges,
    /// Services whose slices carry topology-aware hints, with the address types hinted: for
    /// upstream's enabled/disabled Events, and requeued when Nodes change their CPU shares.
    pub(crate) hinted: Mutex<HashMap<ServiceKey, BTreeSet<String>>>,
    /// The zones' CPU shares for topology-aware hints, recomputed by the dispatcher whenever a
    /// Node event changes what they are made of (upstream's `SetNodes`), not at every sync.
    pub(crate) zone_shares: std::sync::RwLock<Option<BTreeMap<String, f64>>>,
    pub(crate) endpoints_stale: Mutex<StaleEndpointsTracker>,
    pub(crate) endpoints_triggers: Mutex<TriggerTimeTracker>,
    pub(crate) slice_events: EventSink,
    pub(crate) mirror_events: EventSink,
    /// The mirroring controller's own record of its slice writes (it manages other slices).
    pub(crate) mirror_tracker: Mutex<GenerationTracker>,
    pub(crate) mirror_stale_since: Mutex<HashMap<ServiceKey, tokio::time::Instant>>,
    pub(crate) mirror_gauges: SliceGauges,
    pub(crate) endpoints_events: EventSink,
    pub(crate) heartbeats: Arc<Heartbeats>,
    /// Since when each Service's slice syncs have found the cache stale (see [`STALE_LIMIT`]).
    pub(crate) slice_stale_since: Mutex<HashMap<ServiceKey, tokio::time::Instant>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a single tracker call).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queue names, as upstream's workqueue metrics label them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Slices,
    Endpoints,
    Mirroring,
}

impl Which {
    pub(crate) fn queue_name(self) -> &'static str {
        match self {
            Which::Slices => "endpoint_slice",
            Which::Endpoints => "endpoint",
            Which::Mirroring => "endpoint_slice_mirroring",
        }
    }
}

impl Context {
    pub(crate) fn queue(&self, which: Which) -> &WorkQueue<ServiceKey> {
        match which {
            Which::Slices => &self.slice_queue,
            Which::Endpoints => &self.endpoints_queue,
            Which::Mirroring => &self.mirror_queue,
        }
    }

    fn enabled(&self, which: Which) -> bool {
        match which {
            Which::Slices => self.cfg.endpointslice,
            Which::Endpoints => self.cfg.endpoints,
            Which::Mirroring => self.cfg.endpointslicemirroring,
        }
    }

    /// Queues `key` for one controller after `delay`, keeping the queue metrics current.
    pub(crate) fn enqueue(&self, which: Which, key: ServiceKey, delay: Duration) {
        if !self.enabled(which) {
            return;
        }
        let q = self.queue(which);
        q.add_after(key, delay);
        self.metrics
            .queue_adds
            .with_label_values(&[which.queue_name()])
            .inc();
        self.metrics
            .queue_depth
            .with_label_values(&[which.queue_name()])
            .set(q.len() as i64);
    }

    /// Queues every cached Service for the EndpointSlice and Endpoints controllers, when this
    /// replica starts leading (relists are the routing's business).
    pub(crate) fn enqueue_all_services(&self) {
        for svc in self.caches.services.state() {
            if let Some(key) = ServiceKey::of_service(&svc) {
                self.enqueue(Which::Slices, key.clone(), Duration::ZERO);
                self.enqueue(Which::Endpoints, key, Duration::ZERO);
            }
        }
    }
}

/// Runs the enabled controllers until `shutdown` is cancelled.
pub async fn run(
    client: kube::Client,
    cfg: RuntimeConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let controllers = Controllers::start(client, cfg, metrics, shutdown.clone()).await?;
    controllers.lead(shutdown).await;
    Ok(())
}

/// Controllers with their caches running and synced, but no workers yet: what a replica that
/// does not hold the lease keeps, so that a takeover starts from warm caches.
pub struct Controllers {
    ctx: Arc<Context>,
}

impl Controllers {
    /// Starts the watches and waits until every cache has synced. The caches run until
    /// `shutdown`.
    pub async fn start(
        client: kube::Client,
        cfg: RuntimeConfig,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Self, RunError> {
        start(client, cfg, metrics, shutdown).await
    }

    /// The dispatcher's and workers' heartbeats, for a liveness probe.
    pub fn heartbeats(&self) -> Arc<Heartbeats> {
        Arc::clone(&self.ctx.heartbeats)
    }

    /// The cached (trimmed) pods of a namespace, for other readers of pods in the same process;
    /// from the by-namespace index, so no scan of the cluster.
    pub fn pods_by_namespace(&self) -> impl Fn(&str) -> Vec<Arc<Pod>> + Send + Sync + 'static {
        let index = Arc::clone(&self.ctx.caches.pods_by_ns);
        move |ns: &str| index.filter(ns, |_| true)
    }

    /// Syncs every Service and keeps syncing on changes until `token` is cancelled (the lease
    /// is lost, or shutdown). A sync in progress is abandoned at once rather than finished:
    /// its writes are conditional, and whoever leads next recomputes from the cluster.
    pub async fn lead(&self, token: CancellationToken) {
        let ctx = &self.ctx;
        tracing::info!("leading: starting workers");
        ctx.enqueue_all_services();
        if ctx.cfg.endpoints {
            // Endpoints whose Service is gone (deleted while no controller ran) are removed by
            // their sync; upstream's leftover check at start-up.
            for ep in ctx.caches.endpoints.state() {
                if portico_controllers::legacy_endpoints::is_leftover_candidate(&ep)
                    && let (Some(ns), Some(name)) =
                        (ep.metadata.namespace.as_ref(), ep.metadata.name.as_ref())
                {
                    ctx.enqueue(Which::Endpoints, ServiceKey::new(ns, name), Duration::ZERO);
                }
            }
        }
        if ctx.cfg.endpointslicemirroring {
            // Every Endpoints to mirror, and the owner of every mirrored slice: slices whose
            // Endpoints or Service went while no controller ran are removed by their sync.
            let endpoints = ctx.caches.endpoints.state();
            let mirrorable = endpoints.iter().filter(|ep| mirroring::should_mirror(ep));
            let keys = mirrorable.filter_map(|ep| {
                Some(ServiceKey::new(
                    ep.metadata.namespace.as_ref()?,
                    ep.metadata.name.as_ref()?,
                ))
            });
            let slices = ctx.caches.slices.state();
            let mirrored = slices.iter().filter(|s| ctx.cfg.mirroring.manages(s));
            for key in keys.chain(mirrored.filter_map(|s| endpointslice::service_key_for_slice(s))) {
                ctx.enqueue(Which::Mirroring, key, Duration::ZERO);
            }
        }
        let mut workers = Vec::new();
        for which in [Which::Slices, Which::Endpoints, Which::Mirroring] {
            if !ctx.enabled(which) {
                continue;
            }
            let count = match which {
                Which::Mirroring => ctx.cfg.mirroring_workers,
                _ => ctx.cfg.workers,
            };
            for n in 0..count.max(1) {
                workers.push(tokio::spawn(worker(ctx.clone(), which, n, token.clone())));
            }
        }
        token.cancelled().await;
        for w in workers {
            let _ = w.await;
        }
        tracing::info!("stopped leading: workers stopped");
    }
}

async fn start(
    client: kube::Client,
    mut cfg: RuntimeConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<Controllers, RunError> {
    cfg.slices.validate()?;
    cfg.mirroring.validate()?;
    if cfg.endpointslice && cfg.slices.endpoint_hints {
        let ns = cfg.namespace.as_deref().unwrap_or("default");
        cfg.slices.endpoint_hints = apiserver_keeps_hints(&client, ns).await;
    }
    let (services, services_w) = reflector::store::<Service>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (endpoints, endpoints_w) = reflector::store::<Endpoints>();
    let caches = Caches {
        services,
        pods,
        services_by_ns: Arc::default(),
        pods_by_ns: Arc::default(),
        slices_by_ns: Arc::default(),
        nodes,
        slices,
        endpoints,
    };
    let reporter = |controller: &str| Reporter {
        controller: controller.into(),
        instance: Some(cfg.instance.clone()),
    };
    let ctx = Arc::new(Context {
        slice_events: EventSink::new(client.clone(), reporter("endpoint-slice-controller")),
        endpoints_events: EventSink::new(client.clone(), reporter("endpoint-controller")),
        mirror_events: EventSink::new(client.clone(), reporter(mirroring::EVENT_COMPONENT)),
        mirror_tracker: Mutex::new(GenerationTracker::new()),
        mirror_stale_since: Mutex::new(HashMap::new()),
        slice_gauges: SliceGauges::new(
            &metrics.endpoints_desired,
            &metrics.desired_endpoint_slices,
            &metrics.num_endpoint_slices,
        ),
        mirror_gauges: SliceGauges::new(
            &metrics.mirror.endpoints_desired,
            &metrics.mirror.desired_endpoint_slices,
            &metrics.mirror.num_endpoint_slices,
        ),
        client: client.clone(),
        caches: caches.clone(),
        metrics,
        slice_queue: WorkQueue::new(SLICE_BACKOFF).with_overall_limit(RETRY_BUCKET),
        endpoints_queue: WorkQueue::new(ENDPOINTS_BACKOFF).with_overall_limit(RETRY_BUCKET),
        mirror_queue: WorkQueue::new(MIRROR_BACKOFF).with_overall_limit(RETRY_BUCKET),
        slice_tracker: Mutex::new(GenerationTracker::new()),
        slice_triggers: Mutex::new(TriggerTimeTracker::new()),
        hinted: Mutex::new(HashMap::new()),
        zone_shares: std::sync::RwLock::new(None),
        endpoints_stale: Mutex::new(StaleEndpointsTracker::new()),
        endpoints_triggers: Mutex::new(TriggerTimeTracker::new()),
        heartbeats: Arc::new(Heartbeats::new(cfg.sync_timeout)),
        slice_stale_since: Mutex::new(HashMap::new()),
        cfg,
    });

    let writers = dispatch::Writers {
        services: services_w,
        pods: pods_w,
        nodes: ctx.cfg.endpointslice.then_some(nodes_w),
        slices: (ctx.cfg.endpointslice || ctx.cfg.endpointslicemirroring).then_some(slices_w),
        endpoints: (ctx.cfg.endpoints || ctx.cfg.endpointslicemirroring).then_some(endpoints_w),
    };
    let dispatcher = tokio::spawn(dispatch::run(ctx.clone(), writers, shutdown.clone()));

    let synced = async {
        let c = &ctx.caches;
        let _ = c.services.wait_until_ready().await;
        let _ = c.pods.wait_until_ready().await;
        c.services_by_ns.wait_until_ready().await;
        c.pods_by_ns.wait_until_ready().await;
        if ctx.cfg.endpointslice {
            let _ = c.nodes.wait_until_ready().await;
        }
        if ctx.cfg.endpointslice || ctx.cfg.endpointslicemirroring {
            let _ = c.slices.wait_until_ready().await;
            c.slices_by_ns.wait_until_ready().await;
        }
        if ctx.cfg.endpoints || ctx.cfg.endpointslicemirroring {
            let _ = c.endpoints.wait_until_ready().await;
        }
    };
    tokio::select! {
        () = synced => {}
        () = shutdown.cancelled() => {
            dispatcher.abort();
            return Err(RunError::NotSynced);
        }
    }
    tracing::info!(
        services = ctx.caches.services.len(),
        pods = ctx.caches.pods.len(),
        "caches synced"
    );
    // The dispatcher ends by itself on shutdown.
    drop(dispatcher);
    Ok(Controllers { ctx })
}

/// Asks the apiserver whether it stores endpoint hints (before 1.33 they depend on its
/// `TopologyAwareHints` gate, which no API reports), with a dry-run create: nothing is stored.
async fn apiserver_keeps_hints(client: &kube::Client, ns: &str) -> bool {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, ForZone};
    let probe = EndpointSlice {
        metadata: kube::api::ObjectMeta {
            generate_name: Some("portico-hints-probe-".into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["192.0.2.1".into()],
            zone: Some("probe".into()),
            hints: Some(EndpointHints {
                for_zones: Some(vec![ForZone { name: "probe".into() }]),
                for_nodes: None,
            }),
            ..Default::default()
        }],
        ports: None,
    };
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    match kube::Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&dry_run, &probe)
        .await
    {
        Ok(back) => {
            let keeps = back.endpoints.first().is_some_and(|e| e.hints.is_some());
            if !keeps {
                tracing::warn!(
                    "the apiserver drops endpoint hints (its TopologyAwareHints feature gate is off): \
                     trafficDistribution and topology-mode: Auto are ignored"
                );
            }
            keeps
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not ask the apiserver whether it keeps endpoint hints; assuming it does");
            true
        }
    }
}

async fn worker(ctx: Arc<Context>, which: Which, n: usize, token: CancellationToken) {
    let queue = ctx.queue(which).clone();
    let name = which.queue_name();
    loop {
        let key = tokio::select! {
            key = queue.get() => key,
            () = token.cancelled() => None,
        };
        let Some(key) = key else { break };
        ctx.metrics
            .queue_depth
            .with_label_values(&[name])
            .set(queue.len() as i64);
        ctx.heartbeats.sync_started(name, n, key.to_string());
        let span = tracing::info_span!("sync", controller = name, service = %key);
        let timer = ctx.metrics.work_duration.with_label_values(&[name]).start_timer();
        let synced =
            tokio::time::timeout(ctx.cfg.sync_timeout, sync(&ctx, which, &key)).instrument(span.clone());
        let result = tokio::select! {
            r = synced => match r {
                Ok(r) => r,
                Err(_) => Err(SyncError::Timeout(ctx.cfg.sync_timeout)),
            },
            () = token.cancelled() => {
                // Leadership ended: the key stays queued for whoever leads next in-process.
                ctx.heartbeats.sync_ended(name, n);
                queue.done(&key);
                queue.add(key);
                break;
            }
        };
        ctx.heartbeats.sync_ended(name, n);
        timer.observe_duration();
        let syncs = match which {
            Which::Slices => &ctx.metrics.slice_syncs,
            Which::Endpoints => &ctx.metrics.endpoints_syncs,
            Which::Mirroring => &ctx.metrics.mirror.syncs,
        };
        match result {
            Ok(()) => {
                syncs.with_label_values(&["success"]).inc();
                queue.forget(&key);
            }
            Err(e) => {
                let label = if matches!(e, SyncError::Stale(_)) {
                    "stale"
                } else {
                    "error"
                };
                syncs.with_label_values(&[label]).inc();
                ctx.metrics
                    .reconcile_errors
                    .with_label_values(&[name, e.metric_label()])
                    .inc();
                ctx.metrics.queue_retries.with_label_values(&[name]).inc();
                let stale_for = match (&e, which) {
                    (SyncError::Stale(_), Which::Slices) => lock(&ctx.slice_stale_since)
                        .get(&key)
                        .map_or(Duration::ZERO, |since| since.elapsed()),
                    (SyncError::Stale(_), Which::Mirroring) => lock(&ctx.mirror_stale_since)
                        .get(&key)
                        .map_or(Duration::ZERO, |since| since.elapsed()),
                    _ => Duration::ZERO,
                };
                let (retry, loudness) = error_policy(&e, stale_for);
                let failures = match retry {
                    Retry::After(delay) => {
                        queue.add_after(key.clone(), delay);
                        queue.failures(&key)
                    }
                    Retry::RateLimited => queue.add_rate_limited(key.clone()),
                };
                let _enter = span.enter();
                match loudness {
                    Loudness::Debug => tracing::debug!(error = %e, failures, "sync failed, retrying"),
                    Loudness::Warn => tracing::warn!(error = %e, failures, "sync failed, retrying"),
                }
            }
        }
        queue.done(&key);
    }
}

async fn sync(ctx: &Context, which: Which, key: &ServiceKey) -> Result<(), SyncError> {
    match which {
        Which::Slices => slices_sync::sync(ctx, key).await,
        Which::Endpoints => endpoints_sync::sync(ctx, key).await,
        Which::Mirroring => mirror_sync::sync(ctx, key).await,
    }
}

/// The Service in the cache, if any.
pub(crate) fn cached_service(ctx: &Context, key: &ServiceKey) -> Option<Arc<Service>> {
    ctx.caches
        .services
        .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
}

/// The cached pods a Service selects (as [`portico_controllers::selects`] decides), from the label index.
pub(crate) fn selected_pods(ctx: &Context, svc: &Service) -> Vec<Arc<Pod>> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Vec::new();
    };
    ctx.caches.pods_by_ns.select(ns, selector)
}
