//! The kube-runtime edge of allocation: finds the clusterIP ranges and keeps every range's
//! holdings and pool in line with the cluster through watches of Services (every namespace),
//! `IPAddress` objects and ServiceCIDRs. The decisions are pure ([`super::holdings`],
//! [`super::service_cidrs`]); this module only moves events into them and their changes into the
//! ranges.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use portico_allocators::PortAllocator;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use super::claim_store::Range;
use super::holdings::{Change, HoldingsIndex};
use super::ip_pool::IpPool;
use super::plan::{IpFamily, Value, held_values};
use super::range_state::Holder;
use super::service_cidrs::{self, Narrowing};
use super::{AllocationConfig, AllocationError};

/// How long [`start`] waits for the watches' first full lists.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// The clusterIP ranges found at start.
#[derive(Debug, Clone)]
pub struct DiscoveredRanges {
    /// The families, primary first.
    pub families: Vec<IpFamily>,
    /// One pool per family.
    pub pools: Vec<(IpFamily, IpPool)>,
    /// Whether they come from the apiserver's ServiceCIDRs (else from the configuration).
    pub from_service_cidrs: bool,
    /// Whether the apiserver serves `IPAddress` objects.
    pub ipaddresses: bool,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Whether the apiserver serves the list of `K` (1.33+ for ServiceCIDR and IPAddress).
async fn served<K>(api: &Api<K>) -> Result<bool, AllocationError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Finds the clusterIP ranges: the apiserver's ready ServiceCIDRs (narrowed by the configured
/// ranges, which must lie inside them) when it serves them and the configuration does not say
/// otherwise, else the configured ranges.
pub async fn discover_ranges(
    client: &Client,
    config: &AllocationConfig,
) -> Result<DiscoveredRanges, AllocationError> {
    let ipaddresses = served(&Api::<IPAddress>::all(client.clone())).await?;
    let cidr_api = Api::<ServiceCIDR>::all(client.clone());
    let discover = served(&cidr_api).await?;
    if !discover {
        if config.service_cidrs.is_empty() {
            return Err(AllocationError::Config(
                "the apiserver serves no ServiceCIDRs (Kubernetes before 1.33): --service-cluster-ip-range is required"
                    .to_owned(),
            ));
        }
        return Ok(DiscoveredRanges {
            families: config.families(),
            pools: config
                .service_cidrs
                .iter()
                .map(|r| (IpFamily::of_range(r), IpPool::single(*r)))
                .collect(),
            from_service_cidrs: false,
            ipaddresses,
        });
    }
    let objects = cidr_api.list(&ListParams::default()).await?.items;
    let cluster = service_cidrs::usable_cidrs(&objects);
    let narrowing = config.narrowing();
    service_cidrs::check_narrowing(&narrowing, &cluster).map_err(AllocationError::Config)?;
    let families =
        service_cidrs::apiserver_families(&objects).unwrap_or_else(|| cluster.keys().copied().collect());
    if families.is_empty() {
        return Err(AllocationError::Config(
            "the apiserver has no ready ServiceCIDR to allocate clusterIPs from".to_owned(),
        ));
    }
    if let Some(f) = config.families().into_iter().find(|f| !families.contains(f)) {
        return Err(AllocationError::Config(format!(
            "--service-cluster-ip-range names {f}, which the apiserver is not configured for"
        )));
    }
    let pools = families
        .iter()
        .map(|f| (*f, service_cidrs::pool_for(*f, &cluster, &narrowing)))
        .collect();
    Ok(DiscoveredRanges {
        families,
        pools,
        from_service_cidrs: true,
        ipaddresses,
    })
}

/// What the watches see, and the tasks that run them (stopped when dropped).
pub struct ClusterView {
    client: Client,
    index: Mutex<HoldingsIndex>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("services", &self.services())
            .field("addresses", &self.addresses())
            .finish_non_exhaustive()
    }
}

impl ClusterView {
    /// Whether every holder of `v` the watches report is gone in the apiserver (a read from
    /// storage), i.e. the watch is behind: a Service deleted (or changed to other values) and an
    /// `IPAddress` deleted. `false` when a holder still exists, or when nothing is known.
    pub async fn holders_are_gone(&self, v: Value, holders: &[Holder]) -> bool {
        if holders.is_empty() {
            return false;
        }
        for h in holders {
            let gone = match (h, v) {
                (Holder::Service(s), _) => {
                    let api: Api<Service> = Api::namespaced(self.client.clone(), &s.namespace);
                    match api.get_opt(&s.name).await {
                        Ok(None) => true,
                        Ok(Some(svc)) => !svc
                            .spec
                            .as_ref()
                            .is_some_and(|spec| held_values(spec).contains(&v)),
                        Err(_) => false,
                    }
                }
                (Holder::Address { .. }, Value::Ip(ip)) => {
                    let api: Api<IPAddress> = Api::all(self.client.clone());
                    matches!(api.get_opt(&ip.to_string()).await, Ok(None))
                }
                (Holder::Address { .. }, Value::Port(_)) => false,
            };
            if !gone {
                return false;
            }
        }
        true
    }

    /// Services with values, as indexed.
    pub fn services(&self) -> usize {
        self.index.lock().map(|i| i.services()).unwrap_or_default()
    }

    /// `IPAddress` objects, as indexed.
    pub fn addresses(&self) -> usize {
        self.index.lock().map(|i| i.addresses()).unwrap_or_default()
    }
}

impl Drop for ClusterView {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

/// Where changes go: the range of each family and the node-port range.
#[derive(Clone)]
struct Sink {
    ips: Vec<(IpFamily, Range<IpPool>)>,
    ports: Range<PortAllocator>,
}

impl Sink {
    fn apply(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let now = Timestamp::now();
        let mut by_family: HashMap<IpFamily, Vec<Change>> = HashMap::new();
        let mut ports = Vec::new();
        for c in changes {
            let value = match &c {
                Change::Hold(v, _) | Change::Unhold(v, _) => *v,
            };
            match value {
                Value::Ip(ip) => by_family.entry(IpFamily::of(ip)).or_default().push(c),
                Value::Port(_) => ports.push(c),
            }
        }
        for (family, range) in &self.ips {
            if let Some(list) = by_family.remove(family) {
                range.observe(move |s| {
                    for c in &list {
                        match c {
                            Change::Hold(Value::Ip(ip), h) => s.hold(*ip, h.clone(), now),
                            Change::Unhold(Value::Ip(ip), h) => s.unhold(*ip, h),
                            _ => {}
                        }
                    }
                });
            }
        }
        if !ports.is_empty() {
            self.ports.observe(move |s| {
                for c in &ports {
                    match c {
                        Change::Hold(Value::Port(p), h) => s.hold(*p, h.clone(), now),
                        Change::Unhold(Value::Port(p), h) => s.unhold(*p, h),
                        _ => {}
                    }
                }
            });
        }
    }
}

/// Starts the watches and waits for their first full lists.
pub(crate) async fn start(
    client: Client,
    config: &AllocationConfig,
    ranges: &DiscoveredRanges,
    ips: Vec<(IpFamily, Range<IpPool>)>,
    ports: Range<PortAllocator>,
) -> Result<Arc<ClusterView>, AllocationError> {
    let view = Arc::new(ClusterView {
        client: client.clone(),
        index: Mutex::new(HoldingsIndex::new()),
        tasks: Mutex::new(Vec::new()),
    });
    let sink = Sink { ips, ports };
    let mut waits = Vec::new();

    let services: Api<Service> = match &config.scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut wc = watcher::Config::default();
    if let Some(selector) = &config.scope.label_selector {
        wc = wc.labels(selector);
    }
    let (tx, rx) = signal::channel(false);
    waits.push(("Services", rx));
    let task = tokio::spawn(watch_holders(
        services,
        wc,
        Arc::downgrade(&view),
        sink.clone(),
        tx,
    ));
    push_task(&view, task);

    if ranges.ipaddresses {
        let (tx, rx) = signal::channel(false);
        waits.push(("IPAddresses", rx));
        let api: Api<IPAddress> = Api::all(client.clone());
        let task = tokio::spawn(watch_holders(
            api,
            watcher::Config::default(),
            Arc::downgrade(&view),
            sink.clone(),
            tx,
        ));
        push_task(&view, task);
    }

    if ranges.from_service_cidrs {
        let api: Api<ServiceCIDR> = Api::all(client.clone());
        let task = tokio::spawn(watch_service_cidrs(api, sink, config.narrowing()));
        push_task(&view, task);
    }

    for (what, mut rx) in waits {
        match tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|synced| *synced)).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(AllocationError::Config(format!(
                    "the watch of {what} did not list them within {SYNC_TIMEOUT:?}"
                )));
            }
        }
    }
    Ok(view)
}

fn push_task(view: &ClusterView, task: JoinHandle<()>) {
    if let Ok(mut tasks) = view.tasks.lock() {
        tasks.push(task);
    }
}

/// What the holdings index does with one kind of watched object.
trait Indexed: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static {
    /// For logs.
    const WHAT: &'static str;
    fn applied(idx: &mut HoldingsIndex, obj: &Self) -> Vec<Change>;
    fn deleted(idx: &mut HoldingsIndex, obj: &Self) -> Vec<Change>;
    fn relist(idx: &mut HoldingsIndex);
    fn relisted(idx: &mut HoldingsIndex) -> Vec<Change>;
}

impl Indexed for Service {
    const WHAT: &'static str = "Service";
    fn applied(idx: &mut HoldingsIndex, obj: &Self) -> Vec<Change> {
        idx.apply_service(obj)
    }
    fn deleted(idx: &mut HoldingsIndex, obj: &Self) -> Vec<Change> {
        idx.delete_service(obj)
    }
    fn relist(idx: &mut HoldingsIndex) {
        idx.relist_services();
    }
    fn relisted(idx: &mut HoldingsIndex) -> Vec<Change> {
        idx.relisted_services_done()
    }
}

impl Indexed for IPAddress {
    const WHAT: &'static str = "IPAddress";
    fn applied(idx: &mut HoldingsIndex, obj: &Self) -> Vec<Change> {
        idx.apply_address(obj)
    }
    fn deleted(idx: &mut HoldingsIndex, obj: &Self) -> Vec<Change> {
        idx.delete_address(obj)
    }
    fn relist(idx: &mut HoldingsIndex) {
        idx.relist_addresses();
    }
    fn relisted(idx: &mut HoldingsIndex) -> Vec<Change> {
        idx.relisted_addresses_done()
    }
}

/// Feeds one kind of object into the holdings index and its changes into the ranges; `synced`
/// turns true at the end of each full list.
async fn watch_holders<K: Indexed>(
    api: Api<K>,
    config: watcher::Config,
    view: std::sync::Weak<ClusterView>,
    sink: Sink,
    synced: signal::Sender<bool>,
) {
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "{} watch failed; retrying with backoff", K::WHAT);
                continue;
            }
        };
        let Some(view) = view.upgrade() else { return };
        let changes = {
            let Ok(mut idx) = view.index.lock() else { return };
            match &event {
                Event::Apply(o) | Event::InitApply(o) => K::applied(&mut idx, o),
                Event::Delete(o) => K::deleted(&mut idx, o),
                Event::Init => {
                    K::relist(&mut idx);
                    Vec::new()
                }
                Event::InitDone => K::relisted(&mut idx),
            }
        };
        sink.apply(changes);
        if matches!(event, Event::InitDone) {
            let _ = synced.send(true);
        }
    }
}

async fn watch_service_cidrs(api: Api<ServiceCIDR>, sink: Sink, narrowing: Narrowing) {
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut objects: BTreeMap<String, ServiceCIDR> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, ServiceCIDR>> = None;
    let mut applied: Option<BTreeMap<IpFamily, Vec<IpNet>>> = None;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "ServiceCIDR watch failed; retrying with backoff");
                continue;
            }
        };
        let name = |o: &ServiceCIDR| o.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Init => {
                relist = Some(BTreeMap::new());
                continue;
            }
            Event::InitApply(o) => {
                if let Some(r) = &mut relist {
                    r.insert(name(&o), o);
                }
                continue;
            }
            Event::InitDone => objects = relist.take().unwrap_or_default(),
            Event::Apply(o) => {
                objects.insert(name(&o), o);
            }
            Event::Delete(o) => {
                objects.remove(&name(&o));
            }
        }
        let list: Vec<ServiceCIDR> = objects.values().cloned().collect();
        let cluster = service_cidrs::usable_cidrs(&list);
        if applied.as_ref() == Some(&cluster) {
            continue;
        }
        if let Err(why) = service_cidrs::check_narrowing(&narrowing, &cluster) {
            tracing::warn!("{why}; new clusterIPs still come from it, and the apiserver will refuse them");
        }
        // The first list only confirms what discovery found; later ones change the pools.
        if applied.is_some() {
            tracing::info!(
                ?cluster,
                "the cluster's ServiceCIDRs changed: clusterIP ranges follow"
            );
        }
        for (family, range) in &sink.ips {
            let pool = service_cidrs::pool_for(*family, &cluster, &narrowing);
            range.observe(move |s| s.set_pool(pool.clone()));
        }
        applied = Some(cluster);
    }
}
