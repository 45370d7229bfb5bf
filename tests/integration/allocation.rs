//! ClusterIP/NodePort allocation against a real apiserver (1.37): the cluster's own truth
//! (Services of every namespace, IPAddresses, ServiceCIDRs), claims shared through the
//! `RangeAllocation` objects, and upstream's answers word for word.
//!
//! The apiserver is shared with the rest of the suite. Every test names its objects with its
//! own prefix and draws new values from its own sub-range (the clusterIP narrowing, and a
//! node-port range inside the apiserver's); explicit values are checked against the whole
//! cluster, as the apiserver checks them. `decide` + `create` is what the webhook and the
//! apiserver do together (the webhook path itself is covered in `webhook.rs`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use portico_allocation::{
    AllocationConfig, AllocationMetrics, Decision, Operation, RangeAllocation, ServiceAllocator, Value,
    apply_patch, install_crds,
};
use serde_json::json;

use crate::support::{eventually, setup};

fn config(prefix: &str, narrowing: &str, ports: &str, ttl: Duration) -> AllocationConfig {
    let mut c = AllocationConfig::parse(narrowing, ports).expect("configuration");
    c.object_prefix = prefix.to_owned();
    c.claim_ttl = ttl;
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
/// patch, create. Any refusal, by Portico or by the apiserver, is an error: a value Portico
/// hands out must be one the apiserver accepts.
async fn admit_and_create(
    replica: &ServiceAllocator,
    client: &kube::Client,
    svc: &Service,
) -> Result<Service, String> {
    let ns = svc.metadata.namespace.clone().expect("namespace");
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let decision = replica
        .decide(Operation::Create, Some(svc), None, false)
        .await
        .map_err(|e| e.to_string())?;
    let Decision::Allow { patch, .. } = decision else {
        return Err(format!("refused by Portico: {decision:?}"));
    };
    let object = apply_patch(svc, &patch).expect("patch applies");
    api.create(&PostParams::default(), &object)
        .await
        .map_err(|e| format!("refused by the apiserver: {e}"))
}

/// What the apiserver answers to `svc` on its own (no webhook in this namespace).
async fn apiserver_answer(client: &kube::Client, svc: &Service) -> (u16, String) {
    let ns = svc.metadata.namespace.clone().expect("namespace");
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), svc).await {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        Ok(created) => panic!("the apiserver accepted {:?}", created.metadata.name),
        Err(e) => panic!("create: {e}"),
    }
}

#[tokio::test]
async fn refusals_are_the_apiservers_own_word_for_word() {
    const NS: &str = "alloc-parity";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    // The apiserver's whole node-port range: an out-of-range port is out of its range too.
    let alloc = start(
        &client,
        config(
            "it-parity-",
            "10.96.201.0/24",
            "30000-32767",
            Duration::from_secs(30),
        ),
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let holder = services
        .create(
            &PostParams::default(),
            &service(NS, "holder", json!({"type": "NodePort", "ports": [{"port": 80}]})),
        )
        .await
        .expect("a Service the apiserver allocates for");
    let (held_ip, held_port) = (cluster_ip(&holder).to_string(), node_ports(&holder)[0]);
    eventually(10, "the watch to see the holder", || {
        let alloc = Arc::clone(&alloc);
        let ip: IpAddr = held_ip.parse().expect("ip");
        async move { alloc.held().await.ok()?.contains(&Value::Ip(ip)).then_some(()) }
    })
    .await;
    let cases = [
        (
            "taken-ip",
            json!({"clusterIP": held_ip, "clusterIPs": [held_ip], "ports": [{"port": 80}]}),
        ),
        (
            "outside",
            json!({"clusterIP": "10.250.0.5", "clusterIPs": ["10.250.0.5"], "ports": [{"port": 80}]}),
        ),
        (
            "network",
            json!({"clusterIP": "10.96.0.0", "clusterIPs": ["10.96.0.0"], "ports": [{"port": 80}]}),
        ),
        (
            "broadcast",
            json!({"clusterIP": "10.96.255.255", "clusterIPs": ["10.96.255.255"], "ports": [{"port": 80}]}),
        ),
        (
            "taken-port",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": held_port}]}),
        ),
        (
            "far-port",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]}),
        ),
    ];
    for (name, spec) in cases {
        let svc = service(NS, name, spec);
        let ours = refusal(
            alloc
                .decide(Operation::Create, Some(&svc), None, false)
                .await
                .expect("decide"),
        );
        let theirs = apiserver_answer(&client, &svc).await;
        assert_eq!(
            ours, theirs,
            "{name}: Portico's answer differs from the apiserver's"
        );
    }
    // What the apiserver accepts, Portico accepts: an explicit address outside the narrowing.
    let wide = service(
        NS,
        "wide",
        json!({"clusterIP": "10.96.202.77", "clusterIPs": ["10.96.202.77"], "ports": [{"port": 80}]}),
    );
    let created = admit_and_create(&alloc, &client, &wide)
        .await
        .expect("accepted like upstream");
    assert_eq!(cluster_ip(&created).to_string(), "10.96.202.77");
}

#[tokio::test]
async fn a_deleted_services_values_are_free_again_within_a_second() {
    const NS: &str = "alloc-reuse";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let alloc = start(
        &client,
        config(
            "it-reuse-",
            "10.96.203.0/24",
            "30300-30399",
            Duration::from_secs(30),
        ),
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let spec = json!({"type": "NodePort", "clusterIP": "10.96.203.77", "clusterIPs": ["10.96.203.77"],
                      "ports": [{"port": 80, "nodePort": 30377}]});
    for round in 0..3 {
        let first = admit_and_create(
            &alloc,
            &client,
            &service(NS, &format!("first-{round}"), spec.clone()),
        )
        .await
        .expect("first create");
        assert_eq!(node_ports(&first), [30377]);
        // Let the watch see it holding the values: the next request for them is refused.
        let second = service(NS, &format!("second-{round}"), spec.clone());
        eventually(10, "the watch to see the first Service", || {
            let alloc = Arc::clone(&alloc);
            let second = second.clone();
            async move {
                let d = alloc
                    .decide(Operation::Create, Some(&second), None, true)
                    .await
                    .ok()?;
                matches!(d, Decision::Deny(_)).then_some(())
            }
        })
        .await;
        services
            .delete(&format!("first-{round}"), &DeleteParams::default())
            .await
            .expect("delete");
        // At once, as a client would: the first request succeeds, as upstream's does.
        let deleted = Instant::now();
        let created = admit_and_create(&alloc, &client, &second)
            .await
            .expect("the values of a deleted Service, requested at once");
        assert_eq!(node_ports(&created), [30377]);
        assert_eq!(cluster_ip(&created).to_string(), "10.96.203.77");
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "{:?}",
            deleted.elapsed()
        );
        eprintln!(
            "round {round}: delete then recreate of the same values took {:?}",
            deleted.elapsed()
        );
        services
            .delete(&format!("second-{round}"), &DeleteParams::default())
            .await
            .expect("delete");
        eventually(10, "the values to be free", || {
            let alloc = Arc::clone(&alloc);
            async move { (!alloc.held().await.ok()?.contains(&Value::Port(30377))).then_some(()) }
        })
        .await;
    }
}

#[tokio::test]
async fn a_value_freed_through_one_replica_is_free_on_the_other() {
    const NS: &str = "alloc-reuse-2";
    let Some((cp, client)) = setup(NS).await else {
        return;
    };
    let cfg = config(
        "it-reuse2-",
        "10.96.212.0/24",
        "31600-31699",
        Duration::from_secs(30),
    );
    let a = start(&client, cfg.clone()).await;
    let client_b = cp.client().await.expect("second client");
    let b = start(&client_b, cfg).await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    // Dynamic values come from replica A's reservation.
    let first = admit_and_create(
        &a,
        &client,
        &service(NS, "first", json!({"type": "NodePort", "ports": [{"port": 80}]})),
    )
    .await
    .expect("create through A");
    let (ip, port) = (cluster_ip(&first).to_string(), node_ports(&first)[0]);
    // Past the linger of fulfilled claims, and B re-reads the shared object (a write of its own),
    // which still carries A's reservation until A writes again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    admit_and_create(&b, &client_b, &service(NS, "other", json!({"type": "NodePort", "clusterIP": "10.96.212.250", "clusterIPs": ["10.96.212.250"], "ports": [{"port": 80, "nodePort": 31699}]})))
        .await
        .expect("a write through B");
    services
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = Instant::now();
    let again = service(
        NS,
        "again",
        json!({"type": "NodePort", "clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80, "nodePort": port}]}),
    );
    admit_and_create(&b, &client_b, &again)
        .await
        .expect("B accepts the values at once");
    assert!(
        deleted.elapsed() < Duration::from_secs(1),
        "{:?}",
        deleted.elapsed()
    );
}

#[tokio::test]
async fn values_the_apiserver_assigned_on_its_own_are_never_handed_out() {
    const NS: &str = "alloc-outside";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let alloc = start(
        &client,
        config(
            "it-outside-",
            "10.96.204.0/24",
            "30400-30499",
            Duration::from_secs(30),
        ),
    )
    .await;
    // kube-system is never sent to the webhook: Services there get values from the apiserver
    // alone, here exactly the ones Portico would hand out next.
    let system: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    for i in 0..5 {
        let plain = service(
            NS,
            &format!("plain-{i}"),
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        );
        let Decision::Allow { patch, .. } = alloc
            .decide(Operation::Create, Some(&plain), None, true)
            .await
            .expect("dry run")
        else {
            panic!("dry run refused");
        };
        let next = apply_patch(&plain, &patch).expect("patch");
        let (ip, port) = (cluster_ip(&next).to_string(), node_ports(&next)[0]);
        system
            .create(
                &PostParams::default(),
                &service(
                    "kube-system",
                    &format!("it-outside-{i}"),
                    json!({"type": "NodePort", "clusterIP": ip, "clusterIPs": [ip],
                    "ports": [{"port": 80, "nodePort": port}]}),
                ),
            )
            .await
            .expect("the apiserver takes the values itself");
        // No wait for the watch: the create must succeed now or after the watch caught up, but
        // never with the kube-system Service's values.
        let mut tries = 0;
        let created = loop {
            tries += 1;
            match admit_and_create(&alloc, &client, &plain).await {
                Ok(c) => break c,
                Err(e) if tries < 50 && e.contains("already allocated") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("create {i}: {e}"),
            }
        };
        assert_ne!(cluster_ip(&created).to_string(), ip);
        assert_ne!(node_ports(&created)[0], port);
        eprintln!(
            "round {i}: {tries} attempt(s) (more than 1: the watch had not seen the kube-system Service yet)"
        );
    }
    for i in 0..5 {
        let _ = system
            .delete(&format!("it-outside-{i}"), &DeleteParams::default())
            .await;
    }
}

#[tokio::test]
async fn a_full_update_keeps_the_shared_node_port_of_a_tcp_udp_pair() {
    const NS: &str = "alloc-update";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let alloc = start(
        &client,
        config(
            "it-update-",
            "10.96.205.0/24",
            "30500-30599",
            Duration::from_secs(30),
        ),
    )
    .await;
    let ports = json!([{"name": "dns-tcp", "port": 53, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]);
    let created = admit_and_create(
        &alloc,
        &client,
        &service(NS, "dns", json!({"type": "NodePort", "ports": ports})),
    )
    .await
    .expect("create");
    let shared = node_ports(&created);
    assert_eq!(shared.len(), 2);
    assert_eq!(shared[0], shared[1], "TCP and UDP share one node port");
    // A full update (PUT) that omits the node ports, as `kubectl replace` of a hand-written file.
    let mut new = service(
        NS,
        "dns",
        json!({"type": "NodePort", "clusterIP": cluster_ip(&created).to_string(), "ports": ports}),
    );
    new.metadata.resource_version = created.metadata.resource_version.clone();
    let Decision::Allow { patch, allocated, .. } = alloc
        .decide(Operation::Update, Some(&new), Some(&created), false)
        .await
        .expect("decide")
    else {
        panic!("update refused");
    };
    assert!(allocated.is_empty(), "nothing new taken: {allocated:?}");
    let replaced = Api::<Service>::namespaced(client.clone(), NS)
        .replace(
            "dns",
            &PostParams::default(),
            &apply_patch(&new, &patch).expect("patch"),
        )
        .await
        .expect("replace");
    assert_eq!(
        node_ports(&replaced),
        shared,
        "as upstream's patchAllocatedValues keeps them"
    );
}

#[tokio::test]
async fn claims_lapse_at_their_ttl() {
    const NS: &str = "alloc-ttl";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let alloc = start(
        &client,
        config("it-ttl-", "10.96.206.0/24", "30600-30699", Duration::from_secs(1)),
    )
    .await;
    let abandoned = service(
        NS,
        "abandoned",
        json!({"type": "NodePort", "ports": [{"port": 80}]}),
    );
    let Decision::Allow { allocated, .. } = alloc
        .decide(Operation::Create, Some(&abandoned), None, false)
        .await
        .expect("decide")
    else {
        panic!("refused");
    };
    let port = allocated
        .iter()
        .find_map(|v| match v {
            Value::Port(p) => Some(*p),
            Value::Ip(_) => None,
        })
        .expect("a node port");
    let wants = service(
        NS,
        "wants",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
    );
    let (code, _) = refusal(
        alloc
            .decide(Operation::Create, Some(&wants), None, false)
            .await
            .expect("decide"),
    );
    assert_eq!(code, 422, "claimed for the abandoned request");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let created = admit_and_create(&alloc, &client, &wants)
        .await
        .expect("free once the claim lapsed");
    assert_eq!(node_ports(&created), [port]);
}

#[tokio::test]
async fn a_service_cidr_added_at_run_time_is_used_and_its_removal_too() {
    const NS: &str = "alloc-cidr";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let alloc = start(
        &client,
        config(
            "it-cidr-",
            "10.96.207.0/24",
            "30700-30799",
            Duration::from_secs(30),
        ),
    )
    .await;
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let svc = service(
        NS,
        "extra",
        json!({"clusterIP": "10.99.0.5", "clusterIPs": ["10.99.0.5"], "ports": [{"port": 80}]}),
    );
    let (code, message) = refusal(
        alloc
            .decide(Operation::Create, Some(&svc), None, false)
            .await
            .expect("decide"),
    );
    assert_eq!(code, 422);
    assert!(
        message.ends_with("the provided network does not match the current range"),
        "{message}"
    );
    let extra: ServiceCIDR = serde_json::from_value(
        json!({"metadata": {"name": "it-extra"}, "spec": {"cidrs": ["10.99.0.0/24"]}}),
    )
    .expect("cidr");
    cidrs
        .create(&PostParams::default(), &extra)
        .await
        .expect("create ServiceCIDR");
    let created = eventually(10, "the new ServiceCIDR to be used", || {
        let (alloc, client, svc) = (Arc::clone(&alloc), client.clone(), svc.clone());
        async move { admit_and_create(&alloc, &client, &svc).await.ok() }
    })
    .await;
    assert_eq!(cluster_ip(&created).to_string(), "10.99.0.5");
    Api::<Service>::namespaced(client.clone(), NS)
        .delete("extra", &DeleteParams::default())
        .await
        .expect("delete");
    cidrs
        .delete("it-extra", &DeleteParams::default())
        .await
        .expect("delete ServiceCIDR");
    eventually(20, "the removed ServiceCIDR to be dropped", || {
        let (alloc, svc) = (Arc::clone(&alloc), svc.clone());
        async move {
            let d = alloc
                .decide(Operation::Create, Some(&svc), None, true)
                .await
                .ok()?;
            matches!(d, Decision::Deny(_)).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_narrowing_outside_every_service_cidr_is_refused_at_start() {
    const NS: &str = "alloc-narrow";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    install_crds(client.clone()).await.expect("CRD");
    let err = ServiceAllocator::start(
        client.clone(),
        config(
            "it-narrow-",
            "10.43.0.0/16",
            "30000-32767",
            Duration::from_secs(30),
        ),
        None,
    )
    .await
    .expect_err("outside the cluster's ServiceCIDRs");
    assert_eq!(
        err.to_string(),
        "invalid allocation configuration: --service-cluster-ip-range 10.43.0.0/16 lies outside every ready ServiceCIDR of the cluster (IPv4 ranges: 10.96.0.0/16)"
    );
}

#[tokio::test]
async fn a_deleted_or_corrupted_range_allocation_is_rebuilt_without_handing_out_a_claimed_value() {
    const NS: &str = "alloc-lost";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let alloc = start(
        &client,
        config(
            "it-lost-",
            "10.96.208.0/24",
            "30800-30809",
            Duration::from_secs(30),
        ),
    )
    .await;
    let objects: Api<RangeAllocation> = Api::all(client.clone());
    let claim = |name: &str| {
        let alloc = Arc::clone(&alloc);
        let svc = service(NS, name, json!({"type": "NodePort", "ports": [{"port": 80}]}));
        async move {
            match alloc
                .decide(Operation::Create, Some(&svc), None, false)
                .await
                .expect("decide")
            {
                Decision::Allow { allocated, .. } => allocated,
                d => panic!("refused: {d:?}"),
            }
        }
    };
    let first = claim("first").await;
    let started = Instant::now();
    objects
        .delete("it-lost-nodeports", &DeleteParams::default())
        .await
        .expect("delete the object");
    let second = claim("second").await;
    eprintln!(
        "first admission after the delete answered in {:?}",
        started.elapsed()
    );
    assert!(
        first.iter().all(|v| !second.contains(v)),
        "a claimed value handed out again: {first:?} {second:?}"
    );
    let rebuilt = objects.get("it-lost-nodeports").await.expect("recreated");
    // The status subresource is written right after the claims (a recovery cannot wait).
    let recovery = eventually(5, "the recovery in the status", || {
        let objects = objects.clone();
        async move {
            let obj = objects.get("it-lost-nodeports").await.ok()?;
            obj.status?.last_recovery
        }
    })
    .await;
    assert_eq!(recovery.reason, "the object was deleted");
    let port = |vs: &[Value]| {
        vs.iter()
            .find_map(|v| match v {
                Value::Port(p) => Some(p.to_string()),
                Value::Ip(_) => None,
            })
            .expect("a port")
    };
    let claimed = |pending: &str, port: String| pending.lines().any(|l| l.starts_with(&format!("{port} ")));
    assert!(
        claimed(&rebuilt.spec.pending, port(&first)),
        "the first claim survived"
    );
    assert!(claimed(&rebuilt.spec.pending, port(&second)));

    // Unreadable entries: the object is rewritten from this replica's claims.
    objects
        .patch(
            "it-lost-nodeports",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pending": "not-a-port x soon\n"}})),
        )
        .await
        .expect("corrupt the object");
    let third = claim("third").await;
    assert!(
        first.iter().chain(&second).all(|v| !third.contains(v)),
        "a claimed value handed out again after the corruption"
    );
    let rewritten = objects.get("it-lost-nodeports").await.expect("object");
    assert!(!rewritten.spec.pending.contains("not-a-port"));
    assert!(
        claimed(&rewritten.spec.pending, port(&first)),
        "the claims survived the corruption"
    );
    // The status subresource follows the claims' write at once (a recovery cannot wait).
    let reason = eventually(5, "the recovery in the status", || {
        let objects = objects.clone();
        async move {
            let obj = objects.get("it-lost-nodeports").await.ok()?;
            let reason = obj.status?.last_recovery?.reason;
            reason.starts_with("unreadable").then_some(reason)
        }
    })
    .await;
    assert!(reason.starts_with("unreadable claims: not-a-port"), "{reason}");
    let events: Vec<Event> = eventually(10, "the recovery Events", || {
        let client = client.clone();
        async move {
            let list = Api::<Event>::all(client)
                .list(&ListParams::default())
                .await
                .ok()?;
            let ours: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("it-lost-nodeports"))
                .collect();
            let reasons: HashSet<&str> = ours.iter().filter_map(|e| e.reason.as_deref()).collect();
            (reasons.contains("RangeAllocationRecreated") && reasons.contains("RangeAllocationRewritten"))
                .then_some(ours)
        }
    })
    .await;
    assert!(events.iter().all(|e| e.type_.as_deref() == Some("Warning")));
}

#[tokio::test]
async fn a_full_band_is_free_again_right_after_its_services_go() {
    const NS: &str = "alloc-refill";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    // 40 ports: static 30900-30915, dynamic 30916-30939.
    let alloc = start(
        &client,
        config(
            "it-refill-",
            "10.96.209.0/24",
            "30900-30939",
            Duration::from_secs(30),
        ),
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    for round in 0..2 {
        let made: Vec<Result<Service, String>> = futures::stream::iter(0..40)
            .map(|i| {
                let (alloc, client) = (Arc::clone(&alloc), client.clone());
                async move {
                    let svc = service(
                        NS,
                        &format!("r{round}-{i}"),
                        json!({"type": "NodePort", "ports": [{"port": 80}]}),
                    );
                    admit_and_create(&alloc, &client, &svc).await
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let failures: Vec<&String> = made.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failures.is_empty(), "round {round}: {failures:?}");
        let ports: HashSet<i32> = made.iter().flatten().flat_map(node_ports).collect();
        assert_eq!(ports.len(), 40, "the whole range, each port once");
        let full = service(
            NS,
            "one-too-many",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        );
        let (code, message) = refusal(
            alloc
                .decide(Operation::Create, Some(&full), None, true)
                .await
                .expect("decide"),
        );
        assert_eq!(
            (code, message.as_str()),
            (
                500,
                "Internal error occurred: failed to allocate a nodePort: range is full"
            )
        );
        // What `kubectl wait --for=condition=Exhausted rangeallocation/...` reads.
        exhausted(&client, "it-refill-nodeports", "True").await;
        for i in 0..40 {
            services
                .delete(&format!("r{round}-{i}"), &DeleteParams::default())
                .await
                .expect("delete");
        }
        if round == 1 {
            exhausted(&client, "it-refill-nodeports", "False").await;
        }
        // The next round creates right after the deletes returned.
    }
}

/// Waits until the `Exhausted` condition of RangeAllocation `name` has `status`.
async fn exhausted(client: &kube::Client, name: &str, status: &str) {
    let objects: Api<RangeAllocation> = Api::all(client.clone());
    eventually(10, &format!("{name} Exhausted={status}"), || {
        let objects = objects.clone();
        async move {
            let obj = objects.get(name).await.ok()?;
            let c = obj
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Exhausted")?;
            (c.status == status).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn two_replicas_race_creates_without_a_failure_or_a_duplicate() {
    const NS: &str = "alloc-race";
    let Some((cp, client)) = setup(NS).await else {
        return;
    };
    let cfg = config(
        "it-race-",
        "10.96.210.0/24",
        "31000-31299",
        Duration::from_secs(30),
    );
    let (registry_a, registry_b) = (prometheus::Registry::new(), prometheus::Registry::new());
    let replica_a = start_with(&client, cfg.clone(), Some(&registry_a)).await;
    // The second replica has its own connection and registry, as another process would.
    let client_b = cp.client().await.expect("second client");
    let replica_b = start_with(&client_b, cfg, Some(&registry_b)).await;
    let results: Vec<(usize, Result<Service, String>)> = futures::stream::iter(0..200usize)
        .map(|i| {
            let (replica, client) = if i % 2 == 0 {
                (&replica_a, &client)
            } else {
                (&replica_b, &client_b)
            };
            async move {
                let spec = if i % 4 == 0 {
                    json!({"type": "NodePort", "ports": [{"name": "tcp", "port": 53, "protocol": "TCP"},
                                                         {"name": "udp", "port": 53, "protocol": "UDP"}]})
                } else {
                    json!({"type": "NodePort", "ports": [{"port": 80}]})
                };
                (
                    i,
                    admit_and_create(replica, client, &service(NS, &format!("svc-{i}"), spec)).await,
                )
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("svc-{i}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{} failures: {failures:?}", failures.len());
    let created: Vec<&Service> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let ips: HashSet<IpAddr> = created.iter().map(|s| cluster_ip(s)).collect();
    assert_eq!(ips.len(), 200, "distinct clusterIPs");
    let mut ports = HashSet::new();
    for s in &created {
        let p = node_ports(s);
        assert!(p.iter().all(|x| *x == p[0]), "TCP and UDP share the node port");
        assert!(ports.insert(p[0]), "node port {} twice", p[0]);
    }
    let conflicts: f64 = [&registry_a, &registry_b]
        .iter()
        .map(|r| counter_sum(r, "portico_allocator_write_conflicts_total"))
        .sum();
    eprintln!("race: 200 creates on two replicas, {conflicts} lost compare-and-swaps retried");
    assert!(
        conflicts > 0.0,
        "no compare-and-swap was ever lost: the race did not happen"
    );
    // Every claim left is a reservation not handed out yet: the handed-out ones are fulfilled
    // once the watches see the Services.
    let in_use: HashSet<String> = created
        .iter()
        .flat_map(|s| {
            std::iter::once(cluster_ip(s).to_string()).chain(node_ports(s).into_iter().map(|p| p.to_string()))
        })
        .collect();
    for replica in [&replica_a, &replica_b] {
        eventually(10, "every handed-out claim fulfilled", || {
            let (replica, in_use) = (Arc::clone(replica), in_use.clone());
            async move {
                let ips = replica.ip_ranges()[0].1.snapshot().await.ok()?;
                let ports = replica.port_range().snapshot().await.ok()?;
                let live = ips
                    .pending()
                    .keys()
                    .map(ToString::to_string)
                    .chain(ports.pending().keys().map(ToString::to_string))
                    .any(|v| in_use.contains(&v));
                (!live).then_some(())
            }
        })
        .await;
    }
    // A Service's values are free on both replicas the moment it is gone, wherever they came from.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    for (i, (replica, c)) in [(&replica_a, &client), (&replica_b, &client_b)]
        .into_iter()
        .enumerate()
    {
        let old = created[i];
        let name = old.metadata.name.clone().expect("name");
        services
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete");
        let (ip, port) = (cluster_ip(old).to_string(), node_ports(old)[0]);
        let again = service(
            NS,
            &format!("again-{i}"),
            json!({"type": "NodePort", "clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80, "nodePort": port}]}),
        );
        let deleted = Instant::now();
        {
            match admit_and_create(replica, c, &again).await {
                Ok(_) => {}
                Err(e) => {
                    let ips = replica.ip_ranges()[0].1.snapshot().await.expect("state");
                    let ports = replica.port_range().snapshot().await.expect("state");
                    let ipv: IpAddr = ip.parse().expect("ip");
                    panic!(
                        "{name}'s values refused right after its delete ({:?}): {e}; claim {:?} / {:?}, holders {:?} / {:?}",
                        deleted.elapsed(),
                        ips.pending().get(&ipv),
                        ports.pending().get(&port),
                        ips.holders(ipv),
                        ports.holders(port)
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn two_configurations_live_during_a_rollout_never_hand_out_the_same_value() {
    const NS: &str = "alloc-rollout";
    let Some((cp, client)) = setup(NS).await else {
        return;
    };
    // The old replica draws from a /24 and 100 ports, the new one from the upper half of both:
    // they share the claims (same objects), so neither hands out what the other handed out.
    let old = start(
        &client,
        config(
            "it-rollout-",
            "10.96.214.0/24",
            "31700-31799",
            Duration::from_secs(30),
        ),
    )
    .await;
    let client_b = cp.client().await.expect("second client");
    let new = start(
        &client_b,
        config(
            "it-rollout-",
            "10.96.214.128/25",
            "31750-31799",
            Duration::from_secs(30),
        ),
    )
    .await;
    let results: Vec<Result<Service, String>> = futures::stream::iter(0..60usize)
        .map(|i| {
            let (replica, c) = if i % 2 == 0 {
                (&old, &client)
            } else {
                (&new, &client_b)
            };
            async move {
                let svc = service(
                    NS,
                    &format!("r{i}"),
                    json!({"type": "NodePort", "ports": [{"port": 80}]}),
                );
                admit_and_create(replica, c, &svc).await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    let created: Vec<&Service> = results.iter().flatten().collect();
    let ips: HashSet<IpAddr> = created.iter().map(|s| cluster_ip(s)).collect();
    let ports: HashSet<i32> = created.iter().flat_map(|s| node_ports(s)).collect();
    assert_eq!((ips.len(), ports.len()), (60, 60), "every value once");
}

#[tokio::test]
async fn a_steady_stream_of_creates_costs_few_writes() {
    const NS: &str = "alloc-writes";
    let Some((_cp, client)) = setup(NS).await else {
        return;
    };
    let registry = prometheus::Registry::new();
    let alloc = start_with(
        &client,
        config(
            "it-writes-",
            "10.96.215.0/24",
            "31800-32099",
            Duration::from_secs(30),
        ),
        Some(&registry),
    )
    .await;
    // Ten creates a second for six seconds: claims are fulfilled and their lingers end while
    // watch events keep arriving. Reservations (up to 7 addresses and 9 ports at a time in these
    // small ranges) cost about 20 writes; a write per watch event at the end of lingers, 80+.
    for i in 0..60 {
        let svc = service(
            NS,
            &format!("w{i}"),
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        );
        admit_and_create(&alloc, &client, &svc).await.expect("create");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes = counter_sum(&registry, "portico_allocator_writes_total");
    eprintln!("60 creates over 6 s: {writes} RangeAllocation writes");
    assert!(writes <= 30.0, "{writes} writes for 60 creates");
}
