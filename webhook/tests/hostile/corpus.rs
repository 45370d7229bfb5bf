//! Hostile AdmissionReviews: huge arrays, huge strings, deep nesting, wrong types, malformed JSON,
//! unicode. Built as text (fast even in debug builds), each at most 8 MiB (the server's default
//! body limit).

#![allow(dead_code)]

/// The webhook's default body limit.
pub const MAX_BODY: usize = 8 << 20;

/// What a well-formed answer to a case looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// HTTP 200 with an AdmissionReview echoing the uid.
    Review,
    /// HTTP 4xx with a plain-text reason.
    Refused,
    /// Either of the two.
    Any,
}

/// One hostile request.
pub struct Case {
    pub name: String,
    pub path: &'static str,
    pub body: Vec<u8>,
    pub expect: Expect,
}

pub const UID: &str = "6f9e1c2a-0000-4000-8000-00000000beef";

/// A review envelope around `object` (raw JSON) and `old` (raw JSON or `null`).
pub fn review(group: &str, kind: &str, op: &str, name: &str, object: &str, old: &str) -> String {
    review_with(UID, group, kind, op, name, "default", object, old, "")
}

#[allow(clippy::too_many_arguments)]
pub fn review_with(
    uid: &str,
    group: &str,
    kind: &str,
    op: &str,
    name: &str,
    namespace: &str,
    object: &str,
    old: &str,
    extra: &str,
) -> String {
    let version = "v1";
    let mut s = String::with_capacity(object.len() + old.len() + 1024);
    s.push_str(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"#);
    s.push_str(&serde_json::to_string(uid).unwrap());
    s.push_str(&format!(
        r#","kind":{{"group":{g},"version":"{version}","kind":{k}}},"resource":{{"group":{g},"version":"{version}","resource":"things"}},"name":{n},"namespace":{ns},"operation":"{op}","userInfo":{{"username":"admin","groups":["system:masters"]}},"#,
        g = serde_json::to_string(group).unwrap(),
        k = serde_json::to_string(kind).unwrap(),
        n = serde_json::to_string(name).unwrap(),
        ns = serde_json::to_string(namespace).unwrap(),
    ));
    s.push_str(extra);
    s.push_str(r#""object":"#);
    s.push_str(object);
    s.push_str(r#","oldObject":"#);
    s.push_str(old);
    s.push_str(r#","dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}"#);
    s
}

/// `count` copies of `elem` joined by commas, inside `[` `]`.
pub fn array(elem: &str, count: usize) -> String {
    let mut s = String::with_capacity((elem.len() + 1) * count + 2);
    s.push('[');
    for i in 0..count {
        if i > 0 {
            s.push(',');
        }
        s.push_str(elem);
    }
    s.push(']');
    s
}

/// As many copies of `elem` as fit in about `bytes`.
pub fn array_of_size(elem: &str, bytes: usize) -> String {
    array(elem, bytes / (elem.len() + 1))
}

/// A Service with `ports` (raw JSON array) and `type`.
pub fn service(name: &str, service_type: &str, ports: &str, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":{n}}},"spec":{{"type":"{service_type}",{extra_spec}"ports":{ports}}}}}"#,
        n = serde_json::to_string(name).unwrap()
    )
}

/// `n` distinct, valid TCP ports 1..=n without nodePorts.
pub fn numbered_ports(n: usize) -> String {
    let mut s = String::with_capacity(n * 56);
    s.push('[');
    for i in 1..=n {
        if i > 1 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"name":"p{i}","port":{i},"protocol":"TCP","targetPort":{i}}}"#
        ));
    }
    s.push(']');
    s
}

pub fn service_review(op: &str, object: &str) -> Vec<u8> {
    review("", "Service", op, "", object, "null").into_bytes()
}

/// A Pod with one container `app`.
pub fn pod(name: &str, container_extra: &str, spec_extra: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":{n},"namespace":"default"}},"spec":{{{spec_extra}"containers":[{{"name":"app","image":"nginx",{container_extra}"ports":[{{"name":"http","containerPort":8080}}]}}]}}}}"#,
        n = serde_json::to_string(name).unwrap()
    )
}

pub fn pod_review(object: &str) -> Vec<u8> {
    review("", "Pod", "CREATE", "", object, "null").into_bytes()
}

fn case(name: impl Into<String>, path: &'static str, body: Vec<u8>, expect: Expect) -> Case {
    let body_len = body.len();
    let name = name.into();
    assert!(body_len <= MAX_BODY, "{name}: {body_len} bytes");
    Case {
        name,
        path,
        body,
        expect,
    }
}

/// The Service with `n` ports on /mutate (NodePort: each port needs a node port).
pub fn mutate_ports(n: usize) -> Case {
    let svc = service("many-ports", "NodePort", &numbered_ports(n), "");
    case(
        format!("mutate: Service with {n} ports"),
        "/mutate",
        service_review("CREATE", &svc),
        Expect::Review,
    )
}

/// One review with `n` invalid ports (`{"port":0}`) on /validate.
pub fn validate_invalid_ports(n: usize) -> Case {
    let svc = service("bad-ports", "ClusterIP", &array(r#"{"port":0}"#, n), "");
    case(
        format!("validate: Service with {n} invalid ports"),
        "/validate",
        service_review("CREATE", &svc),
        Expect::Review,
    )
}

/// Room left for an 8 MB field once the envelope and the rest of the object are in.
const FULL: usize = MAX_BODY - 16 * 1024;

/// The corpus: the two rows of the issue (65,535 ports on /mutate, 700,000 invalid ports on
/// /validate) at full size, every other row at `1 / scale` of 8 MiB (`scale` 1: the real thing;
/// debug builds use more to keep the run short).
pub fn all(scale: usize) -> Vec<Case> {
    #[allow(non_snake_case)]
    let FILL = FULL / scale.max(1);
    let mut cases = vec![mutate_ports(65_535), validate_invalid_ports(700_000)];

    // 8 MB arrays in fields the webhook does not need.
    let ips = array_of_size(r#""10.0.0.1""#, FILL);
    let svc = service(
        "ips",
        "ClusterIP",
        r#"[{"name":"http","port":80}]"#,
        &format!(r#""externalIPs":{ips},"#),
    );
    cases.push(case(
        "validate: 8 MB array in spec.externalIPs",
        "/validate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    cases.push(case(
        "mutate: 8 MB array in spec.externalIPs",
        "/mutate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    // Hand-written Endpoints and EndpointSlices: 8 MB of loopback addresses, each an error
    // (the refusal stays at 100 causes).
    let addresses = array_of_size(r#"{"ip":"127.0.0.1"}"#, FILL);
    let endpoints = format!(
        r#"{{"apiVersion":"v1","kind":"Endpoints","metadata":{{"name":"db","namespace":"default"}},"subsets":[{{"addresses":{addresses}}}]}}"#
    );
    cases.push(case(
        "validate: Endpoints with 8 MB of loopback addresses",
        "/validate",
        review("", "Endpoints", "CREATE", "db", &endpoints, "null").into_bytes(),
        Expect::Review,
    ));
    let endpoint = array_of_size(r#"{"addresses":["127.0.0.1"]}"#, FILL);
    let slice = format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"db-1","namespace":"default"}},"addressType":"IPv4","endpoints":{endpoint}}}"#
    );
    cases.push(case(
        "validate: EndpointSlice with 8 MB of loopback endpoints",
        "/validate",
        review(
            "discovery.k8s.io",
            "EndpointSlice",
            "CREATE",
            "db-1",
            &slice,
            "null",
        )
        .into_bytes(),
        Expect::Review,
    ));
    let args = array_of_size(r#""--flag""#, FILL);
    let p = pod("args", &format!(r#""args":{args},"#), "");
    cases.push(case(
        "validate: 8 MB array in containers[0].args",
        "/validate",
        pod_review(&p),
        Expect::Review,
    ));
    let groups = array_of_size(r#""g""#, FILL);
    let svc = service("groups", "ClusterIP", r#"[{"name":"http","port":80}]"#, "");
    let body = review_with(
        UID,
        "",
        "Service",
        "CREATE",
        "groups",
        "default",
        &svc,
        "null",
        &format!(r#""extra":{{"groups":{groups}}},"#),
    );
    cases.push(case(
        "validate: 8 MB array in request.userInfo-like field",
        "/validate",
        body.into_bytes(),
        Expect::Review,
    ));
    let nums = array_of_size("1", FILL);
    let svc = format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"nums","annotations":{{}}}},"status":{{"x":{nums}}},"spec":{{"ports":[{{"port":80}}]}}}}"#
    );
    cases.push(case(
        "mutate: 8 MB array in status",
        "/mutate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));

    // An 8 MB array of ports that are fine one by one (distinct names and numbers) on /validate.
    let mut ports = String::from("[");
    let mut i = 0u32;
    while ports.len() < FILL - 64 {
        if i > 0 {
            ports.push(',');
        }
        ports.push_str(&format!(r#"{{"name":"n{i}","port":{}}}"#, i % 65_535 + 1));
        i += 1;
    }
    ports.push(']');
    let svc = service("named", "ClusterIP", &ports, "");
    cases.push(case(
        format!("validate: Service with {i} named ports"),
        "/validate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    cases.push(case(
        format!("mutate: ClusterIP Service with {i} named ports"),
        "/mutate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));

    // A Pod with 8 MB of named container ports.
    let mut ports = String::from("[");
    let mut i = 0u32;
    while ports.len() < FILL - 64 {
        if i > 0 {
            ports.push(',');
        }
        ports.push_str(&format!(
            r#"{{"name":"c{i}","containerPort":{}}}"#,
            i % 65_535 + 1
        ));
        i += 1;
    }
    ports.push(']');
    let p = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"wide"}},"spec":{{"containers":[{{"name":"app","ports":{ports}}}]}}}}"#
    );
    cases.push(case(
        format!("validate: Pod with {i} named container ports"),
        "/validate",
        pod_review(&p),
        Expect::Review,
    ));
    // 8 MB of empty containers.
    let p = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"crowd"}},"spec":{{"containers":{}}}}}"#,
        array_of_size("{}", FILL)
    );
    cases.push(case(
        "validate: Pod with 8 MB of empty containers",
        "/validate",
        pod_review(&p),
        Expect::Review,
    ));

    // Malformed JSON: truncated in the middle of an 8 MB review, garbage, not an object.
    let mut cut = validate_invalid_ports(700_000 / scale.max(1)).body;
    cut.truncate(cut.len() / 2);
    cases.push(case(
        "malformed: 8 MB review cut in half",
        "/validate",
        cut,
        Expect::Refused,
    ));
    cases.push(case(
        "malformed: garbage",
        "/validate",
        b"\x00\xff{{{".to_vec(),
        Expect::Refused,
    ));
    cases.push(case(
        "malformed: a JSON array",
        "/validate",
        b"[1,2,3]".to_vec(),
        Expect::Refused,
    ));
    cases.push(case(
        "malformed: empty body",
        "/mutate",
        Vec::new(),
        Expect::Refused,
    ));

    // Deep nesting: in an ignored field, in a field a rule reads, at the top, as objects.
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let svc = format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"deep"}},"x":{},"spec":{{"ports":[{{"port":80}}]}}}}"#,
        deep(1_000_000 / scale.max(1))
    );
    cases.push(case(
        "deep: 1M levels in an ignored field (validate)",
        "/validate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    cases.push(case(
        "deep: 1M levels in an ignored field (mutate)",
        "/mutate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    let svc = format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"deep"}},"spec":{{"ports":{}}}}}"#,
        deep(1_000_000 / scale.max(1))
    );
    cases.push(case(
        "deep: 1M levels in spec.ports (validate)",
        "/validate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    cases.push(case(
        "deep: 1M levels in spec.ports (mutate)",
        "/mutate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    let p = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"deep"}},"spec":{{"containers":[{{"name":"a","livenessProbe":{{"httpGet":{{"port":{}}}}}}}]}}}}"#,
        deep(1_000_000 / scale.max(1))
    );
    cases.push(case(
        "deep: 1M levels in a probe port",
        "/validate",
        pod_review(&p),
        Expect::Review,
    ));
    let objects = format!(
        "{}1{}",
        r#"{"a":"#.repeat(500_000 / scale.max(1)),
        "}".repeat(500_000 / scale.max(1))
    );
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","x":{objects},"request":{{"uid":"{UID}"}}}}"#
    );
    cases.push(case(
        "deep: 500k nested objects in the envelope",
        "/validate",
        body.into_bytes(),
        Expect::Any,
    ));
    cases.push(case(
        "deep: 1M levels as the body",
        "/validate",
        deep(1_000_000 / scale.max(1)).into_bytes(),
        Expect::Refused,
    ));

    // Wrong types, small and large.
    let wrong = [
        (
            "request is an array",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":[1]}"#.to_owned(),
        ),
        (
            "uid is a number",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#.to_owned(),
        ),
        (
            "object is a string",
            review("", "Service", "CREATE", "s", r#""svc""#, "null"),
        ),
        (
            "spec.ports is a string",
            service_review_string(&service("s", "ClusterIP", r#""80""#, "")),
        ),
        (
            "port is a string",
            service_review_string(&service("s", "ClusterIP", r#"[{"port":"eighty"}]"#, "")),
        ),
        (
            "port is a float",
            service_review_string(&service("s", "NodePort", r#"[{"port":80.5}]"#, "")),
        ),
        (
            "nodePort beyond 32 bits",
            service_review_string(&service(
                "s",
                "NodePort",
                r#"[{"port":80,"nodePort":4294967296}]"#,
                "",
            )),
        ),
        (
            "containers is an object",
            String::from_utf8(pod_review(
                r#"{"kind":"Pod","metadata":{"name":"p"},"spec":{"containers":{"a":1}}}"#,
            ))
            .unwrap(),
        ),
        (
            "dryRun is a string",
            review_with(
                UID,
                "",
                "Service",
                "CREATE",
                "s",
                "default",
                &service("s", "ClusterIP", "[]", ""),
                "null",
                r#""dryRun":"yes","#,
            ),
        ),
        (
            "operation unknown",
            review(
                "",
                "Service",
                "PATCH",
                "s",
                &service("s", "ClusterIP", "[]", ""),
                "null",
            ),
        ),
    ];
    for (what, body) in wrong {
        for path in ["/validate", "/mutate"] {
            cases.push(case(
                format!("wrong type: {what} ({})", &path[1..]),
                path,
                body.clone().into_bytes(),
                Expect::Any,
            ));
        }
    }
    let svc = service("s", "ClusterIP", &array_of_size(r#"{"port":"x"}"#, FILL), "");
    cases.push(case(
        "wrong type: 8 MB of string ports",
        "/validate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));

    // Huge strings.
    let huge = "a".repeat(FILL - 4096);
    let escaped = "\\u00e9".repeat((FILL - 4096) / 6);
    cases.push(case(
        "huge string: 8 MB uid",
        "/validate",
        review_with(
            &huge,
            "",
            "Service",
            "CREATE",
            "s",
            "default",
            &service("s", "ClusterIP", "[]", ""),
            "null",
            "",
        )
        .into_bytes(),
        Expect::Any,
    ));
    cases.push(case(
        "huge string: 8 MB port name",
        "/validate",
        service_review(
            "CREATE",
            &service(
                "s",
                "ClusterIP",
                &format!(r#"[{{"name":"{huge}","port":80}}]"#),
                "",
            ),
        ),
        Expect::Review,
    ));
    cases.push(case(
        "huge string: 8 MB object name with an invalid port",
        "/validate",
        service_review("CREATE", &service(&huge, "ClusterIP", r#"[{"port":0}]"#, "")),
        Expect::Review,
    ));
    cases.push(case(
        "huge string: 8 MB name and namespace on /mutate",
        "/mutate",
        review_with(
            UID,
            "",
            "Service",
            "CREATE",
            &huge[..huge.len() / 2],
            &huge[..huge.len() / 2 - 8],
            &service("x", "NodePort", r#"[{"port":80}]"#, ""),
            "null",
            "",
        )
        .into_bytes(),
        Expect::Review,
    ));
    cases.push(case(
        "huge string: 8 MB kind",
        "/validate",
        review(&huge[..1024], &huge, "CREATE", "s", r#"{"kind":"x"}"#, "null").into_bytes(),
        Expect::Review,
    ));
    cases.push(case(
        "huge string: 8 MB escaped targetPort",
        "/validate",
        service_review(
            "CREATE",
            &service(
                "s",
                "ClusterIP",
                &format!(r#"[{{"port":80,"targetPort":"{escaped}"}}]"#),
                "",
            ),
        ),
        Expect::Review,
    ));
    let probe = format!(
        r#""readinessProbe":{{"httpGet":{{"port":"{}"}}}},"#,
        "b".repeat(FILL - 4096)
    );
    cases.push(case(
        "huge string: 8 MB probe port name",
        "/validate",
        pod_review(&pod("p", &probe, "")),
        Expect::Review,
    ));

    // Unicode: names in every position, control characters, bidi marks, astral planes.
    let names = [
        "ｈｔｔｐ",
        "é",
        "a\u{200b}b",
        "\u{202e}evil",
        "🦀",
        "a\nb",
        "\u{0}",
        "日本語のポート名",
    ];
    let ports: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                r#"{{"name":{},"port":{},"targetPort":{}}}"#,
                serde_json::to_string(n).unwrap(),
                i + 1,
                serde_json::to_string(n).unwrap()
            )
        })
        .collect();
    let svc = service("ünïcödé-🦀", "NodePort", &format!("[{}]", ports.join(",")), "");
    cases.push(case(
        "unicode: Service port names",
        "/validate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    cases.push(case(
        "unicode: Service port names (mutate)",
        "/mutate",
        service_review("CREATE", &svc),
        Expect::Review,
    ));
    let p = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"\u202e🦀"}},"spec":{{"containers":[{{"name":"ç\u0000","ports":[{}],"livenessProbe":{{"tcpSocket":{{"port":"ｐ"}}}}}}]}}}}"#,
        names
            .iter()
            .enumerate()
            .map(|(i, n)| format!(
                r#"{{"name":{},"containerPort":{}}}"#,
                serde_json::to_string(n).unwrap(),
                i + 1
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    cases.push(case(
        "unicode: container port names",
        "/validate",
        pod_review(&p),
        Expect::Review,
    ));
    cases.push(case(
        "unicode: uid and namespace",
        "/mutate",
        review_with(
            "üïd-🦀",
            "",
            "Service",
            "CREATE",
            "n",
            "ñs-🦀",
            &service("n", "ClusterIP", r#"[{"port":80}]"#, ""),
            "null",
            "",
        )
        .into_bytes(),
        Expect::Review,
    ));
    cases
}

fn service_review_string(object: &str) -> String {
    review("", "Service", "CREATE", "s", object, "null")
}
