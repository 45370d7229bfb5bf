//! Load test of the webhook server on loopback: AdmissionReviews over HTTPS (HTTP/1.1 keep-alive,
//! as the apiserver sends them) at 1, 16 and 64 concurrent connections, then an open-loop run at a
//! fixed rate, then the in-process cost of one review without HTTP or TLS.
//!
//! ```text
//! cargo bench -p portico-webhook --bench webhook_load -- [--seconds N] [--rate R] [--connections 1,16,64]
//! ```
//!
//! Latencies are measured by the client, from sending a request (or, in the fixed-rate run, from
//! the moment it was due if the connection fell behind schedule, so a stall is not hidden) to the
//! end of its answer; they bound the server-side latency from above. The server and the load generator share the machine's cores.
//! Every run is bounded in time and only talks to 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portico_webhook::validation::Options;
use portico_webhook::{DevCa, Endpoint, Handlers, Server, Validator, WebhookConfig};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Args {
    seconds: f64,
    rate: f64,
    connections: Vec<usize>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5.0,
        rate: 500.0,
        connections: vec![1, 16, 64],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let next = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--seconds" => a.seconds = next.parse().expect("--seconds N"),
            "--rate" => a.rate = next.parse().expect("--rate R"),
            "--connections" => {
                a.connections = next
                    .split(',')
                    .map(|c| c.parse().expect("--connections 1,16,64"))
                    .collect();
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a.seconds = a.seconds.clamp(0.5, 60.0);
    a.rate = a.rate.clamp(1.0, 20_000.0);
    a
}

/// A realistic Pod CREATE review (two containers, probes, env, resources, a sidecar), about 4 KB.
fn pod_review(uid: &str, probe_port: &str) -> Vec<u8> {
    let env: Vec<Value> = (0..12)
        .map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}-abcdefghijklmnop")}))
        .collect();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7d9f8b6c5d-x2x4z", "generateName": "web-7d9f8b6c5d-", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d", "tier": "frontend"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d",
                                  "uid": "0c9e1f4e-3f7a-4f59-9b49-0e5f6f3c2a11", "controller": true}]
        },
        "spec": {
            "containers": [{
                "name": "app", "image": "registry.example/shop/web:1.42.0", "env": env,
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": probe_port, "scheme": "HTTP"},
                                   "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 5"]}}},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
            }, {
                "name": "proxy", "image": "registry.example/mesh/proxy:2.1.0",
                "ports": [{"name": "proxy-admin", "containerPort": 15000, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}},
                "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}}
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler",
            "securityContext": {"runAsNonRoot": true},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}]
        }
    });
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web-7d9f8b6c5d-x2x4z", "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "4b9f2a1e-0000-0000-0000-000000000000",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    }))
    .expect("json")
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open(addr: SocketAddr, tls: &TlsConnector) -> Sender {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let stream = tls
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1");
    tokio::spawn(conn);
    sender
}

/// Sends one review and waits for the whole answer; panics on anything but a 200.
async fn send(sender: &mut Sender, body: &Bytes) {
    sender.ready().await.expect("connection ready");
    let req = hyper::Request::post("/validate?timeout=5s")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("send");
    assert_eq!(resp.status(), 200);
    let out = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(out.starts_with(br#"{"apiVersion":"admission.k8s.io/v1""#));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(label: &str, mut lat: Vec<Duration>, elapsed: Duration) {
    lat.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<28} {:>8} reviews {:>9.0} reviews/s   p50 {:>6.3} ms   p99 {:>6.3} ms   max {:>7.3} ms",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

/// Closed loop: `conns` connections, each sending its next review as soon as the previous is
/// answered, for `secs` seconds.
async fn closed_loop(addr: SocketAddr, tls: &TlsConnector, conns: usize, secs: f64, bodies: &[Bytes]) {
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(open(addr, tls).await);
    }
    // Warm up every connection.
    for s in &mut senders {
        send(s, &bodies[0]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut sender) in senders.into_iter().enumerate() {
        let stop = stop.clone();
        let bodies = bodies.to_vec();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                send(&mut sender, &bodies[i % bodies.len()]).await;
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.expect("load task"));
    }
    report(&format!("{conns} connection(s)"), lat, start.elapsed());
}

/// Open loop: `rate` reviews per second spread over `conns` connections, each review due at a
/// fixed time; latency counts from when it was due.
async fn open_loop(
    addr: SocketAddr,
    tls: &TlsConnector,
    conns: usize,
    rate: f64,
    secs: f64,
    bodies: &[Bytes],
) {
    let mut senders = Vec::new();
    for _ in 0..conns {
        let mut s = open(addr, tls).await;
        send(&mut s, &bodies[0]).await;
        senders.push(s);
    }
    let per_conn = Duration::from_secs_f64(conns as f64 / rate);
    let total = (rate * secs) as usize / conns;
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut sender) in senders.into_iter().enumerate() {
        let bodies = bodies.to_vec();
        let offset = per_conn.mul_f64(c as f64 / conns as f64);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(total);
            for i in 0..total {
                let due = start + offset + per_conn * i as u32;
                // Behind schedule (the previous review overran): count from when this one was
                // due. On schedule: count from the actual send, not charging the client's timer
                // resolution (about a millisecond) to the server.
                let from = if Instant::now() >= due {
                    due
                } else {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                };
                send(&mut sender, &bodies[(c + i) % bodies.len()]).await;
                lat.push(from.elapsed());
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.expect("paced task"));
    }
    report(
        &format!("{rate:.0}/s over {conns} connections"),
        lat,
        start.elapsed(),
    );
}

fn main() {
    let args = args();
    let dir = std::env::temp_dir().join(format!("portico-webhook-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca = DevCa::new("bench-ca").expect("ca");
    let (cert, key) = ca.issue_serving(&["127.0.0.1"]).expect("cert");
    std::fs::write(dir.join("tls.crt"), cert).expect("write");
    std::fs::write(dir.join("tls.key"), key).expect("write");

    // Three in four reviews are admitted, one in four is refused (probe names an undeclared port).
    let bodies: Vec<Bytes> = (0..4)
        .map(|i| {
            Bytes::from(pod_review(
                &format!("uid-{i}"),
                if i == 3 { "admin" } else { "http" },
            ))
        })
        .collect();
    println!(
        "webhook_load: Pod CREATE reviews of {} bytes, 127.0.0.1, TLS 1.3, HTTP/1.1 keep-alive, {} cores",
        bodies[0].len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // The server in a runtime of its own, two worker threads, like `portico run` on a 2-core pod.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_dir = dir.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let config = WebhookConfig::new(
                "127.0.0.1:0".parse().expect("addr"),
                server_dir.join("tls.crt"),
                server_dir.join("tls.key"),
            );
            let registry = prometheus::Registry::new();
            let server = Server::bind(
                config,
                Handlers::new(Validator::new(Options::default())),
                &registry,
            )
            .await
            .expect("bind");
            addr_tx.send(server.local_addr()).expect("addr");
            server
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
        });
    });
    let addr = addr_rx.recv().expect("server address");

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    client.block_on(async {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("ca"))
            .expect("root");
        let config = rustls::ClientConfig::builder_with_provider(portico_webhook::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = TlsConnector::from(Arc::new(config));
        for &conns in &args.connections {
            closed_loop(addr, &tls, conns, args.seconds, &bodies).await;
        }
        open_loop(addr, &tls, 16, args.rate, args.seconds, &bodies).await;
    });
    let _ = stop_tx.send(());
    server.join().expect("server thread");

    // The server's own work per review, without sockets: decode, validate, encode, on one thread.
    let handlers = Handlers::new(Validator::new(Options::default()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let n = 20_000;
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let a = handlers
                .answer(
                    Endpoint::Validate,
                    &bodies[i % bodies.len()],
                    Duration::from_secs(5),
                    None,
                )
                .await;
            assert_eq!(a.http_status, 200);
        }
    });
    let per = start.elapsed() / n as u32;
    println!(
        "in-process, no HTTP/TLS         {n:>8} reviews {:>9.0} reviews/s   {:.1} µs per review (one thread)",
        1.0 / per.as_secs_f64(),
        per.as_secs_f64() * 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
