//! Scenario tests of the legacy Endpoints reconcile.

use k8s_openapi::api::core::v1::{Endpoints, Pod};

use super::*;
use crate::builders::*;

fn apply(action: EndpointsAction, current: Option<Endpoints>) -> Option<Endpoints> {
    match action {
        EndpointsAction::Create(mut e) => {
            e.metadata.resource_version = Some("1".into());
            Some(e)
        }
        EndpointsAction::Update(mut e) => {
            let prev: u64 = current
                .unwrap()
                .metadata
                .resource_version
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                e.metadata.resource_version,
                Some(prev.to_string()),
                "update carries the RV"
            );
            e.metadata.resource_version = Some((prev + 1).to_string());
            Some(e)
        }
        EndpointsAction::Unchanged => current,
    }
}

fn sync(svc: &Service, pods: &[Pod], current: Option<Endpoints>) -> (EndpointsAction, Option<Endpoints>) {
    let action = reconcile(svc, &refs(pods), current.as_ref(), Some(&t(1))).unwrap();
    let next = apply(action.clone(), current);
    // Converged: a second pass (even with another trigger time) writes nothing.
    let again = reconcile(svc, &refs(pods), next.as_ref(), Some(&t(99))).unwrap();
    assert_eq!(again, EndpointsAction::Unchanged, "not converged");
    (action, next)
}

fn kind(a: &EndpointsAction) -> &'static str {
    match a {
        EndpointsAction::Create(_) => "create",
        EndpointsAction::Update(_) => "update",
        EndpointsAction::Unchanged => "unchanged",
    }
}

fn totals(e: &Endpoints) -> (usize, usize) {
    let subsets = e.subsets.as_deref().unwrap_or_default();
    (
        subsets
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum(),
        subsets
            .iter()
            .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
            .sum(),
    )
}

/// `ready` ready pods then `not_ready` not-ready pods, distinct IPs.
fn mixed(ready: usize, not_ready: usize) -> Vec<Pod> {
    (0..ready + not_ready)
        .map(|i| pod(&format!("p{i:04}")).ips(&[&ip4(i)]).ready(i < ready).build())
        .collect()
}

fn over_capacity(e: &Endpoints) -> Option<&str> {
    e.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_OVER_CAPACITY))
        .map(String::as_str)
}

#[test]
fn desired_object_shape() {
    let s = svc("web").labels(&[("team", "a")]).build();
    let e = desired(&s, &refs(&pods(2)), Some(&t(0))).unwrap();
    assert_eq!(e.metadata.name.as_deref(), Some("web"));
    assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
    let labels = e.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "a");
    assert_eq!(labels[LABEL_ENDPOINTS_MANAGED_BY], ENDPOINTS_MANAGED_BY_VALUE);
    assert!(!labels.contains_key(LABEL_HEADLESS));
    assert_eq!(
        e.metadata.annotations.as_ref().unwrap()[ANNOTATION_LAST_CHANGE_TRIGGER_TIME],
        "2023-11-14T22:13:20Z"
    );
    assert!(
        e.metadata.owner_references.is_none(),
        "Endpoints are deleted explicitly, not by GC"
    );
    let sub = &e.subsets.as_ref().unwrap()[0];
    assert_eq!(sub.addresses.as_ref().unwrap().len(), 2);
    let port = &sub.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), 8080, Some("TCP"))
    );

    let h = svc("web").headless().labels(&[(LABEL_HEADLESS, "junk")]).build();
    let e = desired(&h, &[], None).unwrap();
    assert_eq!(e.metadata.labels.as_ref().unwrap()[LABEL_HEADLESS], "");
    assert_eq!(e.metadata.annotations, None);
    let not_headless = svc("web").labels(&[(LABEL_HEADLESS, "")]).build();
    assert!(
        !desired(&not_headless, &[], None)
            .unwrap()
            .metadata
            .labels
            .unwrap()
            .contains_key(LABEL_HEADLESS)
    );
}

#[test]
fn inclusion_differs_from_slices_for_terminating_pods() {
    let p = vec![
        pod("a").build(),
        pod("b").terminating().build(),
        pod("c").ready(false).build(),
    ];
    let e = desired(&svc("web").build(), &refs(&p), None).unwrap();
    assert_eq!(
        totals(&e),
        (1, 1),
        "terminating pods are dropped unless publishing not-ready"
    );
    let e = desired(&svc("web").pnra().build(), &refs(&p), None).unwrap();
    assert_eq!(totals(&e), (3, 0));
}

#[test]
fn lifecycle_create_unchanged_update() {
    let s = svc("web").labels(&[("team", "a")]).build();
    let (a, cur) = sync(&s, &pods(3), None);
    assert_eq!(kind(&a), "create");

    // Same pods, different trigger time: no write.
    assert_eq!(
        reconcile(&s, &refs(&pods(3)), cur.as_ref(), Some(&t(50))).unwrap(),
        EndpointsAction::Unchanged
    );

    // A pod more: update, keeping foreign annotations and the RV.
    let mut with_foreign = cur.clone().unwrap();
    with_foreign
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("keep".into(), "me".into());
    let (a, cur) = sync(&s, &pods(4), Some(with_foreign));
    assert_eq!(kind(&a), "update");
    let cur = cur.unwrap();
    assert_eq!(totals(&cur), (4, 0));
    assert_eq!(cur.metadata.annotations.as_ref().unwrap()["keep"], "me");

    // Service labels change: labels are replaced wholesale (user labels on the object go).
    let mut user_labelled = cur.clone();
    user_labelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("user".into(), "x".into());
    let (a, _) = sync(&s, &pods(4), Some(user_labelled));
    assert_eq!(kind(&a), "update");
    let relabelled = svc("web").labels(&[("team", "b")]).build();
    let (a, after) = sync(&relabelled, &pods(4), Some(cur.clone()));
    assert_eq!(kind(&a), "update");
    assert_eq!(after.unwrap().metadata.labels.unwrap()["team"], "b");

    // No trigger time on a write: the annotation is removed.
    let action = reconcile(&s, &refs(&pods(5)), Some(&cur), None).unwrap();
    let EndpointsAction::Update(u) = action else {
        panic!("expected update")
    };
    assert!(
        !u.metadata
            .annotations
            .unwrap()
            .contains_key(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)
    );
}

#[test]
fn semantic_no_write_cases() {
    let s = svc("web").build();
    let base = desired(&s, &refs(&pods(3)), None).unwrap();
    let mut existing = base.clone();
    existing.metadata.resource_version = Some("7".into());
    // targetRef resourceVersion, subset/address order, headless label: all ignored.
    for sub in existing.subsets.iter_mut().flatten() {
        for a in sub.addresses.iter_mut().flatten() {
            a.target_ref.as_mut().unwrap().resource_version = Some("123".into());
        }
        sub.addresses.as_mut().unwrap().reverse();
    }
    existing
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_HEADLESS.into(), String::new());
    assert_eq!(plan(base.clone(), Some(&existing)), EndpointsAction::Unchanged);

    // No pods and an existing object with `subsets: null` or `[]`.
    let empty = desired(&s, &[], None).unwrap();
    for subsets in [None, Some(vec![])] {
        let mut e = empty.clone();
        e.subsets = subsets;
        assert_eq!(plan(empty.clone(), Some(&e)), EndpointsAction::Unchanged);
    }
}

#[test]
fn over_capacity_table() {
    // (existing annotation, ready, not ready) -> (ready kept, not ready kept, annotation)
    type Row = (
        Option<&'static str>,
        usize,
        usize,
        usize,
        usize,
        Option<&'static str>,
    );
    let cases: &[Row] = &[
        (None, 997, 4, 997, 3, Some("truncated")),
        (None, 1000, 10, 1000, 0, Some("truncated")),
        (None, 1001, 0, 1000, 0, Some("truncated")),
        (None, 1000, 0, 1000, 0, None),
        (Some("truncated"), 999, 0, 999, 0, None),
        (Some("warning"), 1000, 0, 1000, 0, None),
        (Some("warning"), 1001, 0, 1000, 0, Some("truncated")),
        (Some("truncated"), 1000, 0, 1000, 0, None),
        (Some("invalid"), 1001, 0, 1000, 0, Some("truncated")),
    ];
    let s = svc("web").build();
    for (existing_ann, ready, not_ready, want_r, want_n, want_ann) in cases {
        let p = mixed(*ready, *not_ready);
        // An existing object with some older content and the given annotation.
        let mut existing = desired(&s, &refs(&p[..1]), None).unwrap();
        existing.metadata.resource_version = Some("1".into());
        if let Some(a) = existing_ann {
            existing.metadata.annotations =
                Some([(ANNOTATION_OVER_CAPACITY.to_string(), a.to_string())].into());
        }
        let (action, cur) = sync(&s, &p, Some(existing));
        assert_eq!(kind(&action), "update");
        let cur = cur.unwrap();
        assert_eq!(
            totals(&cur),
            (*want_r, *want_n),
            "{existing_ann:?} {ready}/{not_ready}"
        );
        assert_eq!(
            over_capacity(&cur),
            *want_ann,
            "{existing_ann:?} {ready}/{not_ready}"
        );
        assert_eq!(is_truncated(&cur), want_ann.is_some());
    }
}

#[test]
fn truncation_at_1001_and_back_to_1000() {
    let s = svc("web").build();
    let (_, cur) = sync(&s, &pods(1001), None);
    let cur = cur.unwrap();
    assert_eq!(totals(&cur), (1000, 0));
    assert_eq!(over_capacity(&cur), Some("truncated"));
    // The kept addresses are the first 1000 in IP order: the same choice every time.
    let ips: Vec<_> = cur.subsets.as_ref().unwrap()[0]
        .addresses
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| a.ip.clone())
        .collect();
    assert!(!ips.contains(&ip4(1000)));

    // Still 1001 (another pod order): stable, no write (upstream would rewrite each sync).
    let mut shuffled = pods(1001);
    shuffled.reverse();
    assert_eq!(
        reconcile(&s, &refs(&shuffled), Some(&cur), None).unwrap(),
        EndpointsAction::Unchanged
    );

    // Back to 1000: the annotation goes.
    let (action, back) = sync(&s, &pods(1000), Some(cur));
    assert_eq!(kind(&action), "update");
    let back = back.unwrap();
    assert_eq!(totals(&back), (1000, 0));
    assert_eq!(over_capacity(&back), None);
}

#[test]
fn unhandled_and_leftovers() {
    let existing = desired(&svc("web").build(), &refs(&pods(1)), None).unwrap();
    for s in [
        svc("web").no_selector().build(),
        svc("web").type_("ExternalName").build(),
    ] {
        assert_eq!(
            reconcile(&s, &refs(&pods(2)), Some(&existing), None).unwrap(),
            EndpointsAction::Unchanged
        );
    }
    assert!(is_leftover_candidate(&existing));
    let mut lock = existing.clone();
    lock.metadata.annotations = Some([(ANNOTATION_LEADER.to_string(), "{}".to_string())].into());
    assert!(!is_leftover_candidate(&lock));
    let mut nameless = svc("web").build();
    nameless.metadata.name = None;
    assert_eq!(
        desired(&nameless, &[], None).unwrap_err(),
        ReconcileError::MissingServiceName
    );
    let mut uidless = svc("web").build();
    uidless.metadata.uid = None;
    assert!(desired(&uidless, &[], None).is_ok(), "Endpoints need no uid");
}

/// Upstream writes the pod's own text of its IP (the apiserver still accepts a non-canonical
/// IPv6 text in pod status); an address that does not parse at all is left out.
#[test]
fn addresses_are_written_as_the_pod_reports_them() {
    let s = svc("web").families(&["IPv6"]).build();
    let reported = [
        pod("a").ips(&["2001:DB8::0001"]).build(),
        pod("b").ips(&["not-an-ip", "2001:db8::2"]).build(),
        pod("c").ips(&["10.0.0.3", "2001:db8:0:0::3"]).build(),
    ];
    let e = desired(&s, &refs(&reported), None).unwrap();
    let ips: Vec<&str> = e.subsets.as_ref().unwrap()[0]
        .addresses
        .iter()
        .flatten()
        .map(|a| a.ip.as_str())
        .collect();
    assert_eq!(ips, ["2001:DB8::0001", "2001:db8::2", "2001:db8:0:0::3"]);
}
