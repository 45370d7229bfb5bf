//! `portico run` as a process, wired to the apiserver with one command (`--webhook-url`):
//! the webhook allocates and validates, the controllers keep slices, and stopping it removes
//! its webhook configurations.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::IPAddress;
use kube::api::{Api, DeleteParams, PostParams};
use portico_testenv::ControlPlane;
use portico_testenv::fixtures::TestPod;

use crate::support::{eventually, setup};

/// A `portico run` child process, killed on drop.
pub struct PorticoProcess {
    child: Child,
    pub metrics: String,
}

impl Drop for PorticoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl PorticoProcess {
    /// Starts `portico run` against the control plane with `args` added, and waits for /readyz.
    pub async fn start(cp: &ControlPlane, args: &[&str], env: &[(&str, &str)]) -> Self {
        let metrics_port = free_port();
        let metrics = format!("127.0.0.1:{metrics_port}");
        let log_path = cp.dir().join(format!("portico-{metrics_port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .arg("run")
            .args(["--metrics-bind-address", &metrics])
            .args(args)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start portico");
        let p = PorticoProcess { child, metrics };
        let url = format!("http://{}/readyz", p.metrics);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while http_get(&url).await.as_deref() != Some("ok") {
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("portico not ready after 60s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    /// The process's /metrics text.
    pub async fn metrics_text(&self) -> String {
        http_get(&format!("http://{}/metrics", self.metrics))
            .await
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

/// A plain HTTP/1.0 GET of a loopback URL: the body on 200, else None.
pub async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    // hyper answers an HTTP/1.0 request in kind.
    let ok = head.split_whitespace().nth(1) == Some("200");
    ok.then(|| body.to_owned())
}

/// Sum of a metric's samples (all label sets) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    metric_sum_where(text, name, "")
}

/// Sum of a metric's samples whose line contains `with` (e.g. `result="error"`).
pub fn metric_sum_where(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn service(name: &str, body: serde_json::Value) -> Service {
    let mut v = serde_json::json!({"metadata": {"name": name}, "spec": {
        "selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), body.as_object()) {
        for (k, val) in extra {
            spec.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("service")
}

fn ip_to_u32(ip: &str) -> u32 {
    ip.parse::<std::net::Ipv4Addr>().map(u32::from).expect("IPv4")
}

#[tokio::test]
async fn one_command_wires_allocation_validation_and_controllers() {
    let ns = "run-e2e";
    let Some((cp, client)) = setup(ns).await else {
        return;
    };
    let webhook_port = free_port().to_string();
    let url = format!("https://127.0.0.1:{webhook_port}");
    let portico = PorticoProcess::start(
        cp,
        &[
            "--namespace",
            ns,
            "--webhook-url",
            &url,
            "--webhook-bind-address",
            &format!("127.0.0.1:{webhook_port}"),
            "--webhook-namespaces",
            ns,
            "--webhook-configuration-name",
            "portico-run-e2e",
            // A sub-range of the test apiserver's 10.96.0.0/16: Portico's picks must be ones
            // the apiserver accepts, and other tests' Services stay out of its way.
            "--service-cluster-ip-range",
            "10.96.128.0/20",
            "--repair-interval",
            "1s",
            "--repair-report-out-of-range=false",
            "--install-crds=true",
        ],
        &[],
    )
    .await;
    let services = Api::<Service>::namespaced(client.clone(), ns);

    // No clusterIP asked: Portico assigns the first free address of its dynamic band, which
    // starts 256 addresses into the /20 (upstream's band for a range this size).
    let a = services
        .create(&PostParams::default(), &service("a", serde_json::json!({})))
        .await
        .expect("create a");
    let ip_a = a
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("clusterIP");
    let offset = ip_to_u32(&ip_a) - ip_to_u32("10.96.128.0");
    assert!(
        (256..4095).contains(&offset),
        "{ip_a} is in Portico's dynamic band"
    );
    // The apiserver (1.33+, KEP-1880) records the address Portico picked as its own IPAddress,
    // named after it, managed by its allocator and pointing at the Service.
    let record = Api::<IPAddress>::all(client.clone())
        .get(&ip_a)
        .await
        .expect("the apiserver's IPAddress for a's clusterIP");
    let labels = record.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("ipaddress.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("ipallocator.k8s.io")
    );
    let parent = record.spec.expect("spec").parent_ref;
    assert_eq!(
        (
            parent.resource.as_str(),
            parent.namespace.as_deref(),
            parent.name.as_str()
        ),
        ("services", Some(ns), "a")
    );
    let b = services
        .create(&PostParams::default(), &service("b", serde_json::json!({})))
        .await
        .expect("create b");
    let ip_b = b
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("clusterIP");
    assert_eq!(
        ip_to_u32(&ip_b),
        ip_to_u32(&ip_a) + 1,
        "next-fit: the next address"
    );

    // A taken clusterIP is refused with the apiserver's own 422 and message.
    let err = services
        .create(
            &PostParams::default(),
            &service("c", serde_json::json!({"clusterIP": ip_a})),
        )
        .await
        .expect_err("taken clusterIP");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    // The apiserver prefixes a webhook's message with the webhook's name; the details, which
    // kubectl prints as `The Service "c" is invalid: ...`, are upstream's own.
    let upstream = format!(
        "Service \"c\" is invalid: spec.clusterIPs: Invalid value: [\"{ip_a}\"]: \
         failed to allocate IP {ip_a}: provided IP is already allocated"
    );
    assert_eq!(
        status.message,
        format!("admission webhook \"allocation.portico.dev\" denied the request: {upstream}")
    );
    let details = status.details.expect("details");
    assert_eq!((details.kind.as_str(), details.name.as_str()), ("Service", "c"));
    assert_eq!(details.causes[0].field, "spec.clusterIPs");
    assert_eq!(
        details.causes[0].message,
        format!(
            "Invalid value: [\"{ip_a}\"]: failed to allocate IP {ip_a}: provided IP is already allocated"
        )
    );

    // A NodePort Service gets its port from the upper band (30086-32767).
    let np = services
        .create(
            &PostParams::default(),
            &service("np", serde_json::json!({"type": "NodePort"})),
        )
        .await
        .expect("nodeport");
    let port = np
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p[0].node_port)
        .expect("nodePort");
    assert!(
        (30086..=32767).contains(&port),
        "nodePort {port} from the dynamic band"
    );

    // A Pod whose readiness probe names a port it does not declare is refused.
    let mut pod = TestPod::new("bad-probe").port("http", 8080, "TCP").to_pod();
    pod.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(
        serde_json::from_value(serde_json::json!({"httpGet": {"path": "/", "port": "metrics"}}))
            .expect("probe"),
    );
    let err = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("probe");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains(
            "spec.containers[0].readinessProbe.httpGet.port: Invalid value: \"metrics\": no port named \"metrics\""
        ),
        "{}",
        status.message
    );

    // The controllers run in the same process.
    portico_testenv::fixtures::node(&client, "run-e2e-node", Some("zone-a"))
        .await
        .expect("node");
    TestPod::new("a-0")
        .label("app", "a")
        .node("run-e2e-node")
        .port("http", 8080, "TCP")
        .ip("10.244.9.1")
        .ready(true)
        .create(&client, ns)
        .await
        .expect("pod");
    eventually(20, "slice for a", || async {
        let lp = kube::api::ListParams::default().labels("kubernetes.io/service-name=a");
        let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .ok()?;
        (slices.items.len() == 1 && slices.items[0].endpoints.len() == 1).then_some(())
    })
    .await;

    // The webhook's targetPort warning reads the controllers' pods (no watch of its own): a
    // Service naming a port pod a-0 lacks is admitted with a warning.
    let warned = service(
        "a-metrics",
        serde_json::json!({"selector": {"app": "a"}, "ports": [{"name": "m", "port": 9090, "targetPort": "metrics"}]}),
    );
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    services
        .create(&dry, &warned)
        .await
        .expect("admitted with a warning");
    let warnings = metric_sum(&portico.metrics_text().await, "portico_webhook_warnings_total");
    assert_eq!(warnings, 1.0, "one targetPort warning");

    // A deleted Service's address comes back for reuse once the repair loop has seen it go.
    services
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    let reused = eventually(20, "deleted Service's IP reusable", || {
        let services = services.clone();
        let ip = ip_a.clone();
        async move {
            let svc = service("again", serde_json::json!({"clusterIP": ip}));
            services.create(&PostParams::default(), &svc).await.ok()
        }
    })
    .await;
    assert_eq!(reused.spec.and_then(|s| s.cluster_ip), Some(ip_a));
    let metrics = portico.metrics_text().await;
    assert!(
        metric_sum(&metrics, "portico_webhook_requests_total") >= 6.0,
        "{metrics}"
    );
    assert!(metric_sum(&metrics, "endpoint_slice_controller_changes") >= 1.0);

    // `portico status` shows the ranges, the repair findings and the leader.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["status", "--leader-elect-resource-namespace", "kube-system"])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .output()
        .expect("portico status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("clusterip-ipv4"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("10.96.128.0/20"), "{text}");
    assert!(
        text.contains("LAST REPAIR PASS") && text.contains("leader: "),
        "{text}"
    );
    // The leader's first repair pass ran at start-up: the range has a row there too.
    let repair_rows = text.split("LAST REPAIR PASS").nth(1).map_or(0, |rest| {
        rest.lines().filter(|l| l.starts_with("clusterip-ipv4")).count()
    });
    assert_eq!(repair_rows, 1, "{text}");
    eprintln!("{text}");

    // SIGTERM: a clean exit that takes the self-registered configurations down with it.
    assert!(portico.terminate().success());
    let vwc = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt("portico-run-e2e")
        .await
        .expect("get");
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt("portico-run-e2e")
        .await
        .expect("get");
    assert!(
        vwc.is_none() && mwc.is_none(),
        "configurations removed on shutdown"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Allocation without the RangeAllocation CRD: `portico run` exits saying what is missing and
/// how to install it, instead of the apiserver's bare "404 page not found". A control plane of
/// its own, since the shared one gets the CRD from other tests.
#[tokio::test]
async fn allocation_without_the_crd_says_how_to_install_it() {
    if portico_testenv::shared().is_none() {
        return;
    }
    let cp = ControlPlane::start(portico_testenv::ControlPlaneConfig::default())
        .await
        .expect("a control plane of its own");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "run",
            "--controllers=",
            "--leader-elect=false",
            "--allocation",
            "--metrics-bind-address=127.0.0.1:0",
            "--webhook-url=https://127.0.0.1",
            "--webhook-bind-address=127.0.0.1:0",
        ])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("portico exits by itself")
        .expect("run portico");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the RangeAllocation CRD (rangeallocations.portico.dev) is not installed")
            && stderr.contains("portico crds | kubectl apply -f -")
            && stderr.contains("--install-crds"),
        "{stderr}"
    );
    assert!(!stderr.contains("page not found"), "{stderr}");
}

/// Only the apiserver gets in: Portico requires a client certificate from its own CA and a
/// bearer token, and kube-apiserver presents both through its admission configuration
/// (`--admission-control-config-file`, a kubeconfig for webhooks). With `failurePolicy: Fail`,
/// a pod Portico refuses shows Portico's own message: the call got through authenticated. A
/// control plane of its own, since the flag is kube-apiserver's.
#[tokio::test]
async fn the_apiserver_authenticates_to_the_webhook_with_a_client_certificate_and_token() {
    if portico_testenv::shared().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let clients = portico_webhook::DevCa::new("webhook-clients").expect("ca");
    let (cert, key) = clients.issue_client("kube-apiserver").expect("client cert");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("client-ca.crt"), clients.pem()).expect("write");
    std::fs::write(path("apiserver.crt"), cert).expect("write");
    std::fs::write(path("apiserver.key"), key).expect("write");
    std::fs::write(path("token"), "only-the-apiserver\n").expect("write");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nusers:\n- name: '*'\n  user:\n    client-certificate: {}\n    client-key: {}\n    token: only-the-apiserver\n",
        path("apiserver.crt").display(),
        path("apiserver.key").display()
    );
    std::fs::write(path("webhook-kubeconfig"), kubeconfig).expect("write");
    let mut admission =
        String::from("apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n");
    for plugin in ["ValidatingAdmissionWebhook", "MutatingAdmissionWebhook"] {
        admission.push_str(&format!(
            "- name: {plugin}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            path("webhook-kubeconfig").display()
        ));
    }
    std::fs::write(path("admission.yaml"), admission).expect("write");
    let cp = ControlPlane::start(portico_testenv::ControlPlaneConfig {
        extra_apiserver_args: vec![format!(
            "--admission-control-config-file={}",
            path("admission.yaml").display()
        )],
        ..Default::default()
    })
    .await
    .expect("a control plane of its own");
    let client = cp.client().await.expect("client");
    let ns = "webhook-auth";
    portico_testenv::fixtures::namespace(&client, ns)
        .await
        .expect("namespace");
    let ca_flag = format!("--webhook-client-ca-file={}", path("client-ca.crt").display());
    let token_flag = format!("--webhook-client-token-file={}", path("token").display());
    let _portico = PorticoProcess::start(
        &cp,
        &[
            "--controllers=",
            "--leader-elect=false",
            "--webhook-url=https://127.0.0.1",
            "--webhook-bind-address=127.0.0.1:0",
            "--webhook-namespaces",
            ns,
            &ca_flag,
            &token_flag,
        ],
        &[],
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let mut pod = TestPod::new("bad-probe").port("http", 8080, "TCP").to_pod();
    pod.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(
        serde_json::from_value(serde_json::json!({"httpGet": {"path": "/", "port": "metrics"}}))
            .expect("probe"),
    );
    let err = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("refused by Portico");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422, "{}", status.message);
    assert!(
        status.message.contains("no port named \"metrics\""),
        "{}",
        status.message
    );
    pods.create(
        &PostParams::default(),
        &TestPod::new("good").port("http", 8080, "TCP").to_pod(),
    )
    .await
    .expect("a valid pod is admitted through the authenticated webhook");
}

/// Upstream's retry discipline during an outage: 200 Services whose pods all changed just
/// before the apiserver went down for 30 s. Every sync fails while it is down; Portico's
/// requests stay within the client limit (`--kube-api-qps 20`, `--kube-api-burst 30`, as
/// kube-controller-manager) and its retries within the queue's overall 10 per second (bursts of
/// 100), instead of every Service retrying on its own backoff in lockstep. Everything
/// converges once the apiserver is back.
#[tokio::test]
async fn an_apiserver_outage_is_retried_within_upstreams_limits() {
    if portico_testenv::shared().is_none() {
        return;
    }
    use futures::StreamExt;
    const N: usize = 200;
    let mut cp = ControlPlane::start(portico_testenv::ControlPlaneConfig::default())
        .await
        .expect("a control plane of its own");
    let client = cp.client().await.expect("client");
    let ns = "outage";
    portico_testenv::fixtures::namespace(&client, ns)
        .await
        .expect("namespace");
    // The pods run on a Node the controller knows, so their syncs fail on the API, not on a
    // missing Node.
    portico_testenv::fixtures::node(&client, "outage-node", None)
        .await
        .expect("node");
    let services = Api::<Service>::namespaced(client.clone(), ns);
    futures::stream::iter(0..N)
        .map(|i| {
            let (services, client) = (services.clone(), client.clone());
            async move {
                let svc = portico_testenv::fixtures::http_service(
                    &format!("s{i}"),
                    &format!("app{i}"),
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080),
                );
                services
                    .create(&PostParams::default(), &svc)
                    .await
                    .expect("service");
                TestPod::new(&format!("p{i}"))
                    .label("app", &format!("app{i}"))
                    .node("outage-node")
                    .port("http", 8080, "TCP")
                    .ip(&format!("10.200.{}.{}", i / 250, i % 250 + 1))
                    .ready(true)
                    .create(&client, ns)
                    .await
                    .expect("pod");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), ns);
    let ours = kube::api::ListParams::default()
        .labels("endpointslice.kubernetes.io/managed-by=endpointslice-controller.portico");
    let all_slices = || async {
        eventually(180, "a slice per Service", || async {
            (slices.list_metadata(&ours).await.ok()?.items.len() == N).then_some(())
        })
        .await
    };
    // The apiserver stopped before the syncs run, 30 s down; what Portico sent meanwhile,
    // then convergence once it is back.
    let mut ready = true;
    let mut round = async |qps: &str| -> (f64, f64) {
        let portico = PorticoProcess::start(
            &cp,
            &[
                "--controllers=endpointslice",
                "--webhook=false",
                "--leader-elect=false",
                "--namespace",
                ns,
                qps,
                "--kube-api-burst=30",
                // Enough workers that the limits, not the workers, bound the retries.
                "--concurrent-service-endpoint-syncs=50",
                // Syncs run 5 s after the events, so they fail while the apiserver is down.
                "--endpoint-updates-batch-period=5s",
            ],
            &[],
        )
        .await;
        all_slices().await;
        // Every pod's readiness flips: each Service's sync is due 5 s later, by then the
        // apiserver is down, and every one of them fails and is retried.
        ready = !ready;
        futures::stream::iter(0..N)
            .map(|i| {
                let client = client.clone();
                async move {
                    let ip = format!("10.200.{}.{}", i / 250, i % 250 + 1);
                    portico_testenv::fixtures::set_status(
                        &client,
                        ns,
                        &format!("p{i}"),
                        "Running",
                        &[ip],
                        ready,
                    )
                    .await
                    .expect("pod status");
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await; // the pod events reach Portico
        let before = portico.metrics_text().await;
        cp.stop_apiserver();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let after = portico.metrics_text().await;
        cp.start_apiserver().await.expect("apiserver back");
        all_slices().await;
        let requests = metric_sum(&after, "rest_client_requests_total")
            - metric_sum(&before, "rest_client_requests_total");
        let failed = metric_sum_where(&after, "endpoint_slice_controller_syncs", "result=\"error\"")
            - metric_sum_where(&before, "endpoint_slice_controller_syncs", "result=\"error\"");
        eprintln!("{qps}: while down for 30 s, {requests} requests, {failed} failed syncs");
        for line in after.lines().filter(|l| {
            l.starts_with("portico_controller_reconcile_errors_total")
                || l.starts_with("rest_client_requests_total")
        }) {
            eprintln!("  {line}");
        }
        (requests, failed)
    };
    // The queue's own discipline, with no client limit to pace it: each Service's first sync
    // fails, and the retries after it come at most 10 a second after a burst of 100. (Per-key
    // backoff alone retries each Service at 1, 3, 7 and 15 s: about 200 + 800 failures.)
    let most = N as f64 + 100.0 + 10.0 * 30.0;
    let (_, failed) = round("--kube-api-qps=0").await;
    assert!(
        failed >= N as f64,
        "every Service's sync ran and failed: {failed}"
    );
    assert!(
        failed <= most,
        "{failed} failed syncs in 30 s: retries over 10 per second, burst 100"
    );
    // kube-controller-manager's defaults: the client also sends at most 20 requests a second
    // after a burst of 30, which paces the syncs themselves.
    let (requests, failed) = round("--kube-api-qps=20").await;
    assert!(failed >= 100.0, "the syncs ran and failed: {failed}");
    assert!(
        failed <= most,
        "{failed} failed syncs in 30 s: retries over 10 per second, burst 100"
    );
    assert!(
        requests <= 30.0 + 20.0 * 30.0,
        "{requests} requests in 30 s: over 20 qps, burst 30"
    );
}
