//! The endpoint-address webhook (`endpoints.portico.dev`) behind a real apiserver: hand-written
//! Endpoints and EndpointSlices with addresses kube-proxy cannot use are refused, with the
//! apiserver's own 422 where upstream has the rule (loopback, link-local, ...) and Portico's 422
//! for a Service's clusterIP, which upstream lacks; controller-labelled objects pass.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use portico_webhook::validation::endpoints::{
    ServiceIpIndex, validate_endpoint_slice_value, validate_endpoints_value,
};
use portico_webhook::{Handlers, Namespaces, Registration, Server, Validator, WebhookConfig};
use serde_json::{Value, json};

use crate::support::{eventually, setup};

const NS: &str = "webhook-endpoints";
const DENIED: &str = r#"admission webhook "endpoints.portico.dev" denied the request: "#;

fn endpoints(name: &str, labels: Value, ips: &[&str]) -> Value {
    let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "subsets": [{"addresses": addresses, "ports": [{"port": 5432, "protocol": "TCP"}]}]
    })
}

fn slice(name: &str, labels: Value, family: &str, ips: &[&str]) -> Value {
    let eps: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "addressType": family, "endpoints": eps,
        "ports": [{"name": "", "port": 5432, "protocol": "TCP"}]
    })
}

async fn create<K>(api: &Api<K>, obj: &Value, dry_run: bool) -> Result<K, kube::core::Status>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj.clone()).expect("object");
    let pp = PostParams {
        dry_run,
        ..PostParams::default()
    };
    match api.create(&pp, &obj).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(s)) => Err(*s),
        Err(e) => panic!("{e}"),
    }
}

/// `<Kind> "<name>" is invalid: ...` as Portico renders its rules' errors for `obj`.
fn portico_message(group: &str, kind: &str, name: &str, obj: &Value, index: &dyn ServiceIpIndex) -> String {
    let errs = if kind == "Endpoints" {
        validate_endpoints_value(obj, Some(index))
    } else {
        validate_endpoint_slice_value(obj, Some(index))
    }
    .expect("decodes");
    assert!(!errs.is_empty(), "{obj}");
    portico_webhook::status::invalid(group, kind, name, &errs).message
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("clusterIP")
}

#[tokio::test]
async fn hand_written_endpoints_may_not_target_special_addresses_or_cluster_ips() {
    let Some((cp, client)) = setup(NS).await else {
        return;
    };
    // The webhook, in this runtime: a clusterIP index fed by a real watch of every Service.
    let dir = cp.dir().join(format!("webhook-{NS}"));
    std::fs::create_dir_all(&dir).expect("cert dir");
    let (cert, key) = cp.ca().issue_serving(&["127.0.0.1"]).expect("serving cert");
    std::fs::write(dir.join("tls.crt"), cert).expect("write cert");
    std::fs::write(dir.join("tls.key"), key).expect("write key");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (index, watch) = portico_webhook::service_ip_index(Api::all(client.clone()), async {
        let _ = stop_rx.await;
    });
    let watch = tokio::spawn(watch);
    let validator = Validator::new(Default::default()).with_service_ips(index.clone());
    let registry = prometheus::Registry::new();
    let config = WebhookConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        dir.join("tls.crt"),
        dir.join("tls.key"),
    );
    let server = Server::bind(config, Handlers::new(validator), &registry)
        .await
        .expect("bind webhook");
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut reg = Registration::for_url(format!("https://{}", server.local_addr()), cp.ca().pem());
    let handle = tokio::spawn(server.run(async {
        let _ = server_stopped.await;
    }));
    reg.name = format!("portico-test-{NS}");
    reg.namespaces = Namespaces::Only(vec![NS.into()]);
    portico_webhook::register(&client, &reg).await.expect("register");

    // Two selector-less Services: their clusterIPs are the apiserver's (no Portico allocation).
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let mut ips = Vec::new();
    for name in ["db", "ext"] {
        let svc = json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 5432}]}});
        let svc = services
            .create(&PostParams::default(), &serde_json::from_value(svc).expect("svc"))
            .await
            .expect("service");
        ips.push(cluster_ip(&svc));
    }
    let (db_ip, ext_ip) = (ips[0].clone(), ips[1].clone());
    eventually(30, "the clusterIP index to hold both Services", || async {
        let held = |ip: &str| index.service_with_cluster_ip(ip.parse::<IpAddr>().expect("ip"));
        (index.synced() && held(&db_ip).is_some() && held(&ext_ip).is_some()).then_some(())
    })
    .await;

    let eps: Api<Endpoints> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    // The apiserver picks the configuration up asynchronously: wait for a refused dry run.
    let to_db = endpoints("ext", json!({}), &["10.250.0.5", &db_ip]);
    eventually(30, "the webhook to be called", || async {
        create(&eps, &to_db, true)
            .await
            .err()
            .filter(|s| s.code == 422)
            .map(|_| ())
    })
    .await;

    // Another Service's clusterIP: Portico's rule, a 422 like the apiserver's own, dry run or not.
    let detail = format!(
        r#"subsets[0].addresses[1].ip: Invalid value: "{db_ip}": may not be the clusterIP of a Service ({NS}/db)"#
    );
    for dry_run in [true, false] {
        let s = create(&eps, &to_db, dry_run).await.expect_err("refused");
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert_eq!(
            s.message,
            format!(r#"{DENIED}Endpoints "ext" is invalid: {detail}"#)
        );
        let d = s.details.expect("details");
        assert_eq!((d.kind.as_str(), d.name.as_str()), ("Endpoints", "ext"));
        assert_eq!(d.causes.len(), 1);
        assert_eq!(
            (d.causes[0].field.as_str(), d.causes[0].reason.as_str()),
            ("subsets[0].addresses[1].ip", "FieldValueInvalid")
        );
    }
    // The Service's own clusterIP too, in notReadyAddresses as well.
    let mut own = endpoints("ext", json!({}), &["10.250.0.5"]);
    own["subsets"][0]["notReadyAddresses"] = json!([{"ip": ext_ip}]);
    let s = create(&eps, &own, false).await.expect_err("refused");
    assert_eq!(
        s.message,
        format!(
            r#"{DENIED}Endpoints "ext" is invalid: subsets[0].notReadyAddresses[0].ip: Invalid value: "{ext_ip}": may not be the clusterIP of a Service ({NS}/ext)"#
        )
    );

    // Loopback: kube-apiserver (1.33+) refuses it itself, before any webhook, with the message
    // Portico's duplicate of the rule renders.
    let lo = endpoints("lo", json!({}), &["127.0.0.1"]);
    let s = create(&eps, &lo, false).await.expect_err("refused");
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    assert_eq!(
        s.message,
        r#"Endpoints "lo" is invalid: subsets[0].addresses[0].ip: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#
    );
    assert_eq!(
        s.message,
        portico_message("", "Endpoints", "lo", &lo, index.as_ref())
    );

    // EndpointSlices: a clusterIP is Portico's refusal, a link-local or loopback address the
    // apiserver's, word for word what Portico renders.
    let s = create(&slices, &slice("ext-1", json!({}), "IPv4", &[&db_ip]), false)
        .await
        .expect_err("refused");
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    assert_eq!(
        s.message,
        format!(
            r#"{DENIED}EndpointSlice.discovery.k8s.io "ext-1" is invalid: endpoints[0].addresses[0]: Invalid value: "{db_ip}": may not be the clusterIP of a Service ({NS}/db)"#
        )
    );
    for (family, ip) in [("IPv4", "169.254.169.254"), ("IPv6", "::1"), ("IPv6", "fe80::1")] {
        let obj = slice("ext-2", json!({}), family, &[ip]);
        let s = create(&slices, &obj, false).await.expect_err("refused");
        assert_eq!(s.code, 422, "{s:?}");
        assert!(!s.message.starts_with("admission webhook"), "{}", s.message);
        assert_eq!(
            s.message,
            portico_message("discovery.k8s.io", "EndpointSlice", "ext-2", &obj, index.as_ref()),
            "{family} {ip}"
        );
    }

    // Usable addresses pass; so do controller-labelled objects, whatever they hold (the
    // objectSelector keeps them from Portico, which would admit them anyway).
    create(&eps, &endpoints("ok", json!({}), &["10.250.0.5"]), false)
        .await
        .expect("a usable address is admitted");
    create(&slices, &slice("ok-1", json!({}), "IPv4", &["10.250.0.5"]), false)
        .await
        .expect("a usable address is admitted");
    let managed_ep = endpoints(
        "ext",
        json!({"endpoints.kubernetes.io/managed-by": "endpoint-controller"}),
        &[&db_ip],
    );
    create(&eps, &managed_ep, false)
        .await
        .expect("controller-managed Endpoints pass");
    let managed_slice = slice(
        "ext-managed",
        json!({"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}),
        "IPv4",
        &[&db_ip],
    );
    create(&slices, &managed_slice, false)
        .await
        .expect("controller-managed EndpointSlices pass");

    // UPDATE is ratcheted: dropping the label keeps what the object held, a new clusterIP is refused.
    let mut current = eps.get("ext").await.expect("ext");
    current.metadata.labels = None;
    let current = eps
        .replace("ext", &PostParams::default(), &current)
        .await
        .expect("an UPDATE that keeps the old addresses is admitted");
    let mut more = current.clone();
    more.subsets.as_mut().expect("subsets")[0]
        .addresses
        .as_mut()
        .expect("addresses")
        .push(serde_json::from_value(json!({"ip": ext_ip})).expect("address"));
    match eps.replace("ext", &PostParams::default(), &more).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            s.message,
            format!(
                r#"{DENIED}Endpoints "ext" is invalid: subsets[0].addresses[1].ip: Invalid value: "{ext_ip}": may not be the clusterIP of a Service ({NS}/ext)"#
            )
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // What a user sees with kubectl: the 422 (in the request log) and Portico's message.
    if let Some(kubectl) = crate::webhook::kubectl() {
        let obj = endpoints("kx", json!({}), &[&db_ip]);
        let out = crate::webhook::kubectl_create(&kubectl, cp.kubeconfig_path(), &["-v=6"], &obj).await;
        assert!(!out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("422 Unprocessable Entity"), "{stderr}");
        assert!(stderr.contains(r#"The Endpoints "kx" is invalid: "#), "{stderr}");
        assert!(
            stderr.contains(&format!(
                r#"subsets[0].addresses[0].ip: Invalid value: "{db_ip}": may not be the clusterIP of a Service ({NS}/db)"#
            )),
            "{stderr}"
        );
    } else {
        eprintln!("kubectl not found: skipping the kubectl-visible check");
    }

    portico_webhook::unregister(&client, &reg.name)
        .await
        .expect("unregister");
    let _ = stop_server.send(());
    let _ = handle.await;
    let _ = stop_tx.send(());
    let _ = watch.await;
}
