//! AdmissionReview fixtures through the router, as the apiserver would send them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use portico_webhook::validation::Options;
use portico_webhook::{AdmissionRequest, Handlers, Mutate, Validator, Verdict, app};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::fixtures::{deployment, pod, review, service};

fn router(handlers: Handlers) -> Router {
    app(handlers, &prometheus::Registry::new(), 8 << 20).expect("router")
}

fn validator() -> Router {
    router(Handlers::new(Validator::new(Options::default())))
}

async fn call(app: &Router, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, String, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, ctype, body.to_vec())
}

/// Posts a review and returns its `response`, after checking the envelope and the uid.
async fn answer(app: &Router, path: &str, review: &Value) -> Value {
    let (status, ctype, body) = call(app, "POST", path, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ctype, "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], review["request"]["uid"]);
    if path.starts_with("/validate") {
        assert!(v["response"].get("patch").is_none() && v["response"].get("patchType").is_none());
    }
    v["response"].clone()
}

fn assert_allowed(r: &Value) {
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("status").is_none(), "{r}");
}

#[tokio::test]
async fn undeclared_probe_port_is_refused_like_the_apiserver_would() {
    let app = validator();
    let obj = pod("web-0", &[("http", 8080)], json!("metrics"));
    let r = answer(
        &app,
        "/validate?timeout=5s",
        &review("u1", "", "Pod", "CREATE", obj, Value::Null),
    )
    .await;
    assert_eq!(r["allowed"], false);
    let field = "spec.containers[0].readinessProbe.httpGet.port";
    let body = r#"Invalid value: "metrics": no port named "metrics" is declared by container "app""#;
    assert_eq!(
        r["status"],
        json!({
            "status": "Failure",
            "code": 422,
            "reason": "Invalid",
            "message": format!("Pod \"web-0\" is invalid: {field}: {body}"),
            "details": {"name": "web-0", "kind": "Pod", "causes": [
                {"reason": "FieldValueInvalid", "message": body, "field": field}
            ]}
        })
    );
}

#[tokio::test]
async fn valid_objects_are_allowed_silently() {
    let app = validator();
    let p = pod("web-0", &[("http", 8080)], json!("http"));
    assert_allowed(
        &answer(
            &app,
            "/validate",
            &review("u", "", "Pod", "CREATE", p, Value::Null),
        )
        .await,
    );
    let d = deployment("web", &[("http", 8080)], json!(8080));
    let r = answer(
        &app,
        "/validate",
        &review("u", "apps", "Deployment", "CREATE", d, Value::Null),
    )
    .await;
    assert_allowed(&r);
    assert!(r.get("warnings").is_none());
    let s = service(
        "web",
        &[("http", 80, json!("http")), ("metrics", 9090, json!(9090))],
    );
    assert_allowed(
        &answer(
            &app,
            "/validate",
            &review("u", "", "Service", "CREATE", s, Value::Null),
        )
        .await,
    );
}

#[tokio::test]
async fn workload_templates_are_refused_with_the_qualified_kind() {
    let app = validator();
    let d = deployment("web", &[("http", 8080)], json!("healthz"));
    let r = answer(
        &app,
        "/validate",
        &review("u2", "apps", "Deployment", "CREATE", d, Value::Null),
    )
    .await;
    let s = &r["status"];
    assert_eq!(
        (s["code"].as_i64(), s["reason"].as_str()),
        (Some(422), Some("Invalid"))
    );
    assert_eq!(
        s["message"],
        "Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].readinessProbe.httpGet.port: \
         Invalid value: \"healthz\": no port named \"healthz\" is declared by container \"app\""
    );
    assert_eq!(s["details"]["group"], "apps");
    assert_eq!(s["details"]["kind"], "Deployment");
}

#[tokio::test]
async fn every_cause_is_listed() {
    let app = validator();
    let s = service("web", &[("", 80, json!(8080)), ("", 81, json!(8081))]);
    let r = answer(
        &app,
        "/validate",
        &review("u3", "", "Service", "CREATE", s, Value::Null),
    )
    .await;
    assert_eq!(
        r["status"]["message"],
        "Service \"web\" is invalid: [spec.ports[0].name: Required value, spec.ports[1].name: Required value]"
    );
    let causes = r["status"]["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 2);
    assert_eq!(
        causes[1],
        json!({"reason": "FieldValueRequired", "message": "Required value", "field": "spec.ports[1].name"})
    );
}

#[tokio::test]
async fn updates_are_ratcheted() {
    let app = validator();
    let old = pod("web-0", &[("http", 8080)], json!("metrics"));
    // The violation was already there: the update (say, an image change) goes through.
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("nginx:2");
    let r = answer(
        &app,
        "/validate",
        &review("u4", "", "Pod", "UPDATE", new.clone(), old.clone()),
    )
    .await;
    assert_allowed(&r);
    // A violation the update introduces is refused, and only it is reported.
    new["spec"]["containers"][0]["livenessProbe"] = json!({"tcpSocket": {"port": "admin"}});
    let r = answer(
        &app,
        "/validate",
        &review("u5", "", "Pod", "UPDATE", new.clone(), old.clone()),
    )
    .await;
    let causes = r["status"]["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{r}");
    assert_eq!(
        causes[0]["field"],
        "spec.containers[0].livenessProbe.tcpSocket.port"
    );
    // An object being deleted is never blocked (finalizer removal is an UPDATE).
    let mut dying = new.clone();
    dying["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    assert_allowed(&answer(&app, "/validate", &review("u6", "", "Pod", "UPDATE", dying, old)).await);
}

#[tokio::test]
async fn deletes_connects_subresources_and_other_kinds_are_allowed() {
    let app = validator();
    let bad = pod("web-0", &[("http", 8080)], json!("metrics"));
    for (op, object, old) in [
        ("DELETE", Value::Null, bad.clone()),
        (
            "CONNECT",
            json!({"kind": "PodExecOptions", "apiVersion": "v1", "command": ["sh"]}),
            Value::Null,
        ),
    ] {
        let r = answer(&app, "/validate", &review("u7", "", "Pod", op, object, old)).await;
        assert_allowed(&r);
    }
    let mut status = review("u8", "", "Pod", "UPDATE", bad.clone(), bad.clone());
    status["request"]["subResource"] = json!("status");
    status["request"]["object"]["spec"]["containers"][0]["livenessProbe"] =
        json!({"tcpSocket": {"port": "nope"}});
    assert_allowed(&answer(&app, "/validate", &status).await);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let r = answer(
        &app,
        "/validate",
        &review("u9", "", "ConfigMap", "CREATE", cm, Value::Null),
    )
    .await;
    assert_allowed(&r);
    assert!(r.get("warnings").is_none());
    // A custom resource that happens to be called Deployment is not Portico's business.
    let mut crd = deployment("web", &[("http", 8080)], json!("nope"));
    crd["apiVersion"] = json!("example.com/v1");
    let r = answer(
        &app,
        "/validate",
        &review("u10", "example.com", "Deployment", "CREATE", crd, Value::Null),
    )
    .await;
    assert_allowed(&r);
}

#[tokio::test]
async fn unreadable_objects_are_bad_requests_naming_the_path() {
    let app = validator();
    let r = answer(
        &app,
        "/validate",
        &review("u11", "", "Pod", "CREATE", Value::Null, Value::Null),
    )
    .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert_eq!(r["status"]["reason"], "BadRequest");
    assert_eq!(
        r["status"]["message"],
        "request.object is required: a CREATE review of a Pod carries the object"
    );

    let mut p = pod("web-0", &[("http", 8080)], json!("http"));
    p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("eighty");
    let r = answer(
        &app,
        "/validate",
        &review("u12", "", "Pod", "CREATE", p, Value::Null),
    )
    .await;
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("cannot decode request.object.spec: invalid type: string \"eighty\""),
        "{msg}"
    );

    let d = deployment("web", &[("http", 8080)], json!("http"));
    let mut d2 = d.clone();
    d2["spec"]["template"] = json!(7);
    let r = answer(
        &app,
        "/validate",
        &review("u13", "apps", "Deployment", "CREATE", d2, Value::Null),
    )
    .await;
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("cannot decode request.object.spec.template: "),
        "{msg}"
    );

    let r = answer(
        &app,
        "/validate",
        &review("u14", "", "Service", "CREATE", d, Value::Null),
    )
    .await;
    assert_eq!(
        r["status"]["message"],
        "request.object.kind: \"Deployment\" does not match request.kind.kind \"Service\""
    );
    assert_eq!(r["status"]["code"], 400);
}

#[tokio::test]
async fn dry_runs_get_the_same_answer() {
    let app = validator();
    for object in [
        pod("web-0", &[("http", 8080)], json!("metrics")),
        pod("web-0", &[("http", 8080)], json!("http")),
    ] {
        let real = review("u15", "", "Pod", "CREATE", object, Value::Null);
        let mut dry = real.clone();
        dry["request"]["dryRun"] = json!(true);
        assert_eq!(
            answer(&app, "/validate", &real).await,
            answer(&app, "/validate", &dry).await
        );
    }
}

fn running_pod(name: &str, port_name: &str) -> Pod {
    let mut p = pod(name, &[(port_name, 8080)], json!(8080));
    p["status"] = json!({"phase": "Running"});
    serde_json::from_value(p).unwrap()
}

#[tokio::test]
async fn unresolvable_target_ports_get_a_warning_naming_the_pods() {
    let pods = [
        Arc::new(running_pod("web-0", "web")),
        Arc::new(running_pod("web-1", "http")),
        Arc::new({
            let mut p = running_pod("web-2", "web");
            p.status.as_mut().unwrap().phase = Some("Succeeded".into());
            p
        }),
        Arc::new({
            let mut p = running_pod("other", "web");
            p.metadata.namespace = Some("elsewhere".into());
            p
        }),
    ];
    let index = move |ns: &str| -> Vec<Arc<Pod>> {
        pods.iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .cloned()
            .collect()
    };
    let app = router(Handlers::new(
        Validator::new(Options::default()).with_pods(Arc::new(index)),
    ));
    let s = service("web", &[("http", 80, json!("http"))]);
    let r = answer(
        &app,
        "/validate",
        &review("u16", "", "Service", "CREATE", s, Value::Null),
    )
    .await;
    assert_eq!(r["allowed"], true);
    assert_eq!(
        r["warnings"],
        json!([
            "spec.ports[0].targetPort: pod \"web-0\" declares no port named \"http\", so it is not an endpoint of this Service port"
        ])
    );
    // Numeric target ports need no lookup.
    let s = service("web", &[("http", 80, json!(8080))]);
    let r = answer(
        &app,
        "/validate",
        &review("u17", "", "Service", "CREATE", s, Value::Null),
    )
    .await;
    assert!(r.get("warnings").is_none(), "{r}");
}

#[tokio::test]
async fn bodies_that_are_not_reviews_get_400_text() {
    let app = validator();
    for (body, want) in [
        (&b"not json"[..], "request body is not JSON"),
        (b"{}", "apiVersion is missing"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
            "v1beta1",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "no request",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
            "no uid",
        ),
    ] {
        let (status, ctype, out) = call(&app, "POST", "/validate", body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(ctype.starts_with("text/plain"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(want), "{text}");
    }
    // A review without a readable request kind is still answered, with its uid.
    let r = answer(
        &app,
        "/validate",
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u18", "kind": 5, "operation": "CREATE"}}),
    )
    .await;
    assert_eq!(r["status"]["code"], 400);
}

#[tokio::test]
async fn large_bodies_up_to_the_limit_are_read_and_larger_ones_refused() {
    let app = router(Handlers::default());
    // A 6 MiB object (an UPDATE of a big Pod) is fine.
    let mut p = pod("big", &[("http", 8080)], json!("http"));
    p["metadata"]["annotations"] = json!({"blob": "x".repeat(6 << 20)});
    let r = answer(
        &app,
        "/validate",
        &review("u19", "", "Pod", "CREATE", p, Value::Null),
    )
    .await;
    assert_allowed(&r);
    let (status, _, _) = call(&app, "POST", "/validate", vec![b' '; 9 << 20]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn health_readiness_metrics_and_unknown_routes() {
    let registry = prometheus::Registry::new();
    let app = app(Handlers::default(), &registry, 1 << 20).unwrap();
    assert_eq!(call(&app, "GET", "/healthz", vec![]).await.0, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/readyz", vec![]).await.0, StatusCode::OK);
    let bad = pod("web-0", &[("http", 8080)], json!("metrics"));
    answer(
        &app,
        "/validate",
        &review("u20", "", "Pod", "CREATE", bad, Value::Null),
    )
    .await;
    call(&app, "POST", "/validate", b"nope".to_vec()).await;
    let (status, ctype, body) = call(&app, "GET", "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    for want in [
        r#"portico_webhook_requests_total{dry_run="false",kind="Pod",operation="CREATE",result="denied",webhook="validate"} 1"#,
        r#"portico_webhook_requests_total{dry_run="false",kind="unknown",operation="unknown",result="malformed",webhook="validate"} 1"#,
        r#"portico_webhook_request_duration_seconds_count{kind="Pod",operation="CREATE",result="denied",webhook="validate"} 1"#,
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    assert_eq!(
        call(&app, "GET", "/validate", vec![]).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(call(&app, "GET", "/nope", vec![]).await.0, StatusCode::NOT_FOUND);
}

struct Stamp {
    delay: Duration,
}

impl Mutate for Stamp {
    fn mutate<'a>(&'a self, request: &'a AdmissionRequest) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            let dry = request.dry_run;
            Verdict::allow()
                .with_patch(json!([{"op": "add", "path": "/metadata/labels/dry", "value": dry.to_string()}]))
        })
    }

    fn ready(&self) -> bool {
        !self.delay.is_zero()
    }
}

#[tokio::test]
async fn the_mutating_endpoint_takes_a_pluggable_handler() {
    let s = service("web", &[("http", 80, json!(80))]);
    let rv = review("u21", "", "Service", "CREATE", s, Value::Null);
    // No mutator: admitted unchanged.
    let r = answer(&router(Handlers::default()), "/mutate", &rv).await;
    assert_allowed(&r);
    assert!(r.get("patch").is_none());
    // A mutator's patch goes out base64-encoded, typed JSONPatch.
    let app = router(Handlers::default().with_mutator(Arc::new(Stamp {
        delay: Duration::from_millis(1),
    })));
    let r = answer(&app, "/mutate", &rv).await;
    assert_eq!(r["patchType"], "JSONPatch");
    assert!(r["patch"].as_str().unwrap().starts_with("W3sib3Ai"), "{r}"); // base64 of `[{"op"`
    // Running out of time is a 500, not a hang.
    let app = router(Handlers::default().with_mutator(Arc::new(Stamp {
        delay: Duration::from_secs(5),
    })));
    let r = answer(&app, "/mutate?timeout=1s", &rv).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 500);
    // Readiness follows the mutator.
    let app = router(Handlers::default().with_mutator(Arc::new(Stamp {
        delay: Duration::ZERO,
    })));
    assert_eq!(
        call(&app, "GET", "/readyz", vec![]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
