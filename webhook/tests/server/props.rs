//! Hostile and random bodies: the request path never panics and always gives a well-formed answer.

use std::time::Duration;

use portico_webhook::validation::Options;
use portico_webhook::{Endpoint, Handlers, Validator};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::fixtures::{deployment, pod, review, service};

fn answer(body: &[u8]) -> portico_webhook::Answer {
    let handlers = Handlers::new(Validator::new(Options::default()));
    futures::executor::block_on(handlers.answer(Endpoint::Validate, body, Duration::from_secs(1), None))
}

/// Checks the answer to `body` is one the apiserver can use: either HTTP 400 text, or HTTP 200
/// with an AdmissionReview that echoes the uid and, when it refuses, a coherent status.
fn well_formed(body: &[u8]) -> Result<(), TestCaseError> {
    let a = answer(body);
    if a.http_status == 400 {
        prop_assert!(a.content_type.starts_with("text/plain"));
        prop_assert!(!a.body.is_empty());
        return Ok(());
    }
    prop_assert_eq!(a.http_status, 200);
    let v: Value = serde_json::from_slice(&a.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&v["apiVersion"], "admission.k8s.io/v1");
    prop_assert_eq!(&v["kind"], "AdmissionReview");
    let sent: Value = serde_json::from_slice(body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&v["response"]["uid"], &sent["request"]["uid"]);
    let r = &v["response"];
    prop_assert!(r["allowed"].is_boolean());
    prop_assert!(r.get("patch").is_none());
    if r["allowed"] == false {
        let code = r["status"]["code"].as_i64().unwrap_or(0);
        prop_assert!(code == 400 || code == 422, "code {}", code);
        prop_assert!(!r["status"]["message"].as_str().unwrap_or_default().is_empty());
        if code == 422 {
            prop_assert_eq!(&r["status"]["reason"], "Invalid");
            prop_assert!(
                !r["status"]["details"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
            );
            prop_assert!(
                !r["status"]["details"]["causes"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
            );
        }
    }
    for w in r["warnings"].as_array().into_iter().flatten() {
        prop_assert!(!w.as_str().unwrap_or_default().chars().any(char::is_control));
    }
    Ok(())
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-zA-Z0-9 _.-]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_owned()),
                    Just("port".to_owned()),
                    Just("ports".to_owned()),
                    Just("containers".to_owned()),
                    Just("spec".to_owned()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Valid reviews of every kind Portico judges, before being damaged.
fn base_review() -> impl Strategy<Value = Value> {
    let p = pod("web-0", &[("http", 8080)], json!("metrics"));
    let d = deployment("web", &[("http", 8080)], json!("http"));
    let s = service("web", &[("", 80, json!("http")), ("b", 81, json!(81))]);
    let kinds = [("", "Pod", p), ("apps", "Deployment", d), ("", "Service", s)];
    (
        0..kinds.len(),
        prop_oneof![Just("CREATE"), Just("UPDATE"), Just("DELETE")],
    )
        .prop_map(move |(i, op)| {
            let (group, kind, obj) = kinds[i].clone();
            let old = if op == "CREATE" { Value::Null } else { obj.clone() };
            let obj = if op == "DELETE" { Value::Null } else { obj };
            review("uid-1", group, kind, op, obj, old)
        })
}

/// Every path to a value inside `v` (object keys and array indexes).
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(k.clone());
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                prefix.push(i.to_string());
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        well_formed(&body)?;
    }

    #[test]
    fn arbitrary_json(value in json()) {
        well_formed(&serde_json::to_vec(&value).unwrap())?;
    }

    #[test]
    fn arbitrary_requests(request in json()) {
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
        well_formed(&serde_json::to_vec(&body).unwrap())?;
    }

    /// A real review with one value anywhere replaced by arbitrary JSON, or removed.
    #[test]
    fn damaged_reviews(base in base_review(), pick in any::<prop::sample::Index>(), with in json(), remove in any::<bool>()) {
        let mut v = base;
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        if remove && !path.is_empty() {
            let (last, parent) = path.split_last().unwrap();
            match at(&mut v, parent) {
                Some(Value::Object(m)) => { m.remove(last); }
                Some(Value::Array(a)) => {
                    if let Ok(i) = last.parse::<usize>() && i < a.len() {
                        a.remove(i);
                    }
                }
                _ => {}
            }
        } else if let Some(slot) = at(&mut v, &path) {
            *slot = with;
        }
        well_formed(&serde_json::to_vec(&v).unwrap())?;
    }

    /// Truncated reviews are JSON errors, never panics.
    #[test]
    fn truncated_reviews(base in base_review(), cut in any::<prop::sample::Index>()) {
        let body = serde_json::to_vec(&base).unwrap();
        let n = cut.index(body.len());
        well_formed(&body[..n])?;
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let depth = 100_000;
    let mut body = String::from(
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"d","object":"#,
    );
    body.push_str(&"[".repeat(depth));
    body.push_str(&"]".repeat(depth));
    body.push_str("}}");
    // Parts of the body no rule reads are skipped without recursion (any depth, no stack); here
    // the object is an array, and the review has no kind: refused, naming the field.
    let a = answer(body.as_bytes());
    assert_eq!(a.http_status, 200);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["response"]["uid"], "d");
    assert_eq!(v["response"]["status"]["code"], 400, "{v}");
    // Where a rule does read, the decoder stops at the first level of the wrong type.
    let mut svc = String::from(r#"{"kind":"Service","metadata":{"name":"s"},"spec":{"ports":"#);
    svc.push_str(&"[".repeat(depth));
    svc.push_str(&"]".repeat(depth));
    svc.push_str("}}");
    let body = serde_json::to_vec(&review("d2", "", "Service", "CREATE", Value::Null, Value::Null)).unwrap();
    let body =
        String::from_utf8(body)
            .unwrap()
            .replacen(r#""object":null"#, &format!(r#""object":{svc}"#), 1);
    let a = answer(body.as_bytes());
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["response"]["status"]["code"], 400, "{v}");
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot decode request.object.spec: invalid type: sequence, expected ServicePort"),
        "{v}"
    );
}

#[test]
fn numbers_beyond_int32_are_bad_requests() {
    for bad in [json!(80.5), json!(1_u64 << 40), json!(-1_i64 << 40), json!("80")] {
        let mut p = pod("web-0", &[("http", 8080)], json!("http"));
        p["spec"]["containers"][0]["ports"][0]["containerPort"] = bad.clone();
        let body = serde_json::to_vec(&review("n", "", "Pod", "CREATE", p, Value::Null)).unwrap();
        let a = answer(&body);
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["response"]["status"]["code"], 400, "{bad}: {v}");
    }
}
