//! Create rate of NodePort Services: kube-apiserver alone, then with Portico's allocation webhook
//! (one replica, then two, reached through a Service), each on a fresh control plane, in
//! one run.
//!
//! ```text
//! cargo bench --bench allocation_rate                       # 1,000 creates, 16 clients, 5 rounds
//! cargo bench --bench allocation_rate -- --creates 300 --clients 8 --rounds 1
//! cargo bench --bench allocation_rate -- --modes alone,p1,p1-lb,p2,p2-first   # where 2 replicas' cost goes
//! ```
//!
//! Per mode: creates/s, p50/p99 latency, failures (with the first messages), and how long a
//! delete followed at once by a create of the same nodePort and clusterIP takes to succeed.
//! Portico runs as `portico run --allocation` (release build, no controllers, no leader
//! election) with only its mutating webhook registered (`failurePolicy: Fail`), so every create
//! goes through it. Targets (issue "Allocation on the cluster's own truth"): Portico at 80 % or
//! more of the apiserver-alone rate, p99 at most 1.5 times it, no failure, delete-then-recreate
//! under 1 s.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use portico_testenv::{ControlPlane, ControlPlaneConfig};
use portico_webhook::{
    FailurePolicy, Namespaces, Registration, WebhookEndpoint, register_mutating, write_dev_certs,
};
use serde_json::json;

const NS: &str = "bench";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Alone,
    /// A mutating webhook that admits every Service unchanged (Portico without `--allocation`):
    /// what calling any webhook costs the apiserver, the floor under every webhook design.
    NoOpWebhook,
    Portico(usize),
    /// Diagnostics for the two-replica figures: one replica reached through the balancer (the
    /// balancer's own cost), and two replicas with the apiserver calling only the first (what a
    /// second replica's watches cost, with no review reaching it).
    BalancedOne,
    SecondIdle,
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Alone => "kube-apiserver alone".to_owned(),
            Mode::NoOpWebhook => "no-op webhook (floor)".to_owned(),
            Mode::Portico(1) => "with Portico, 1 replica".to_owned(),
            Mode::Portico(n) => format!("with Portico, {n} replicas"),
            Mode::BalancedOne => "Portico, 1 behind the balancer".to_owned(),
            Mode::SecondIdle => "Portico, 2, only 1st called".to_owned(),
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "alone" => Mode::Alone,
            "noop" => Mode::NoOpWebhook,
            "p1" => Mode::Portico(1),
            "p2" => Mode::Portico(2),
            "p1-lb" => Mode::BalancedOne,
            "p2-first" => Mode::SecondIdle,
            _ => return None,
        })
    }
}

struct Outcome {
    mode: Mode,
    seconds: f64,
    latencies: Vec<Duration>,
    failures: Vec<String>,
    recreate: Result<Duration, String>,
    /// Portico's own view: mutating reviews answered, their mean duration, and how many took
    /// over 10 ms and over 25 ms (from its latency histogram).
    webhook: Option<(f64, Duration, f64, f64)>,
    /// CPU seconds during the creates: kube-apiserver, etcd, Portico (all replicas), and this
    /// process (the clients, and the balancer when there is one).
    cpu: (f64, f64, f64, f64),
    /// The most frequent API requests during the creates (`verb resource code`, count).
    requests: Vec<(String, u64)>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    }
}

struct Replicas {
    children: Vec<Child>,
    /// Metrics address of each replica.
    metrics: Vec<SocketAddr>,
}

/// `GET /metrics` of one replica, as text.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Sum of the samples of `name` (no labels filter).
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Round-robin over `backends`, per connection.
async fn balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// How the apiserver reaches the replicas.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Through a Service whose EndpointSlices list the first `n` replicas: the apiserver, with
    /// `--enable-aggregator-routing`, resolves it to one of them (per request on 1.37, gate
    /// `WebhookRoundTripLoadBalancing`; per connection before), with no proxy in the path.
    /// Needs a local address that is not loopback (EndpointSlices may not hold one) and an
    /// apiserver that resolves through EndpointSlices (1.33+); otherwise the balancer below
    /// is used.
    Service(usize),
    /// Through a round-robin TCP balancer in this process (per connection).
    Balanced,
}

/// The Service the apiserver calls the replicas through ([`Reach::Service`]).
const WEBHOOK_NS: &str = "portico-bench";
const WEBHOOK_SERVICE: &str = "portico-bench";

/// An IPv4 address of this machine that is not loopback or link-local: the source address of
/// a route out (a UDP "connect" sends nothing).
fn local_ipv4() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// The webhook Service (no selector, so nothing but this bench writes its slices) and one
/// EndpointSlice per replica it serves: each replica listens on its own port.
async fn webhook_service(client: &kube::Client, ip: Ipv4Addr, ports: &[u16]) {
    portico_testenv::fixtures::namespace(client, WEBHOOK_NS)
        .await
        .expect("namespace");
    let services: Api<Service> = Api::namespaced(client.clone(), WEBHOOK_NS);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": WEBHOOK_SERVICE},
        "spec": {"ports": [{"name": "https", "port": 443}]},
    }))
    .expect("service");
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("webhook Service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), WEBHOOK_NS);
    for (i, port) in ports.iter().enumerate() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{WEBHOOK_SERVICE}-{i}"),
                "labels": {"kubernetes.io/service-name": WEBHOOK_SERVICE},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }))
        .expect("slice");
        slices
            .create(&PostParams::default(), &slice)
            .await
            .expect("webhook EndpointSlice");
    }
}

/// The apiserver's minor version, from `kube-apiserver --version` ("Kubernetes v1.37.2").
fn apiserver_minor() -> Option<u32> {
    let assets = portico_testenv::Assets::discover().ok()?;
    let out = Command::new(assets.kube_apiserver)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split('.').nth(1)?.parse().ok()
}

async fn start_portico(cp: &ControlPlane, replicas: usize, allocation: bool, reach: Reach) -> Replicas {
    let dir = cp.dir().join("bench-webhook");
    // Before 1.33 the apiserver resolves a Service through Endpoints, which this bench does
    // not write.
    let ip = local_ipv4()
        .filter(|_| matches!(reach, Reach::Service(_)))
        .filter(|_| apiserver_minor().is_some_and(|m| m >= 33));
    let listen = ip.unwrap_or(Ipv4Addr::LOCALHOST);
    let server_name = format!("{WEBHOOK_SERVICE}.{WEBHOOK_NS}.svc");
    let listen_text = listen.to_string();
    let certs =
        write_dev_certs(&dir, &["127.0.0.1", "localhost", &listen_text, &server_name]).expect("certificates");
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    let mut metrics = Vec::new();
    for i in 0..replicas {
        let port = portico_testenv::free_port().expect("a free port");
        let metrics_port = portico_testenv::free_port().expect("a free port");
        metrics.push(SocketAddr::from(([127, 0, 0, 1], metrics_port)));
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("allocation-rate-portico-{i}.log")))
                .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args([
                "run",
                "--controllers=",
                "--leader-elect=false",
                "--install-crds=true",
            ])
            .arg(format!("--allocation={allocation}"))
            .arg(format!("--metrics-bind-address=127.0.0.1:{metrics_port}"))
            .arg(format!("--webhook-bind-address={listen}:{port}"))
            .arg(format!("--tls-cert-file={}", certs.cert_file.display()))
            .arg(format!("--tls-private-key-file={}", certs.key_file.display()))
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env(
                "PORTICO_LOG",
                std::env::var("PORTICO_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start portico");
        children.push(child);
        addrs.push(SocketAddr::from((listen, port)));
    }
    // Registered only once every replica listens: with `Fail`, a create before would fail.
    for addr in &addrs {
        let deadline = Instant::now() + Duration::from_secs(120);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "portico at {addr} did not start (see its log in the temp dir)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let client = cp.client().await.expect("client");
    let endpoint = match (reach, ip) {
        (Reach::Service(served), Some(ip)) => {
            let ports: Vec<u16> = addrs.iter().take(served).map(SocketAddr::port).collect();
            webhook_service(&client, ip, &ports).await;
            WebhookEndpoint::Service {
                namespace: WEBHOOK_NS.into(),
                name: WEBHOOK_SERVICE.into(),
                port: Some(443),
            }
        }
        (Reach::Service(served), None) => {
            eprintln!(
                "no local address but loopback, or an apiserver before 1.33: the apiserver reaches the replicas through the balancer"
            );
            let served: Vec<SocketAddr> = addrs.iter().take(served).copied().collect();
            WebhookEndpoint::Url(format!("https://{}", balancer(served).await))
        }
        (Reach::Balanced, _) => WebhookEndpoint::Url(format!("https://{}", balancer(addrs.clone()).await)),
    };
    let mut reg = Registration::with_endpoint(endpoint, certs.ca_pem);
    reg.name = "portico-bench".into();
    reg.failure_policy = FailurePolicy::Fail;
    reg.namespaces = Namespaces::Only(vec![NS.into()]);
    register_mutating(&client, &reg)
        .await
        .expect("register the mutating webhook");
    Replicas { children, metrics }
}

fn node_port_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]},
    }))
    .expect("service")
}

/// Waits until a dry-run create comes back with a node port from the webhook in place.
async fn wait_until_served(api: &Api<Service>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = node_port_service("probe");
        match api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &probe,
            )
            .await
        {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "the webhook never answered: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn run(mode: Mode, creates: usize, clients: usize) -> Outcome {
    let mut config = ControlPlaneConfig::default();
    // Webhooks reached by Service are called at one of its endpoints, picked per request
    // (every mode runs with it, so the apiserver is configured alike).
    config
        .extra_apiserver_args
        .push("--enable-aggregator-routing=true".to_owned());
    if std::env::var_os("PORTICO_BENCH_PPROF").is_some() {
        // The test control planes run without profiling; the later flag wins.
        config.extra_apiserver_args.push("--profiling=true".to_owned());
    }
    let cp = ControlPlane::start(config).await.expect("control plane");
    let client = cp.client().await.expect("client");
    portico_testenv::fixtures::namespace(&client, NS)
        .await
        .expect("namespace");
    let _replicas = match mode {
        Mode::Alone => None,
        Mode::NoOpWebhook => Some(start_portico(&cp, 1, false, Reach::Service(1)).await),
        Mode::Portico(n) => Some(start_portico(&cp, n, true, Reach::Service(n)).await),
        Mode::BalancedOne => Some(start_portico(&cp, 1, true, Reach::Balanced).await),
        Mode::SecondIdle => Some(start_portico(&cp, 2, true, Reach::Service(1)).await),
    };
    let api: Api<Service> = Api::namespaced(client.clone(), NS);
    wait_until_served(&api).await;
    let [etcd_pid, apiserver_pid] = cp.pids();
    let portico_pids: Vec<u32> = _replicas
        .as_ref()
        .map(|r| r.children.iter().map(Child::id).collect())
        .unwrap_or_default();
    let cpu_now = || {
        (
            portico_testenv::cpu_seconds(apiserver_pid),
            portico_testenv::cpu_seconds(etcd_pid),
            portico_pids
                .iter()
                .map(|p| portico_testenv::cpu_seconds(*p))
                .sum::<f64>(),
            portico_testenv::cpu_seconds(std::process::id()),
        )
    };
    let cpu_before = cpu_now();
    let requests_before = portico_testenv::fixtures::apiserver_requests(&client)
        .await
        .unwrap_or_default();
    // PORTICO_BENCH_PPROF=<dir>: a 5 s CPU profile of kube-apiserver during each mode's creates.
    let profile = std::env::var("PORTICO_BENCH_PPROF").ok().map(|dir| {
        let client = client.clone();
        let file = std::path::Path::new(&dir).join(format!(
            "apiserver-{}.pprof",
            mode.label().replace([' ', ','], "-")
        ));
        tokio::spawn(async move {
            let req = http::Request::get("/debug/pprof/profile?seconds=5")
                .body(kube::client::Body::empty())
                .expect("request");
            if let Ok(resp) = client.send(req).await {
                use http_body_util::BodyExt;
                if let Ok(body) = resp.into_body().collect().await {
                    let _ = std::fs::write(&file, body.to_bytes());
                }
            }
        })
    });
    let started = Instant::now();
    let results: Vec<Result<(Duration, Service), String>> = futures::stream::iter(0..creates)
        .map(|i| {
            let api = api.clone();
            async move {
                let t = Instant::now();
                api.create(&PostParams::default(), &node_port_service(&format!("s{i}")))
                    .await
                    .map(|s| (t.elapsed(), s))
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_now();
    if let Some(p) = profile {
        let _ = p.await;
    }
    let requests_after = portico_testenv::fixtures::apiserver_requests(&client)
        .await
        .unwrap_or_default();
    // Summed per verb, resource and code: the apiserver's counter has other labels too (a
    // dry-run create is a series of its own).
    let by_key = |list: &[portico_testenv::fixtures::RequestCount]| {
        let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for a in list {
            let sub = if a.subresource.is_empty() {
                String::new()
            } else {
                format!("/{}", a.subresource)
            };
            *sums
                .entry(format!("{} {}{} {}", a.verb, a.resource, sub, a.code))
                .or_default() += a.count;
        }
        sums
    };
    let before = by_key(&requests_before);
    let mut requests: Vec<(String, u64)> = by_key(&requests_after)
        .into_iter()
        .map(|(k, n)| {
            let was = before.get(&k).copied().unwrap_or(0);
            (k, n.saturating_sub(was))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    requests.sort_by_key(|r| std::cmp::Reverse(r.1));
    requests.truncate(6);
    let cpu = (
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
        cpu_after.2 - cpu_before.2,
        cpu_after.3 - cpu_before.3,
    );
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok((d, s)) => {
                latencies.push(d);
                created.push(s);
            }
            Err(e) => failures.push(e),
        }
    }
    let mut webhook = None;
    if let Some(replicas) = &_replicas {
        let (mut count, mut sum, mut within_10, mut within_25) = (0.0, 0.0, 0.0, 0.0);
        let bucket = |text: &str, le: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("portico_webhook_request_duration_seconds_bucket{")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        for addr in &replicas.metrics {
            let text = scrape(*addr).await;
            count += sample_sum(&text, "portico_webhook_request_duration_seconds_count");
            sum += sample_sum(&text, "portico_webhook_request_duration_seconds_sum");
            within_10 += bucket(&text, "0.01");
            within_25 += bucket(&text, "0.025");
        }
        if count > 0.0 {
            webhook = Some((
                count,
                Duration::from_secs_f64(sum / count),
                count - within_10,
                count - within_25,
            ));
        }
    }
    let recreate = delete_then_recreate(&api, created.first()).await;
    Outcome {
        requests,
        cpu,
        webhook,
        mode,
        seconds,
        latencies,
        failures,
        recreate,
    }
}

/// Deletes `svc` and at once creates another Service asking for its nodePort and clusterIP,
/// retrying until it is accepted; how long that took.
async fn delete_then_recreate(api: &Api<Service>, svc: Option<&Service>) -> Result<Duration, String> {
    let svc = svc.ok_or("nothing was created")?;
    let spec = svc.spec.as_ref().ok_or("no spec")?;
    let ip = spec.cluster_ip.clone().ok_or("no clusterIP")?;
    let port = spec
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .and_then(|p| p.node_port)
        .ok_or("no nodePort")?;
    let again: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "recreated"},
        "spec": {"type": "NodePort", "clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80, "nodePort": port}]},
    }))
    .map_err(|e| e.to_string())?;
    let name = svc.metadata.name.clone().unwrap_or_default();
    api.delete(&name, &DeleteParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    loop {
        match api.create(&PostParams::default(), &again).await {
            Ok(_) => return Ok(t.elapsed()),
            Err(e) if t.elapsed() > Duration::from_secs(30) => {
                return Err(format!("still refused after 30 s: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs benches with no such flag: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let creates = arg("--creates", 1000);
    let clients = arg("--clients", 16);
    let version = portico_testenv::Assets::discover()
        .ok()
        .and_then(|a| Command::new(a.kube_apiserver).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "allocation_rate: {creates} NodePort creates, {clients} clients, {version}, fresh control plane per mode\n"
    );
    // Five: the p99 of 1,000 creates (their 10th slowest) moves by a third between rounds here.
    let rounds = arg("--rounds", 5).max(1);
    let modes: Vec<Mode> = match std::env::args().skip_while(|a| a != "--modes").nth(1) {
        Some(list) => list
            .split(',')
            .map(|m| {
                Mode::parse(m)
                    .unwrap_or_else(|| panic!("unknown mode {m}: alone, noop, p1, p2, p1-lb or p2-first"))
            })
            .collect(),
        None => vec![Mode::Alone, Mode::NoOpWebhook, Mode::Portico(1), Mode::Portico(2)],
    };
    let alone = modes.iter().position(|m| *m == Mode::Alone);
    let noop = modes.iter().position(|m| *m == Mode::NoOpWebhook);
    // Rounds of every mode in turn: this machine's speed drifts by tens of percent between runs,
    // so each ratio is taken within a round and the median over rounds reported.
    let mut outcomes: Vec<Vec<Outcome>> = Vec::new();
    for round in 1..=rounds {
        let mut this = Vec::new();
        for &mode in &modes {
            let o = run(mode, creates, clients).await;
            println!(
                "round {round}  {:<28} {:>7.1} creates/s  p50 {:>7}  p99 {:>7}  failures {:>3}  delete→recreate {}",
                o.mode.label(),
                o.rate(),
                ms(o.pct(0.50)),
                ms(o.pct(0.99)),
                o.failures.len(),
                match &o.recreate {
                    Ok(d) => ms(*d),
                    Err(e) => e.clone(),
                }
            );
            println!(
                "    CPU during the creates: kube-apiserver {:.1} s, etcd {:.1} s, Portico {:.1} s, bench (clients, balancer) {:.1} s",
                o.cpu.0, o.cpu.1, o.cpu.2, o.cpu.3
            );
            let top: Vec<String> = o.requests.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            println!("    API requests: {}", top.join(", "));
            if let Some((n, mean, over_10, over_25)) = o.webhook {
                println!(
                    "    Portico's view: {n:.0} reviews answered, mean {:.1} ms in the webhook, {over_10:.0} over 10 ms, {over_25:.0} over 25 ms",
                    mean.as_secs_f64() * 1000.0
                );
            }
            for f in o.failures.iter().take(3) {
                println!("    failure: {f}");
            }
            this.push(o);
        }
        outcomes.push(this);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |i: usize, of: usize, f: &dyn Fn(&Outcome) -> f64| {
        median(outcomes.iter().map(|r| f(&r[i]) / f(&r[of])).collect())
    };
    let rate = |o: &Outcome| o.rate();
    let p99 = |o: &Outcome| o.pct(0.99).as_secs_f64();
    println!(
        "\nmedians over {rounds} round(s) of {creates} creates, {clients} clients; ratios taken within each round"
    );
    for (i, mode) in modes.iter().enumerate() {
        println!(
            "{:<28} {:>7.1} creates/s  p50 {:>7}  p99 {:>7}",
            mode.label(),
            median(outcomes.iter().map(|r| r[i].rate()).collect()),
            ms(Duration::from_secs_f64(median(
                outcomes.iter().map(|r| r[i].pct(0.5).as_secs_f64()).collect()
            ))),
            ms(Duration::from_secs_f64(median(
                outcomes.iter().map(|r| p99(&r[i])).collect()
            ))),
        );
    }
    let Some(alone) = alone else {
        return;
    };
    if let Some(noop) = noop {
        println!(
            "\nany webhook at all: rate {:.2}x of alone, p99 {:.2}x (the bound for every webhook design on this machine)",
            ratio(noop, alone, &rate),
            ratio(noop, alone, &p99)
        );
    }
    for (i, mode) in modes.iter().enumerate() {
        if i == alone || Some(i) == noop {
            continue;
        }
        let (r, p) = (ratio(i, alone, &rate), ratio(i, alone, &p99));
        let failures: usize = outcomes.iter().map(|o| o[i].failures.len()).sum();
        let recreate_ok = outcomes.iter().all(|o| o[i].recreate.is_ok());
        println!(
            "{:<28} rate {:.2}x of alone (target >= 0.80: {}), p99 {:.2}x (target <= 1.5: {}), failures {} (target 0: {}), recreate < 1 s: {}",
            mode.label(),
            r,
            if r >= 0.8 { "met" } else { "MISSED" },
            p,
            if p <= 1.5 { "met" } else { "MISSED" },
            failures,
            if failures == 0 { "met" } else { "MISSED" },
            if recreate_ok { "met" } else { "MISSED" },
        );
        if let Some(noop) = noop {
            println!(
                "{:<28} against the no-op webhook: rate {:.2}x, p99 {:.2}x",
                "",
                ratio(i, noop, &rate),
                ratio(i, noop, &p99)
            );
        }
    }
}
