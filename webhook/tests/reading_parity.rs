//! The webhook reads review objects with its own reader of checked JSON
//! (`validation::json::decode`); these tests hold it to what serde_json-based reading answered
//! before it (recorded at 09294d8, in `reading_parity/answers.txt`): decode errors at any depth,
//! duplicate members, lists given as tuples, escapes, and the ratcheting limit.
use std::time::Duration;

use portico_webhook::validation::Options;
use portico_webhook::{Endpoint, Handlers, Validator};

fn review(group: &str, version: &str, kind: &str, op: &str, object: &str, old: Option<&str>) -> String {
    let old = old.map(|o| format!(r#","oldObject":{o}"#)).unwrap_or_default();
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"{group}","version":"{version}","kind":"{kind}"}},"resource":{{"group":"{group}","version":"{version}","resource":"x"}},"operation":"{op}","namespace":"ns","name":"n","object":{object}{old}}}}}"#
    )
}

fn cases() -> Vec<String> {
    let pod = |o: &str| review("", "v1", "Pod", "CREATE", o, None);
    let deploy = |o: &str| review("apps", "v1", "Deployment", "CREATE", o, None);
    let svc = |o: &str| review("", "v1", "Service", "CREATE", o, None);
    let ep = |o: &str| review("", "v1", "Endpoints", "CREATE", o, None);
    let eps = |o: &str| review("discovery.k8s.io", "v1", "EndpointSlice", "CREATE", o, None);
    let v = vec![
        pod(r#"{"kind":"Pod","spec":{"containers":[{"name":"a","ports":[{"containerPort":4294967296}]}]}}"#),
        pod(r#"{"kind":"Pod","spec":{"containers":[{"name":"a","ports":[{"containerPort":1.5}]}]}}"#),
        pod(r#"{"kind":"Pod","spec":{"containers":[{"name":"a","ports":[{"containerPort":"80"}]}]}}"#),
        pod(r#"{"kind":"Pod","spec":{"containers":[{"name":"a","ports":[7]}]}}"#),
        pod(r#"{"kind":"Pod","spec":{"containers":[{"name":"a","ports":{"a":1}}]}}"#),
        pod(r#"{"kind":"Pod","spec":{"containers":[{"name":"a","ports":[{"name":7,"containerPort":1}]}]}}"#),
        pod(
            r#"{"kind":"Pod","spec":{"containers":[{"name":"a","livenessProbe":{"httpGet":{"port":1.5}}}]}}"#,
        ),
        deploy(
            r#"{"kind":"Deployment","spec":{"template":{"spec":{"containers":[{"name":"a","ports":[{"containerPort":4294967296}]}]}}}}"#,
        ),
        deploy(
            r#"{"kind":"Deployment","spec":{"template":{"spec":{"containers":[{},{"name":"a","ports":[{"containerPort":"x"}]}]}}}}"#,
        ),
        svc(r#"{"kind":"Service","spec":{"ports":[{"port":1.5}]}}"#),
        svc(
            r#"{"kind":"Service","spec":{"ports":[{"port":80,"name":"a"},{"port":81,"name":"a"},{"port":4294967296}]}}"#,
        ),
        ep(r#"{"kind":"Endpoints","subsets":[{"addresses":[{"ip":"127.0.0.1"},{"ip":7}]}]}"#),
        ep(r#"{"kind":"Endpoints","subsets":[{"addresses":[{"ip":"127.0.0.1"}]}],"subsets":[]}"#),
        eps(r#"{"kind":"EndpointSlice","addressType":"IPv4","endpoints":[{"addresses":["127.0.0.1",7]}]}"#),
        eps(r#"{"kind":"EndpointSlice","addressType":"IPv4","endpoints":[{"addresses":null}]}"#),
        ep(r#"[{"labels":{"endpoints.kubernetes.io/managed-by":"x"}}]"#),
        eps(r#"[{"labels":{"endpointslice.kubernetes.io/managed-by":"x"}}]"#),
        ep(r#"[{"name":"kubernetes","namespace":"default"}]"#),
        ep(r#"[{"name":"x"}]"#),
        ep(
            r#"{"kind":"Endpoints","metadata":{"name":"x"},"subsets":[{"addresses":[{"ip":"127.0.0.1"}]}],"kind":"Endpoints"}"#,
        ),
        ep(
            r#"{"kind":"Endpoints","metadata":{"labels":{"endpoints.kubernetes.io/managed-by":"x"}},"metadata":{"name":"y"},"subsets":[{"addresses":[{"ip":"127.0.0.1"}]}]}"#,
        ),
        eps(r#"{"kind":"EndpointSlice","addressType":"IPv4","addressType":"IPv6","endpoints":[]}"#),
        ep(r#"{"kind":"Endpoints","subsets":[[[{"ip":"127.0.0.1"}],[{"ip":"::1"}]]]}"#),
        eps(r#"{"kind":"EndpointSlice","addressType":"IPv4","endpoints":[[["127.0.0.1"]]]}"#),
        svc(r#"{"kind":"Service","spec":{"ports":[{"port":80,"name":"\u0061"},{"port":81,"name":"a"}]}}"#),
        pod(
            r#"{"kind":"Pod","spec":{"initContainers":[{"ports":[{"hostPort":1,"containerPort":1}]},{},{"ports":[{"hostPort":1,"containerPort":1}]}],"containers":[{"ports":[{"hostPort":1,"containerPort":1}]}]}}"#,
        ),
        pod(
            r#"{"kind":"Pod","spec":{"containers":[{"name":"a","ports":[{"name":"http","containerPort":1}],"livenessProbe":{"httpGet":{"port":"htt\u0070"}}},{"name":"b","livenessProbe":{"httpGet":{"port":"http"}}}]}}"#,
        ),
    ];
    v
}

#[tokio::test]
async fn answers_are_the_recorded_ones() {
    let handlers = Handlers::new(Validator::new(Options::default()));
    let mut got = String::new();
    for (i, body) in cases().iter().enumerate() {
        let a = handlers
            .answer(Endpoint::Validate, body.as_bytes(), Duration::from_secs(5), None)
            .await;
        let line = format!("CASE {i}: {} {}", a.http_status, String::from_utf8_lossy(&a.body));
        got.push_str(&line);
        got.push('\n');
    }
    assert_eq!(got, include_str!("reading_parity/answers.txt"));
}

/// An UPDATE whose old object has more errors than the ratchet remembers (KNOWN_LIMIT = 2^18):
/// the boundary falls inside a subset's `notReadyAddresses`, and the old object's first 2^18
/// errors in document order are the ones remembered.
#[tokio::test]
async fn the_ratchet_remembers_the_first_errors_in_document_order() {
    let addresses = vec![r#"{"ip":"::"}"#; (1 << 18) - 4].join(",");
    let not_ready = [r#"{"ip":"::"}"#; 10].join(",");
    let object = format!(
        r#"{{"kind":"Endpoints","metadata":{{"name":"n"}},"subsets":[{{"addresses":[{addresses}],"notReadyAddresses":[{not_ready}]}}]}}"#
    );
    let body = review("", "v1", "Endpoints", "UPDATE", &object, Some(&object));
    let handlers = Handlers::new(Validator::new(Options::default()));
    let a = handlers
        .answer(Endpoint::Validate, body.as_bytes(), Duration::from_secs(60), None)
        .await;
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let fields: Vec<String> = v["response"]["status"]["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["field"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<String> = (4..10)
        .map(|j| format!("subsets[0].notReadyAddresses[{j}].ip"))
        .collect();
    assert_eq!(fields, expected);
}

/// Keys read as `IgnoredAny` are still decoded, as serde_json's key reader does: a lone
/// surrogate is an error.
#[test]
fn an_escaped_key_is_decoded_even_when_ignored() {
    use portico_webhook::validation::json::count_members;
    let expected = [None, None, Some(1)];
    for (text, want) in [
        r#"{"\ud800": 1}"#,
        r#"{"a": 1, "\udc00x": 2}"#,
        r#"{"\u0061": 1}"#,
    ]
    .iter()
    .zip(expected)
    {
        let raw: &serde_json::value::RawValue = serde_json::from_str(text).unwrap();
        assert_eq!(count_members(raw), want, "{text}");
    }
}

/// Keys are strings to the reader (documented in `trusted.rs`): unlike serde_json, it does not
/// parse `"1"` as a number for an integer key type. No type the rules read has one.
#[test]
fn keys_are_handed_over_as_strings() {
    use std::collections::BTreeMap;
    let raw: &serde_json::value::RawValue = serde_json::from_str(r#"{"1": 2}"#).unwrap();
    let read =
        portico_webhook::validation::json::decode::<BTreeMap<i32, i32>>(raw).map_err(|e| e.to_string());
    assert_eq!(read, Err(r#"invalid type: string "1", expected i32"#.to_owned()));
    let read = portico_webhook::validation::json::decode::<BTreeMap<String, i32>>(raw).unwrap();
    assert_eq!(read, BTreeMap::from([("1".to_owned(), 2)]));
}

/// The same boundary, with a verdict at stake: the UPDATE removes six of the ten not-ready
/// addresses, so every error of the new object was in the old one, and among the first 2^18
/// of them: allowed (a reader that remembered a random four of the ten refused it).
#[tokio::test]
async fn an_update_keeping_only_remembered_errors_is_allowed() {
    let addresses = vec![r#"{"ip":"::"}"#; (1 << 18) - 4].join(",");
    let object = |n: usize| {
        let not_ready = vec![r#"{"ip":"::"}"#; n].join(",");
        format!(
            r#"{{"kind":"Endpoints","metadata":{{"name":"n"}},"subsets":[{{"addresses":[{addresses}],"notReadyAddresses":[{not_ready}]}}]}}"#
        )
    };
    let body = review("", "v1", "Endpoints", "UPDATE", &object(4), Some(&object(10)));
    let handlers = Handlers::new(Validator::new(Options::default()));
    let a = handlers
        .answer(Endpoint::Validate, body.as_bytes(), Duration::from_secs(60), None)
        .await;
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["response"]["allowed"], serde_json::Value::Bool(true));
}
