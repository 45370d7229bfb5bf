//! Two `portico run` processes: one leads and writes, the other only waits; killing the leader
//! hands over to the other within the lease duration, with no double writes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use portico_testenv::fixtures::{self, TestPod};

use crate::portico_run::{PorticoProcess, metric_sum};
use crate::support::{eventually, setup};

const NS: &str = "ha-test";

async fn start(cp: &portico_testenv::ControlPlane, identity: &str) -> PorticoProcess {
    PorticoProcess::start(
        cp,
        &[
            "--namespace",
            NS,
            "--webhook=false",
            "--leader-elect-resource-namespace",
            NS,
            "--leader-elect-resource-name",
            "portico-ha",
            "--leader-elect-lease-duration",
            "3s",
            "--leader-elect-renew-deadline",
            "2s",
            "--leader-elect-retry-period",
            "500ms",
        ],
        &[("POD_NAME", identity)],
    )
    .await
}

/// Ready pods `web-<i>` for `app=web`, with IP 10.250.0.<i>.
async fn ready_pods(client: &kube::Client, range: std::ops::Range<usize>) {
    for i in range {
        TestPod::new(&format!("web-{i}"))
            .label("app", "web")
            .node("ha-node")
            .ip(&format!("10.250.0.{i}"))
            .ready(true)
            .create(client, NS)
            .await
            .expect("pod");
    }
}

async fn is_leader(p: &PorticoProcess) -> bool {
    // The two gauges are read one after the other within a scrape: leadership may change in
    // between, so they must agree on a second scrape at the latest.
    let mut last = String::new();
    for _ in 0..2 {
        let m = p.metrics_text().await;
        let status = metric_sum(&m, "leader_election_master_status");
        if status == metric_sum(&m, "portico_is_leader") {
            return status == 1.0;
        }
        last = m;
    }
    panic!("the leadership gauges disagree twice in a row:\n{last}");
}

async fn writes(p: &PorticoProcess) -> f64 {
    let m = p.metrics_text().await;
    metric_sum(&m, "endpoint_slice_controller_changes")
        + metric_sum(&m, "portico_endpoints_controller_changes_total")
}

async fn ready_ips(client: &kube::Client) -> Vec<String> {
    let lp = ListParams::default().labels("kubernetes.io/service-name=web");
    let slices: Vec<EndpointSlice> = Api::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut ips: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
        .collect();
    ips.sort();
    ips
}

#[tokio::test]
async fn killing_the_leader_hands_over_without_double_writes() {
    let Some((cp, client)) = setup(NS).await else {
        return;
    };
    fixtures::node(&client, "ha-node", Some("zone-a"))
        .await
        .expect("node");
    let a = start(cp, "replica-a").await;
    let b = start(cp, "replica-b").await;

    eventually(20, "exactly one leader", || async {
        (is_leader(&a).await ^ is_leader(&b).await).then_some(())
    })
    .await;
    let (leader, follower) = if is_leader(&a).await { (a, b) } else { (b, a) };

    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &svc)
        .await
        .expect("service");
    ready_pods(&client, 0..5).await;
    eventually(20, "slices from the leader", || async {
        (ready_ips(&client).await.len() == 5).then_some(())
    })
    .await;
    assert!(writes(&leader).await >= 2.0, "the leader wrote");
    assert_eq!(writes(&follower).await, 0.0, "the follower never writes");
    assert!(!is_leader(&follower).await);
    // The follower's caches are warm: its watches are up although it writes nothing.
    assert!(
        metric_sum(
            &follower.metrics_text().await,
            "portico_controller_watch_restarts_total"
        ) >= 4.0
    );

    // SIGKILL: no release of the lease, the follower must wait for it to expire.
    let killed = Instant::now();
    drop(leader);
    eventually(15, "the follower takes over", || async {
        is_leader(&follower).await.then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(3 + 3),
        "took over in {takeover:?}, lease is 3s"
    );

    ready_pods(&client, 5..8).await;
    let want: BTreeSet<String> = (0..8).map(|i| format!("10.250.0.{i}")).collect();
    let ips = eventually(20, "the new leader's writes", || async {
        let ips = ready_ips(&client).await;
        (ips.len() == 8).then_some(ips)
    })
    .await;
    assert_eq!(
        ips.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "every endpoint exactly once: {ips:?}"
    );
    assert!(writes(&follower).await >= 1.0, "the new leader wrote");
    eprintln!("leader killed; follower took over after {takeover:?}");
}
