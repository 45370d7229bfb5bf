//! The validating webhook behind a real apiserver: served in-process over TLS with a certificate
//! from the harness CA, registered through a ValidatingWebhookConfiguration scoped to the test's
//! namespace, and judged by what the apiserver (and kubectl) tell a user.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use portico_testenv::ControlPlane;
use portico_testenv::fixtures::TestPod;
use portico_webhook::validation::{FieldError, Options, validate_service_value};
use portico_webhook::{Handlers, Namespaces, Registration, Server, Validator, WebhookConfig};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

use crate::support::{eventually, setup};

const NS: &str = "webhook-ports";
const WEBHOOK: &str = "ports.portico.dev";

/// A webhook server running in this test's runtime, registered for one namespace.
struct Webhook {
    config_name: String,
    client: kube::Client,
    registry: prometheus::Registry,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), portico_webhook::Error>>,
    pods: tokio::task::JoinHandle<()>,
    /// The webhook's pod cache (for the `targetPort` warning).
    store: kube::runtime::reflector::Store<Pod>,
}

impl Webhook {
    async fn start(cp: &ControlPlane, client: &kube::Client, ns: &str) -> Self {
        let dir = cp.dir().join(format!("webhook-{ns}"));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let (cert, key) = cp.ca().issue_serving(&["127.0.0.1"]).expect("serving cert");
        std::fs::write(dir.join("tls.crt"), cert).expect("write cert");
        std::fs::write(dir.join("tls.key"), key).expect("write key");

        let (store, reflect) = portico_webhook::pod_store(Api::namespaced(client.clone(), ns));
        let pods = tokio::spawn(reflect);
        let validator = Validator::new(Options::default()).with_pods(Arc::new(store.clone()));
        let registry = prometheus::Registry::new();
        let config = WebhookConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            dir.join("tls.crt"),
            dir.join("tls.key"),
        );
        let server = Server::bind(config, Handlers::new(validator), &registry)
            .await
            .expect("bind webhook");
        let url = format!("https://{}", server.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        let mut reg = Registration::for_url(url, cp.ca().pem());
        reg.name = format!("portico-test-{ns}");
        reg.webhook_name = WEBHOOK.into();
        reg.namespaces = Namespaces::Only(vec![ns.into()]);
        reg.timeout_seconds = 5;
        portico_webhook::register(client, &reg).await.expect("register");
        Webhook {
            config_name: reg.name,
            client: client.clone(),
            registry,
            stop,
            handle,
            pods,
            store,
        }
    }

    async fn stop(self) {
        portico_webhook::unregister(&self.client, &self.config_name)
            .await
            .expect("unregister");
        let _ = self.stop.send(());
        let _ = self.handle.await;
        self.pods.abort();
    }

    fn metric(&self, needle: &str) -> bool {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &self.registry.gather(), &mut out)
            .expect("encode");
        String::from_utf8_lossy(&out).contains(needle)
    }
}

fn pod(name: &str, containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": containers}
    }))
    .expect("pod")
}

fn container(name: &str, ports: &[(&str, i32)], probe_port: Option<Value>) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p}))
        .collect();
    let mut c = json!({"name": name, "image": "registry.invalid/portico/pause:1", "ports": ports});
    if let Some(port) = probe_port {
        c["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": port}});
    }
    c
}

/// The apiserver's answer to creating `obj`, which must be a refusal.
async fn refusal<K>(api: &Api<K>, obj: &K, dry_run: bool) -> kube::core::Status
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    let pp = PostParams {
        dry_run,
        ..PostParams::default()
    };
    match api.create(&pp, obj).await {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const PROBE_DETAIL: &str = r#"spec.containers[0].readinessProbe.httpGet.port: Invalid value: "metrics": no port named "metrics" is declared by container "app""#;

#[tokio::test]
async fn the_apiserver_enforces_portico_port_rules_through_the_webhook() {
    let Some((cp, client)) = setup(NS).await else {
        return;
    };
    let webhook = Webhook::start(cp, &client, NS).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // The apiserver picks a new configuration up asynchronously: wait until a dry run is refused.
    let bad_probe = pod(
        "bad-probe",
        json!([container("app", &[("http", 8080)], Some(json!("metrics")))]),
    );
    eventually(30, "the webhook to be called", || async {
        let pp = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match pods.create(&pp, &bad_probe).await {
            Err(kube::Error::Api(s)) if s.code == 422 => Some(()),
            _ => None,
        }
    })
    .await;

    // A readiness probe naming an undeclared port: 422 Invalid, upstream-shaped, dry run or not.
    for dry_run in [true, false] {
        let s = refusal(&pods, &bad_probe, dry_run).await;
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert_eq!(
            s.message,
            format!(
                r#"admission webhook "{WEBHOOK}" denied the request: Pod "bad-probe" is invalid: {PROBE_DETAIL}"#
            )
        );
        let details = s.details.expect("details");
        assert_eq!(
            (details.kind.as_str(), details.name.as_str()),
            ("Pod", "bad-probe")
        );
        assert_eq!(details.causes.len(), 1);
        assert_eq!(
            details.causes[0].field,
            "spec.containers[0].readinessProbe.httpGet.port"
        );
        assert_eq!(details.causes[0].reason, "FieldValueInvalid");
    }
    assert!(
        webhook.metric(
            r#"{dry_run="false",kind="Pod",operation="CREATE",result="denied",webhook="validate"} 1"#
        )
    );
    assert!(
        webhook
            .metric(r#"{dry_run="true",kind="Pod",operation="CREATE",result="denied",webhook="validate"}"#)
    );

    // A port name used by two containers: upstream allows it, Portico refuses it.
    let dup = pod(
        "dup-names",
        json!([
            container("app", &[("http", 8080)], None),
            container("sidecar", &[("http", 9090)], None)
        ]),
    );
    let s = refusal(&pods, &dup, false).await;
    assert_eq!(s.code, 422);
    assert!(
        s.message.ends_with(
            r#"Pod "dup-names" is invalid: spec.containers[1].ports[0].name: Invalid value: "http": must be unique within the pod: already declared by container "app" at spec.containers[0].ports[0]"#
        ),
        "{}",
        s.message
    );

    // A well-formed pod goes through.
    let good = pod(
        "good",
        json!([container("app", &[("http", 8080)], Some(json!("http")))]),
    );
    pods.create(&PostParams::default(), &good)
        .await
        .expect("a valid pod is admitted");

    // A Deployment whose template has the probe mistake is refused at the Deployment.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container("app", &[("http", 8080)], Some(json!("metrics")))]}
            }
        }
    }))
    .expect("deployment");
    let s = refusal(&deployments, &deploy, false).await;
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        format!(
            r#"admission webhook "{WEBHOOK}" denied the request: Deployment.apps "web" is invalid: spec.template.{PROBE_DETAIL}"#
        )
    );
    assert_eq!(s.details.expect("details").kind, "Deployment");

    // Two unnamed Service ports: the apiserver's own validation refuses them before any webhook
    // is called, and its message is the one Portico's rule renders for the same object.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let unnamed = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "two"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 81}]}
    });
    let s = refusal(
        &services,
        &serde_json::from_value(unnamed.clone()).expect("svc"),
        false,
    )
    .await;
    let ours: Vec<FieldError> = validate_service_value(&unnamed, &Options::default()).expect("decodes");
    assert_eq!(
        s.message,
        portico_message("Service", "two", &ours),
        "Portico renders upstream's message for upstream's rule"
    );

    // A Service whose named targetPort its pods do not declare: admitted, with a warning.
    for (i, port) in ["web", "web"].iter().enumerate() {
        TestPod::new(&format!("tp-{i}"))
            .label("app", "tp")
            .port(port, 8080, "TCP")
            .create(&client, NS)
            .await
            .expect("pod");
    }
    let warned = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "tp", "namespace": NS},
        "spec": {"selector": {"app": "tp"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    });
    let warning = r#"spec.ports[0].targetPort: pods "tp-0", "tp-1" declare no port named "http", so they are not endpoints of this Service port"#;
    // The webhook's pod cache sees the pods shortly after their creation.
    eventually(30, "the webhook's pod cache to hold tp-0 and tp-1", || async {
        let names: Vec<String> = webhook
            .store
            .state()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (names.iter().any(|n| n == "tp-0") && names.iter().any(|n| n == "tp-1")).then_some(())
    })
    .await;
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    services
        .create(&dry, &serde_json::from_value(warned.clone()).expect("svc"))
        .await
        .expect("a dry run of the Service is admitted");
    assert!(webhook.metric(r#"portico_webhook_warnings_total{kind="Service",webhook="validate"} 1"#));

    if let Some(kubectl) = kubectl() {
        // What a user sees: the warning on stderr, the Service created.
        let out = kubectl_create(&kubectl, cp.kubeconfig_path(), &[], &warned).await;
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("Warning: {warning}")), "{stderr}");
        // A refused pod prints like the apiserver's own validation errors.
        let mut bad = serde_json::to_value(&bad_probe).expect("json");
        bad["apiVersion"] = json!("v1");
        bad["kind"] = json!("Pod");
        bad["metadata"]["namespace"] = json!(NS);
        let out = kubectl_create(&kubectl, cp.kubeconfig_path(), &[], &bad).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(r#"The Pod "bad-probe" is invalid: "#), "{stderr}");
        assert!(stderr.contains(PROBE_DETAIL), "{stderr}");
    } else {
        eprintln!("kubectl not found: skipping the kubectl-visible checks");
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(warned).expect("svc"),
            )
            .await
            .expect("the Service is admitted");
    }
    services.get("tp").await.expect("the warned Service exists");

    webhook.stop().await;
}

/// `<Kind> "<name>" is invalid: ...` as Portico renders a refusal for `errs`.
fn portico_message(kind: &str, name: &str, errs: &[FieldError]) -> String {
    portico_webhook::status::invalid("", kind, name, errs).message
}

/// kubectl from the harness's assets or `PATH`; missing it is a failure where the suite must
/// run whole (`PORTICO_REQUIRE_INTEGRATION`).
pub(crate) fn kubectl() -> Option<std::path::PathBuf> {
    let found = portico_testenv::Assets::discover().ok().and_then(|a| a.kubectl);
    if found.is_none() && portico_testenv::integration_required() {
        panic!("{} is set but there is no kubectl", portico_testenv::REQUIRE_ENV);
    }
    found
}

/// Runs `kubectl create -f -` with `obj`, without blocking the runtime the webhook serves on.
/// `kubectl create <flags> --validate=false -f -` with `obj` on stdin.
pub(crate) async fn kubectl_create(
    kubectl: &Path,
    kubeconfig: &Path,
    flags: &[&str],
    obj: &Value,
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("create")
        .args(flags)
        .args(["--validate=false", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kubectl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&serde_json::to_vec(obj).expect("json"))
        .await
        .expect("write to kubectl");
    drop(stdin);
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finishes within 60s")
        .expect("kubectl output")
}
