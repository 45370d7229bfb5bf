//! AdmissionReview fixtures.

use serde_json::{Value, json};

/// An AdmissionReview v1 request for `object` (and `old`), as the apiserver sends it.
pub fn review(uid: &str, group: &str, kind: &str, op: &str, object: Value, old: Value) -> Value {
    let version = "v1";
    let resource = format!("{}s", kind.to_lowercase());
    let name = object["metadata"]["name"]
        .as_str()
        .or(old["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": name,
            "namespace": "default",
            "operation": op,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// A Pod named `name` whose container `app` declares `ports` (name, number) and whose readiness
/// probe uses `probe_port`.
pub fn pod(name: &str, ports: &[(&str, i64)], probe_port: Value) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "nginx",
                "ports": ports,
                "readinessProbe": {"httpGet": {"path": "/", "port": probe_port, "scheme": "HTTP"}}
            }]
        }
    })
}

/// A Deployment `name` whose template is the spec of [`pod`].
pub fn deployment(name: &str, ports: &[(&str, i64)], probe_port: Value) -> Value {
    let p = pod("ignored", ports, probe_port);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": p["spec"].clone()}
        }
    })
}

/// A Service `name` selecting `app: web` with `ports` (name, port, targetPort).
pub fn service(name: &str, ports: &[(&str, i64, Value)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, t)| {
            let mut port = json!({"port": p, "protocol": "TCP", "targetPort": t});
            if !n.is_empty() {
                port["name"] = json!(n);
            }
            port
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": ports, "type": "ClusterIP", "clusterIP": "10.96.0.10"}
    })
}
