//! Controller workload, side by side: Portico's EndpointSlice/Endpoints controllers and, with
//! `--against kcm`, kube-controller-manager's (`--controllers=endpoint,endpointslice`, the
//! binary `scripts/build-k8s` builds), each on a fresh control plane, through the same phases.
//!
//! ```sh
//! cargo bench --bench controller_workload -- --against kcm --workload all
//! cargo bench --bench controller_workload -- --workload W3 --batch-period 500ms
//! ```
//!
//! `--workload` is W3 (default), W4, W5 or all; any other argument is passed to `portico run`.
//! `PORTICO_BENCH_WRAP` names a command to run Portico under (a heap profiler).
//! Workloads: Nodes in 3 zones and Services whose sizes cycle 10, 50, 100, 101, 250 pods: W3 =
//! 50 Services / 5,110 pods / 50 Nodes, W4 = 200 / 20,440 / 100, W5 = 500 / 51,100 / 500.
//!
//! Phases: the initial sync (Services created, pods created without status as a scheduler
//! leaves them, then all made Ready through the status subresource); a contiguous fifth of each
//! Service flipped to not Ready and back; every fifth pod flipped and back; every Service scaled
//! up by 10 % and back down; a tenth of the Services deleted and created again.
//!
//! For each phase and controller: API writes per resource and verb, from the apiserver's
//! `apiserver_request_total` (each controller has a control plane of its own, and nothing else
//! writes EndpointSlices or Endpoints there, so every write counted is the controller's); the
//! floor, the fewest writes any controller could do with 100 endpoints per slice; per-change
//! latency, from the start of a pod's write to the moment a watch of the EndpointSlices shows it
//! (p50, p99, max over the phase's changes); the controller process's CPU seconds and peak RSS
//! (VmHWM, reset at the start of each phase through `/proc/<pid>/clear_refs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use portico_testenv::fixtures::{self, TestPod};
use portico_testenv::{Assets, ControlPlane, ControlPlaneConfig};

const NS: &str = "bench";
const SIZES: [usize; 5] = [10, 50, 100, 101, 250];
const CONCURRENCY: usize = 48;
const MAX_PER_SLICE: usize = 100;

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    services: usize,
    nodes: usize,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "W3",
        services: 50,
        nodes: 50,
    },
    Workload {
        name: "W4",
        services: 200,
        nodes: 100,
    },
    Workload {
        name: "W5",
        services: 500,
        nodes: 500,
    },
];

impl Workload {
    fn size(svc: usize) -> usize {
        SIZES[svc % SIZES.len()]
    }

    fn pods(&self) -> usize {
        (0..self.services).map(Self::size).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Portico,
    Kcm,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Portico => "Portico",
            Controller::Kcm => "kube-controller-manager",
        }
    }
}

/// The controller under test, as a child process (killed on drop).
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(which: Controller, cp: &ControlPlane, extra: &[String]) -> Self {
        let log_path = std::env::temp_dir().join(format!(
            "controller-workload-{}.log",
            match which {
                Controller::Portico => "portico",
                Controller::Kcm => "kcm",
            }
        ));
        let log = std::fs::File::create(&log_path).expect("log");
        let mut cmd = match which {
            Controller::Portico => {
                // PORTICO_BENCH_WRAP runs Portico under a profiler, e.g. `valgrind
                // --tool=massif --massif-out-file=/tmp/portico.massif` (its CPU and RSS figures
                // are then the profiler's).
                let wrap = std::env::var("PORTICO_BENCH_WRAP").unwrap_or_default();
                let mut words = wrap.split_whitespace();
                let mut c = match words.next() {
                    Some(program) => {
                        let mut c = Command::new(program);
                        c.args(words).arg(env!("CARGO_BIN_EXE_portico"));
                        c
                    }
                    None => Command::new(env!("CARGO_BIN_EXE_portico")),
                };
                c.args([
                    "run",
                    "--webhook=false",
                    "--leader-elect=false",
                    "--metrics-bind-address=127.0.0.1:0",
                ])
                .args(extra)
                .env("KUBECONFIG", cp.kubeconfig_path())
                .env(
                    "PORTICO_LOG",
                    std::env::var("PORTICO_LOG").unwrap_or_else(|_| "warn".into()),
                );
                c
            }
            Controller::Kcm => {
                let kcm = Assets::discover()
                    .ok()
                    .and_then(|a| a.kube_controller_manager)
                    .expect("kube-controller-manager (scripts/build-k8s builds it)");
                let mut c = Command::new(kcm);
                c.arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
                    .args([
                        "--controllers=endpoint,endpointslice",
                        "--leader-elect=false",
                        "--secure-port=0",
                        "--v=0",
                    ]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        Proc { child }
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        portico_testenv::cpu_seconds(self.child.id())
    }

    /// Peak resident set size (VmHWM) in MiB since the last [`Proc::reset_peak`].
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }

    /// Resets VmHWM to the current RSS.
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

fn pod_name(svc: usize, i: usize) -> String {
    format!("s{svc}-p{i}")
}

fn svc_name(svc: usize) -> String {
    format!("svc-{svc}")
}

/// A unique IPv4 per (service, index): 10.100.0.0 upwards, 65,536 per /16.
fn pod_ip(svc: usize, i: usize) -> String {
    let g = svc * 512 + i;
    format!("10.{}.{}.{}", 100 + g / 65536, (g / 256) % 256, g % 256)
}

/// What the watch of EndpointSlices has seen: each pod's endpoint (ready or not, and since
/// when), and each slice's Service and owner.
#[derive(Default)]
struct Seen {
    /// slice name -> what it holds.
    slices: HashMap<String, SliceSeen>,
    /// pod -> slices listing it, with the ready condition there.
    pod_slices: HashMap<String, HashMap<String, bool>>,
    /// pod -> (ready in the slices, or None when in none; when that last changed).
    state: HashMap<String, (Option<bool>, Instant)>,
}

impl Seen {
    /// A slice added or changed: its pods' states change only where they really differ, so a
    /// rewrite of a slice leaves the timestamps of the pods it did not change alone.
    fn apply(&mut self, s: &EndpointSlice, now: Instant) {
        let Some(name) = s.metadata.name.clone() else {
            return;
        };
        let svc = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .unwrap_or_default();
        let owner = s
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.uid.clone())
            .unwrap_or_default();
        let pods: Vec<(String, bool)> = s
            .endpoints
            .iter()
            .filter_map(|e| {
                let pod = e.target_ref.as_ref()?.name.clone()?;
                Some((pod, e.conditions.as_ref().and_then(|c| c.ready) == Some(true)))
            })
            .collect();
        let mut touched: Vec<String> = self.forget(&name);
        for (pod, ready) in &pods {
            self.pod_slices
                .entry(pod.clone())
                .or_default()
                .insert(name.clone(), *ready);
            touched.push(pod.clone());
        }
        self.slices.insert(
            name,
            SliceSeen {
                service: svc,
                owner_uid: owner,
                pods,
            },
        );
        for pod in touched {
            self.refresh(&pod, now);
        }
    }

    /// A slice deleted.
    fn remove(&mut self, slice: &str, now: Instant) {
        for pod in self.forget(slice) {
            self.refresh(&pod, now);
        }
    }

    /// Drops `slice` from the maps, returning the pods it held (states not yet refreshed).
    fn forget(&mut self, slice: &str) -> Vec<String> {
        let Some(seen) = self.slices.remove(slice) else {
            return Vec::new();
        };
        seen.pods
            .into_iter()
            .map(|(pod, _)| {
                if let Some(m) = self.pod_slices.get_mut(&pod) {
                    m.remove(slice);
                }
                pod
            })
            .collect()
    }

    fn refresh(&mut self, pod: &str, now: Instant) {
        let current = self.pod_slices.get(pod).and_then(|m| m.values().next().copied());
        let entry = self.state.entry(pod.to_owned()).or_insert((None, now));
        if entry.0 != current {
            *entry = (current, now);
        }
    }

    /// Slices holding at least one of `pods`.
    fn slices_holding(&self, pods: &HashSet<String>) -> usize {
        self.slices
            .values()
            .filter(|s| s.pods.iter().any(|(pod, _)| pods.contains(pod)))
            .count()
    }
}

/// One slice as the watch last saw it.
struct SliceSeen {
    service: String,
    owner_uid: String,
    /// Pods with their ready condition.
    pods: Vec<(String, bool)>,
}

/// The watch, running until dropped.
struct SliceWatch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SliceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SliceWatch {
    fn start(client: &kube::Client) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let api = Api::<EndpointSlice>::namespaced(client.clone(), NS);
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
                // Slices listed by the current (re)list: on its end, those not in it are gone.
                let mut listed: HashSet<String> = HashSet::new();
                while let Some(ev) = events.next().await {
                    let now = Instant::now();
                    let Ok(ev) = ev else { continue };
                    let mut seen = seen.lock().expect("seen");
                    match ev {
                        watcher::Event::Apply(s) => seen.apply(&s, now),
                        watcher::Event::InitApply(s) => {
                            listed.extend(s.metadata.name.clone());
                            seen.apply(&s, now);
                        }
                        watcher::Event::Delete(s) => {
                            if let Some(n) = s.metadata.name.as_deref() {
                                seen.remove(n, now);
                            }
                        }
                        watcher::Event::Init => listed.clear(),
                        watcher::Event::InitDone => {
                            let gone: Vec<String> = seen
                                .slices
                                .keys()
                                .filter(|n| !listed.contains(*n))
                                .cloned()
                                .collect();
                            for n in gone {
                                seen.remove(&n, now);
                            }
                        }
                    }
                }
            }
        });
        SliceWatch { seen, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("seen")
    }
}

/// Writes per (resource, verb), from the apiserver's `apiserver_request_total`.
async fn writes(client: &kube::Client) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for r in fixtures::apiserver_requests(client)
        .await
        .expect("apiserver /metrics")
    {
        if matches!(r.verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
            && matches!(r.resource.as_str(), "endpointslices" | "endpoints")
            && r.subresource.is_empty()
        {
            *out.entry((r.resource, r.verb)).or_default() += r.count;
        }
    }
    out
}

/// Writes of one resource between two readings: (total, "create/update/delete" text).
fn writes_between(
    after: &BTreeMap<(String, String), u64>,
    before: &BTreeMap<(String, String), u64>,
    resource: &str,
) -> (u64, String) {
    let d = |verb: &str| {
        let k = (resource.to_owned(), verb.to_owned());
        after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
    };
    let (c, u, p, del) = (d("POST"), d("PUT"), d("PATCH"), d("DELETE"));
    (c + u + p + del, format!("{c}/{}/{del}", u + p))
}

/// What one phase cost one controller.
#[derive(Debug, Clone, Default)]
struct PhaseResult {
    slices: (u64, String),
    endpoints: (u64, String),
    /// Slices holding the changed pods in this controller's layout before the phase.
    layout_floor: Option<usize>,
    latency_ms: Option<(f64, f64, f64)>,
    cpu_s: f64,
    peak_rss_mib: f64,
}

/// A phase's name and its floor of writes (EndpointSlices, Endpoints).
struct Phase {
    name: String,
    floor: (usize, usize),
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs every phase of `w` against one controller on a fresh control plane.
async fn run(w: Workload, which: Controller, extra: &[String]) -> Vec<(Phase, PhaseResult)> {
    let cp = ControlPlane::start(ControlPlaneConfig {
        startup_timeout: Duration::from_secs(180),
        ..Default::default()
    })
    .await
    .expect("control plane");
    let client = cp.client().await.expect("client");
    fixtures::namespace(&client, NS).await.expect("namespace");
    futures::stream::iter(0..w.nodes)
        .map(|n| {
            let client = client.clone();
            async move { fixtures::node(&client, &format!("node-{n}"), Some(&format!("zone-{}", n % 3))).await }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("nodes");
    let watch = SliceWatch::start(&client);
    let proc = Proc::start(which, &cp, extra);
    // Both controllers start their informers in well under this; the phase clock starts after.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut bench = Bench {
        w,
        client: client.clone(),
        watch,
        proc,
        sizes: (0..w.services).map(Workload::size).collect(),
        uids: HashMap::new(),
        results: Vec::new(),
    };
    bench.initial_sync().await;
    let first_fifth = |n: usize, i: usize| i < n / 5;
    let every_fifth = |_: usize, i: usize| i.is_multiple_of(5);
    bench
        .flip("flip a contiguous fifth to not Ready", &first_fifth, false)
        .await;
    bench.flip("... and back to Ready", &first_fifth, true).await;
    bench
        .flip("flip every fifth pod to not Ready", &every_fifth, false)
        .await;
    bench.flip("... and back to Ready", &every_fifth, true).await;
    bench.scale_up().await;
    bench.scale_down().await;
    bench.recreate_services().await;
    drop(cp);
    bench.results
}

struct Bench {
    w: Workload,
    client: kube::Client,
    watch: SliceWatch,
    proc: Proc,
    /// Current pod count per Service.
    sizes: Vec<usize>,
    uids: HashMap<usize, String>,
    results: Vec<(Phase, PhaseResult)>,
}

/// A pod write to make: (service, index, ready), or a deletion.
#[derive(Clone, Copy)]
enum Change {
    Status(usize, usize, bool),
    Delete(usize, usize),
}

/// Where a phase's counters start: API writes so far and the controller's CPU seconds.
struct Mark {
    writes: BTreeMap<(String, String), u64>,
    cpu_s: f64,
}

impl Bench {
    /// Starts a phase's counters (and resets the controller's peak RSS).
    async fn mark(&self) -> Mark {
        self.proc.reset_peak();
        Mark {
            writes: writes(&self.client).await,
            cpu_s: self.proc.cpu_seconds(),
        }
    }

    /// Applies `changes` and records the phase, counted from `mark` (taken now when `None`).
    async fn phase(&mut self, name: String, floor: (usize, usize), changes: Vec<Change>, mark: Option<Mark>) {
        let pods: HashSet<String> = changes
            .iter()
            .map(|c| match *c {
                Change::Status(s, i, _) | Change::Delete(s, i) => pod_name(s, i),
            })
            .collect();
        let layout_floor = mark.is_none().then(|| self.watch.lock().slices_holding(&pods));
        let mark = match mark {
            Some(m) => m,
            None => self.mark().await,
        };
        let mut lat = self.apply_and_wait(&name, &changes).await;
        lat.sort_by(f64::total_cmp);
        let latency_ms = (!lat.is_empty()).then(|| {
            (
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                *lat.last().unwrap_or(&0.0),
            )
        });
        self.record(name, floor, mark, layout_floor, latency_ms).await;
    }

    /// Waits for the Endpoints and a controller's trailing writes, then records the phase.
    async fn record(
        &mut self,
        name: String,
        floor: (usize, usize),
        mark: Mark,
        layout_floor: Option<usize>,
        latency_ms: Option<(f64, f64, f64)>,
    ) {
        self.wait_endpoints().await;
        // Trailing writes (a controller's last batch) land in this phase's count.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = writes(&self.client).await;
        let result = PhaseResult {
            slices: writes_between(&after, &mark.writes, "endpointslices"),
            endpoints: writes_between(&after, &mark.writes, "endpoints"),
            layout_floor,
            latency_ms,
            cpu_s: self.proc.cpu_seconds() - mark.cpu_s,
            peak_rss_mib: self.proc.peak_rss_mib(),
        };
        eprintln!("  {name}: {result:?}");
        self.results.push((Phase { name, floor }, result));
    }

    /// Makes the pod writes (recording when each started) and waits until the watch shows
    /// every expected endpoint state; returns each change's latency in ms.
    async fn apply_and_wait(&self, name: &str, changes: &[Change]) -> Vec<f64> {
        let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let pods_api = Api::<Pod>::namespaced(self.client.clone(), NS);
        futures::stream::iter(changes.iter().copied())
            .map(|c| {
                let client = self.client.clone();
                let pods_api = pods_api.clone();
                let started = started.clone();
                async move {
                    let (Change::Status(s, i, _) | Change::Delete(s, i)) = c;
                    let name = pod_name(s, i);
                    started
                        .lock()
                        .expect("started")
                        .insert(name.clone(), Instant::now());
                    match c {
                        Change::Status(_, _, ready) => {
                            fixtures::set_status(&client, NS, &name, "Running", &[pod_ip(s, i)], ready)
                                .await
                                .map(|_| ())
                        }
                        Change::Delete(..) => pods_api
                            .delete(&name, &DeleteParams::default().grace_period(0))
                            .await
                            .map(|_| ()),
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .expect("pod writes");
        let expected: Vec<(String, Option<bool>)> = changes
            .iter()
            .map(|c| match *c {
                Change::Status(s, i, ready) => (pod_name(s, i), Some(ready)),
                Change::Delete(s, i) => (pod_name(s, i), None),
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            {
                let seen = self.watch.lock();
                let started = started.lock().expect("started");
                let mut lat = Vec::with_capacity(expected.len());
                let done = expected.iter().all(|(pod, want)| match seen.state.get(pod) {
                    Some((state, at)) if state == want => {
                        let t0 = started.get(pod).copied().unwrap_or(*at);
                        lat.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
                        true
                    }
                    None => want.is_none(),
                    _ => false,
                });
                if done {
                    return lat;
                }
            }
            assert!(Instant::now() < deadline, "{name}: not converged within 600 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every Service's Endpoints lists its pods with the same readiness as its
    /// slices.
    async fn wait_endpoints(&self) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let want: HashMap<String, (usize, usize)> = {
                let seen = self.watch.lock();
                let mut want: HashMap<String, (usize, usize)> = HashMap::new();
                for slice in seen.slices.values() {
                    let e = want.entry(slice.service.clone()).or_default();
                    for (_, ready) in &slice.pods {
                        if *ready {
                            e.0 += 1;
                        } else {
                            e.1 += 1;
                        }
                    }
                }
                want
            };
            let list = Api::<Endpoints>::namespaced(self.client.clone(), NS)
                .list(&ListParams::default())
                .await
                .expect("list Endpoints");
            let ok = list.items.iter().all(|ep| {
                let name = ep.metadata.name.clone().unwrap_or_default();
                let (mut r, mut n) = (0, 0);
                for s in ep.subsets.iter().flatten() {
                    r += s.addresses.as_ref().map_or(0, Vec::len);
                    n += s.not_ready_addresses.as_ref().map_or(0, Vec::len);
                }
                want.get(&name).copied().unwrap_or_default() == (r, n)
            }) && list.items.len() >= self.w.services;
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "Endpoints not converged within 600 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn all_pods(&self) -> Vec<(usize, usize)> {
        self.sizes
            .iter()
            .enumerate()
            .flat_map(|(s, n)| (0..*n).map(move |i| (s, i)))
            .collect()
    }

    async fn create_service(&mut self, svc: usize) {
        let name = svc_name(svc);
        let s = fixtures::http_service(&name, &name, IntOrString::String("http".into()));
        let created = Api::<Service>::namespaced(self.client.clone(), NS)
            .create(&PostParams::default(), &s)
            .await
            .expect("service");
        self.uids.insert(svc, created.metadata.uid.unwrap_or_default());
    }

    async fn create_pods(&self, pods: &[(usize, usize)]) {
        futures::stream::iter(pods.iter().copied())
            .map(|(svc, i)| {
                let client = self.client.clone();
                let nodes = self.w.nodes;
                async move {
                    let pod = TestPod::new(&pod_name(svc, i))
                        .label("app", &svc_name(svc))
                        .node(&format!("node-{}", (svc * 7 + i) % nodes))
                        .port("http", 8080, "TCP")
                        .to_pod();
                    Api::namespaced(client, NS)
                        .create(&PostParams::default(), &pod)
                        .await
                        .map(|_: Pod| ())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .expect("pods");
    }

    /// Services, then their pods without status, then every pod made Ready. Floor: a
    /// placeholder slice per Service (created while it has no endpoints), updated into its
    /// first slice, plus the rest; an empty Endpoints per Service, then filled.
    async fn initial_sync(&mut self) {
        let mark = self.mark().await;
        for svc in 0..self.w.services {
            self.create_service(svc).await;
        }
        let all = self.all_pods();
        self.create_pods(&all).await;
        let floor = (
            self.sizes.iter().map(|n| 1 + n.div_ceil(MAX_PER_SLICE)).sum(),
            2 * self.w.services,
        );
        let changes = all.iter().map(|&(s, i)| Change::Status(s, i, true)).collect();
        self.phase("initial sync".into(), floor, changes, Some(mark))
            .await;
    }

    /// Flips `pick(size, i)` of each Service to `ready`. Floor: the flipped pods of a Service
    /// fit in ceil(k/100) slices; one Endpoints write per Service with any.
    async fn flip(&mut self, name: &str, pick: &dyn Fn(usize, usize) -> bool, ready: bool) {
        let mut changes = Vec::new();
        let (mut floor_s, mut floor_e) = (0, 0);
        for (s, &n) in self.sizes.iter().enumerate() {
            let k = (0..n).filter(|&i| pick(n, i)).count();
            floor_s += k.div_ceil(MAX_PER_SLICE);
            floor_e += usize::from(k > 0);
            changes.extend(
                (0..n)
                    .filter(|&i| pick(n, i))
                    .map(|i| Change::Status(s, i, ready)),
            );
        }
        self.phase(name.into(), (floor_s, floor_e), changes, None).await;
    }

    /// Adds ceil(n/10) Ready pods to every Service.
    async fn scale_up(&mut self) {
        let mut new = Vec::new();
        for (s, &n) in self.sizes.iter().enumerate() {
            new.extend((n..n + n.div_ceil(10)).map(|i| (s, i)));
        }
        let mark = self.mark().await;
        self.create_pods(&new).await;
        let floor = self.scale_floor();
        let changes = new.iter().map(|&(s, i)| Change::Status(s, i, true)).collect();
        self.phase(
            "scale every Service up by 10 %".into(),
            floor,
            changes,
            Some(mark),
        )
        .await;
    }

    fn scale_floor(&self) -> (usize, usize) {
        let s = self
            .sizes
            .iter()
            .map(|n| n.div_ceil(10).div_ceil(MAX_PER_SLICE))
            .sum();
        (s, self.w.services)
    }

    /// Deletes the pods [`Bench::scale_up`] added.
    async fn scale_down(&mut self) {
        let mut gone = Vec::new();
        for (s, &n) in self.sizes.iter().enumerate() {
            gone.extend((n..n + n.div_ceil(10)).map(|i| Change::Delete(s, i)));
        }
        let floor = self.scale_floor();
        self.phase("... and back down".into(), floor, gone, None).await;
    }

    /// Deletes every tenth Service and creates it again at once. Floor: the old slices'
    /// owner changes, one write per slice at best (the Endpoints need none: same name, same
    /// content).
    async fn recreate_services(&mut self) {
        let picked: Vec<usize> = (0..self.w.services).step_by(10).collect();
        let old: HashSet<String> = picked.iter().filter_map(|s| self.uids.get(s).cloned()).collect();
        let floor = (
            picked
                .iter()
                .map(|&s| self.sizes[s].div_ceil(MAX_PER_SLICE))
                .sum(),
            0,
        );
        let mark = self.mark().await;
        let api = Api::<Service>::namespaced(self.client.clone(), NS);
        for &s in &picked {
            api.delete(&svc_name(s), &DeleteParams::default())
                .await
                .expect("delete service");
            self.create_service(s).await;
        }
        let names: HashSet<String> = picked.iter().map(|&s| svc_name(s)).collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let done = {
                let seen = self.watch.lock();
                let mut per_svc: HashMap<&str, usize> = HashMap::new();
                let mut stale = false;
                for slice in seen.slices.values() {
                    if names.contains(&slice.service) {
                        stale |= old.contains(&slice.owner_uid);
                        *per_svc.entry(slice.service.as_str()).or_default() += slice.pods.len();
                    }
                }
                !stale
                    && picked
                        .iter()
                        .all(|&s| per_svc.get(svc_name(s).as_str()).copied() == Some(self.sizes[s]))
            };
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "recreated Services not converged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let name = "delete and recreate a tenth of the Services".to_owned();
        self.record(name, floor, mark, None, None).await;
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "—".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

fn print_tables(w: Workload, portico: &[(Phase, PhaseResult)], kcm: Option<&[(Phase, PhaseResult)]>) {
    let k = |i: usize| kcm.and_then(|k| k.get(i)).map(|(_, r)| r);
    println!(
        "\n### {} — {} Services, {} pods, {} Nodes\n",
        w.name,
        w.services,
        w.pods(),
        w.nodes
    );
    println!(
        "API writes, total (create/update/delete); floor = fewest any controller could do with 100 \
         endpoints per slice; layout = slices holding the changed pods in that controller's layout\n"
    );
    println!(
        "| phase | EndpointSlice: Portico | KCM | Portico/KCM | floor | layout P / K | Endpoints: Portico | KCM | floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, (phase, p)) in portico.iter().enumerate() {
        let kr = k(i);
        let layout = match (p.layout_floor, kr.and_then(|r| r.layout_floor)) {
            (Some(a), Some(b)) => format!("{a} / {b}"),
            (Some(a), None) => format!("{a} / —"),
            _ => "—".into(),
        };
        println!(
            "| {} | {} ({}) | {} | {} | {} | {} | {} ({}) | {} | {} |",
            phase.name,
            p.slices.0,
            p.slices.1,
            kr.map_or("—".into(), |r| format!("{} ({})", r.slices.0, r.slices.1)),
            kr.map_or("—".into(), |r| ratio(p.slices.0 as f64, r.slices.0 as f64)),
            phase.floor.0,
            layout,
            p.endpoints.0,
            p.endpoints.1,
            kr.map_or("—".into(), |r| format!("{} ({})", r.endpoints.0, r.endpoints.1)),
            phase.floor.1,
        );
    }
    println!(
        "\nLatency from a pod's write to the watch showing it in the slices, ms (p50 / p99 / max); \
         controller CPU seconds and peak RSS (MiB) per phase\n"
    );
    println!(
        "| phase | latency: Portico | KCM | CPU s: Portico | KCM | ratio | peak RSS: Portico | KCM | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let lat = |r: &PhaseResult| {
        r.latency_ms
            .map_or("—".into(), |(a, b, c)| format!("{a:.0} / {b:.0} / {c:.0}"))
    };
    for (i, (phase, p)) in portico.iter().enumerate() {
        let kr = k(i);
        println!(
            "| {} | {} | {} | {:.2} | {} | {} | {:.1} | {} | {} |",
            phase.name,
            lat(p),
            kr.map_or("—".into(), lat),
            p.cpu_s,
            kr.map_or("—".into(), |r| format!("{:.2}", r.cpu_s)),
            kr.map_or("—".into(), |r| ratio(p.cpu_s, r.cpu_s)),
            p.peak_rss_mib,
            kr.map_or("—".into(), |r| format!("{:.1}", r.peak_rss_mib)),
            kr.map_or("—".into(), |r| ratio(p.peak_rss_mib, r.peak_rss_mib)),
        );
    }
}

#[tokio::main]
async fn main() {
    // cargo bench passes `--bench`; `--against kcm` and `--workload W` are ours, the rest goes
    // to `portico run`.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut against_kcm, mut which) = (false, String::from("W3"));
    let mut extra = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--against" => against_kcm = args.next().as_deref() == Some("kcm"),
            "--workload" => which = args.next().unwrap_or_default(),
            _ => extra.push(a),
        }
    }
    let assets = match Assets::discover() {
        Ok(a) => a,
        Err(m) => {
            println!("controller_workload SKIPPED: {m}");
            return;
        }
    };
    if against_kcm && assets.kube_controller_manager.is_none() {
        println!(
            "controller_workload: --against kcm needs kube-controller-manager beside kube-apiserver (scripts/build-k8s)"
        );
        std::process::exit(2);
    }
    let workloads: Vec<Workload> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| which.eq_ignore_ascii_case("all") || w.name.eq_ignore_ascii_case(&which))
        .collect();
    assert!(!workloads.is_empty(), "--workload W3, W4, W5 or all");
    let version = std::process::Command::new(&assets.kube_apiserver)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "controller_workload {date}: {version}, {cpus} CPUs, {mem_gib:.0} GiB; Portico{}",
        if against_kcm {
            " against kube-controller-manager (--controllers=endpoint,endpointslice)"
        } else {
            " alone (add `--against kcm` for the side-by-side run)"
        }
    );
    for w in workloads {
        eprintln!("{}: Portico", w.name);
        let portico = run(w, Controller::Portico, &extra).await;
        let kcm = if against_kcm {
            eprintln!("{}: {}", w.name, Controller::Kcm.name());
            Some(run(w, Controller::Kcm, &[]).await)
        } else {
            None
        };
        print_tables(w, &portico, kcm.as_deref());
    }
}
