//! The harness itself: it starts, answers, stores objects, and leaves nothing behind.

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use portico_testenv::fixtures::TestPod;
use portico_testenv::{Assets, ControlPlane, ControlPlaneConfig};

use crate::support::setup;

#[tokio::test]
async fn apiserver_answers_and_stores_services_and_pod_status() {
    let Some((_cp, client)) = setup("harness-basics").await else {
        return;
    };

    let version = client.apiserver_version().await.expect("/version");
    assert!(version.git_version.starts_with("v1."), "{version:?}");

    let svc = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), "web".to_owned())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let services = Api::<Service>::namespaced(client.clone(), "harness-basics");
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let back = services.get("web").await.expect("read service back");
    let spec = back.spec.expect("spec");
    assert_eq!(spec.ports.expect("ports")[0].port, 80);
    let ip = spec.cluster_ip.expect("the apiserver assigns a clusterIP");
    assert!(
        ip.starts_with("10.96."),
        "clusterIP {ip} from the configured range"
    );

    portico_testenv::fixtures::node(&client, "harness-node-a", Some("zone-a"))
        .await
        .expect("node");
    let pod = TestPod::new("web-0")
        .label("app", "web")
        .node("harness-node-a")
        .port("http", 8080, "TCP")
        .ip("10.244.0.7")
        .ready(true)
        .create(&client, "harness-basics")
        .await
        .expect("create pod with status");
    let status = pod.status.expect("status");
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.7"));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ready = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.status).as_deref(), Some("True"));

    let stored = Api::<Pod>::namespaced(client, "harness-basics")
        .get("web-0")
        .await
        .expect("read pod");
    assert_eq!(
        stored.spec.and_then(|s| s.node_name).as_deref(),
        Some("harness-node-a")
    );
}

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still show, so check its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

#[tokio::test]
async fn two_instances_side_by_side_then_nothing_survives() {
    let Ok(assets) = Assets::discover() else {
        // `shared()` prints the skip line for the binary; nothing to start here.
        let _ = portico_testenv::shared();
        return;
    };
    let config = ControlPlaneConfig {
        service_cluster_ip_range: "10.97.0.0/24".into(),
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        ControlPlane::start_with(&assets, config.clone()),
        ControlPlane::start_with(&assets, config)
    );
    let (a, b) = (a.expect("first instance"), b.expect("second instance"));
    assert_ne!(a.server(), b.server());
    assert_ne!(a.dir(), b.dir());

    let (ca, cb) = (
        a.client().await.expect("client a"),
        b.client().await.expect("client b"),
    );
    portico_testenv::fixtures::namespace(&ca, "only-in-a")
        .await
        .expect("ns in a");
    let in_b = Api::<k8s_openapi::api::core::v1::Namespace>::all(cb)
        .get_opt("only-in-a")
        .await
        .expect("get");
    assert!(in_b.is_none(), "the instances share no storage");

    let pids: Vec<u32> = a.pids().into_iter().chain(b.pids()).collect();
    let dirs = [a.dir().to_path_buf(), b.dir().to_path_buf()];
    assert!(pids.iter().all(|p| alive(*p)));
    drop((a, b));
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived teardown");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} survived teardown", dir.display());
    }
}
