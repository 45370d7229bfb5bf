//! The EndpointSlice mirroring controller against a real apiserver: hand-written Endpoints of a
//! Service without a selector get mirrored slices, with upstream's labels, caps and Events.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use portico_controller_runtime::{self as runtime, Metrics, RuntimeConfig};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, setup};

const MIRROR_MANAGER: &str = "endpointslicemirroring-controller.portico";

fn selectorless(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("pg".into()),
                port: 5432,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn endpoints(name: &str, ips: impl Iterator<Item = String>) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("team".to_owned(), "data".to_owned())].into()),
            annotations: Some(BTreeMap::from([
                ("note".to_owned(), "by hand".to_owned()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                    "{}".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(
                ips.map(|ip| EndpointAddress {
                    ip,
                    ..Default::default()
                })
                .collect(),
            ),
            not_ready_addresses: None,
            ports: Some(vec![EndpointPort {
                name: Some("pg".into()),
                port: 5432,
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }]),
    }
}

async fn mirrored(client: &kube::Client, ns: &str, name: &str) -> Vec<EndpointSlice> {
    let lp = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={name},endpointslice.kubernetes.io/managed-by={MIRROR_MANAGER}"
    ));
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test]
async fn hand_written_endpoints_are_mirrored_capped_and_removed_when_a_selector_comes() {
    let ns = "ctl-mirroring";
    let Some((_cp, client)) = setup(ns).await else {
        return;
    };
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let eps = Api::<Endpoints>::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &selectorless("db"))
        .await
        .expect("service");
    eps.create(
        &PostParams::default(),
        &endpoints("db", (1..=3).map(|i| format!("10.1.0.{i}"))),
    )
    .await
    .expect("endpoints");

    let cfg = RuntimeConfig {
        namespace: Some(ns.into()),
        endpointslicemirroring: true,
        ..Default::default()
    };
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).expect("metrics");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime::run(client.clone(), cfg, metrics, shutdown.clone()));

    // Three addresses: one slice, upstream's labels, annotations and owner.
    let slice = eventually(30, "one mirrored slice of 3", || async {
        match mirrored(&client, ns, "db").await.as_slice() {
            [one] if one.endpoints.len() == 3 => Some(one.clone()),
            _ => None,
        }
    })
    .await;
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("data"));
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("db")
    );
    let annotations = slice.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("note").map(String::as_str), Some("by hand"));
    assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let owner = &slice.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Endpoints", "db"));
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(slice.metadata.generate_name.as_deref(), Some("db-"));
    assert_eq!(slice.address_type, "IPv4");
    let ports = slice.ports.clone().unwrap_or_default();
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("pg"), Some(5432))
    );
    assert!(
        slice
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
    );

    // 1,500 addresses: 1000 mirrored and upstream's Warning on the Endpoints.
    let big = endpoints(
        "db",
        (0..1500).map(|i| format!("10.2.{}.{}", i / 250, i % 250 + 1)),
    );
    eps.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"subsets": big.subsets})),
    )
    .await
    .expect("1500 addresses");
    eventually(30, "1000 endpoints mirrored", || async {
        match mirrored(&client, ns, "db").await.as_slice() {
            [one] if one.endpoints.len() == 1000 => Some(()),
            _ => None,
        }
    })
    .await;
    let events = Api::<Event>::namespaced(client.clone(), ns);
    let want = "A max of 1000 addresses can be mirrored to EndpointSlices per Endpoints subset. 500 addresses were skipped";
    let event = eventually(30, "the TooManyAddressesToMirror Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("TooManyAddressesToMirror") && e.note.as_deref() == Some(want)
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("endpoint-slice-mirroring-controller")
    );
    let regarding = event.regarding.expect("regarding");
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Endpoints"), Some("db"))
    );

    // 1,700 addresses: the Event says 700 now (a changed message is a new Event, as upstream's
    // recorder makes it, not a repeat of the first).
    let bigger = endpoints(
        "db",
        (0..1700).map(|i| format!("10.2.{}.{}", i / 250, i % 250 + 1)),
    );
    eps.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"subsets": bigger.subsets})),
    )
    .await
    .expect("1700 addresses");
    let want = "A max of 1000 addresses can be mirrored to EndpointSlices per Endpoints subset. 700 addresses were skipped";
    eventually(30, "the Event for 1,700 addresses", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("TooManyAddressesToMirror") && e.note.as_deref() == Some(want)
        })
    })
    .await;

    // The Service gains a selector: the mirror goes.
    services
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"selector": {"app": "db"}}})),
        )
        .await
        .expect("selector");
    eventually(30, "mirrored slices removed", || async {
        mirrored(&client, ns, "db").await.is_empty().then_some(())
    })
    .await;

    // A second selector-less Service goes away: so does its mirror.
    services
        .create(&PostParams::default(), &selectorless("cache"))
        .await
        .expect("service");
    eps.create(
        &PostParams::default(),
        &endpoints("cache", std::iter::once("10.3.0.1".to_owned())),
    )
    .await
    .expect("endpoints");
    eventually(30, "the cache mirror", || async {
        (mirrored(&client, ns, "cache").await.len() == 1).then_some(())
    })
    .await;
    services
        .delete("cache", &Default::default())
        .await
        .expect("delete the Service");
    eventually(30, "the cache mirror removed with its Service", || async {
        mirrored(&client, ns, "cache").await.is_empty().then_some(())
    })
    .await;

    shutdown.cancel();
    let _ = handle.await;
}
