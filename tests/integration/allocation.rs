//! ClusterIP/NodePort allocation against a real apiserver: the `RangeAllocation` CRD, the
//! compare-and-swap store, two replicas racing, the repair loop and the restart rebuild.
//!
//! The apiserver is shared with the rest of the suite, so every test allocates from its own
//! sub-range of the apiserver's ranges (10.96.0.0/16, 30000-32767) and names its objects with
//! its own prefix. The apiserver also hands out addresses to other tests' Services, anywhere in
//! its range; a create that collides with one of those is retried, as a client would.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use portico_webhook::allocation::{
    AllocationConfig, AllocationMetrics, Decision, IpFamily, Operation, RangeAllocation, Repair,
    RepairConfig, ServiceAllocator, ServiceScope, Value, apply_patch, install_crds,
};
use serde_json::json;

use crate::support::{eventually, setup};

fn config(prefix: &str, cidr: &str, ports: &str, scope: Option<&str>, grace: Duration) -> AllocationConfig {
    let mut c = AllocationConfig::parse(cidr, ports).expect("configuration");
    c.object_prefix = prefix.to_owned();
    c.pending_grace = grace;
    c.scope = ServiceScope {
        namespace: scope.map(str::to_owned),
        label_selector: None,
    };
    c
}

async fn start(client: &kube::Client, config: AllocationConfig) -> Arc<ServiceAllocator> {
    start_with(client, config, None).await
}

async fn start_with(
    client: &kube::Client,
    config: AllocationConfig,
    registry: Option<&prometheus::Registry>,
) -> Arc<ServiceAllocator> {
    install_crds(client.clone()).await.expect("install the CRD");
    let metrics = registry.map(|r| AllocationMetrics::new(r).expect("metrics"));
    Arc::new(
        ServiceAllocator::start(client.clone(), config, metrics)
            .await
            .expect("start the allocator"),
    )
}

/// The sum of a counter's samples in the text exposition.
fn counter_sum(registry: &prometheus::Registry, name: &str) -> f64 {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encode");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("service fixture")
}

fn cluster_ip(svc: &Service) -> IpAddr {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .expect("clusterIP")
        .parse()
        .expect("an address")
}

fn node_ports(svc: &Service) -> Vec<i32> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| p.node_port)
        .collect()
}

fn refusal(d: Decision) -> (u16, String) {
    match d {
        Decision::Deny(d) => (d.code(), d.message()),
        Decision::Allow { patch, .. } => panic!("expected a refusal, got {patch:?}"),
    }
}

/// What the mutating webhook and the apiserver do together: decide on `replica`, apply the
/// patch, create. A value the apiserver already gave to another test's Service is retried with
/// a fresh decision (the refused claim expires). Returns the stored Service and every value
/// handed out for it.
async fn admit_and_create(
    replica: &ServiceAllocator,
    client: &kube::Client,
    svc: &Service,
) -> (Service, Vec<Value>) {
    let ns = svc.metadata.namespace.clone().expect("namespace");
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let mut handed_out = Vec::new();
    for _ in 0..5 {
        let decision = replica
            .decide(Operation::Create, Some(svc), None, false)
            .await
            .expect("decide");
        let Decision::Allow { patch, allocated, .. } = decision else {
            panic!("refused: {decision:?}");
        };
        handed_out.extend(allocated);
        let object = apply_patch(svc, &patch).expect("patch applies");
        match api.create(&PostParams::default(), &object).await {
            Ok(created) => return (created, handed_out),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("already allocated") => continue,
            Err(e) => panic!("create {}: {e}", svc.metadata.name.as_deref().unwrap_or_default()),
        }
    }
    panic!("five collisions in a row")
}

#[tokio::test]
async fn allocation_refuses_bad_cluster_ips_and_fills_the_dynamic_band_first() {
    const NS: &str = "alloc-basic";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    // 254 addresses, static band .1-.16; 100 ports, static band 31900-31915.
    let alloc = start(
        &client,
        config(
            "it-basic-",
            "10.96.201.0/24",
            "31900-31999",
            None,
            Duration::from_secs(60),
        ),
    )
    .await;
    let objects: Api<RangeAllocation> = Api::all(client.clone());
    let stored = objects
        .get("it-basic-clusterip-ipv4")
        .await
        .expect("object created");
    assert_eq!(stored.spec.range, "10.96.201.0/24");
    assert!(objects.get("it-basic-nodeports").await.is_ok());

    // No clusterIP: one from the dynamic band, and the apiserver accepts it.
    let (auto, _) = admit_and_create(
        &alloc,
        &client,
        &service(NS, "auto", json!({"ports": [{"port": 80}]})),
    )
    .await;
    let ip = cluster_ip(&auto);
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("IPv4 expected"),
    };
    assert_eq!(octets[..3], [10, 96, 201]);
    assert!((17..=254).contains(&octets[3]), "{ip} in the dynamic band");

    // Taken, outside, network address: 422 with the apiserver's message.
    let taken = service(
        NS,
        "taken",
        json!({"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()], "ports": [{"port": 80}]}),
    );
    let d = alloc
        .decide(Operation::Create, Some(&taken), None, false)
        .await
        .expect("decide");
    assert_eq!(
        refusal(d),
        (
            422,
            format!(
                r#"Service "taken" is invalid: spec.clusterIPs: Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: provided IP is already allocated"#
            )
        )
    );
    for (requested, why) in [
        (
            "10.96.202.5",
            "the provided IP (10.96.202.5) is not in the valid range",
        ),
        (
            "10.96.201.0",
            "the provided IP (10.96.201.0) is not in the valid range",
        ),
    ] {
        let svc = service(
            NS,
            "outside",
            json!({"clusterIP": requested, "clusterIPs": [requested], "ports": [{"port": 80}]}),
        );
        let (code, message) = refusal(
            alloc
                .decide(Operation::Create, Some(&svc), None, false)
                .await
                .expect("decide"),
        );
        assert_eq!(code, 422);
        assert_eq!(
            message,
            format!(
                r#"Service "outside" is invalid: spec.clusterIPs: Invalid value: []string{{"{requested}"}}: failed to allocate IP {requested}: {why}. The range of valid IPs is 10.96.201.0/24"#
            )
        );
    }

    // NodePort: the dynamic band while it has room...
    let np = json!({"type": "NodePort", "ports": [{"port": 80}]});
    let (first, _) = admit_and_create(&alloc, &client, &service(NS, "np-dynamic", np.clone())).await;
    let port = node_ports(&first)[0];
    assert!((31916..=31999).contains(&port), "{port} in the dynamic band");
    // ... and the static band once it is full.
    alloc
        .port_store()
        .update(|s| {
            for p in 31916..=31999 {
                let _ = s.mark(p);
            }
        })
        .await
        .expect("fill the dynamic band");
    let (second, _) = admit_and_create(&alloc, &client, &service(NS, "np-static", np)).await;
    let port2 = node_ports(&second)[0];
    assert!((31900..=31915).contains(&port2), "{port2} in the static band");

    // A deleted Service's values go back to the pool with the next repair pass: "auto" through
    // its DELETE admission (which drops its pending claims), "np-dynamic" after a repair pass
    // saw it exist (which confirms them).
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let repair = Repair::new(
        Arc::clone(&alloc),
        RepairConfig {
            events: false,
            report_out_of_range: false,
            instance: None,
        },
    );
    let d = alloc
        .decide(Operation::Delete, None, Some(&auto), false)
        .await
        .expect("DELETE admission");
    assert!(
        matches!(&d, Decision::Allow { patch, .. } if patch.0.is_empty()),
        "{d:?}"
    );
    services
        .delete("auto", &DeleteParams::default())
        .await
        .expect("delete auto");
    let report = repair.run_once().await.expect("repair");
    assert!(report.released.contains(&Value::Ip(ip)), "{report:?}");
    assert!(report.confirmed.contains(&Value::Port(port)), "{report:?}");
    assert!(!report.released.contains(&Value::Port(port)), "{report:?}");
    services
        .delete("np-dynamic", &DeleteParams::default())
        .await
        .expect("delete np-dynamic");
    let report = repair.run_once().await.expect("repair");
    assert!(report.released.contains(&Value::Port(port)), "{report:?}");
    assert!(
        report.released.contains(&Value::Ip(cluster_ip(&first))),
        "{report:?}"
    );
    let state = alloc
        .ip_store(IpFamily::V4)
        .expect("v4")
        .read()
        .await
        .expect("read");
    assert!(!state.pool().has(ip));
    let reuse = service(
        NS,
        "reuse",
        json!({"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()], "ports": [{"port": 80}]}),
    );
    let (reused, _) = admit_and_create(&alloc, &client, &reuse).await;
    assert_eq!(cluster_ip(&reused), ip);
}

#[tokio::test]
async fn two_replicas_race_200_creates_without_duplicates_or_leaks() {
    const NS: &str = "alloc-race";
    let Some((cp, client)) = setup(NS).await else {
        return;
    };
    let grace = Duration::from_secs(2);
    let cfg = config("it-race-", "10.96.202.0/24", "32000-32299", None, grace);
    let (registry_a, registry_b) = (prometheus::Registry::new(), prometheus::Registry::new());
    let replica_a = start_with(&client, cfg.clone(), Some(&registry_a)).await;
    // The second replica has its own connection and registry, as another process would.
    let client_b = cp.client().await.expect("second client");
    let replica_b = start_with(&client_b, cfg, Some(&registry_b)).await;

    // 200 Services, every fourth a NodePort, every tenth abandoned after its admission (a later
    // webhook refused it, or the client went away).
    let results: Vec<(usize, bool, Vec<Value>, Option<Service>)> = futures::stream::iter(0..200usize)
        .map(|i| {
            let replica = if i % 2 == 0 { &replica_a } else { &replica_b };
            let client = if i % 2 == 0 { &client } else { &client_b };
            async move {
                let spec = if i % 4 == 0 {
                    json!({"type": "NodePort", "ports": [{"name": "tcp", "port": 53, "protocol": "TCP"},
                                                         {"name": "udp", "port": 53, "protocol": "UDP"}]})
                } else {
                    json!({"ports": [{"port": 80}]})
                };
                let svc = service(NS, &format!("svc-{i}"), spec);
                let abandoned = i % 10 == 5;
                if abandoned {
                    let d = replica
                        .decide(Operation::Create, Some(&svc), None, false)
                        .await
                        .expect("decide");
                    let Decision::Allow { allocated, .. } = d else {
                        panic!("refused: {d:?}")
                    };
                    (i, true, allocated, None)
                } else {
                    let (created, handed_out) = admit_and_create(replica, client, &svc).await;
                    (i, false, handed_out, Some(created))
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    // No value was ever handed out twice (TCP and UDP of one port share one node port).
    let mut seen = HashSet::new();
    for (i, _, values, _) in &results {
        for v in values {
            assert!(seen.insert(*v), "{v} handed out twice (svc-{i})");
        }
    }
    let created: Vec<&Service> = results.iter().filter_map(|r| r.3.as_ref()).collect();
    assert_eq!(created.len(), 180);
    let ips: HashSet<IpAddr> = created.iter().map(|s| cluster_ip(s)).collect();
    assert_eq!(ips.len(), 180, "distinct clusterIPs");
    for s in &created {
        let ports = node_ports(s);
        if !ports.is_empty() {
            assert_eq!(ports.len(), 2);
            assert_eq!(ports[0], ports[1], "TCP and UDP share the node port");
        }
    }
    let conflicts: f64 = [&registry_a, &registry_b]
        .iter()
        .map(|r| counter_sum(r, "portico_allocator_write_conflicts_total"))
        .sum();
    let handed: f64 = [&registry_a, &registry_b]
        .iter()
        .map(|r| counter_sum(r, "portico_clusterip_allocator_allocation_total"))
        .sum();
    eprintln!("race: {handed} clusterIPs handed out, {conflicts} lost compare-and-swaps retried");
    assert!(handed >= 200.0);
    // 64 creates in flight on two replicas: the replicas did race for the objects.
    assert!(
        conflicts > 0.0,
        "no compare-and-swap was ever lost: the race did not happen"
    );
    let abandoned: BTreeSet<Value> = results
        .iter()
        .filter(|r| r.1)
        .flat_map(|r| r.2.iter().copied())
        .collect();
    assert_eq!(abandoned.iter().filter(|v| matches!(v, Value::Ip(_))).count(), 20);

    // After the grace period one repair pass (on either replica) frees exactly what no Service
    // holds, and confirms the rest.
    tokio::time::sleep(grace + Duration::from_millis(500)).await;
    let repair = Repair::new(
        Arc::clone(&replica_b),
        RepairConfig {
            events: false,
            report_out_of_range: false,
            instance: None,
        },
    );
    let report = repair.run_once().await.expect("repair");
    let referenced = referenced_values(&client).await;
    let leaked: BTreeSet<Value> = report.leaked_released.iter().copied().collect();
    // An abandoned value is a leak unless a Service of another test (given an address by the
    // apiserver, which knows nothing of Portico's claims) happens to hold it now.
    let expected: BTreeSet<Value> = abandoned.difference(&referenced).copied().collect();
    assert!(leaked.is_superset(&expected), "{report:?}");
    assert!(report.duplicates.is_empty(), "{report:?}");

    let held: BTreeSet<Value> = replica_a.held().await.expect("held").into_iter().collect();
    let mut in_use: BTreeSet<Value> = BTreeSet::new();
    for s in &created {
        in_use.insert(Value::Ip(cluster_ip(s)));
        in_use.extend(node_ports(s).into_iter().map(Value::Port));
    }
    assert!(held.is_superset(&in_use), "every Service's values are held");
    // Anything else held belongs to another test's Service that landed in this range.
    let leaks: Vec<&Value> = held.difference(&referenced).collect();
    assert!(leaks.is_empty(), "leaked after repair: {leaks:?}");
    for store in [
        replica_a
            .ip_store(IpFamily::V4)
            .expect("v4")
            .read()
            .await
            .expect("read")
            .pending()
            .len(),
        replica_a.port_store().read().await.expect("read").pending().len(),
    ] {
        assert_eq!(store, 0, "no claim left pending");
    }
}

/// Every clusterIP and nodePort held by a Service of any namespace.
async fn referenced_values(client: &kube::Client) -> BTreeSet<Value> {
    let all: Vec<Service> = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    all.iter()
        .flat_map(|s| {
            let mut v: Vec<Value> = node_ports(s).into_iter().map(Value::Port).collect();
            if let Some(ip) = s
                .spec
                .as_ref()
                .and_then(|sp| sp.cluster_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
            {
                v.push(Value::Ip(ip));
            }
            v
        })
        .collect()
}

#[tokio::test]
async fn pending_claims_expire_and_a_restart_rebuilds_from_object_and_services() {
    const NS: &str = "alloc-restart";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let grace = Duration::from_secs(1);
    let cfg = config("it-restart-", "10.96.203.0/24", "32300-32399", Some(NS), grace);
    let first = start(&client, cfg.clone()).await;

    // An admission whose Service never appears.
    let ghost = service(NS, "ghost", json!({"ports": [{"port": 80}]}));
    let Decision::Allow { allocated, .. } = first
        .decide(Operation::Create, Some(&ghost), None, false)
        .await
        .expect("decide")
    else {
        panic!("refused")
    };
    let ghost_ip = allocated[0];
    // A Service created through Portico.
    let (real, _) = admit_and_create(
        &first,
        &client,
        &service(NS, "real", json!({"ports": [{"port": 80}]})),
    )
    .await;
    let real_ip = Value::Ip(cluster_ip(&real));
    // Services that bypassed the webhook: inside the range, and one outside of it.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let bypass = service(
        NS,
        "bypass",
        json!({"type": "NodePort", "clusterIP": "10.96.203.200", "clusterIPs": ["10.96.203.200"],
               "ports": [{"port": 80, "nodePort": 32350}]}),
    );
    services
        .create(&PostParams::default(), &bypass)
        .await
        .expect("create bypass");
    let foreign = service(
        NS,
        "foreign",
        json!({"clusterIP": "10.96.204.77", "clusterIPs": ["10.96.204.77"], "ports": [{"port": 80}]}),
    );
    let foreign = services
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign");
    drop(first);

    // Restart: the object brings back the claim and the real Service's value, the Services
    // bring back what bypassed the webhook.
    let second = start(&client, cfg).await;
    let ips = second
        .ip_store(IpFamily::V4)
        .expect("v4")
        .cached()
        .await
        .expect("state");
    let bypass_ip: IpAddr = "10.96.203.200".parse().expect("ip");
    assert!(ips.pool().has(bypass_ip), "marked from the Service");
    let Value::Ip(ghost_addr) = ghost_ip else {
        panic!("an address first")
    };
    assert!(ips.pending().contains_key(&ghost_addr), "claim restored");
    let Value::Ip(real_addr) = real_ip else {
        unreachable!()
    };
    assert!(ips.pool().has(real_addr));
    assert!(
        second
            .port_store()
            .cached()
            .await
            .expect("ports")
            .pool()
            .has(32350)
    );

    // A Service that appears behind Portico's back while it runs is repaired (with an Event).
    let late = service(
        NS,
        "late",
        json!({"clusterIP": "10.96.203.201", "clusterIPs": ["10.96.203.201"], "ports": [{"port": 80}]}),
    );
    services
        .create(&PostParams::default(), &late)
        .await
        .expect("create late");

    tokio::time::sleep(grace + Duration::from_millis(300)).await;
    let repair = Repair::new(
        Arc::clone(&second),
        RepairConfig {
            instance: Some("it-restart".into()),
            ..RepairConfig::default()
        },
    );
    let report = repair.run_once().await.expect("repair");
    assert_eq!(report.leaked_released, vec![ghost_ip], "{report:?}");
    assert!(report.confirmed.contains(&real_ip), "{report:?}");
    let late_ip: IpAddr = "10.96.203.201".parse().expect("ip");
    assert_eq!(
        report.unknown,
        vec![(
            portico_webhook::allocation::ServiceRef::new(NS, "late"),
            Value::Ip(late_ip)
        )]
    );
    assert_eq!(report.out_of_range.len(), 1, "{report:?}");
    assert!(report.released.is_empty(), "{report:?}");
    let ips = second
        .ip_store(IpFamily::V4)
        .expect("v4")
        .read()
        .await
        .expect("state");
    assert!(!ips.pool().has(ghost_addr));
    assert!(ips.pool().has(late_ip) && ips.pending().is_empty());

    // The pass is on the range's object, for `portico status`: the leak with the Service that
    // never came, the Service the bitmap did not know.
    let object = second.ip_store(IpFamily::V4).expect("v4").name().to_owned();
    let stored = Api::<RangeAllocation>::all(client.clone())
        .get(&object)
        .await
        .expect("RangeAllocation");
    let pass = stored
        .status
        .and_then(|s| s.last_repair)
        .expect("status.lastRepair");
    assert_eq!(pass.leaked.count, 1, "{pass:?}");
    assert!(
        pass.leaked.examples[0].starts_with(&format!("{ghost_addr} {NS}/")),
        "{pass:?}"
    );
    assert_eq!(
        pass.unknown.examples,
        vec![format!("{late_ip} {NS}/late")],
        "{pass:?}"
    );
    assert_eq!(pass.duplicates.count, 0, "{pass:?}");

    // The Events, with upstream's reasons and messages.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let found = eventually(20, "repair Events", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let mine: Vec<(String, String)> = list
                .items
                .into_iter()
                .filter(|e| e.reporting_controller.as_deref() == Some("portico-allocation-repair"))
                .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
                .collect();
            (mine.len() >= 2).then_some(mine)
        }
    })
    .await;
    assert!(
        found.contains(&(
            "ClusterIPNotAllocated".to_owned(),
            "Cluster IP [IPv4]:10.96.203.201 is not allocated; repairing".to_owned()
        )),
        "{found:?}"
    );
    let foreign_ip = cluster_ip(&foreign);
    assert!(
        found.contains(&(
            "ClusterIPOutOfRange".to_owned(),
            format!(
                "Cluster IP [IPv4]:{foreign_ip} is not within the service CIDR 10.96.203.0/24; please recreate service"
            )
        )),
        "{found:?}"
    );
}
