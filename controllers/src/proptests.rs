//! Property tests: random Services, pods, nodes and existing slices.
//!
//! * Nothing panics, whatever the input (including objects with missing or garbage fields).
//! * After applying a plan, every pod that should be an endpoint appears exactly once per
//!   address type, with the right readiness, and nothing else does.
//! * No written slice exceeds the maximum; starting from our own state, no slice does.
//! * One pass converges: reconciling the result again plans no write.
//! * Slices of other managers are never in a plan.
//! * Legacy Endpoints never exceed 1000 addresses and converge too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use crate::address_family::AddressType;
use crate::builders::*;
use crate::endpointslice::{Config, NodeZoneMap, reconcile};
use crate::legacy_endpoints::{self, EndpointsAction};

#[derive(Debug, Clone)]
struct PodSpec {
    ips: u8,
    ready: bool,
    terminating: bool,
    phase: u8,
    node: u8,
    http: Option<(i32, bool)>,
    selected: bool,
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        0u8..6,
        any::<bool>(),
        prop::bool::weighted(0.15),
        0u8..8,
        0u8..4,
        prop::option::weighted(
            0.8,
            (prop::sample::select(vec![8080, 8081]), prop::bool::weighted(0.1)),
        ),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(ips, ready, terminating, phase, node, http, selected)| PodSpec {
            ips,
            ready,
            terminating,
            phase,
            node,
            http,
            selected,
        })
}

fn build_pod(i: usize, s: &PodSpec) -> Pod {
    let v4 = ip4(i);
    let v6 = ip6(i);
    let ips: Vec<&str> = match s.ips {
        0 => vec![],
        1 => vec![&v4, &v6],
        2 => vec![&v6],
        3 => vec!["bogus"],
        _ => vec![&v4],
    };
    let mut b = pod(&format!("p{i:03}"))
        .ips(&ips)
        .ready(s.ready)
        .node(["node-1", "node-2", "node-3", "gone"][s.node as usize])
        .phase(match s.phase {
            0 => "Failed",
            1 => "Succeeded",
            2 => "Pending",
            _ => "Running",
        });
    if s.terminating {
        b = b.terminating();
    }
    if let Some((port, udp)) = s.http {
        b = b.container_port("http", port, if udp { "UDP" } else { "TCP" });
    }
    if !s.selected {
        b = b.labels(&[("app", "other")]);
    }
    b.build()
}

#[derive(Debug, Clone)]
struct SvcSpec {
    families: u8,
    headless: bool,
    pnra: bool,
    ports: u8,
    hints: bool,
    label: bool,
}

fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        0u8..5,
        any::<bool>(),
        any::<bool>(),
        0u8..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(families, headless, pnra, ports, hints, label)| SvcSpec {
            families,
            headless,
            pnra,
            ports,
            hints,
            label,
        })
}

fn build_svc(s: &SvcSpec) -> Service {
    let mut b = svc("web").families(match s.families {
        0 => &["IPv4"][..],
        1 => &["IPv6"],
        2 => &["IPv4", "IPv6"],
        3 => &["IPv6", "IPv4"],
        _ => &[],
    });
    if s.headless {
        b = b.headless();
    }
    if s.pnra {
        b = b.pnra();
    }
    if s.hints {
        b = b.traffic_distribution("PreferClose");
    }
    if s.label {
        b = b.labels(&[("team", "x")]);
    }
    let ports: Vec<ServicePort> = match s.ports {
        0 => vec![],
        1 => vec![num("http", 80, 8080)],
        2 => vec![named("http", 80, "http")],
        _ => vec![named("http", 80, "http"), num("metrics", 9000, 9100)],
    };
    b.ports(ports).build()
}

fn nodes() -> NodeZoneMap {
    let mut m = NodeZoneMap::default();
    m.insert("node-1", Some("zone-a"));
    m.insert("node-2", Some("zone-b"));
    m.insert("node-3", None);
    m
}

fn cfg(max: usize) -> Config {
    Config {
        max_endpoints_per_slice: max,
        ..Config::default()
    }
}

/// What the final slices must contain, from a deliberately naive model of the rules:
/// (address type, pod name) -> ready.
fn expected(svc: &Service, pods: &[Pod]) -> BTreeMap<(AddressType, String), bool> {
    let spec = svc.spec.as_ref().unwrap();
    let pnra = spec.publish_not_ready_addresses == Some(true);
    let fams: Vec<AddressType> = {
        let mut f: Vec<AddressType> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| AddressType::parse(f))
            .collect();
        if f.is_empty() {
            f = if spec.cluster_ip.as_deref() == Some("None") {
                vec![AddressType::IPv4, AddressType::IPv6]
            } else {
                vec![AddressType::IPv4]
            };
        }
        f
    };
    let mut out = BTreeMap::new();
    for p in pods {
        let st = p.status.as_ref().unwrap();
        let node = p.spec.as_ref().unwrap().node_name.as_deref().unwrap();
        let phase = st.phase.as_deref().unwrap();
        let ips: Vec<&str> = st.pod_ips.iter().flatten().map(|i| i.ip.as_str()).collect();
        if p.metadata.labels.as_ref().unwrap()["app"] != "web"
            || phase == "Failed"
            || phase == "Succeeded"
            || ips.is_empty()
            || (node == "gone" && !pnra)
        {
            continue;
        }
        let ready_cond = st.conditions.as_ref().unwrap()[0].status == "True";
        let ready = pnra || (ready_cond && p.metadata.deletion_timestamp.is_none());
        for f in &fams {
            let has = ips.iter().any(|ip| match f {
                AddressType::IPv4 => ip.starts_with("10."),
                AddressType::IPv6 => ip.starts_with("fd00:"),
            });
            if has {
                out.insert((*f, p.metadata.name.clone().unwrap()), ready);
            }
        }
    }
    out
}

fn actual(slices: &[EndpointSlice]) -> Vec<((AddressType, String), bool)> {
    let mut v = Vec::new();
    for s in slices {
        let Some(at) = AddressType::parse(&s.address_type) else {
            continue;
        };
        for e in &s.endpoints {
            let name = e
                .target_ref
                .as_ref()
                .and_then(|t| t.name.clone())
                .unwrap_or_default();
            v.push((
                (at, name),
                e.conditions.as_ref().and_then(|c| c.ready) == Some(true),
            ));
        }
    }
    v.sort();
    v
}

fn foreign_slices(svc: &Service) -> Vec<EndpointSlice> {
    vec![
        slice("web-foreign", svc, "someone-else")
            .endpoints_for(&pods(2))
            .build(),
        slice("web-kcm", svc, crate::keys::UPSTREAM_ENDPOINTSLICE_MANAGER).build(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn slices_are_exact_bounded_and_converge(
        svc_a in svc_spec(),
        svc_b in svc_spec(),
        before in prop::collection::vec(pod_spec(), 0..40),
        after in prop::collection::vec(pod_spec(), 0..40),
        max in 1usize..12,
        trigger in any::<bool>(),
    ) {
        let svc_before = build_svc(&svc_a);
        let svc_after = build_svc(&svc_b);
        let pods_before: Vec<Pod> = before.iter().enumerate().map(|(i, s)| build_pod(i, s)).collect();
        // Some pods keep their identity across the two states, others are new.
        let pods_after: Vec<Pod> = after.iter().enumerate().map(|(i, s)| build_pod(i * 2, s)).collect();
        let n = nodes();
        let c = cfg(max);
        let tt = trigger.then(|| t(3));

        let foreign = foreign_slices(&svc_before);
        let mut api = Api::with(foreign.clone());
        for (svc, pods) in [(&svc_before, &pods_before), (&svc_after, &pods_after)] {
            let plan = reconcile(svc, &refs(pods), &n, &api.refs(), &c, tt.as_ref()).unwrap();
            for s in plan.create.iter().chain(&plan.update) {
                prop_assert!(s.endpoints.len() <= max, "slice of {} > {max}", s.endpoints.len());
                prop_assert!(c.manages(s));
            }
            for s in plan.update.iter().chain(&plan.delete) {
                prop_assert!(!foreign.iter().any(|f| f.metadata.name == s.metadata.name), "foreign slice in plan");
            }
            api.apply(&plan);
            let ours: Vec<EndpointSlice> = api.slices.iter().filter(|s| c.manages(s)).cloned().collect();
            prop_assert!(ours.iter().all(|s| s.endpoints.len() <= max));

            // Exactly the expected endpoints, each once per address type.
            let want: Vec<((AddressType, String), bool)> = expected(svc, pods).into_iter().collect();
            prop_assert_eq!(actual(&ours), want);

            // At least one slice per address type (placeholder).
            let types = crate::endpointslice::slices_for_service(svc, &api.slices, &c);
            let fams: std::collections::BTreeSet<&str> = types.iter().map(|s| s.address_type.as_str()).collect();
            let spec_fams = svc.spec.as_ref().unwrap().ip_families.clone().unwrap_or_default();
            if !spec_fams.is_empty() {
                prop_assert_eq!(fams.len(), spec_fams.len());
            }

            let again = reconcile(svc, &refs(pods), &n, &api.refs(), &c, None).unwrap();
            prop_assert!(again.is_empty(), "second pass not empty: {:?}", again);
        }
        for f in &foreign {
            prop_assert!(api.slices.contains(f));
        }
    }

    #[test]
    fn endpoints_are_bounded_and_converge(
        svc_a in svc_spec(),
        specs in prop::collection::vec(pod_spec(), 0..40),
        extra_ready in 0usize..3,
    ) {
        let s = build_svc(&svc_a);
        let mut pods: Vec<Pod> = specs.iter().enumerate().map(|(i, p)| build_pod(i, p)).collect();
        pods.extend((0..extra_ready).map(|i| pod(&format!("x{i}")).ips(&[&ip4(500 + i)]).build()));
        let d = legacy_endpoints::desired(&s, &refs(&pods), None).unwrap();
        let total: usize = d
            .subsets
            .iter()
            .flatten()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len) + s.not_ready_addresses.as_ref().map_or(0, Vec::len))
            .sum();
        prop_assert!(total <= legacy_endpoints::MAX_CAPACITY * 3);
        let EndpointsAction::Create(created) = legacy_endpoints::reconcile(&s, &refs(&pods), None, Some(&t(1))).unwrap() else {
            panic!("expected create");
        };
        prop_assert_eq!(legacy_endpoints::reconcile(&s, &refs(&pods), Some(&created), None).unwrap(), EndpointsAction::Unchanged);
        // Each ready, selected, running pod with a numeric port appears exactly once.
        if svc_a.ports == 1 && svc_a.families == 0 && !svc_a.pnra {
            let ips: Vec<&str> = d.subsets.iter().flatten().flat_map(|s| s.addresses.iter().flatten()).map(|a| a.ip.as_str()).collect();
            for (i, spec) in specs.iter().enumerate() {
                let runs = spec.phase >= 2 && spec.selected && !spec.terminating && spec.ready;
                let has_v4 = spec.ips == 1 || spec.ips >= 4;
                let want = usize::from(runs && has_v4);
                let v4 = ip4(i);
                prop_assert_eq!(ips.iter().filter(|ip| **ip == v4).count(), want, "pod {}", i);
            }
        }
    }

    #[test]
    fn truncation_keeps_exactly_capacity(ready in 0usize..1300, not_ready in 0usize..300) {
        let s = svc("web").build();
        let pods: Vec<Pod> = (0..ready + not_ready)
            .map(|i| pod(&format!("p{i:04}")).ips(&[&ip4(i)]).ready(i < ready).build())
            .collect();
        let d = legacy_endpoints::desired(&s, &refs(&pods), None).unwrap();
        let (r, n): (usize, usize) = d.subsets.iter().flatten().fold((0, 0), |(r, n), s| {
            (r + s.addresses.as_ref().map_or(0, Vec::len), n + s.not_ready_addresses.as_ref().map_or(0, Vec::len))
        });
        prop_assert_eq!(r + n, (ready + not_ready).min(1000));
        prop_assert_eq!(r, ready.min(1000), "ready addresses are kept first");
        prop_assert_eq!(legacy_endpoints::is_truncated(&d), ready + not_ready > 1000);
    }
}

// ---- garbage in, no panic out ----

fn opt_str() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(vec![
        "",
        "None",
        "IPv4",
        "IPv6",
        "IP",
        "FQDN",
        "10.0.0.1",
        "fd00::1",
        "::ffff:1.2.3.4",
        "010.1.1.1",
        "bogus",
        "http",
        "TCP",
        "UDP",
        "True",
        "False",
        "Ready",
        "Always",
        "web",
        "node-1",
        "Failed",
        "PreferSameNode",
        "ExternalName",
    ]))
    .prop_map(|o| o.map(str::to_string))
}

fn garbage_svc() -> impl Strategy<Value = Service> {
    (
        opt_str(),
        opt_str(),
        opt_str(),
        prop::option::of(prop::collection::vec(opt_str(), 0..3)),
        prop::option::of(prop::collection::vec(
            (
                opt_str(),
                any::<i32>(),
                prop::option::of(any::<i32>()),
                opt_str(),
                opt_str(),
            ),
            0..3,
        )),
        any::<bool>(),
        opt_str(),
    )
        .prop_map(|(name, uid, cip, fams, ports, sel, ty)| {
            let mut s = svc("web").build();
            s.metadata.name = name.or(Some("web".into()));
            s.metadata.uid = uid;
            let spec = s.spec.as_mut().unwrap();
            spec.cluster_ip = cip;
            spec.ip_families = fams.map(|f| f.into_iter().flatten().collect());
            spec.ports = ports.map(|p| {
                p.into_iter()
                    .map(|(name, port, target_num, target_name, proto)| ServicePort {
                        name,
                        port,
                        target_port: match (target_num, target_name) {
                            (Some(n), _) => Some(IntOrString::Int(n)),
                            (None, Some(s)) => Some(IntOrString::String(s)),
                            _ => None,
                        },
                        protocol: proto,
                        ..Default::default()
                    })
                    .collect()
            });
            if !sel {
                spec.selector = Some(BTreeMap::new());
            }
            spec.type_ = ty;
            s
        })
}

fn garbage_pod() -> impl Strategy<Value = Pod> {
    (
        opt_str(),
        prop::collection::vec(opt_str(), 0..3),
        opt_str(),
        opt_str(),
        opt_str(),
        opt_str(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, ips, phase, node, hostname, cond, no_spec, no_status)| {
            let ips: Vec<String> = ips.into_iter().flatten().collect();
            let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
            let mut p = pod(name.as_deref().unwrap_or("p"))
                .ips(&ip_refs)
                .container_port("http", -5, "SCTP")
                .build();
            p.metadata.name = name;
            let st = p.status.as_mut().unwrap();
            st.phase = phase;
            if let Some(c) = cond {
                st.conditions.as_mut().unwrap()[0].status = c;
            }
            let spec = p.spec.as_mut().unwrap();
            spec.node_name = node;
            spec.hostname = hostname.clone();
            spec.subdomain = hostname;
            if no_spec {
                p.spec = None;
            }
            if no_status {
                p.status = None;
            }
            p
        })
}

fn garbage_slice(svc: Service) -> impl Strategy<Value = EndpointSlice> {
    (
        opt_str(),
        opt_str(),
        prop::option::of(prop::collection::vec(
            (opt_str(), prop::option::of(any::<i32>())),
            0..3,
        )),
        prop::collection::vec(
            (prop::collection::vec(opt_str(), 0..2), opt_str(), any::<bool>()),
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(move |(name, at, ports, eps, adopt)| {
            let manager = if adopt {
                crate::keys::UPSTREAM_ENDPOINTSLICE_MANAGER
            } else {
                crate::endpointslice::DEFAULT_MANAGED_BY
            };
            let mut s = slice(name.as_deref().unwrap_or("x"), &svc_for_slice(&svc), manager).build();
            s.metadata.name = name;
            s.address_type = at.unwrap_or_default();
            s.ports = ports.map(|p| {
                p.into_iter()
                    .map(|(name, port)| EndpointPort {
                        name,
                        port,
                        ..Default::default()
                    })
                    .collect()
            });
            s.endpoints = eps
                .into_iter()
                .map(|(addrs, host, with_ref)| {
                    let mut e = if with_ref {
                        ep("p", "10.0.0.1", true)
                    } else {
                        Endpoint::default()
                    };
                    e.addresses = addrs.into_iter().flatten().collect();
                    e.hostname = host;
                    e
                })
                .collect();
            s
        })
}

fn svc_for_slice(s: &Service) -> Service {
    let mut s = s.clone();
    s.metadata.name = Some(s.metadata.name.clone().unwrap_or_else(|| "web".into()));
    s.metadata.uid = Some(s.metadata.uid.clone().unwrap_or_else(|| "uid-web".into()));
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(
        (s, slices) in garbage_svc().prop_flat_map(|s| {
            let sl = prop::collection::vec(garbage_slice(s.clone()), 0..4);
            (Just(s), sl)
        }),
        pods in prop::collection::vec(garbage_pod(), 0..6),
        max in 0usize..5,
        adopt in any::<bool>(),
    ) {
        let c = Config {
            max_endpoints_per_slice: max,
            adopt_from: adopt.then(|| crate::keys::UPSTREAM_ENDPOINTSLICE_MANAGER.to_string()),
            ..Config::default()
        };
        let existing: Vec<&EndpointSlice> = slices.iter().collect();
        if let Ok(plan) = reconcile(&s, &refs(&pods), &nodes(), &existing, &c, Some(&t(0))) {
            prop_assert!(plan.create.iter().chain(&plan.update).all(|s| s.endpoints.len() <= max));
        }
        let _ = legacy_endpoints::reconcile(&s, &refs(&pods), None, None);
        let mut tracker = crate::endpointslice::GenerationTracker::new();
        for sl in &slices {
            tracker.record_write(sl);
            let _ = tracker.should_sync(sl);
        }
        let _ = tracker.is_stale(&s, &existing);
        let mut tt = crate::TriggerTimeTracker::new();
        let _ = tt.compute(&s, &refs(&pods));
    }
}
