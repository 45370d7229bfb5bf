//! Scenario tests of the mirroring reconcile, run against the in-memory apiserver of
//! [`super::testutil`] so that multi-step scenarios (sync, apply, change, sync) are realistic.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort, EndpointSlice};

use super::testutil::*;
use super::*;
use crate::builders::svc;
use crate::keys::*;

fn cfg() -> MirrorConfig {
    MirrorConfig::default()
}

fn cfg_max(max: usize) -> MirrorConfig {
    MirrorConfig {
        max_endpoints_per_subset: max,
        ..MirrorConfig::default()
    }
}

fn adopt_cfg() -> MirrorConfig {
    MirrorConfig {
        adopt_from: Some(UPSTREAM_MIRRORING_MANAGER.to_string()),
        ..MirrorConfig::default()
    }
}

fn plan(ep: &Endpoints, api: &Api, cfg: &MirrorConfig) -> MirrorPlan {
    reconcile(ep, &api.refs(), cfg).expect("reconcile")
}

fn counts(p: &MirrorPlan) -> (usize, usize, usize) {
    (p.create.len(), p.update.len(), p.delete.len())
}

fn ips(s: &EndpointSlice) -> Vec<&str> {
    s.endpoints.iter().map(|e| e.addresses[0].as_str()).collect()
}

fn ready_of(s: &EndpointSlice) -> Vec<(&str, Option<bool>)> {
    s.endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].as_str(),
                e.conditions.as_ref().and_then(|c| c.ready),
            )
        })
        .collect()
}

fn port_numbers(s: &EndpointSlice) -> Vec<i32> {
    s.ports.iter().flatten().filter_map(|p| p.port).collect()
}

fn by_type<'a>(slices: &'a [EndpointSlice], at: &str) -> Vec<&'a EndpointSlice> {
    slices.iter().filter(|s| s.address_type == at).collect()
}

fn reasons(p: &MirrorPlan) -> Vec<&'static str> {
    p.events.iter().map(|e| e.reason).collect()
}

/// `n` distinct IPv4 addresses.
fn many_ips(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.1.{}.{}", i / 256, i % 256)).collect()
}

#[test]
fn three_addresses_make_one_slice_with_upstream_metadata() {
    let ep = endpoints("web")
        .labels(&[("team", "a")])
        .annotations(&[("note", "x")])
        .subset(
            vec![pod_addr("10.0.0.3", "p3", "n1"), pod_addr("10.0.0.1", "p1", "n1")],
            vec![pod_addr("10.0.0.2", "p2", "n2")],
            vec![port("http", 80)],
        )
        .build();
    let p = plan(&ep, &Api::default(), &cfg());
    assert_eq!(counts(&p), (1, 0, 0));
    assert!(p.events.is_empty());
    let s = &p.create[0];
    assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
    assert_eq!(
        (s.metadata.name.as_ref(), s.metadata.namespace.as_deref()),
        (None, Some("default"))
    );
    assert_eq!(
        s.metadata.labels.as_ref().unwrap(),
        &map(&[
            ("team", "a"),
            (LABEL_SERVICE_NAME, "web"),
            (LABEL_MANAGED_BY, DEFAULT_MIRRORING_MANAGED_BY),
        ])
    );
    assert_eq!(s.metadata.annotations, Some(map(&[("note", "x")])));
    let owner = &s.metadata.owner_references.as_ref().unwrap()[..];
    assert_eq!(owner.len(), 1);
    assert_eq!(
        (
            owner[0].api_version.as_str(),
            owner[0].kind.as_str(),
            owner[0].name.as_str(),
            owner[0].uid.as_str()
        ),
        ("v1", "Endpoints", "web", "uid-web")
    );
    assert_eq!(
        (owner[0].controller, owner[0].block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(
        s.ports,
        Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(80),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }])
    );
    assert_eq!(
        ready_of(s),
        vec![
            ("10.0.0.1", Some(true)),
            ("10.0.0.3", Some(true)),
            ("10.0.0.2", Some(false))
        ],
        "ready first, each sorted"
    );
    let e = &s.endpoints[2];
    assert_eq!(
        e.conditions,
        Some(EndpointConditions {
            ready: Some(false),
            serving: None,
            terminating: None
        }),
        "only ready is set"
    );
    assert_eq!(
        (e.hostname.as_deref(), e.node_name.as_deref()),
        (Some("p2"), Some("n2"))
    );
    let target = e.target_ref.as_ref().unwrap();
    assert_eq!(
        (
            target.name.as_deref(),
            target.uid.as_deref(),
            target.resource_version.as_deref()
        ),
        (Some("p2"), Some("uid-p2"), Some("5")),
        "targetRef copied as is"
    );
    assert_eq!(
        (
            p.endpoints_added,
            p.desired_endpoints,
            p.desired_slices,
            p.addresses_skipped
        ),
        (3, 3, 1, 0)
    );
}

#[test]
fn cap_per_subset_table() {
    // (name, ready, not ready, max, mirrored ready, mirrored not ready, events, skipped)
    type Case = (
        &'static str,
        usize,
        usize,
        usize,
        usize,
        usize,
        Vec<&'static str>,
        usize,
    );
    let cases: Vec<Case> = vec![
        (
            "1500 ready",
            1500,
            0,
            1000,
            1000,
            0,
            vec![REASON_TOO_MANY_ADDRESSES],
            500,
        ),
        ("exactly the max", 1000, 0, 1000, 1000, 0, vec![], 0),
        (
            "ready before not ready",
            900,
            200,
            1000,
            900,
            100,
            vec![REASON_TOO_MANY_ADDRESSES],
            100,
        ),
        ("small max", 3, 3, 2, 2, 0, vec![REASON_TOO_MANY_ADDRESSES], 4),
    ];
    for (name, ready, not_ready, max, want_ready, want_not_ready, events, skipped) in cases {
        let all = many_ips(ready + not_ready);
        let ep = endpoints("web")
            .subset(
                all[..ready].iter().map(|ip| addr(ip)).collect(),
                all[ready..].iter().map(|ip| addr(ip)).collect(),
                vec![port("http", 80)],
            )
            .build();
        let mut api = Api::default();
        let p = api.sync(&ep, &cfg_max(max));
        assert_eq!(api.slices.len(), 1, "{name}");
        let r = ready_of(&api.slices[0]);
        let count = |v: bool| r.iter().filter(|(_, x)| *x == Some(v)).count();
        assert_eq!(
            (count(true), count(false)),
            (want_ready, want_not_ready),
            "{name}"
        );
        assert_eq!((reasons(&p), p.addresses_skipped), (events, skipped), "{name}");
    }
}

#[test]
fn too_many_addresses_message_and_which_are_kept() {
    let all = many_ips(1500);
    let ep = endpoints("web")
        .ips(&all.iter().map(String::as_str).collect::<Vec<_>>())
        .build();
    let p = plan(&ep, &Api::default(), &cfg());
    assert_eq!(
        p.events,
        vec![MirrorEvent {
            reason: "TooManyAddressesToMirror",
            message: "A max of 1000 addresses can be mirrored to EndpointSlices per Endpoints subset. \
                      500 addresses were skipped"
                .to_string(),
        }]
    );
    // Upstream's repacking sorts addresses by their text, so the first 1000 in that order
    // are the ones mirrored.
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        ips(&p.create[0]),
        sorted[..1000].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!((p.desired_endpoints, p.endpoints_added), (1000, 1000));
}

#[test]
fn invalid_ips_table() {
    // (name, ready IPs, max, events (reason, message), mirrored IPs)
    type Case = (
        &'static str,
        Vec<&'static str>,
        usize,
        Vec<(&'static str, &'static str)>,
        Vec<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "only invalid ones skipped: no TooMany event",
            vec!["10.0.0.1", "bogus", "300.1.1.1"],
            1000,
            vec![(
                "InvalidIPAddress",
                "Skipped 2 invalid IP addresses when mirroring to EndpointSlices",
            )],
            vec!["10.0.0.1"],
        ),
        (
            "invalid and over the cap: both events",
            vec!["0bogus", "10.0.0.1", "10.0.0.2", "10.0.0.3"],
            2,
            vec![
                (
                    "InvalidIPAddress",
                    "Skipped 1 invalid IP addresses when mirroring to EndpointSlices",
                ),
                (
                    "TooManyAddressesToMirror",
                    "A max of 2 addresses can be mirrored to EndpointSlices per Endpoints subset. 2 addresses were skipped",
                ),
            ],
            vec!["10.0.0.1", "10.0.0.2"],
        ),
        (
            "an invalid address past the cap is never looked at",
            vec!["10.0.0.1", "10.0.0.2", "zbogus"],
            2,
            vec![(
                "TooManyAddressesToMirror",
                "A max of 2 addresses can be mirrored to EndpointSlices per Endpoints subset. 1 addresses were skipped",
            )],
            vec!["10.0.0.1", "10.0.0.2"],
        ),
    ];
    for (name, input, max, events, want) in cases {
        let ep = endpoints("web").ips(&input).build();
        let p = plan(&ep, &Api::default(), &cfg_max(max));
        let got: Vec<(&str, &str)> = p.events.iter().map(|e| (e.reason, e.message.as_str())).collect();
        assert_eq!(got, events, "{name}");
        assert_eq!(ips(&p.create[0]), want, "{name}");
    }

    let all_invalid = endpoints("web").ips(&["bogus"]).build();
    let p = plan(&all_invalid, &Api::default(), &cfg());
    assert_eq!(
        (counts(&p), reasons(&p)),
        ((0, 0, 0), vec![REASON_INVALID_IP_ADDRESS]),
        "no slice at all"
    );
}

#[test]
fn sloppy_ips_are_written_canonically() {
    let ep = endpoints("web")
        .ips(&["010.0.0.1", "::ffff:10.0.0.2", "2001:DB8:0::1"])
        .build();
    let mut api = Api::default();
    let p = api.sync(&ep, &cfg());
    assert!(p.events.is_empty());
    assert_eq!(ips(by_type(&api.slices, "IPv4")[0]), vec!["10.0.0.1", "10.0.0.2"]);
    assert_eq!(ips(by_type(&api.slices, "IPv6")[0]), vec!["2001:db8::1"]);
}

#[test]
fn dual_stack_subset_gives_two_slices_with_the_same_ports() {
    let ep = endpoints("web")
        .subset(
            vec![addr("10.0.0.1"), addr("fd00::1"), addr("fd00::2")],
            vec![],
            vec![port("http", 80), port("dns", 53)],
        )
        .build();
    let mut api = Api::default();
    let p = api.sync(&ep, &cfg());
    assert_eq!(counts(&p), (2, 0, 0));
    assert_eq!((p.desired_slices, p.desired_endpoints), (2, 3));
    let v4 = by_type(&api.slices, "IPv4");
    let v6 = by_type(&api.slices, "IPv6");
    assert_eq!((v4.len(), v6.len()), (1, 1));
    assert_eq!(ips(v4[0]), vec!["10.0.0.1"]);
    assert_eq!(ips(v6[0]), vec!["fd00::1", "fd00::2"]);
    assert_eq!(port_numbers(v4[0]), vec![53, 80]);
    assert_eq!(v4[0].ports, v6[0].ports);
}

#[test]
fn subsets_are_repacked_before_mirroring() {
    // Two subsets with the same port set merge; duplicates collapse; an address both ready and
    // not ready is not ready.
    let ep = endpoints("web")
        .subset(
            vec![addr("10.0.0.2"), addr("10.0.0.1")],
            vec![],
            vec![port("http", 80)],
        )
        .subset(
            vec![addr("10.0.0.3"), addr("10.0.0.1")],
            vec![addr("10.0.0.2")],
            vec![port("http", 80)],
        )
        .build();
    let mut api = Api::default();
    api.sync(&ep, &cfg());
    assert_eq!(api.slices.len(), 1);
    assert_eq!(
        ready_of(&api.slices[0]),
        vec![
            ("10.0.0.1", Some(true)),
            ("10.0.0.3", Some(true)),
            ("10.0.0.2", Some(false))
        ]
    );

    // Different port sets with different addresses: one slice each. The same addresses on
    // two ports listed in two subsets: one slice with both ports.
    let split = endpoints("web")
        .subset(vec![addr("10.0.0.1")], vec![], vec![port("a", 80)])
        .subset(vec![addr("10.0.0.2")], vec![], vec![port("b", 81)])
        .build();
    let mut api = Api::default();
    api.sync(&split, &cfg());
    let mut shapes: Vec<(Vec<i32>, Vec<&str>)> =
        api.slices.iter().map(|s| (port_numbers(s), ips(s))).collect();
    shapes.sort();
    assert_eq!(
        shapes,
        vec![(vec![80], vec!["10.0.0.1"]), (vec![81], vec!["10.0.0.2"])]
    );

    let joined = endpoints("web")
        .subset(vec![addr("10.0.0.1")], vec![], vec![port("a", 80)])
        .subset(vec![addr("10.0.0.1")], vec![], vec![port("b", 81)])
        .build();
    let mut api = Api::default();
    api.sync(&joined, &cfg());
    assert_eq!(api.slices.len(), 1);
    assert_eq!(port_numbers(&api.slices[0]), vec![80, 81]);
}

#[test]
fn port_less_subset_is_mirrored_without_ports() {
    let ep = endpoints("web")
        .subset(vec![addr("10.0.0.1")], vec![], vec![])
        .build();
    let mut api = Api::default();
    api.sync(&ep, &cfg());
    assert_eq!(api.slices.len(), 1);
    assert_eq!(api.slices[0].ports, Some(vec![]));
    assert_eq!(ips(&api.slices[0]), vec!["10.0.0.1"]);
}

#[test]
fn port_change_recycles_the_slice_keeping_its_name() {
    let mut api = Api::default();
    api.sync(&endpoints("web").ips(&["10.0.0.1", "10.0.0.2"]).build(), &cfg());
    let name = api.slices[0].metadata.name.clone();

    let moved = endpoints("web")
        .subset(
            vec![addr("10.0.0.1"), addr("10.0.0.2")],
            vec![],
            vec![port("http", 8080)],
        )
        .build();
    let p = plan(&moved, &api, &cfg());
    assert_eq!(
        counts(&p),
        (0, 1, 0),
        "create + delete of one address type become one update"
    );
    assert_eq!(p.update[0].metadata.name, name);
    assert_eq!(
        p.update[0].metadata.resource_version,
        api.slices[0].metadata.resource_version
    );
    assert_eq!(p.update[0].metadata.generate_name, None);
    assert_eq!(p.endpoints_added, 2, "the new port set counts as new endpoints");
    api.apply_mirror(&p);
    assert_eq!(port_numbers(&api.slices[0]), vec![8080]);
    assert!(plan(&moved, &api, &cfg()).is_empty());

    // A family switch cannot be recycled: the address type of a slice is immutable.
    let v6 = endpoints("web").ips(&["fd00::1"]).build();
    let p = plan(&v6, &api, &cfg());
    assert_eq!(counts(&p), (1, 0, 1));
}

#[test]
fn recycling_matches_each_create_with_its_own_address_type() {
    // Existing: one IPv6 slice on port 80. Desired: IPv4 and IPv6 on port 81. The IPv6 create
    // recycles the IPv6 slice; the IPv4 create stays a create.
    let mut api = Api::default();
    api.sync(&endpoints("web").ips(&["fd00::1"]).build(), &cfg());
    let ep = endpoints("web")
        .subset(
            vec![addr("10.0.0.1"), addr("fd00::1")],
            vec![],
            vec![port("http", 81)],
        )
        .build();
    let p = plan(&ep, &api, &cfg());
    assert_eq!(counts(&p), (1, 1, 0));
    assert_eq!(p.create[0].address_type, "IPv4");
    assert_eq!(p.update[0].address_type, "IPv6");
    api.apply_mirror(&p);
    assert!(plan(&ep, &api, &cfg()).is_empty());
}

#[test]
fn unchanged_input_plans_nothing() {
    let ep = endpoints("web")
        .labels(&[("team", "a")])
        .annotations(&[("note", "x")])
        .subset(
            vec![pod_addr("10.0.0.1", "p1", "n1"), addr("fd00::1")],
            vec![pod_addr("10.0.0.2", "p2", "n1")],
            vec![port("http", 80)],
        )
        .build();
    let mut api = Api::default();
    api.sync(&ep, &cfg());
    let p = plan(&ep, &api, &cfg());
    assert!(p.is_empty(), "{p:#?}");
    assert_eq!(
        (p.endpoints_added, p.endpoints_updated, p.endpoints_removed),
        (0, 0, 0)
    );
    assert_eq!((p.desired_endpoints, p.desired_slices), (3, 2));

    // Order, a targetRef resourceVersion and port order are not changes.
    let mut shuffled = api.clone();
    for s in &mut shuffled.slices {
        s.endpoints.reverse();
        for e in &mut s.endpoints {
            if let Some(t) = e.target_ref.as_mut() {
                t.resource_version = Some("99".into());
            }
        }
        s.ports.as_mut().unwrap().reverse();
    }
    assert!(plan(&ep, &shuffled, &cfg()).is_empty());
}

#[test]
fn endpoint_changes_are_counted_and_written() {
    let mut api = Api::default();
    api.sync(
        &endpoints("web")
            .ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])
            .build(),
        &cfg(),
    );
    let ep = endpoints("web")
        .subset(
            vec![addr("10.0.0.1"), addr("10.0.0.4")],
            vec![addr("10.0.0.2")],
            vec![port("http", 80)],
        )
        .build();
    let p = api.sync(&ep, &cfg());
    assert_eq!(counts(&p), (0, 1, 0));
    assert_eq!(
        (p.endpoints_added, p.endpoints_updated, p.endpoints_removed),
        (1, 1, 1),
        "10.0.0.4 added, 10.0.0.2 not ready, 10.0.0.3 removed"
    );

    // A hand-edited condition on the slice is put back.
    let mut edited = api.clone();
    edited.slices[0].endpoints[0].conditions.as_mut().unwrap().serving = Some(true);
    let p = plan(&ep, &edited, &cfg());
    assert_eq!((counts(&p), p.endpoints_updated), ((0, 1, 0), 1));
    // So is a duplicated endpoint.
    let mut doubled = api.clone();
    let first = doubled.slices[0].endpoints[0].clone();
    doubled.slices[0].endpoints.push(first);
    assert_eq!(counts(&plan(&ep, &doubled, &cfg())), (0, 1, 0));
}

#[test]
fn labels_and_annotations_are_mirrored_and_filtered() {
    let ep = endpoints("web")
        .labels(&[
            ("team", "a"),
            (LABEL_SERVICE_NAME, "evil"),
            (LABEL_MANAGED_BY, "me"),
        ])
        .annotations(&[
            ("note", "x"),
            (ANNOTATION_LAST_CHANGE_TRIGGER_TIME, "2024-01-01T00:00:00Z"),
            (ANNOTATION_LAST_APPLIED_CONFIG, "{}"),
        ])
        .ips(&["10.0.0.1"])
        .build();
    let mut api = Api::default();
    api.sync(&ep, &cfg());
    let s = &api.slices[0];
    assert_eq!(
        s.metadata.labels.as_ref().unwrap(),
        &map(&[
            ("team", "a"),
            (LABEL_SERVICE_NAME, "web"),
            (LABEL_MANAGED_BY, DEFAULT_MIRRORING_MANAGED_BY),
        ]),
        "service-name and managed-by overwrite the copied values"
    );
    assert_eq!(s.metadata.annotations, Some(map(&[("note", "x")])));

    // (change, writes?)
    let base = || endpoints("web").ips(&["10.0.0.1"]);
    let cases: Vec<(&str, Endpoints, bool)> = vec![
        (
            "a filtered annotation changes",
            base()
                .labels(&[("team", "a")])
                .annotations(&[("note", "x"), (ANNOTATION_LAST_CHANGE_TRIGGER_TIME, "later")])
                .build(),
            false,
        ),
        (
            "reserved labels differ only",
            base()
                .labels(&[("team", "a"), (LABEL_MANAGED_BY, "other")])
                .annotations(&[("note", "x")])
                .build(),
            false,
        ),
        (
            "a label changes",
            base()
                .labels(&[("team", "b")])
                .annotations(&[("note", "x")])
                .build(),
            true,
        ),
        ("a label goes", base().annotations(&[("note", "x")]).build(), true),
        (
            "an annotation changes",
            base()
                .labels(&[("team", "a")])
                .annotations(&[("note", "y")])
                .build(),
            true,
        ),
        ("annotations go", base().labels(&[("team", "a")]).build(), true),
    ];
    for (name, changed, writes) in cases {
        let p = plan(&changed, &api, &cfg());
        assert_eq!(counts(&p), (0, usize::from(writes), 0), "{name}");
        if writes {
            let mut after = api.clone();
            after.apply_mirror(&p);
            assert!(plan(&changed, &after, &cfg()).is_empty(), "{name}: converges");
        }
    }

    // Annotations the slice gained on its own are removed; none mirrored means none written.
    let bare = endpoints("web").ips(&["10.0.0.1"]).build();
    let mut api = Api::default();
    api.sync(&bare, &cfg());
    assert_eq!(api.slices[0].metadata.annotations, None);
    api.slices[0].metadata.annotations = Some(map(&[("added", "by-hand")]));
    let p = plan(&bare, &api, &cfg());
    assert_eq!(counts(&p), (0, 1, 0));
    assert_eq!(p.update[0].metadata.annotations, None);
    api.slices[0].metadata.annotations = Some(BTreeMap::new());
    assert!(
        plan(&bare, &api, &cfg()).is_empty(),
        "empty and absent annotations are equal"
    );
}

#[test]
fn owner_reference_of_another_endpoints_is_rewritten() {
    let mut api = Api::default();
    api.sync(&endpoints("web").ips(&["10.0.0.1"]).build(), &cfg());
    let recreated = endpoints("web").uid("uid-web-2").ips(&["10.0.0.1"]).build();
    let p = plan(&recreated, &api, &cfg());
    assert_eq!(counts(&p), (0, 1, 0));
    assert_eq!(
        p.update[0].metadata.owner_references.as_ref().unwrap()[0].uid,
        "uid-web-2"
    );
}

#[test]
fn extra_and_stale_slices_are_deleted() {
    let ep = endpoints("web").ips(&["10.0.0.1"]).build();
    let mut api = Api::default();
    api.sync(&ep, &cfg());
    assert_eq!(api.slices[0].metadata.name.as_deref(), Some("web-1"));
    let mut twin = api.slices[0].clone();
    twin.metadata.name = Some("web-0".into());
    let mut stale = api.slices[0].clone();
    stale.metadata.name = Some("web-zzz".into());
    stale.ports = Some(vec![EndpointPort {
        port: Some(9999),
        ..Default::default()
    }]);
    let mut fqdn = api.slices[0].clone();
    fqdn.metadata.name = Some("web-fqdn".into());
    fqdn.address_type = "FQDN".into();
    api.slices.extend([twin, stale, fqdn]);

    let p = plan(&ep, &api, &cfg());
    assert_eq!(counts(&p), (0, 0, 3));
    let deleted: Vec<&str> = p
        .delete
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(
        deleted,
        vec!["web-1", "web-fqdn", "web-zzz"],
        "the first slice of a key by name is kept (web-0); then stale keys, in key order"
    );
    api.apply_mirror(&p);
    assert!(
        plan(&ep, &api, &cfg()).is_empty(),
        "the kept twin is already right"
    );
}

#[test]
fn empty_endpoints_want_no_slices() {
    let cases = [
        ("no subsets", endpoints("web").build()),
        (
            "subset without addresses",
            endpoints("web")
                .subset(vec![], vec![], vec![port("http", 80)])
                .build(),
        ),
    ];
    for (name, ep) in cases {
        let p = plan(&ep, &Api::default(), &cfg());
        assert!(
            p.is_empty() && p.events.is_empty(),
            "{name}: no placeholder slice, as upstream"
        );
        assert_eq!((p.desired_slices, p.desired_endpoints), (0, 0), "{name}");

        let mut api = Api::default();
        api.sync(&endpoints("web").ips(&["10.0.0.1", "10.0.0.2"]).build(), &cfg());
        let p = plan(&ep, &api, &cfg());
        assert_eq!(counts(&p), (0, 0, 1), "{name}: the old slice goes");
    }

    // A key a subset still names but whose addresses are all gone or skipped empties out:
    // its slices are deleted and their endpoints counted as removed.
    let mut api = Api::default();
    api.sync(&endpoints("web").ips(&["10.0.0.1", "fd00::1"]).build(), &cfg());
    let only_v6 = endpoints("web").ips(&["fd00::1"]).build();
    let p = api.sync(&only_v6, &cfg());
    assert_eq!((counts(&p), p.endpoints_removed), ((0, 0, 1), 1));
    assert_eq!(p.delete[0].address_type, "IPv4");
}

#[test]
fn deleting_endpoints_get_no_creates() {
    let mut api = Api::default();
    api.sync(&endpoints("web").ips(&["10.0.0.1"]).build(), &cfg());

    // Creating is refused, updating is not.
    let ep = endpoints("web")
        .subset(
            vec![addr("10.0.0.1"), addr("10.0.0.2"), addr("fd00::1")],
            vec![],
            vec![port("http", 80)],
        )
        .deleting()
        .build();
    let p = plan(&ep, &api, &cfg());
    assert_eq!(counts(&p), (0, 1, 0), "the IPv6 slice is not created");

    // Recycling happens first, so a port change still rewrites the slice; deletes stay.
    let moved = endpoints("web")
        .subset(vec![addr("10.0.0.1")], vec![], vec![port("http", 81)])
        .deleting()
        .build();
    assert_eq!(counts(&plan(&moved, &api, &cfg())), (0, 1, 0));
    let empty = endpoints("web").deleting().build();
    assert_eq!(counts(&plan(&empty, &api, &cfg())), (0, 0, 1));
}

#[test]
fn should_mirror_table() {
    let cases: Vec<(&str, Endpoints, bool)> = vec![
        ("plain", endpoints("web").build(), true),
        (
            "skip-mirror true",
            endpoints("web").labels(&[(LABEL_SKIP_MIRROR, "true")]).build(),
            false,
        ),
        (
            "skip-mirror True",
            endpoints("web").labels(&[(LABEL_SKIP_MIRROR, "True")]).build(),
            true,
        ),
        (
            "skip-mirror false",
            endpoints("web").labels(&[(LABEL_SKIP_MIRROR, "false")]).build(),
            true,
        ),
        (
            "skip-mirror empty",
            endpoints("web").labels(&[(LABEL_SKIP_MIRROR, "")]).build(),
            true,
        ),
        (
            "leader lock",
            endpoints("web").annotations(&[(ANNOTATION_LEADER, "{}")]).build(),
            false,
        ),
        (
            "leader lock, empty",
            endpoints("web").annotations(&[(ANNOTATION_LEADER, "")]).build(),
            false,
        ),
        (
            "skip-mirror as an annotation",
            endpoints("web")
                .annotations(&[(LABEL_SKIP_MIRROR, "true")])
                .build(),
            true,
        ),
        (
            "written by an endpoints controller",
            endpoints("web")
                .labels(&[(LABEL_ENDPOINTS_MANAGED_BY, ENDPOINTS_MANAGED_BY_VALUE)])
                .build(),
            true,
        ),
    ];
    for (name, ep, want) in cases {
        assert_eq!(should_mirror(&ep), want, "{name}");
    }
}

#[test]
fn service_wants_mirror_table() {
    let mut no_spec = svc("web").build();
    no_spec.spec = None;
    let cases = [
        ("missing", None, false),
        ("selector absent", Some(svc("web").no_selector().build()), true),
        ("selector set", Some(svc("web").build()), false),
        (
            "empty selector map",
            Some(svc("web").selector(&[]).build()),
            false,
        ),
        ("no spec", Some(no_spec), true),
        (
            "ExternalName without selector",
            Some(svc("web").no_selector().type_("ExternalName").build()),
            true,
        ),
    ];
    for (name, s, want) in cases {
        assert_eq!(service_wants_mirror(s.as_ref()), want, "{name}");
    }

    // `selector: {}` is read as an empty map, not as an absent field.
    let json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {}},
    });
    let parsed: Service = serde_json::from_value(json).unwrap();
    assert_eq!(parsed.spec.as_ref().unwrap().selector, Some(BTreeMap::new()));
    assert!(!service_wants_mirror(Some(&parsed)));
    assert!(
        crate::is_service_handled(&parsed),
        "the EndpointSlice controller takes it"
    );
}

#[test]
fn adoption() {
    let ep = endpoints("web")
        .labels(&[("team", "a")])
        .ips(&["10.0.0.1"])
        .build();
    // A slice written by kube-controller-manager's mirroring controller.
    let mut upstream = Api::default();
    upstream.sync(&ep, &cfg());
    upstream.slices[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_MANAGED_BY.into(), UPSTREAM_MIRRORING_MANAGER.into());

    // Not adopted: ignored, and a slice of our own is created next to it.
    let p = plan(&ep, &upstream, &cfg());
    assert_eq!(counts(&p), (1, 0, 0));

    // Adopted and already right: left exactly as it is, upstream's manager name included.
    let p = plan(&ep, &upstream, &adopt_cfg());
    assert!(p.is_empty(), "{p:#?}");

    // Adopted and in need of a write: relabelled to our manager name on the way.
    let changed = endpoints("web")
        .labels(&[("team", "a")])
        .ips(&["10.0.0.2"])
        .build();
    let mut api = upstream.clone();
    let p = api.sync(&changed, &adopt_cfg());
    assert_eq!(counts(&p), (0, 1, 0));
    assert_eq!(
        p.update[0].metadata.labels.as_ref().unwrap()[LABEL_MANAGED_BY],
        DEFAULT_MIRRORING_MANAGED_BY
    );
    assert_eq!(p.update[0].metadata.name, upstream.slices[0].metadata.name);
}

#[test]
fn foreign_slices_are_never_touched() {
    let ep = endpoints("web").ips(&["10.0.0.1"]).build();
    let mut api = Api::default();
    api.sync(&ep, &cfg());
    let base = api.slices[0].clone();
    let with_label = |k: &str, v: &str| {
        let mut s = base.clone();
        s.metadata.name = Some(format!("foreign-{k}-{v}"));
        s.metadata.labels.as_mut().unwrap().insert(k.into(), v.into());
        s
    };
    let mut other_ns = base.clone();
    other_ns.metadata.name = Some("foreign-ns".into());
    other_ns.metadata.namespace = Some("other".into());
    let foreign = vec![
        with_label(LABEL_MANAGED_BY, UPSTREAM_ENDPOINTSLICE_MANAGER),
        with_label(LABEL_MANAGED_BY, UPSTREAM_MIRRORING_MANAGER),
        with_label(LABEL_SERVICE_NAME, "db"),
        other_ns,
    ];
    // Even with an Endpoints that wants nothing, only our slice goes.
    let mut all = Api::with([api.slices.clone(), foreign].concat());
    let p = plan(&endpoints("web").build(), &all, &cfg());
    assert_eq!(p.delete, api.slices);
    all.apply_mirror(&p);
    assert_eq!(all.slices.len(), 4);
}

#[test]
fn mirrored_slices_selection() {
    let ep = endpoints("web").ips(&["10.0.0.1"]).build();
    let mut api = Api::default();
    api.sync(&ep, &cfg());
    let ours = api.slices[0].clone();
    let renamed = |name: &str| {
        let mut s = ours.clone();
        s.metadata.name = Some(name.into());
        s
    };
    let mut deleting = renamed("web-deleting");
    deleting.metadata.deletion_timestamp = Some(crate::builders::t(0));
    let mut adopted = renamed("web-adopted");
    adopted
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_MANAGED_BY.into(), UPSTREAM_MIRRORING_MANAGER.into());
    let mut other_ns = renamed("web-other-ns");
    other_ns.metadata.namespace = Some("other".into());
    let input = [
        renamed("web-b"),
        ours.clone(),
        deleting,
        adopted,
        other_ns,
        renamed("web-b"),
    ];
    let key = ServiceKey::new("default", "web");
    let names = |cfg: &MirrorConfig| -> Vec<String> {
        mirrored_slices(&key, &input, cfg)
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    };
    assert_eq!(
        names(&cfg()),
        vec!["web-1", "web-b"],
        "sorted, deduplicated, not deleting"
    );
    assert_eq!(names(&adopt_cfg()), vec!["web-1", "web-adopted", "web-b"]);
    assert!(mirrored_slices(&ServiceKey::new("default", "db"), &input, &cfg()).is_empty());
}

#[test]
fn config_table() {
    let cases: Vec<(&str, MirrorConfig, bool)> = vec![
        ("default", cfg(), true),
        ("max 1", cfg_max(1), true),
        ("max 0", cfg_max(0), false),
        ("max 1001", cfg_max(1001), false),
        (
            "empty manager",
            MirrorConfig {
                managed_by: String::new(),
                ..cfg()
            },
            false,
        ),
        (
            "manager not a label value",
            MirrorConfig {
                managed_by: "a b".into(),
                ..cfg()
            },
            false,
        ),
        ("adopt upstream", adopt_cfg(), true),
        (
            "adopt the EndpointSlice controller's slices",
            MirrorConfig {
                adopt_from: Some(crate::keys::UPSTREAM_ENDPOINTSLICE_MANAGER.into()),
                ..cfg()
            },
            false,
        ),
        (
            "Portico's EndpointSlice manager name",
            MirrorConfig {
                managed_by: crate::endpointslice::DEFAULT_MANAGED_BY.into(),
                ..cfg()
            },
            false,
        ),
        (
            "adopt garbage",
            MirrorConfig {
                adopt_from: Some("-x".into()),
                ..cfg()
            },
            false,
        ),
    ];
    for (name, c, ok) in cases {
        assert_eq!(c.validate().is_ok(), ok, "{name}: {:?}", c.validate());
        let ep = endpoints("web").ips(&["10.0.0.1"]).build();
        assert_eq!(
            reconcile(&ep, &[], &c).is_ok(),
            ok,
            "{name}: reconcile validates too"
        );
    }
    assert_eq!(
        cfg().label_selector("web"),
        format!("{LABEL_SERVICE_NAME}=web,{LABEL_MANAGED_BY}={DEFAULT_MIRRORING_MANAGED_BY}")
    );
    assert_eq!(
        adopt_cfg().label_selector("web"),
        format!(
            "{LABEL_SERVICE_NAME}=web,{LABEL_MANAGED_BY} in ({DEFAULT_MIRRORING_MANAGED_BY},{UPSTREAM_MIRRORING_MANAGER})"
        )
    );
}

#[test]
fn missing_metadata_is_an_error() {
    let ok = endpoints("web").ips(&["10.0.0.1"]).build();
    for (field, clear) in [
        (
            "name",
            (|e: &mut Endpoints| e.metadata.name = None) as fn(&mut Endpoints),
        ),
        ("namespace", |e| e.metadata.namespace = None),
        ("uid", |e| e.metadata.uid = None),
    ] {
        let mut ep = ok.clone();
        clear(&mut ep);
        assert_eq!(
            reconcile(&ep, &[], &cfg()),
            Err(MirrorError::MissingMetadata(field))
        );
    }
}

#[test]
fn long_names_still_get_a_dashed_prefix() {
    let name = "a".repeat(253);
    let ep = endpoints(&name).ips(&["10.0.0.1"]).build();
    let p = plan(&ep, &Api::default(), &cfg());
    assert_eq!(p.create[0].metadata.generate_name, Some(format!("{name}-")));
}
