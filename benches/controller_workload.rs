//! Controller workload: how fast Portico's EndpointSlice/Endpoints controllers converge, how
//! many API writes they make, and how much memory they use, against a real apiserver.
//!
//! `cargo bench --bench controller_workload` (add `-- --batch-period 500ms` etc. to pass flags
//! through to `portico run`). Workload, as the issue specifies: 50 Nodes in 3 zones, 50
//! Services whose sizes cycle 10, 50, 100, 101, 250 (5,110 pods), every pod made Ready, then
//! 20 % of the pods flipped to not Ready. Portico runs as its own process (`portico run`), so
//! its peak RSS is its own. Writes are counted from the apiserver's `apiserver_request_total`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PostParams};
use portico_testenv::fixtures::{self, TestPod};
use portico_testenv::{ControlPlane, ControlPlaneConfig};

const NS: &str = "bench";
const SIZES: [usize; 5] = [10, 50, 100, 101, 250];
const SERVICES: usize = 50;
const NODES: usize = 50;
const CONCURRENCY: usize = 32;

/// Picks pods by (service, index).
type PodPick = dyn Fn(usize, usize) -> bool;

struct Portico(Child);

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Portico {
    /// Peak resident set size (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

fn pod_name(svc: usize, i: usize) -> String {
    format!("s{svc}-p{i}")
}

fn pod_ip(svc: usize, i: usize) -> String {
    format!("10.{}.{}.{}", 100 + svc, i / 256, i % 256)
}

/// Writes (POST, PUT, PATCH, DELETE) per resource, from the apiserver's metrics.
async fn writes(client: &kube::Client) -> BTreeMap<String, u64> {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(req).await.expect("apiserver /metrics");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| {
            let key = format!("{name}=\"");
            let start = line.find(&key)? + key.len();
            Some(line[start..].split('"').next()?.to_owned())
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
            continue;
        }
        if !matches!(resource.as_str(), "endpointslices" | "endpoints") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(resource).or_default() += value as u64;
    }
    out
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, resource: &str) -> u64 {
    after.get(resource).copied().unwrap_or(0) - before.get(resource).copied().unwrap_or(0)
}

/// Whether every Service's slices hold exactly its pods, with `not_ready(svc, i)` deciding
/// which are expected not ready.
async fn slices_correct(client: &kube::Client, not_ready: &dyn Fn(usize, usize) -> bool) -> bool {
    let list = Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list slices");
    let mut seen: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for s in &list.items {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .and_then(|n| n.strip_prefix("svc-")?.parse::<usize>().ok())
        else {
            continue;
        };
        let e = seen.entry(svc).or_default();
        for ep in &s.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    (0..SERVICES).all(|svc| {
        let size = SIZES[svc % SIZES.len()];
        let want_not_ready = (0..size).filter(|i| not_ready(svc, *i)).count();
        seen.get(&svc) == Some(&(size - want_not_ready, want_not_ready))
    })
}

async fn wait_converged(client: &kube::Client, not_ready: &dyn Fn(usize, usize) -> bool) -> Duration {
    let start = Instant::now();
    while !slices_correct(client, not_ready).await {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "did not converge within 300s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// How many slices hold at least one of `pods`: each must be rewritten at least once.
async fn slices_holding(client: &kube::Client, pods: &[(usize, usize)]) -> usize {
    let names: std::collections::HashSet<String> = pods.iter().map(|(svc, i)| pod_name(*svc, *i)).collect();
    let list = Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list slices");
    list.items
        .iter()
        .filter(|s| {
            s.endpoints.iter().any(|e| {
                e.target_ref
                    .as_ref()
                    .and_then(|t| t.name.as_ref())
                    .is_some_and(|n| names.contains(n))
            })
        })
        .count()
}

async fn set_status(client: &kube::Client, pods: &[(usize, usize)], ready: bool) {
    futures::stream::iter(pods.iter().copied())
        .map(|(svc, i)| async move {
            fixtures::set_status(client, NS, &pod_name(svc, i), "Running", &[pod_ip(svc, i)], ready)
                .await
                .map(|_| ())
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("status writes");
}

#[tokio::main]
async fn main() {
    // cargo bench passes `--bench`; anything after `--` goes to `portico run`.
    let extra: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let cp = match ControlPlane::start(ControlPlaneConfig::default()).await {
        Ok(cp) => cp,
        Err(portico_testenv::Error::Missing(m)) => {
            println!("controller_workload SKIPPED: {m}");
            return;
        }
        Err(e) => panic!("control plane: {e}"),
    };
    let client = cp.client().await.expect("client");
    fixtures::namespace(&client, NS).await.expect("namespace");
    futures::stream::iter(0..NODES)
        .map(|n| {
            let client = client.clone();
            async move { fixtures::node(&client, &format!("node-{n}"), Some(&format!("zone-{}", n % 3))).await }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("nodes");

    let exe = env!("CARGO_BIN_EXE_portico");
    let log_path = std::env::temp_dir().join("portico-controller-workload.log");
    let log = std::fs::File::create(&log_path).expect("log");
    println!("portico log: {}", log_path.display());
    let portico = Portico(
        Command::new(exe)
            .args([
                "run",
                "--namespace",
                NS,
                "--webhook=false",
                "--metrics-bind-address=127.0.0.1:0",
            ])
            .args(&extra)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env(
                "PORTICO_LOG",
                std::env::var("PORTICO_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start portico"),
    );

    let services = Api::<Service>::namespaced(client.clone(), NS);
    for svc in 0..SERVICES {
        let name = format!("svc-{svc}");
        let s = fixtures::http_service(&name, &name, IntOrString::String("http".into()));
        services
            .create(&PostParams::default(), &s)
            .await
            .expect("service");
    }
    let all: Vec<(usize, usize)> = (0..SERVICES)
        .flat_map(|svc| (0..SIZES[svc % SIZES.len()]).map(move |i| (svc, i)))
        .collect();
    println!(
        "workload: {NODES} nodes in 3 zones, {SERVICES} services, {} pods",
        all.len()
    );
    // Pods are created without status (as a scheduler leaves them), then made Ready.
    futures::stream::iter(all.iter().copied())
        .map(|(svc, i)| {
            let client = client.clone();
            async move {
                let pod = TestPod::new(&pod_name(svc, i))
                    .label("app", &format!("svc-{svc}"))
                    .node(&format!("node-{}", (svc * 7 + i) % NODES))
                    .port("http", 8080, "TCP")
                    .to_pod();
                Api::namespaced(client, NS)
                    .create(&PostParams::default(), &pod)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("pods");
    let before = writes(&client).await;
    let t = Instant::now();
    set_status(&client, &all, true).await;
    let status_writes = t.elapsed();
    let converge = wait_converged(&client, &|_, _| false).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let trailing writes land in the count
    let initial = writes(&client).await;
    println!(
        "initial sync: {} status writes in {:.2?}; converged {:.0?} after the last one; writes: endpointslices {}, endpoints {}",
        all.len(),
        status_writes,
        converge,
        delta(&initial, &before, "endpointslices"),
        delta(&initial, &before, "endpoints"),
    );

    // Which 20 % is flipped changes how many slices must be rewritten, so two variants:
    // the first fifth of each Service's pods (a contiguous ordinal range, as a rollout flips
    // them; Portico packs pods in natural name order, so one slice per Service holds them),
    // then (after restoring) every fifth pod, which touches every slice, as a random 20 % would.
    let first_fifth = |svc: usize, i: usize| i < SIZES[svc % SIZES.len()] / 5;
    let every_fifth = |_: usize, i: usize| i.is_multiple_of(5);
    let mut last = initial;
    let phases: [(&str, &PodPick, bool); 3] = [
        (
            "flip 20% (first fifth of each Service) to not Ready",
            &first_fifth,
            false,
        ),
        ("restore them to Ready", &first_fifth, true),
        ("flip 20% (every fifth pod) to not Ready", &every_fifth, false),
    ];
    for (what, pick, ready) in phases {
        let pods: Vec<(usize, usize)> = all.iter().copied().filter(|(svc, i)| pick(*svc, *i)).collect();
        let floor = slices_holding(&client, &pods).await;
        let t = Instant::now();
        set_status(&client, &pods, ready).await;
        let status_writes = t.elapsed();
        let expect_not_ready = |svc: usize, i: usize| !ready && pick(svc, i);
        let converge = wait_converged(&client, &expect_not_ready).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = writes(&client).await;
        println!(
            "{what}: {} status writes in {:.2?}; converged {:.0?} after the last one; writes: endpointslices {} \
             (at least {floor}: slices holding those pods), endpoints {}",
            pods.len(),
            status_writes,
            converge,
            delta(&now, &last, "endpointslices"),
            delta(&now, &last, "endpoints"),
        );
        last = now;
    }
    println!(
        "portico peak RSS: {:.1} MiB",
        portico.peak_rss_kib() as f64 / 1024.0
    );
}
