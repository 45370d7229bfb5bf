//! The EndpointSlice and Endpoints controllers against a real apiserver: what it ends up
//! holding after pods come, go and change, Services change, and the controller restarts.
//!
//! Each test runs its own controllers scoped to its own namespace, so tests sharing the
//! apiserver never see each other's Services.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use portico_controller_runtime::{self as runtime, Metrics, RuntimeConfig};
use portico_testenv::fixtures::{self, TestPod};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, setup};

const MANAGER: &str = "endpointslice-controller.portico";

/// Controllers running in this test's runtime, scoped to one namespace.
struct Controllers {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), runtime::RunError>>,
    registry: prometheus::Registry,
}

impl Controllers {
    fn start(client: &kube::Client, ns: &str, tweak: impl FnOnce(&mut RuntimeConfig)) -> Self {
        let mut cfg = RuntimeConfig {
            namespace: Some(ns.into()),
            ..Default::default()
        };
        tweak(&mut cfg);
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).expect("metrics");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(runtime::run(client.clone(), cfg, metrics, shutdown.clone()));
        Controllers {
            shutdown,
            handle,
            registry,
        }
    }

    /// The value of counter `name` with label `result`.
    fn syncs(&self, name: &str, result: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "result" && l.value() == result)
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

async fn nodes(client: &kube::Client, ns: &str) -> Vec<String> {
    let mut names = Vec::new();
    for zone in ["a", "b", "c"] {
        let name = format!("{ns}-node-{zone}");
        fixtures::node(client, &name, Some(&format!("zone-{zone}")))
            .await
            .expect("node");
        names.push(name);
    }
    names
}

fn service(name: &str, app: &str, target: IntOrString) -> Service {
    let mut svc = fixtures::http_service(name, app, target);
    svc.metadata.labels = Some([("team".to_owned(), "portico".to_owned())].into());
    svc
}

/// Service `web` (port 8080) with `n` Ready pods over this test's three Nodes.
async fn web_with_pods(client: &kube::Client, ns: &str, n: usize) {
    let nodes = nodes(client, ns).await;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &service("web", "web", IntOrString::Int(8080)),
        )
        .await
        .expect("service");
    pods(client, ns, &nodes, "web", 0, n).await;
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256)
}

/// Creates `n` Ready pods `app=<app>` numbered from `start`, spread over the nodes.
async fn pods(client: &kube::Client, ns: &str, nodes: &[String], app: &str, start: usize, n: usize) {
    futures::stream::iter(start..start + n)
        .map(|i| {
            let pod = TestPod::new(&format!("{app}-{i}"))
                .label("app", app)
                .node(&nodes[i % nodes.len()])
                .port("http", 8080, "TCP")
                .ip(&pod_ip(i))
                .ready(true);
            async move { pod.create(client, ns).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("create pods");
}

async fn set_ready(client: &kube::Client, ns: &str, app: &str, range: std::ops::Range<usize>, ready: bool) {
    futures::stream::iter(range)
        .map(|i| async move {
            fixtures::set_status(client, ns, &format!("{app}-{i}"), "Running", &[pod_ip(i)], ready)
                .await
                .map(|_| ())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("set pod status");
}

async fn delete_pods(client: &kube::Client, ns: &str, app: &str, range: std::ops::Range<usize>) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    futures::stream::iter(range)
        .map(|i| {
            let api = api.clone();
            async move {
                api.delete(&format!("{app}-{i}"), &DeleteParams::default().grace_period(0))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("delete pods");
}

/// Our slices of one Service, as the apiserver holds them.
async fn slices(client: &kube::Client, ns: &str, svc: &str) -> Vec<EndpointSlice> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("list slices")
        .items
}

/// What a set of slices says: (ready IPs, not-ready IPs, sorted slice sizes), panicking on an
/// IP listed twice: consumers must de-duplicate, but Portico should never make them.
fn summarize(slices: &[EndpointSlice]) -> (BTreeSet<String>, BTreeSet<String>, Vec<usize>) {
    let (mut ready, mut not_ready) = (BTreeSet::new(), BTreeSet::new());
    let mut sizes = Vec::new();
    for s in slices {
        sizes.push(s.endpoints.len());
        for e in &s.endpoints {
            let r = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            for a in &e.addresses {
                let fresh = if r {
                    ready.insert(a.clone())
                } else {
                    not_ready.insert(a.clone())
                };
                assert!(fresh, "{a} listed twice across slices");
            }
        }
    }
    sizes.sort_unstable();
    (ready, not_ready, sizes)
}

fn ips(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(pod_ip).collect()
}

async fn endpoints(client: &kube::Client, ns: &str, svc: &str) -> Option<Endpoints> {
    Api::<Endpoints>::namespaced(client.clone(), ns)
        .get_opt(svc)
        .await
        .expect("get endpoints")
}

fn endpoint_ips(ep: &Endpoints) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut ready, mut not_ready) = (BTreeSet::new(), BTreeSet::new());
    for s in ep.subsets.iter().flatten() {
        ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        not_ready.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
    }
    (ready, not_ready)
}

#[tokio::test]
async fn slices_and_endpoints_follow_pods() {
    let ns = "ctl-follow";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let nodes = nodes(&client, ns).await;
    let ctl = Controllers::start(&client, ns, |_| {});
    let services = Api::<Service>::namespaced(client.clone(), ns);

    // A Service without pods gets one empty placeholder slice.
    services
        .create(
            &PostParams::default(),
            &service("empty", "nothing", IntOrString::Int(80)),
        )
        .await
        .expect("service");
    eventually(20, "placeholder slice", || async {
        let s = slices(&client, ns, "empty").await;
        (s.len() == 1 && s[0].endpoints.is_empty()).then_some(())
    })
    .await;

    // Pods first, so the Service's first sync sees them all and packs 100/100/50 (pods that
    // trickle in over several syncs may pack differently: upstream never rebalances).
    pods(&client, ns, &nodes, "web", 0, 250).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let svc = services
        .create(
            &PostParams::default(),
            &service("web", "web", IntOrString::String("http".into())),
        )
        .await
        .expect("service");
    let all = eventually(30, "250 endpoints in 3 slices", || async {
        let s = slices(&client, ns, "web").await;
        let (ready, not_ready, sizes) = summarize(&s);
        (ready == ips(0..250) && not_ready.is_empty()).then_some((s, sizes))
    })
    .await;
    let (all, sizes) = all;
    assert_eq!(sizes, [50, 100, 100]);
    let uid = svc.metadata.uid.clone().expect("uid");
    for s in &all {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("kubernetes.io/service-name").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some(MANAGER)
        );
        assert_eq!(
            labels.get("team").map(String::as_str),
            Some("portico"),
            "Service labels are copied"
        );
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(s.address_type, "IPv4");
        let owner = &s.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", uid.as_str())
        );
        let port = &s.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(8080)),
            "named targetPort resolved"
        );
        for e in &s.endpoints {
            let target = e.target_ref.as_ref().expect("targetRef");
            assert_eq!(target.kind.as_deref(), Some("Pod"));
            let i: usize = target
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix("web-"))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(e.addresses, [pod_ip(i)]);
            assert_eq!(e.node_name.as_deref(), Some(nodes[i % 3].as_str()));
            assert_eq!(e.zone.as_deref(), Some(["zone-a", "zone-b", "zone-c"][i % 3]));
        }
    }
    let ep = eventually(20, "Endpoints with 250 addresses", || async {
        endpoints(&client, ns, "web")
            .await
            .filter(|ep| endpoint_ips(ep).0.len() == 250)
    })
    .await;
    let ep_labels = ep.metadata.labels.unwrap_or_default();
    assert_eq!(ep_labels.get("team").map(String::as_str), Some("portico"));
    // 1.33+ (KEP-4974): the Endpoints controller marks what it writes.
    assert_eq!(
        ep_labels
            .get("endpoints.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpoint-controller")
    );

    // Readiness flips show as conditions, not removals.
    set_ready(&client, ns, "web", 0..20, false).await;
    eventually(20, "20 endpoints not ready", || async {
        let (ready, not_ready, _) = summarize(&slices(&client, ns, "web").await);
        let (ep_ready, ep_not_ready) = endpoint_ips(&endpoints(&client, ns, "web").await?);
        (not_ready == ips(0..20) && ready == ips(20..250) && ep_not_ready == not_ready && ep_ready == ready)
            .then_some(())
    })
    .await;

    // Deleted pods disappear, and the slices are not rebalanced.
    delete_pods(&client, ns, "web", 200..250).await;
    eventually(20, "deleted pods gone", || async {
        let (ready, not_ready, sizes) = summarize(&slices(&client, ns, "web").await);
        let ep = endpoints(&client, ns, "web").await?;
        let (ep_ready, _) = endpoint_ips(&ep);
        (ready == ips(20..200)
            && not_ready.len() == 20
            && sizes.iter().sum::<usize>() == 200
            && ep_ready == ready)
            .then_some(())
    })
    .await;

    // A port change rewrites existing slices in place rather than creating new ones.
    let before: BTreeSet<String> = slices(&client, ns, "web")
        .await
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9090}]}}),
            ),
        )
        .await
        .expect("patch ports");
    eventually(20, "slices carry port 9090", || async {
        let s = slices(&client, ns, "web").await;
        let ok = s
            .iter()
            .all(|s| s.ports.as_ref().is_some_and(|p| p[0].port == Some(9090)));
        let names: BTreeSet<String> = s.iter().filter_map(|s| s.metadata.name.clone()).collect();
        // 200 endpoints under a new port mapping repack into two full slices, both recycled
        // from the old ones; the third is deleted. Nothing is created.
        (ok && names.len() == 2 && names.is_subset(&before)).then_some(())
    })
    .await;

    // A selector matching nothing leaves the placeholder and an empty Endpoints.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"selector": {"app": "none"}}})),
        )
        .await
        .expect("patch selector");
    eventually(20, "placeholder after selector change", || async {
        let s = slices(&client, ns, "web").await;
        let ep = endpoints(&client, ns, "web").await?;
        (s.len() == 1 && s[0].endpoints.is_empty() && ep.subsets.unwrap_or_default().is_empty()).then_some(())
    })
    .await;

    // Deleting the Service removes its slices and Endpoints (no garbage collector runs here);
    // recreating it brings them back.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually(20, "slices and Endpoints gone", || async {
        (slices(&client, ns, "web").await.is_empty() && endpoints(&client, ns, "web").await.is_none())
            .then_some(())
    })
    .await;
    services
        .create(
            &PostParams::default(),
            &service("web", "web", IntOrString::Int(8080)),
        )
        .await
        .expect("recreate");
    eventually(20, "slices back after recreate", || async {
        let (ready, _, _) = summarize(&slices(&client, ns, "web").await);
        (ready == ips(20..200)).then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn endpoints_truncate_over_capacity_and_recover() {
    let ns = "ctl-capacity";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let nodes = nodes(&client, ns).await;
    pods(&client, ns, &nodes, "big", 0, 1001).await;
    let ctl = Controllers::start(&client, ns, |_| {});
    Api::<Service>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &service("big", "big", IntOrString::String("http".into())),
        )
        .await
        .expect("service");

    let annotation = |ep: &Endpoints| {
        ep.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("endpoints.kubernetes.io/over-capacity"))
            .cloned()
    };
    let ep = eventually(60, "truncated Endpoints", || async {
        endpoints(&client, ns, "big")
            .await
            .filter(|ep| annotation(ep).is_some())
    })
    .await;
    assert_eq!(annotation(&ep).as_deref(), Some("truncated"));
    assert_eq!(endpoint_ips(&ep).0.len(), 1000, "truncated to 1000 addresses");
    eventually(30, "all 1001 endpoints in 11 slices", || async {
        let (ready, _, sizes) = summarize(&slices(&client, ns, "big").await);
        (ready.len() == 1001 && sizes.len() == 11 && sizes.iter().all(|n| *n <= 100)).then_some(())
    })
    .await;

    delete_pods(&client, ns, "big", 1000..1001).await;
    let ep = eventually(30, "annotation removed at 1000", || async {
        endpoints(&client, ns, "big")
            .await
            .filter(|ep| annotation(ep).is_none())
    })
    .await;
    assert_eq!(endpoint_ips(&ep).0, ips(0..1000));
    ctl.stop().await;
}

#[tokio::test]
async fn restart_mid_churn_converges_without_duplicates_or_losses() {
    let ns = "ctl-restart";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let nodes = nodes(&client, ns).await;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &service("churn", "churn", IntOrString::String("http".into())),
        )
        .await
        .expect("service");

    let first = Controllers::start(&client, ns, |_| {});
    let churn = {
        let (client, nodes) = (client.clone(), nodes.clone());
        tokio::spawn(async move {
            pods(&client, ns, &nodes, "churn", 0, 120).await;
            set_ready(&client, ns, "churn", 0..30, false).await;
            delete_pods(&client, ns, "churn", 100..120).await;
            pods(&client, ns, &nodes, "churn", 120, 60).await;
        })
    };
    // Stop mid-churn, let the churn finish with no controller, then start a fresh one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.stop().await;
    churn.await.expect("churn");
    let second = Controllers::start(&client, ns, |_| {});

    let want_ready: BTreeSet<String> = ips(30..100).union(&ips(120..180)).cloned().collect();
    eventually(30, "convergence after restart", || async {
        let s = slices(&client, ns, "churn").await;
        let (ready, not_ready, sizes) = summarize(&s);
        let (ep_ready, ep_not_ready) = endpoint_ips(&endpoints(&client, ns, "churn").await?);
        (ready == want_ready
            && not_ready == ips(0..30)
            && sizes.iter().all(|n| *n <= 100)
            && ep_ready == want_ready
            && ep_not_ready == ips(0..30))
        .then_some(())
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn adopts_upstream_slices_in_place_and_leaves_other_managers_alone() {
    let ns = "ctl-adopt";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let nodes = nodes(&client, ns).await;
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &service("web", "web", IntOrString::String("http".into())),
        )
        .await
        .expect("service");
    pods(&client, ns, &nodes, "web", 0, 3).await;

    // What kube-controller-manager would have written, and a slice of a third party.
    let reference = Controllers::start(&client, ns, |c| {
        c.slices.managed_by = "endpointslice-controller.k8s.io".into()
    });
    let upstream = eventually(20, "upstream-managed slice", || async {
        let s = slices(&client, ns, "web").await;
        (s.len() == 1 && summarize(&s).0.len() == 3).then(|| s[0].clone())
    })
    .await;
    reference.stop().await;
    let mut third: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-manual", "labels": {
            "kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "someone-else"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.1"]}]
    }))
    .expect("slice");
    third.metadata.namespace = Some(ns.into());
    let third = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &third)
        .await
        .expect("third-party slice");

    let ctl = Controllers::start(&client, ns, |c| {
        c.slices.adopt_from = Some("endpointslice-controller.k8s.io".into())
    });
    // Unchanged: the adopted slice is not rewritten and nothing is added.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = slices(&client, ns, "web").await;
    assert_eq!(now.len(), 2, "{now:?}");
    let adopted = now
        .iter()
        .find(|s| s.metadata.name == upstream.metadata.name)
        .expect("adopted slice");
    assert_eq!(
        adopted.metadata.resource_version, upstream.metadata.resource_version,
        "not rewritten"
    );

    // A change is written into the adopted slice, which is relabelled to Portico.
    pods(&client, ns, &nodes, "web", 3, 1).await;
    eventually(20, "adopted slice updated and relabelled", || async {
        let s = slices(&client, ns, "web").await;
        let a = s.iter().find(|s| s.metadata.name == upstream.metadata.name)?;
        let labels: BTreeMap<String, String> = a.metadata.labels.clone().unwrap_or_default();
        (a.endpoints.len() == 4
            && labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some(MANAGER))
        .then_some(())
    })
    .await;
    let manual = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .get("web-manual")
        .await
        .expect("manual");
    assert_eq!(
        manual.metadata.resource_version, third.metadata.resource_version,
        "other managers untouched"
    );
    assert!(svc.metadata.uid.is_some());
    ctl.stop().await;
}

/// A control plane for one test (`None` when the suite skips), with namespace `ns`, its Nodes
/// and the Service `web` selecting `app=web` on the named port `http`.
async fn own_control_plane_with_web(
    ns: &str,
) -> Option<(portico_testenv::ControlPlane, kube::Client, Vec<String>)> {
    let Ok(assets) = portico_testenv::Assets::discover() else {
        let _ = portico_testenv::shared(); // prints the skip line
        return None;
    };
    let cp = portico_testenv::ControlPlane::start_with(&assets, Default::default())
        .await
        .expect("control plane");
    let client = cp.client().await.expect("client");
    fixtures::namespace(&client, ns).await.expect("namespace");
    let nodes = nodes(&client, ns).await;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &service("web", "web", IntOrString::String("http".into())),
        )
        .await
        .expect("service");
    Some((cp, client, nodes))
}

#[tokio::test]
async fn an_apiserver_restart_loses_nothing() {
    // A control plane of its own: restarting the shared one would disturb every other test.
    let ns = "ctl-apiserver-restart";
    let Some((mut cp, client, nodes)) = own_control_plane_with_web(ns).await else {
        return;
    };
    let ctl = Controllers::start(&client, ns, |_| {});
    pods(&client, ns, &nodes, "web", 0, 30).await;
    eventually(30, "slices before the restart", || async {
        let (ready, _, _) = summarize(&slices(&client, ns, "web").await);
        (ready == ips(0..30)).then_some(())
    })
    .await;

    // The controllers' watches and the client's connections break; while the apiserver is
    // down their syncs fail and are retried. Nothing is lost once it is back.
    let before = cp.pids();
    cp.restart_apiserver(Duration::from_secs(2))
        .await
        .expect("restart kube-apiserver");
    assert_ne!(cp.pids()[1], before[1], "a new kube-apiserver process");
    assert_eq!(cp.pids()[0], before[0], "the same etcd");
    set_ready(&client, ns, "web", 0..10, false).await;
    delete_pods(&client, ns, "web", 20..30).await;
    pods(&client, ns, &nodes, "web", 30, 5).await;

    let want_ready: BTreeSet<String> = ips(10..20).union(&ips(30..35)).cloned().collect();
    eventually(60, "convergence after the apiserver restart", || async {
        let s = slices(&client, ns, "web").await;
        let (ready, not_ready, _) = summarize(&s);
        let (ep_ready, ep_not_ready) = endpoint_ips(&endpoints(&client, ns, "web").await?);
        (ready == want_ready
            && not_ready == ips(0..10)
            && ep_ready == want_ready
            && ep_not_ready == ips(0..10))
        .then_some(s.len())
    })
    .await;
    ctl.stop().await;
}

/// DELETE requests for Endpoints the apiserver answered, by code: (2xx, 404).
async fn endpoints_deletes(client: &kube::Client) -> (u64, u64) {
    let (mut ok, mut not_found) = (0, 0);
    for r in fixtures::apiserver_requests(client)
        .await
        .expect("apiserver /metrics")
    {
        if r.resource == "endpoints" && r.verb == "DELETE" {
            match r.code.as_str() {
                "404" => not_found += r.count,
                c if c.starts_with('2') => ok += r.count,
                _ => {}
            }
        }
    }
    (ok, not_found)
}

/// A deleted Service's Endpoints go with one DELETE: their own deletion event does not bring a
/// second one (answered 404) while the Service is gone. Found by the controller_workload bench,
/// where it doubled the Endpoints writes of deleting Services.
#[tokio::test]
async fn a_deleted_services_endpoints_are_deleted_once() {
    // A control plane of its own: the apiserver's request counts must be this test's alone.
    let ns = "ctl-delete-once";
    let Some((cp, client, nodes)) = own_control_plane_with_web(ns).await else {
        return;
    };
    let ctl = Controllers::start(&client, ns, |_| {});
    pods(&client, ns, &nodes, "web", 0, 3).await;
    eventually(30, "Endpoints of web", || async {
        endpoints(&client, ns, "web")
            .await
            .filter(|ep| endpoint_ips(ep).0.len() == 3)
    })
    .await;
    Api::<Service>::namespaced(client.clone(), ns)
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete the Service");
    eventually(20, "Endpoints gone", || async {
        endpoints(&client, ns, "web").await.is_none().then_some(())
    })
    .await;
    // A second DELETE follows the Endpoints' deletion event within milliseconds; give it time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoints_deletes(&client).await, (1, 0), "(deleted, 404)");
    ctl.stop().await;
    drop(cp);
}

/// Makes a Node Ready with `cpu` allocatable (what a kubelet would report).
async fn node_status(client: &kube::Client, name: &str, cpu: &str) {
    let status = serde_json::json!({"status": {
        "allocatable": {"cpu": cpu},
        "capacity": {"cpu": cpu},
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

/// Ready endpoints of the Service's slices by the zone they are hinted for.
async fn hints_by_zone(client: &kube::Client, ns: &str, svc: &str) -> BTreeMap<String, usize> {
    let mut by_zone = BTreeMap::new();
    for s in slices(client, ns, svc).await {
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            let hinted = e.hints.as_ref().and_then(|h| h.for_zones.as_ref());
            if let (true, Some(zones)) = (ready, hinted) {
                for z in zones {
                    *by_zone.entry(z.name.clone()).or_default() += 1;
                }
            }
        }
    }
    by_zone
}

#[tokio::test]
async fn topology_aware_hints_follow_zone_cpu() {
    let ns = "ctl-topology";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    // Two Ready zones of equal CPU (other tests' Nodes are never Ready: they do not count).
    let nodes = [format!("{ns}-node-a"), format!("{ns}-node-b")];
    for (name, zone) in nodes.iter().zip(["zone-a", "zone-b"]) {
        fixtures::node(&client, name, Some(zone)).await.expect("node");
        node_status(&client, name, "4").await;
    }
    let mut svc = service("web", "web", IntOrString::Int(8080));
    svc.metadata.annotations = Some(
        [(
            "service.kubernetes.io/topology-mode".to_owned(),
            "Auto".to_owned(),
        )]
        .into(),
    );
    let services = Api::<Service>::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("service");
    // Six endpoints in zone-a, two in zone-b.
    let placement: Vec<String> = (0..8).map(|i| nodes[usize::from(i >= 6)].clone()).collect();
    futures::stream::iter(0..8)
        .map(|i| {
            TestPod::new(&format!("web-{i}"))
                .label("app", "web")
                .node(&placement[i])
                .port("http", 8080, "TCP")
                .ip(&pod_ip(i))
                .ready(true)
        })
        .then(|p| {
            let client = client.clone();
            async move { p.create(&client, ns).await.expect("pod") }
        })
        .collect::<Vec<_>>()
        .await;
    let ctl = Controllers::start(&client, ns, |_| {});

    let even: BTreeMap<String, usize> = [("zone-a".to_owned(), 4), ("zone-b".to_owned(), 4)].into();
    eventually(30, "hints by CPU share", || async {
        (hints_by_zone(&client, ns, "web").await == even).then_some(())
    })
    .await;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns);
    let reasons = || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        Some(
            list.items
                .into_iter()
                .filter_map(|e| Some((e.reason?, e.note.unwrap_or_default())))
                .collect::<Vec<_>>(),
        )
    };
    eventually(20, "the enabled Event", || async {
        reasons()
            .await?
            .contains(&(
                "TopologyAwareHintsEnabled".to_owned(),
                "Topology Aware Hints has been enabled, addressType: IPv4".to_owned(),
            ))
            .then_some(())
    })
    .await;

    // zone-b grows to three quarters of the CPU: a Node change alone moves the hints.
    node_status(&client, &nodes[1], "12").await;
    let skewed: BTreeMap<String, usize> = [("zone-a".to_owned(), 2), ("zone-b".to_owned(), 6)].into();
    eventually(30, "hints after the CPU change", || async {
        (hints_by_zone(&client, ns, "web").await == skewed).then_some(())
    })
    .await;

    // The annotation goes: no hints, and upstream's Event.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"service.kubernetes.io/topology-mode": null}}})),
        )
        .await
        .expect("remove the annotation");
    eventually(30, "hints removed", || async {
        hints_by_zone(&client, ns, "web").await.is_empty().then_some(())
    })
    .await;
    eventually(20, "the disabled Event", || async {
        reasons()
            .await?
            .contains(&(
                "TopologyAwareHintsDisabled".to_owned(),
                "Topology Aware Hints has been disabled, addressType: IPv4".to_owned(),
            ))
            .then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn a_slice_deleted_while_the_watch_was_down_is_recreated() {
    // A control plane of its own: its apiserver is stopped.
    let ns = "ctl-relist";
    let Some((mut cp, client, nodes)) = own_control_plane_with_web(ns).await else {
        return;
    };
    pods(&client, ns, &nodes, "web", 0, 5).await;
    let ctl = Controllers::start(&client, ns, |_| {});
    let written = eventually(30, "the slice", || async {
        let s = slices(&client, ns, "web").await;
        (summarize(&s).0 == ips(0..5)).then(|| s[0].metadata.name.clone().expect("name"))
    })
    .await;

    // The slice Portico wrote goes while the apiserver is down: no watch ever reports it. When
    // the apiserver is back the controllers relist and must notice it is gone, not wait for
    // it forever as for a write of their own not yet seen.
    cp.stop_apiserver();
    let deleted = cp
        .etcd_delete(&format!("/registry/endpointslices/{ns}/{written}"))
        .expect("delete in etcd");
    assert_eq!(deleted, 1);
    cp.start_apiserver().await.expect("apiserver back");
    eventually(60, "the slice recreated", || async {
        let s = slices(&client, ns, "web").await;
        (summarize(&s).0 == ips(0..5) && s.iter().all(|x| x.metadata.name.as_ref() != Some(&written)))
            .then_some(())
    })
    .await;
    ctl.stop().await;
}

/// (zone hints, node hints) of every endpoint of `svc`'s slices, as the apiserver stored them.
async fn hints(client: &kube::Client, ns: &str, svc: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out: Vec<_> = slices(client, ns, svc)
        .await
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            let h = e.hints.clone().unwrap_or_default();
            (
                h.for_zones
                    .unwrap_or_default()
                    .into_iter()
                    .map(|z| z.name)
                    .collect(),
                h.for_nodes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| n.name)
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `spec.trafficDistribution` as 1.37 defines it: `PreferSameNode` hints each ready endpoint to
/// its zone and node, `PreferSameZone` and its deprecated name `PreferClose` to its zone only,
/// and no value removes the hints. The apiserver accepts `PreferSameNode` and stores `forNodes`
/// by default from 1.34 (its gate is off in 1.33), so on older apiservers this test returns.
#[tokio::test]
async fn traffic_distribution_values_of_current_releases() {
    let ns = "ctl-traffic";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let version = client.apiserver_version().await.expect("version");
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
    if minor < 34 {
        eprintln!("kube-apiserver 1.{minor}: PreferSameNode is not on by default; skipping");
        return;
    }
    let nodes = nodes(&client, ns).await;
    pods(&client, ns, &nodes, "td", 0, 3).await;
    let ctl = Controllers::start(&client, ns, |_| {});
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let mut svc = service("td", "td", IntOrString::Int(8080));
    svc.spec.as_mut().expect("spec").traffic_distribution = Some("PreferSameNode".into());
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("service");
    let zone_and_node = |i: usize| {
        (
            vec![format!("zone-{}", ["a", "b", "c"][i])],
            vec![nodes[i].clone()],
        )
    };
    let want: Vec<_> = (0..3).map(zone_and_node).collect();
    eventually(20, "PreferSameNode hints", || async {
        (hints(&client, ns, "td").await == want).then_some(())
    })
    .await;

    for value in ["PreferSameZone", "PreferClose"] {
        services
            .patch(
                "td",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"trafficDistribution": value}})),
            )
            .await
            .expect("patch trafficDistribution");
        let want: Vec<_> = (0..3).map(|i| (zone_and_node(i).0, vec![])).collect();
        eventually(20, &format!("{value} hints"), || async {
            (hints(&client, ns, "td").await == want).then_some(())
        })
        .await;
    }

    services
        .patch(
            "td",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"trafficDistribution": null}})),
        )
        .await
        .expect("remove trafficDistribution");
    eventually(20, "hints removed", || async {
        (hints(&client, ns, "td").await == vec![(vec![], vec![]); 3]).then_some(())
    })
    .await;
    ctl.stop().await;
}

/// Service `web` in `ns` with `n` Ready pods, the controllers running, and the name of the one
/// slice they wrote for it (`None` when the suite skips).
async fn web_in_one_slice(ns: &str, n: usize) -> Option<(kube::Client, Vec<String>, Controllers, String)> {
    let (_cp, client) = setup(ns).await?;
    let nodes = nodes(&client, ns).await;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &service("web", "web", IntOrString::String("http".into())),
        )
        .await
        .expect("web");
    pods(&client, ns, &nodes, "web", 0, n).await;
    let ctl = Controllers::start(&client, ns, |_| {});
    let name = eventually(30, "web's slice", || async {
        let s = slices(&client, ns, "web").await;
        (summarize(&s).0 == ips(0..n)).then(|| s[0].metadata.name.clone().expect("name"))
    })
    .await;
    Some((client, nodes, ctl, name))
}

/// A slice of Portico's relabelled by hand to another Service: the old Service gets its slices
/// back within seconds, and its syncs stop finding the cache "stale" (before, the tracker
/// waited for ever for the slice to reappear under the old Service, retrying every 100 ms).
#[tokio::test]
async fn a_slice_relabelled_to_another_service_is_replaced() {
    let ns = "ctl-relabel";
    let Some((client, nodes, ctl, moved)) = web_in_one_slice(ns, 3).await else {
        return;
    };
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    api.patch(
        &moved,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"kubernetes.io/service-name": "other"}}})),
    )
    .await
    .expect("relabel");
    pods(&client, ns, &nodes, "web", 3, 5).await;
    eventually(10, "web's slices recreated with all 8 pods", || async {
        let s = slices(&client, ns, "web").await;
        (summarize(&s).0 == ips(0..8)).then_some(())
    })
    .await;
    let stale = ctl.syncs("endpoint_slice_controller_syncs", "stale");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ctl.syncs("endpoint_slice_controller_syncs", "stale"),
        stale,
        "stale syncs keep coming"
    );
    ctl.stop().await;
}

/// A slice of Portico's held by someone else's finalizer and deleted: it stays listed (being
/// deleted) for as long as the finalizer does, so the write Portico remembers never shows up as
/// it was. The update that marks it deleted releases the Service instead of its waiting for
/// ever, and the Service gets a replacement slice with the new pods.
#[tokio::test]
async fn a_slice_held_by_a_foreign_finalizer_does_not_stop_its_service() {
    let ns = "ctl-finalizer";
    let Some((client, nodes, ctl, held)) = web_in_one_slice(ns, 2).await else {
        return;
    };
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let hold = serde_json::json!({"metadata": {"finalizers": ["example.com/hold"]}});
    api.patch(&held, &PatchParams::default(), &Patch::Merge(hold))
        .await
        .expect("finalizer");
    api.delete(&held, &DeleteParams::default()).await.expect("delete");
    pods(&client, ns, &nodes, "web", 2, 2).await;
    eventually(30, "a replacement slice with all 4 pods", || async {
        let live: Vec<EndpointSlice> = slices(&client, ns, "web")
            .await
            .into_iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        (summarize(&live).0 == ips(0..4)).then_some(())
    })
    .await;
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    api.patch(&held, &PatchParams::default(), &Patch::Merge(release))
        .await
        .expect("release");
    ctl.stop().await;
}

/// A pod whose Node does not exist is left out of the slices, and the Service gets upstream's
/// Warning from the EndpointSlice controller, naming the pod and the Node.
#[tokio::test]
async fn a_pod_on_a_missing_node_is_skipped_with_upstreams_warning() {
    let ns = "ctl-missing-node";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    web_with_pods(&client, ns, 2).await;
    TestPod::new("web-ghost")
        .label("app", "web")
        .node(&format!("{ns}-no-such-node"))
        .port("http", 8080, "TCP")
        .ip("10.199.0.1")
        .ready(true)
        .create(&client, ns)
        .await
        .expect("pod on a missing node");
    let ctl = Controllers::start(&client, ns, |_| {});
    eventually(30, "the two pods on real nodes", || async {
        let names: BTreeSet<String> = slices(&client, ns, "web")
            .await
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect();
        (names == BTreeSet::from(["web-0".to_owned(), "web-1".to_owned()])).then_some(())
    })
    .await;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns);
    let want = format!(
        "Error updating Endpoint Slices for Service {ns}/web: skipping Pod web-ghost for Service {ns}/web: Node {ns}-no-such-node Not Found"
    );
    let event = eventually(30, "the Warning Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedToUpdateEndpointSlices")
                && e.note.as_deref() == Some(want.as_str())
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("endpoint-slice-controller")
    );
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web"),
        "recorded on the Service"
    );
    ctl.stop().await;
}

/// A create cut off by the sync timeout while the request is already on its way: the retry
/// creates again before the first one lands. Both must name the same slice, so the Service never
/// has two (with `generateName` alone, the late one would be a duplicate until the next sync).
#[tokio::test]
async fn a_create_cut_off_by_the_sync_timeout_leaves_no_duplicate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ns = "ctl-cut-create";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    web_with_pods(&client, ns, 3).await;
    let held = Arc::new(AtomicBool::new(false));
    let real = client.clone();
    let slow_first_create = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let real = real.clone();
        let held = Arc::clone(&held);
        async move {
            let first = req.method() == http::Method::POST
                && req.uri().path().ends_with("/endpointslices")
                && !req.uri().query().unwrap_or_default().contains("dryRun")
                && !held.swap(true, Ordering::SeqCst);
            if first {
                // On the wire, but it reaches the apiserver only after the sync gave up (1 s)
                // and its retry (1 s of backoff later) created again.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    let _ = real.send(req).await;
                });
                return futures::future::pending().await;
            }
            real.send(req).await
        }
    });
    let slow = kube::Client::new(slow_first_create, ns);
    let ctl = Controllers::start(&slow, ns, |c| c.sync_timeout = Duration::from_secs(1));
    let mut most = 0;
    let mut last = Vec::new();
    for _ in 0..100 {
        last = slices(&client, ns, "web").await;
        most = most.max(last.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most, 1, "never more than one slice: {last:#?}");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].endpoints.len(), 3);
    assert!(
        ctl.syncs("endpoint_slice_controller_syncs", "error") >= 1.0,
        "the first sync timed out"
    );
    ctl.stop().await;
}

/// An Endpoints create the apiserver refuses (here a ResourceQuota allowing none) gets
/// upstream's Warning, about the Endpoints object, with the apiserver's own message.
#[tokio::test]
async fn a_refused_endpoints_create_gets_upstreams_warning() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let ns = "ctl-endpoints-quota";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), ns);
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-endpoints"},
        "spec": {"hard": {"count/endpoints": "0"}},
    }))
    .expect("quota");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("quota");
    // No quota controller runs here: the status it would write is written by hand.
    quotas
        .patch_status(
            "no-endpoints",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "hard": {"count/endpoints": "0"},
                "used": {"count/endpoints": "0"},
            }})),
        )
        .await
        .expect("quota status");
    web_with_pods(&client, ns, 1).await;
    let ctl = Controllers::start(&client, ns, |c| c.endpointslice = false);
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns);
    let prefix = format!("Failed to create endpoint for service {ns}/web: ");
    let event = eventually(30, "the FailedToCreateEndpoint Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedToCreateEndpoint"))
    })
    .await;
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.starts_with(&format!(
            "{prefix}endpoints \"web\" is forbidden: exceeded quota: no-endpoints"
        )),
        "the apiserver's message, as upstream's Event carries it: {note}"
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reporting_controller.as_deref(), Some("endpoint-controller"));
    let regarding = event.regarding.expect("regarding");
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Endpoints"), Some("web"))
    );
    ctl.stop().await;
}
