//! The endpoint-address rules through the Validator: which Endpoints and EndpointSlice reviews are
//! judged, the shape of the refusal, controller-managed objects, and ratcheting on UPDATE.

use std::sync::Arc;

use portico_webhook::review::{Decoded, decode_value};
use portico_webhook::validation::Options;
use portico_webhook::validation::endpoints::static_service_ips;
use portico_webhook::{AdmissionRequest, ClusterIpIndex, Validator, Verdict};
use serde_json::{Value, json};

fn validator() -> Validator {
    Validator::new(Options::default()).with_service_ips(Arc::new(static_service_ips([
        ("default", "kubernetes", &["10.96.0.1"][..]),
        ("db", "postgres", &["10.96.0.20", "fd00:10:96::20"][..]),
        ("app", "ext", &["10.96.0.30"][..]),
    ])))
}

fn request(
    group: &str,
    kind: &str,
    op: &str,
    ns: &str,
    object: Value,
    old: Value,
) -> AdmissionRequest<'static> {
    let resource = if kind == "Endpoints" {
        "endpoints"
    } else {
        "endpointslices"
    };
    let name = object["metadata"]["name"]
        .as_str()
        .or(old["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "name": name, "namespace": ns, "operation": op,
            "object": object, "oldObject": old, "dryRun": false,
        }
    });
    match decode_value(review).expect("a review") {
        Decoded::Request(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn endpoints(name: &str, labels: Value, ready: &[&str], not_ready: &[&str]) -> Value {
    let addrs = |ips: &[&str]| ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "app", "labels": labels},
        "subsets": [{"addresses": addrs(ready), "notReadyAddresses": addrs(not_ready), "ports": [{"port": 5432}]}]
    })
}

fn slice(name: &str, labels: Value, family: &str, ips: &[&str]) -> Value {
    let eps: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "app", "labels": labels},
        "addressType": family, "endpoints": eps, "ports": [{"port": 5432, "protocol": "TCP"}]
    })
}

fn create_ep(obj: Value) -> Verdict {
    validator().validate(&request("", "Endpoints", "CREATE", "app", obj, Value::Null))
}

fn create_slice(obj: Value) -> Verdict {
    validator().validate(&request(
        "discovery.k8s.io",
        "EndpointSlice",
        "CREATE",
        "app",
        obj,
        Value::Null,
    ))
}

/// `(field, cause message)` of a refusal, or `None` when admitted.
fn causes(v: &Verdict) -> Option<Vec<(String, String)>> {
    if v.allowed {
        assert!(v.warnings.is_empty(), "{v:?}");
        return None;
    }
    let s = v.status.as_ref().expect("status");
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    let d = s.details.as_ref().expect("details");
    Some(
        d.causes
            .iter()
            .map(|c| {
                assert_eq!(c.reason, "FieldValueInvalid");
                (c.field.clone(), c.message.clone())
            })
            .collect(),
    )
}

const LOOPBACK: &str = "may not be in the loopback range (127.0.0.0/8, ::1/128)";
const LINK_LOCAL: &str = "may not be in the link-local range (169.254.0.0/16, fe80::/10)";
const LL_MULTICAST: &str = "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)";

#[test]
fn endpoints_addresses_table() {
    // (address, detail of the refusal or None)
    let cases: &[(&str, Option<String>)] = &[
        ("10.1.0.5", None),
        ("2001:db8::5", None),
        ("127.0.0.1", Some(LOOPBACK.into())),
        ("::1", Some(LOOPBACK.into())),
        ("169.254.10.1", Some(LINK_LOCAL.into())),
        ("fe80::5", Some(LINK_LOCAL.into())),
        ("224.0.0.5", Some(LL_MULTICAST.into())),
        ("ff02::5", Some(LL_MULTICAST.into())),
        ("0.0.0.0", Some("may not be unspecified (0.0.0.0)".into())),
        ("::", Some("may not be unspecified (::)".into())),
        (
            "10.96.0.20",
            Some("may not be the clusterIP of a Service (db/postgres)".into()),
        ),
        (
            "fd00:10:96::20",
            Some("may not be the clusterIP of a Service (db/postgres)".into()),
        ),
        // The Service's own clusterIP (Endpoints "ext" of Service app/ext) too.
        (
            "10.96.0.30",
            Some("may not be the clusterIP of a Service (app/ext)".into()),
        ),
    ];
    for (ip, want) in cases {
        for (list, ready, not_ready) in [
            ("addresses", vec![*ip], vec![]),
            ("notReadyAddresses", vec![], vec![*ip]),
        ] {
            let got = causes(&create_ep(endpoints("ext", json!({}), &ready, &not_ready)));
            let want = want.as_ref().map(|d| {
                vec![(
                    format!("subsets[0].{list}[0].ip"),
                    format!("Invalid value: {ip:?}: {d}"),
                )]
            });
            assert_eq!(got, want, "{ip} in {list}");
        }
    }
}

#[test]
fn endpoint_slice_addresses_table() {
    let cases: &[(&str, &str, Option<String>)] = &[
        ("IPv4", "10.1.0.5", None),
        ("IPv4", "127.0.0.1", Some(LOOPBACK.into())),
        ("IPv4", "169.254.169.254", Some(LINK_LOCAL.into())),
        ("IPv4", "224.0.0.251", Some(LL_MULTICAST.into())),
        ("IPv4", "0.0.0.0", Some("may not be unspecified (0.0.0.0)".into())),
        (
            "IPv4",
            "10.96.0.1",
            Some("may not be the clusterIP of a Service (default/kubernetes)".into()),
        ),
        ("IPv6", "2001:db8::5", None),
        ("IPv6", "::1", Some(LOOPBACK.into())),
        ("IPv6", "fe80::1", Some(LINK_LOCAL.into())),
        ("IPv6", "ff02::fb", Some(LL_MULTICAST.into())),
        ("IPv6", "::", Some("may not be unspecified (::)".into())),
        (
            "IPv6",
            "fd00:10:96::20",
            Some("may not be the clusterIP of a Service (db/postgres)".into()),
        ),
        ("FQDN", "localhost", None),
    ];
    for (family, ip, want) in cases {
        let got = causes(&create_slice(slice(
            "ext-abc",
            json!({}),
            family,
            &["10.1.0.9", ip],
        )));
        let want = want.as_ref().map(|d| {
            vec![(
                "endpoints[1].addresses[0]".to_owned(),
                format!("Invalid value: {ip:?}: {d}"),
            )]
        });
        assert_eq!(got, want, "{family} {ip}");
    }
}

#[test]
fn the_refusal_reads_like_the_apiservers() {
    let v = create_ep(endpoints(
        "ext",
        json!({}),
        &["10.1.0.5", "127.0.0.1"],
        &["10.96.0.20"],
    ));
    let s = v.status.expect("refused");
    assert_eq!(
        s.message,
        r#"Endpoints "ext" is invalid: [subsets[0].addresses[1].ip: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128), subsets[0].notReadyAddresses[0].ip: Invalid value: "10.96.0.20": may not be the clusterIP of a Service (db/postgres)]"#
    );
    let d = s.details.expect("details");
    assert_eq!(
        (d.group.as_str(), d.kind.as_str(), d.name.as_str()),
        ("", "Endpoints", "ext")
    );

    let v = create_slice(slice("ext-abc", json!({}), "IPv4", &["10.96.0.1"]));
    let s = v.status.expect("refused");
    assert_eq!(
        s.message,
        r#"EndpointSlice.discovery.k8s.io "ext-abc" is invalid: endpoints[0].addresses[0]: Invalid value: "10.96.0.1": may not be the clusterIP of a Service (default/kubernetes)"#
    );
    assert_eq!(s.details.expect("details").group, "discovery.k8s.io");
}

#[test]
fn controller_managed_objects_pass_untouched() {
    let bad = ["127.0.0.1", "10.96.0.20"];
    for labels in [
        json!({"endpoints.kubernetes.io/managed-by": "endpoint-controller"}),
        json!({"endpoints.kubernetes.io/managed-by": "endpoint-controller.portico"}),
        json!({"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}),
    ] {
        assert!(
            create_ep(endpoints("ext", labels.clone(), &bad, &[])).allowed,
            "{labels}"
        );
        assert!(
            create_slice(slice("ext-abc", labels.clone(), "IPv4", &bad)).allowed,
            "{labels}"
        );
    }
    for labels in [
        json!({"endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}),
        json!({"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.portico"}),
    ] {
        assert!(create_slice(slice("ext-abc", labels, "IPv4", &bad)).allowed);
    }
    // Other labels do not make an object a controller's.
    let labelled =
        json!({"kubernetes.io/service-name": "ext", "endpointslice.kubernetes.io/skip-mirror": "true"});
    assert!(!create_ep(endpoints("ext", labelled.clone(), &bad, &[])).allowed);
    assert!(!create_slice(slice("ext-abc", labelled, "IPv4", &bad)).allowed);

    // kube-apiserver's own reconciler: default/kubernetes, Endpoints and EndpointSlice, unlabelled.
    let v = validator();
    let mut ep = endpoints("kubernetes", json!({}), &["127.0.0.1"], &[]);
    ep["metadata"]["namespace"] = json!("default");
    for op in ["CREATE", "UPDATE"] {
        let old = if op == "UPDATE" { ep.clone() } else { Value::Null };
        assert!(
            v.validate(&request("", "Endpoints", op, "default", ep.clone(), old))
                .allowed
        );
    }
    let mut sl = slice(
        "kubernetes",
        json!({"kubernetes.io/service-name": "kubernetes"}),
        "IPv4",
        &["127.0.0.1"],
    );
    sl["metadata"]["namespace"] = json!("default");
    assert!(
        v.validate(&request(
            "discovery.k8s.io",
            "EndpointSlice",
            "CREATE",
            "default",
            sl,
            Value::Null
        ))
        .allowed
    );
    // The same name elsewhere is a user's.
    assert!(!create_ep(endpoints("kubernetes", json!({}), &["127.0.0.1"], &[])).allowed);
}

#[test]
fn updates_are_ratcheted() {
    let v = validator();
    let old = endpoints("ext", json!({}), &["10.1.0.5", "127.0.0.1"], &[]);
    // The violation was already there: an update that keeps it goes through.
    let mut new = old.clone();
    new["metadata"]["annotations"] = json!({"note": "x"});
    new["subsets"][0]["addresses"][0]["ip"] = json!("10.1.0.6");
    assert!(
        v.validate(&request(
            "",
            "Endpoints",
            "UPDATE",
            "app",
            new.clone(),
            old.clone()
        ))
        .allowed
    );
    // A violation the update introduces is refused, and only it is reported.
    new["subsets"][0]["notReadyAddresses"] = json!([{"ip": "10.96.0.1"}]);
    let got = causes(&v.validate(&request(
        "",
        "Endpoints",
        "UPDATE",
        "app",
        new.clone(),
        old.clone(),
    )));
    assert_eq!(
        got,
        Some(vec![(
            "subsets[0].notReadyAddresses[0].ip".to_owned(),
            r#"Invalid value: "10.96.0.1": may not be the clusterIP of a Service (default/kubernetes)"#
                .to_owned()
        )])
    );
    // An object being deleted is never blocked.
    let mut dying = new.clone();
    dying["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    assert!(
        v.validate(&request("", "Endpoints", "UPDATE", "app", dying, old.clone()))
            .allowed
    );
    // Removing a managed-by label hands the object to the rules; what it held before is ratcheted.
    let managed = endpoints(
        "ext",
        json!({"endpoints.kubernetes.io/managed-by": "endpoint-controller"}),
        &["127.0.0.1"],
        &[],
    );
    let unlabelled = endpoints("ext", json!({}), &["127.0.0.1"], &[]);
    assert!(
        v.validate(&request("", "Endpoints", "UPDATE", "app", unlabelled, managed))
            .allowed
    );

    // EndpointSlices the same way.
    let old = slice("ext-abc", json!({}), "IPv6", &["::1"]);
    let mut new = old.clone();
    new["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"addresses": ["2001:db8::7"]}));
    let r = request(
        "discovery.k8s.io",
        "EndpointSlice",
        "UPDATE",
        "app",
        new.clone(),
        old.clone(),
    );
    assert!(v.validate(&r).allowed);
    new["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"addresses": ["fe80::9"]}));
    let r = request("discovery.k8s.io", "EndpointSlice", "UPDATE", "app", new, old);
    assert_eq!(
        causes(&v.validate(&r)),
        Some(vec![(
            "endpoints[2].addresses[0]".to_owned(),
            format!(r#"Invalid value: "fe80::9": {LINK_LOCAL}"#)
        )])
    );
}

#[test]
fn deletes_subresources_and_undecodable_objects() {
    let v = validator();
    let bad = endpoints("ext", json!({}), &["127.0.0.1"], &[]);
    assert!(
        v.validate(&request(
            "",
            "Endpoints",
            "DELETE",
            "app",
            Value::Null,
            bad.clone()
        ))
        .allowed
    );
    let verdict = v.validate(&request(
        "",
        "Endpoints",
        "CREATE",
        "app",
        json!({"kind": "Endpoints", "metadata": {"name": "x"}, "subsets": 7}),
        Value::Null,
    ));
    let s = verdict.status.expect("refused");
    assert_eq!(s.code, 400);
    assert!(
        s.message.starts_with("cannot decode request.object.subsets: "),
        "{}",
        s.message
    );
    // Endpoints of another group, or a v1 "EndpointSlice" in the core group, are not ours.
    let other = v.validate(&request(
        "example.com",
        "Endpoints",
        "CREATE",
        "app",
        bad.clone(),
        Value::Null,
    ));
    assert!(other.allowed);
}

#[test]
fn without_a_service_index_only_upstreams_ranges_apply_and_a_live_index_is_followed() {
    let plain = Validator::new(Options::default());
    let r = request(
        "",
        "Endpoints",
        "CREATE",
        "app",
        endpoints("ext", json!({}), &["10.96.0.1"], &[]),
        Value::Null,
    );
    assert!(plain.validate(&r).allowed);
    let r2 = request(
        "",
        "Endpoints",
        "CREATE",
        "app",
        endpoints("ext", json!({}), &["127.0.0.1"], &[]),
        Value::Null,
    );
    assert!(!plain.validate(&r2).allowed);

    let index = Arc::new(ClusterIpIndex::new());
    let v = Validator::new(Options::default()).with_service_ips(index.clone());
    assert!(v.validate(&r).allowed);
    let svc = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "kubernetes"},
        "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"]}
    }))
    .unwrap();
    index.apply(&svc);
    assert!(!v.validate(&r).allowed);
    index.delete(&svc);
    assert!(v.validate(&r).allowed);
}
