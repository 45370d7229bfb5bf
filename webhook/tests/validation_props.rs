//! Property tests of the port rules: arbitrary and hostile inputs never panic, the primitive
//! validators agree with oracles built from upstream's own regular expressions, objects valid by
//! construction produce no error, and every message is safe to print.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Pod, PodSpec, Probe, Service, ServicePort, ServiceSpec,
    TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_webhook::validation::{
    FieldError, LetterMessage, Options, WorkloadKind, is_dns1123_label, is_dns1123_subdomain,
    is_qualified_name, is_valid_port_name, is_valid_port_num, target_port_warnings, validate_pod_spec_ports,
    validate_service_ports, validate_service_value, validate_workload_value,
};
use proptest::prelude::*;
use regex::Regex;

/// Strings that exercise the validators: plausible names, near misses, and arbitrary Unicode.
fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-a-z0-9]{0,17}",
        "[-a-z]{1,4}",
        "[-a-zA-Z0-9_. é/\n]{0,20}",
        "[a-z0-9.-]{0,70}",
        "\\PC{0,20}",
        any::<String>(),
    ]
}

fn options() -> impl Strategy<Value = Options> {
    prop_oneof![
        Just(LetterMessage::LetterOrNumber),
        Just(LetterMessage::LetterOnly)
    ]
    .prop_map(|letter_message| Options { letter_message })
}

/// Upstream's IANA_SVC_NAME checks, spelled with the very regular expressions upstream uses.
fn iana_oracle(s: &str, opts: &Options) -> Vec<&'static str> {
    let charset = Regex::new("^[-a-z0-9]+$").unwrap();
    let letter = Regex::new("[a-z]").unwrap();
    let mut want = Vec::new();
    if s.len() > 15 {
        want.push("must be no more than 15 characters");
    }
    if !charset.is_match(s) {
        want.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !letter.is_match(s) {
        want.push(match opts.letter_message {
            LetterMessage::LetterOrNumber => "must contain at least one letter or number (a-z, 0-9)",
            LetterMessage::LetterOnly => "must contain at least one letter (a-z)",
        });
    }
    if s.contains("--") {
        want.push("must not contain consecutive hyphens");
    }
    if s.starts_with('-') || s.ends_with('-') {
        want.push("must not begin or end with a hyphen");
    }
    want
}

/// The plain-words definition of a valid container port name, from the issue.
fn iana_predicate(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn no_control_chars(errs: &[FieldError]) -> Result<(), TestCaseError> {
    for e in errs {
        let text = e.to_string();
        prop_assert!(
            !text.chars().any(char::is_control),
            "control character in {text:?}"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn iana_names_match_upstream_regexes(s in names(), opts in options()) {
        let got = is_valid_port_name(&s, &opts);
        prop_assert_eq!(&got, &iana_oracle(&s, &opts));
        prop_assert_eq!(got.is_empty(), iana_predicate(&s));
    }

    #[test]
    fn dns_labels_match_upstream_regex(s in names()) {
        let re = Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").unwrap();
        let got = is_dns1123_label(&s);
        prop_assert_eq!(got.len(), usize::from(s.len() > 63) + usize::from(!re.is_match(&s)));
        prop_assert_eq!(got.is_empty(), s.len() <= 63 && re.is_match(&s));
    }

    #[test]
    fn dns_subdomains_match_upstream_regex(s in names()) {
        let re = Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap();
        let got = is_dns1123_subdomain(&s);
        prop_assert_eq!(got.len(), usize::from(s.len() > 253) + usize::from(!re.is_match(&s)));
    }

    #[test]
    fn qualified_names_match_upstream_regexes(s in names()) {
        let name_re = Regex::new("^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$").unwrap();
        let sub_re = Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap();
        let parts: Vec<&str> = s.split('/').collect();
        let valid = match parts.as_slice() {
            [name] => name.len() <= 63 && name_re.is_match(name),
            [prefix, name] => {
                prefix.len() <= 253 && sub_re.is_match(prefix) && name.len() <= 63 && name_re.is_match(name)
            }
            _ => false,
        };
        prop_assert_eq!(is_qualified_name(&s).is_empty(), valid);
    }

    #[test]
    fn port_numbers(p in any::<i64>()) {
        prop_assert_eq!(is_valid_port_num(p).is_empty(), (1..=65535).contains(&p));
    }
}

fn int_or_string() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        any::<i32>().prop_map(IntOrString::Int),
        (0..70000i32).prop_map(IntOrString::Int),
        names().prop_map(IntOrString::String),
    ]
}

fn protocol() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("TCP".to_owned())),
        Just(Some("UDP".to_owned())),
        Just(Some("SCTP".to_owned())),
        names().prop_map(Some),
    ]
}

fn service_port() -> impl Strategy<Value = ServicePort> {
    (
        proptest::option::of(names()),
        prop_oneof![any::<i32>(), 0..70000i32],
        protocol(),
        proptest::option::of(int_or_string()),
        proptest::option::of(names()),
        proptest::option::of(prop_oneof![any::<i32>(), 30000..30005i32]),
    )
        .prop_map(
            |(name, port, protocol, target_port, app_protocol, node_port)| ServicePort {
                name,
                port,
                protocol,
                target_port,
                app_protocol,
                node_port,
            },
        )
}

fn service_spec() -> impl Strategy<Value = ServiceSpec> {
    (
        proptest::option::of(proptest::collection::vec(service_port(), 0..6)),
        proptest::option::of(prop_oneof![
            Just("ClusterIP".to_owned()),
            Just("NodePort".to_owned()),
            Just("LoadBalancer".to_owned()),
            Just("ExternalName".to_owned()),
            names(),
        ]),
        proptest::option::of(prop_oneof![Just("None".to_owned()), names()]),
    )
        .prop_map(|(ports, type_, cluster_ip)| ServiceSpec {
            ports,
            type_,
            cluster_ip,
            ..ServiceSpec::default()
        })
}

fn container_port() -> impl Strategy<Value = ContainerPort> {
    (
        proptest::option::of(prop_oneof![
            names(),
            Just("http".to_owned()),
            Just("metrics".to_owned())
        ]),
        prop_oneof![any::<i32>(), 0..70000i32],
        proptest::option::of(prop_oneof![any::<i32>(), 0..3i32]),
        proptest::option::of(names()),
        protocol(),
    )
        .prop_map(
            |(name, container_port, host_port, host_ip, protocol)| ContainerPort {
                name,
                container_port,
                host_port,
                host_ip,
                protocol,
            },
        )
}

fn probe() -> impl Strategy<Value = Option<Probe>> {
    proptest::option::of(
        (
            proptest::option::of(int_or_string()),
            proptest::option::of(int_or_string()),
        )
            .prop_map(|(h, t)| Probe {
                http_get: h.map(|port| HTTPGetAction {
                    port,
                    ..HTTPGetAction::default()
                }),
                tcp_socket: t.map(|port| TCPSocketAction { port, host: None }),
                ..Probe::default()
            }),
    )
}

fn container() -> impl Strategy<Value = Container> {
    (
        names(),
        proptest::option::of(proptest::collection::vec(container_port(), 0..5)),
        probe(),
        probe(),
        proptest::option::of(prop_oneof![Just("Always".to_owned()), names()]),
    )
        .prop_map(
            |(name, ports, liveness_probe, readiness_probe, restart_policy)| Container {
                name,
                ports,
                liveness_probe,
                readiness_probe,
                restart_policy,
                ..Container::default()
            },
        )
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        proptest::collection::vec(container(), 0..4),
        proptest::option::of(proptest::collection::vec(container(), 0..3)),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(containers, init_containers, host_network)| PodSpec {
            containers,
            init_containers,
            host_network,
            ..PodSpec::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_services_never_panic(spec in service_spec(), opts in options()) {
        let errs = validate_service_ports(&spec, &opts);
        prop_assert_eq!(&errs, &validate_service_ports(&spec, &opts), "deterministic");
        for e in &errs {
            prop_assert!(e.field.starts_with("spec.ports"), "{}", e);
        }
        no_control_chars(&errs)?;
    }

    #[test]
    fn arbitrary_pods_never_panic(spec in pod_spec(), opts in options()) {
        let errs = validate_pod_spec_ports(&spec, "spec.template.spec", &opts);
        prop_assert_eq!(&errs, &validate_pod_spec_ports(&spec, "spec.template.spec", &opts), "deterministic");
        for e in &errs {
            prop_assert!(e.field.starts_with("spec.template.spec."), "{}", e);
        }
        no_control_chars(&errs)?;
    }

    #[test]
    fn arbitrary_target_port_warnings_never_panic(
        spec in service_spec(),
        pods in proptest::collection::vec((names(), pod_spec()), 0..4),
    ) {
        let pods: Vec<Pod> = pods
            .into_iter()
            .map(|(name, spec)| Pod {
                metadata: ObjectMeta { name: Some(name), ..ObjectMeta::default() },
                spec: Some(spec),
                ..Pod::default()
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let service = Service { spec: Some(spec), ..Service::default() };
        for w in target_port_warnings(&service, &refs) {
            prop_assert!(!w.chars().any(char::is_control), "{w:?}");
            prop_assert!(w.starts_with("spec.ports["), "{w}");
        }
    }
}

/// A valid IANA port name derived from an index, so that uniqueness is by construction.
fn port_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

proptest! {
    #[test]
    fn services_valid_by_construction_have_no_errors(
        ports in proptest::collection::vec((1..=65535i32, 0..3usize, any::<bool>(), 1..=65535i32), 1..8),
        load_balancer in any::<bool>(),
    ) {
        let protocols = ["TCP", "UDP", "SCTP"];
        let mut seen = std::collections::HashSet::new();
        let ports: Vec<ServicePort> = ports
            .into_iter()
            .filter(|(port, proto, _, _)| seen.insert((*port, *proto)) && *port != 10250)
            .enumerate()
            .map(|(i, (port, proto, named_target, target))| ServicePort {
                name: Some(port_name("p", i)),
                port,
                protocol: Some(protocols[proto].to_owned()),
                target_port: Some(if named_target {
                    IntOrString::String(port_name("t", i))
                } else {
                    IntOrString::Int(target)
                }),
                app_protocol: named_target.then(|| "kubernetes.io/h2c".to_owned()),
                node_port: None,
            })
            .collect();
        prop_assume!(!ports.is_empty());
        let spec = ServiceSpec {
            ports: Some(ports),
            type_: load_balancer.then(|| "LoadBalancer".to_owned()),
            ..ServiceSpec::default()
        };
        prop_assert_eq!(validate_service_ports(&spec, &Options::default()), vec![]);
    }

    #[test]
    fn pods_valid_by_construction_have_no_errors(
        shape in proptest::collection::vec(proptest::collection::vec(1..=65535i32, 0..4), 1..4),
        init in proptest::collection::vec(proptest::collection::vec(1..=65535i32, 0..3), 0..3),
    ) {
        let mut counter = 0;
        let mut make = |prefix: &str, ports: Vec<i32>| {
            let ports: Vec<ContainerPort> = ports
                .into_iter()
                .map(|container_port| {
                    counter += 1;
                    ContainerPort {
                        name: Some(port_name("port-", counter)),
                        container_port,
                        protocol: Some("TCP".to_owned()),
                        ..ContainerPort::default()
                    }
                })
                .collect();
            // Each probe names a port of its own container, when it has one.
            let probe = ports.first().map(|p| Probe {
                http_get: Some(HTTPGetAction {
                    port: IntOrString::String(p.name.clone().unwrap_or_default()),
                    ..HTTPGetAction::default()
                }),
                ..Probe::default()
            });
            Container { name: format!("{prefix}{counter}"), ports: Some(ports), readiness_probe: probe, ..Container::default() }
        };
        let containers: Vec<Container> = shape.into_iter().map(|p| make("c", p)).collect();
        let init_containers: Vec<Container> = init.into_iter().map(|p| make("i", p)).collect();
        let spec = PodSpec { containers, init_containers: Some(init_containers), ..PodSpec::default() };
        prop_assert_eq!(validate_pod_spec_ports(&spec, "spec", &Options::default()), vec![]);
    }
}

/// JSON built from the keys the decoders look for, so that random values reach deep structures.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (0..70000i64).prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        names().prop_map(serde_json::Value::from),
    ];
    let keys = prop_oneof![
        Just("spec"),
        Just("template"),
        Just("jobTemplate"),
        Just("containers"),
        Just("initContainers"),
        Just("ephemeralContainers"),
        Just("ports"),
        Just("name"),
        Just("port"),
        Just("containerPort"),
        Just("hostPort"),
        Just("protocol"),
        Just("targetPort"),
        Just("livenessProbe"),
        Just("httpGet"),
        Just("tcpSocket"),
        Just("grpc"),
        Just("hostNetwork"),
        Just("type"),
        Just("other"),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|m: BTreeMap<&str, _>| {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_json_never_panics(value in json(), opts in options()) {
        for kind in WorkloadKind::ALL {
            match validate_workload_value(kind, &value, &opts) {
                Ok(errs) => no_control_chars(&errs)?,
                Err(e) => prop_assert!(e.to_string().starts_with("cannot decode "), "{e}"),
            }
        }
        if let Ok(errs) = validate_service_value(&value, &opts) {
            no_control_chars(&errs)?;
        }
    }
}

#[test]
fn huge_inputs_stay_cheap_and_sane() {
    // A 1 MiB name and a thousand ports: linear work, one message per rule, nothing echoed twice.
    let huge = "a".repeat(1 << 20);
    assert_eq!(
        is_valid_port_name(&huge, &Options::default()),
        vec!["must be no more than 15 characters"]
    );
    let ports: Vec<ContainerPort> = (1..=1000)
        .map(|i| ContainerPort {
            name: Some(format!("p{i}")),
            container_port: i,
            ..ContainerPort::default()
        })
        .collect();
    let spec = PodSpec {
        containers: vec![Container {
            name: "a".into(),
            ports: Some(ports.clone()),
            ..Container::default()
        }],
        init_containers: Some(vec![Container {
            name: "b".into(),
            ports: Some(ports),
            ..Container::default()
        }]),
        ..PodSpec::default()
    };
    let errs = validate_pod_spec_ports(&spec, "spec", &Options::default());
    assert_eq!(
        errs.len(),
        1000,
        "every init container name collides with a container's"
    );
}
