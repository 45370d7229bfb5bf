//! Table tests of the event routing: each row is the state before (cached Services, what the
//! trackers recorded) and an event, and the exact routes and tracker state expected after it.

use std::collections::BTreeSet;

use k8s_openapi::Metadata;
use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::builders::*;
use crate::endpointslice::DEFAULT_MANAGED_BY as OURS;
use crate::keys::{
    ANNOTATION_LEADER, ANNOTATION_TOPOLOGY_MODE, LABEL_SKIP_MIRROR, LABEL_TOPOLOGY_ZONE,
    UPSTREAM_ENDPOINTSLICE_MANAGER, UPSTREAM_MIRRORING_MANAGER,
};
use crate::mirroring::DEFAULT_MIRRORING_MANAGED_BY as MIRROR;

const ES: Controller = Controller::EndpointSlice;
const EP: Controller = Controller::Endpoints;
const MIR: Controller = Controller::Mirroring;
const NOW: Delay = Delay::Now;
const BATCH: Delay = Delay::Batch;
const ECHO: Delay = Delay::SliceEcho;

const FOREIGN: &str = "someone-else";

/// The caches as the routing reads them.
#[derive(Default)]
struct World {
    services: Vec<Service>,
    hinted: Vec<ServiceKey>,
}

impl World {
    fn with(services: Vec<Service>) -> Self {
        World {
            services,
            hinted: Vec::new(),
        }
    }
}

impl Lookup for World {
    type Service<'s> = &'s Service;

    fn services(&self) -> Vec<&Service> {
        self.services.iter().collect()
    }

    fn services_in(&self, namespace: &str) -> Vec<&Service> {
        self.services
            .iter()
            .filter(|s| s.metadata.namespace.as_deref().unwrap_or_default() == namespace)
            .collect()
    }

    fn has_service(&self, key: &ServiceKey) -> bool {
        self.services
            .iter()
            .any(|s| ServiceKey::of_service(s).as_ref() == Some(key))
    }

    fn hinted_services(&self) -> Vec<ServiceKey> {
        self.hinted.clone()
    }
}

/// An event with owned objects, turned into a [`Change`] for the call.
enum Ev<K> {
    Applied(Option<K>, K),
    Deleted(K),
    Relisting,
    Relisted(Vec<K>, Vec<K>),
}

impl<K> Ev<K> {
    fn run<R>(&self, f: impl FnOnce(Change<'_, K>) -> R) -> R {
        match self {
            Ev::Applied(old, new) => f(Change::Applied {
                old: old.as_ref(),
                new,
            }),
            Ev::Deleted(obj) => f(Change::Deleted(obj)),
            Ev::Relisting => f(Change::Relisting),
            Ev::Relisted(before, after) => {
                let before: Vec<&K> = before.iter().collect();
                let after: Vec<&K> = after.iter().collect();
                f(Change::Relisted {
                    before: &before,
                    after: &after,
                })
            }
        }
    }
}

fn added<K>(new: K) -> Ev<K> {
    Ev::Applied(None, new)
}

fn updated<K>(old: K, new: K) -> Ev<K> {
    Ev::Applied(Some(old), new)
}

fn deleted<K>(obj: K) -> Ev<K> {
    Ev::Deleted(obj)
}

fn relisted<K>(before: Vec<K>, after: Vec<K>) -> Ev<K> {
    Ev::Relisted(before, after)
}

/// A route for Service (or Endpoints) `name` of namespace `default`.
fn r(controller: Controller, name: &str, delay: Delay) -> Route {
    r_in(controller, "default", name, delay)
}

fn r_in(controller: Controller, namespace: &str, name: &str, delay: Delay) -> Route {
    Route {
        controller,
        key: ServiceKey::new(namespace, name),
        delay,
    }
}

/// Both Service controllers, at once, for each name.
fn both_now(names: &[&str]) -> Vec<Route> {
    names
        .iter()
        .flat_map(|n| [r(ES, n, NOW), r(EP, n, NOW)])
        .collect()
}

fn sorted(mut routes: Vec<Route>) -> Vec<Route> {
    routes.sort();
    routes.dedup();
    routes
}

fn check(name: &str, got: &Routes, want: Vec<Route>) {
    let got: Vec<Route> = got.iter().collect();
    assert_eq!(got, sorted(want), "{name}: routes");
}

fn with_rv<T: Metadata<Ty = ObjectMeta>>(mut obj: T, rv: &str) -> T {
    obj.metadata_mut().resource_version = Some(rv.to_string());
    obj
}

fn set_label<T: Metadata<Ty = ObjectMeta>>(mut obj: T, k: &str, v: &str) -> T {
    obj.metadata_mut()
        .labels
        .get_or_insert_default()
        .insert(k.to_string(), v.to_string());
    obj
}

// ---------------------------------------------------------------------------------------------
// Services

#[test]
fn service_events() {
    let web = svc("web").build();
    let manual = svc("manual").no_selector().build();
    let mut no_spec = svc("web").build();
    no_spec.spec = None;
    // (row, event, expected routes)
    let rows: Vec<(&str, Ev<Service>, Vec<Route>)> = vec![
        ("add with a selector", added(web.clone()), both_now(&["web"])),
        (
            "add without a selector: mirrored too",
            added(manual.clone()),
            [both_now(&["manual"]), vec![r(MIR, "manual", NOW)]].concat(),
        ),
        (
            "update, selector changed but still there",
            updated(web.clone(), svc("web").selector(&[("app", "other")]).build()),
            both_now(&["web"]),
        ),
        (
            "update, still no selector",
            updated(
                manual.clone(),
                svc("manual").no_selector().labels(&[("x", "y")]).build(),
            ),
            both_now(&["manual"]),
        ),
        (
            "update, selector removed",
            updated(web.clone(), svc("web").no_selector().build()),
            [both_now(&["web"]), vec![r(MIR, "web", NOW)]].concat(),
        ),
        (
            "update, selector added",
            updated(manual.clone(), svc("manual").selector(&[("app", "m")]).build()),
            [both_now(&["manual"]), vec![r(MIR, "manual", NOW)]].concat(),
        ),
        (
            "update, spec gone counts as no selector",
            updated(web.clone(), no_spec.clone()),
            [both_now(&["web"]), vec![r(MIR, "web", NOW)]].concat(),
        ),
        ("delete with a selector", deleted(web.clone()), both_now(&["web"])),
        (
            "delete without a selector",
            deleted(manual.clone()),
            [both_now(&["manual"]), vec![r(MIR, "manual", NOW)]].concat(),
        ),
        ("relisting", Ev::Relisting, vec![]),
        (
            "relist: Services known before or after, deletions lost in it included",
            relisted(
                vec![
                    web.clone(),
                    svc("gone").build(),
                    svc("gone-manual").no_selector().build(),
                ],
                vec![web.clone(), svc("new").build()],
            ),
            [
                both_now(&["web", "gone", "gone-manual", "new"]),
                vec![r(MIR, "gone-manual", NOW)],
            ]
            .concat(),
        ),
        (
            "relist: selector removed while the watch was down",
            relisted(vec![web.clone()], vec![svc("web").no_selector().build()]),
            [both_now(&["web"]), vec![r(MIR, "web", NOW)]].concat(),
        ),
    ];
    for (name, ev, want) in rows {
        let got = ev.run(on_service);
        check(name, &got, want);
        assert!(!got.reshare_zones(), "{name}: reshare");
    }
}

// ---------------------------------------------------------------------------------------------
// Pods

#[test]
fn pod_events() {
    let mut elsewhere = svc("elsewhere").build();
    elsewhere.metadata.namespace = Some("other".into());
    let world = World::with(vec![
        svc("web").build(),
        svc("canary")
            .selector(&[("app", "web"), ("track", "canary")])
            .build(),
        svc("db").selector(&[("app", "db")]).build(),
        elsewhere,
    ]);
    let p = |labels: &[(&str, &str)]| with_rv(pod("p").labels(labels).build(), "1");
    let web_pod = p(&[("app", "web")]);
    let batch = |names: &[&str]| -> Vec<Route> {
        names
            .iter()
            .flat_map(|n| [r(ES, n, BATCH), r(EP, n, BATCH)])
            .collect()
    };
    let rows: Vec<(&str, Ev<Pod>, Vec<Route>)> = vec![
        ("added", added(web_pod.clone()), batch(&["web"])),
        (
            "added in another namespace",
            added(pod("p").namespace("other").build()),
            vec![
                r_in(ES, "other", "elsewhere", BATCH),
                r_in(EP, "other", "elsewhere", BATCH),
            ],
        ),
        ("deleted", deleted(web_pod.clone()), batch(&["web"])),
        (
            "labels changed: the Services it left and joined",
            updated(web_pod.clone(), with_rv(p(&[("app", "db")]), "2")),
            batch(&["web", "db"]),
        ),
        (
            "label added: only the Service that gained it",
            updated(
                web_pod.clone(),
                with_rv(p(&[("app", "web"), ("track", "canary")]), "2"),
            ),
            batch(&["canary"]),
        ),
        (
            "labels and readiness changed: old and new Services",
            updated(
                web_pod.clone(),
                with_rv(pod("p").labels(&[("app", "db")]).ready(false).build(), "2"),
            ),
            batch(&["web", "db"]),
        ),
        (
            "readiness changed",
            updated(web_pod.clone(), with_rv(pod("p").ready(false).build(), "2")),
            batch(&["web"]),
        ),
        (
            "no relevant field changed",
            updated(web_pod.clone(), with_rv(pod("p").phase("Pending").build(), "2")),
            vec![],
        ),
        (
            "resync (same resourceVersion)",
            updated(web_pod.clone(), with_rv(pod("p").ready(false).build(), "1")),
            vec![],
        ),
        ("relisting (InitApply)", Ev::Relisting, vec![]),
        (
            "relisted: every Service",
            relisted(vec![web_pod.clone()], vec![]),
            [
                both_now(&["web", "canary", "db"]),
                vec![
                    r_in(ES, "other", "elsewhere", NOW),
                    r_in(EP, "other", "elsewhere", NOW),
                ],
            ]
            .concat(),
        ),
    ];
    for (name, ev, want) in rows {
        let got = ev.run(|c| on_pod(c, &world));
        check(name, &got, want);
        assert!(!got.reshare_zones(), "{name}: reshare");
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

fn ready_node(name: &str, zone: &str, cpu: &str) -> Node {
    let mut n = node(name, Some(zone));
    n.status = Some(NodeStatus {
        allocatable: Some([("cpu".to_string(), Quantity(cpu.to_string()))].into()),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

#[test]
fn node_events() {
    let world = World {
        services: vec![
            svc("hinted").build(),
            svc("auto")
                .annotations(&[(ANNOTATION_TOPOLOGY_MODE, "Auto")])
                .build(),
            svc("plain").build(),
        ],
        // A hinted Service no longer cached is still queued: its sync forgets it.
        hinted: vec![
            ServiceKey::new("default", "hinted"),
            ServiceKey::new("default", "gone"),
        ],
    };
    let n1 = ready_node("n1", "a", "4");
    let mut not_ready = n1.clone();
    not_ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
    let reshared = vec![r(ES, "hinted", NOW), r(ES, "auto", NOW), r(ES, "gone", NOW)];
    // (row, event, expected routes; the shares are recomputed exactly when routes are expected)
    let rows: Vec<(&str, Ev<Node>, Vec<Route>)> = vec![
        (
            "zone changed",
            updated(n1.clone(), set_label(n1.clone(), LABEL_TOPOLOGY_ZONE, "b")),
            reshared.clone(),
        ),
        (
            "allocatable CPU changed",
            updated(n1.clone(), ready_node("n1", "a", "8")),
            reshared.clone(),
        ),
        (
            "readiness changed",
            updated(n1.clone(), not_ready),
            reshared.clone(),
        ),
        (
            "became a control-plane node",
            updated(
                n1.clone(),
                set_label(n1.clone(), "node-role.kubernetes.io/control-plane", ""),
            ),
            reshared.clone(),
        ),
        ("new node", added(n1.clone()), reshared.clone()),
        ("deleted", deleted(n1.clone()), reshared.clone()),
        ("relisted", relisted(vec![], vec![n1.clone()]), reshared.clone()),
        (
            "unrelated label changed",
            updated(n1.clone(), set_label(n1.clone(), "team", "x")),
            vec![],
        ),
        (
            "resync, same inputs",
            updated(n1.clone(), with_rv(n1.clone(), "7")),
            vec![],
        ),
        ("relisting", Ev::Relisting, vec![]),
    ];
    for (name, ev, want) in rows {
        let got = ev.run(|c| on_node(c, &world));
        assert_eq!(got.reshare_zones(), !want.is_empty(), "{name}: reshare");
        check(name, &got, want);
    }
}

// ---------------------------------------------------------------------------------------------
// EndpointSlices

/// A slice of Service `service`, managed by `manager`, with UID `uid-<name>`.
fn sl(name: &str, service: &str, manager: &str) -> EndpointSlice {
    slice(name, &svc(service).build(), manager).build()
}

fn at_gen(mut s: EndpointSlice, generation: i64) -> EndpointSlice {
    s.metadata.generation = Some(generation);
    s.metadata.resource_version = Some(format!("rv{generation}"));
    s
}

/// The next version of a slice: another resourceVersion, same generation.
fn next(mut s: EndpointSlice) -> EndpointSlice {
    let rv = s.metadata.resource_version.take().unwrap_or_default();
    s.metadata.resource_version = Some(format!("{rv}+"));
    s
}

fn relabel(s: EndpointSlice, k: &str, v: &str) -> EndpointSlice {
    next(set_label(s, k, v))
}

fn marked_for_deletion(mut s: EndpointSlice) -> EndpointSlice {
    s.metadata.deletion_timestamp = Some(t(0));
    next(s)
}

struct SliceRow {
    name: &'static str,
    /// The EndpointSlice controller's tracker before the event: its writes, then the
    /// deletions it expects.
    wrote: Vec<EndpointSlice>,
    expects_deleted: Vec<EndpointSlice>,
    /// The same for the mirroring controller's tracker.
    mirror_wrote: Vec<EndpointSlice>,
    mirror_expects_deleted: Vec<EndpointSlice>,
    event: Ev<EndpointSlice>,
    want: Vec<Route>,
    /// What each tracker holds afterwards, as (Service, slice name).
    tracked: Vec<(&'static str, &'static str)>,
    mirror_tracked: Vec<(&'static str, &'static str)>,
}

impl Default for SliceRow {
    fn default() -> Self {
        SliceRow {
            name: "",
            wrote: vec![],
            expects_deleted: vec![],
            mirror_wrote: vec![],
            mirror_expects_deleted: vec![],
            event: Ev::Relisting,
            want: vec![],
            tracked: vec![],
            mirror_tracked: vec![],
        }
    }
}

fn recorded(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(svc, slice)| (format!("default/{svc}"), format!("uid-{slice}")))
        .collect()
}

fn slice_config() -> endpointslice::Config {
    endpointslice::Config {
        adopt_from: Some(UPSTREAM_ENDPOINTSLICE_MANAGER.to_string()),
        ..Default::default()
    }
}

fn run_slice_rows(rows: Vec<SliceRow>) {
    let world = World::with(vec![svc("web").build(), svc("db").build()]);
    let cfg = slice_config();
    let mirror_cfg = MirrorConfig {
        adopt_from: Some(UPSTREAM_MIRRORING_MANAGER.to_string()),
        ..Default::default()
    };
    // Every row runs; the failures are reported together.
    let mut failed = Vec::new();
    for row in rows {
        let name = row.name;
        let mut tracker = GenerationTracker::new();
        row.wrote.iter().for_each(|s| tracker.record_write(s));
        row.expects_deleted
            .iter()
            .for_each(|s| tracker.expect_deletion(s));
        let mut mirror_tracker = GenerationTracker::new();
        row.mirror_wrote
            .iter()
            .for_each(|s| mirror_tracker.record_write(s));
        row.mirror_expects_deleted
            .iter()
            .for_each(|s| mirror_tracker.expect_deletion(s));
        let got = row.event.run(|c| {
            let mut owners = [
                SliceOwner::endpointslice(&cfg, &mut tracker),
                SliceOwner::mirroring(&mirror_cfg, &mut mirror_tracker),
            ];
            on_slice(c, &mut owners, &world)
        });
        let routes: Vec<Route> = got.iter().collect();
        let want = sorted(row.want);
        if routes != want {
            failed.push(format!("{name}: routes\n   got {routes:?}\n  want {want:?}"));
        }
        if got.reshare_zones() {
            failed.push(format!("{name}: reshares zones"));
        }
        for (which, t, want) in [
            ("tracker", &tracker, recorded(&row.tracked)),
            (
                "mirroring tracker",
                &mirror_tracker,
                recorded(&row.mirror_tracked),
            ),
        ] {
            if t.recorded() != want {
                failed.push(format!(
                    "{name}: {which}\n   got {:?}\n  want {want:?}",
                    t.recorded()
                ));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} rows failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn endpointslice_controller_slice_events() {
    let a = sl("a", "web", OURS);
    let b = sl("b", "web", OURS);
    let foreign = sl("f", "web", FOREIGN);
    let web_db = both_now(&["web", "db"]);
    run_slice_rows(vec![
        SliceRow {
            name: "echo of our own write: no requeue",
            wrote: vec![at_gen(a.clone(), 2)],
            event: updated(a.clone(), at_gen(a.clone(), 2)),
            tracked: vec![("web", "a")],
            ..Default::default()
        },
        SliceRow {
            name: "older than our write (cache behind): no requeue",
            wrote: vec![at_gen(a.clone(), 3)],
            event: updated(a.clone(), at_gen(a.clone(), 2)),
            tracked: vec![("web", "a")],
            ..Default::default()
        },
        SliceRow {
            name: "our slice changed by someone else",
            wrote: vec![at_gen(a.clone(), 2)],
            event: updated(at_gen(a.clone(), 2), at_gen(a.clone(), 3)),
            want: vec![r(ES, "web", ECHO)],
            tracked: vec![("web", "a")],
            ..Default::default()
        },
        SliceRow {
            name: "untracked slice added",
            event: added(a.clone()),
            want: vec![r(ES, "web", ECHO)],
            ..Default::default()
        },
        SliceRow {
            name: "adopted manager's slice added",
            event: added(sl("u", "web", UPSTREAM_ENDPOINTSLICE_MANAGER)),
            want: vec![r(ES, "web", ECHO)],
            ..Default::default()
        },
        SliceRow {
            name: "foreign slice added or updated",
            event: updated(foreign.clone(), next(foreign.clone())),
            ..Default::default()
        },
        SliceRow {
            name: "relabelled to another Service: both queued, the old one forgets it",
            wrote: vec![a.clone()],
            event: updated(a.clone(), relabel(a.clone(), LABEL_SERVICE_NAME, "db")),
            want: vec![r(ES, "web", ECHO), r(ES, "db", ECHO)],
            ..Default::default()
        },
        SliceRow {
            name: "relabelled: a write recorded under the Service it joined is kept",
            wrote: vec![a.clone(), relabel(a.clone(), LABEL_SERVICE_NAME, "db")],
            event: updated(a.clone(), relabel(a.clone(), LABEL_SERVICE_NAME, "db")),
            want: vec![r(ES, "web", ECHO), r(ES, "db", ECHO)],
            tracked: vec![("db", "a")],
            ..Default::default()
        },
        SliceRow {
            name: "managed-by ours -> foreign: the Service it left only",
            wrote: vec![a.clone()],
            event: updated(a.clone(), relabel(a.clone(), LABEL_MANAGED_BY, FOREIGN)),
            want: vec![r(ES, "web", ECHO)],
            ..Default::default()
        },
        SliceRow {
            name: "managed-by foreign -> ours",
            event: updated(foreign.clone(), relabel(foreign.clone(), LABEL_MANAGED_BY, OURS)),
            want: vec![r(ES, "web", ECHO)],
            ..Default::default()
        },
        SliceRow {
            name: "managed-by ours -> adopted manager: still ours, but relisted",
            wrote: vec![a.clone()],
            event: updated(
                a.clone(),
                relabel(a.clone(), LABEL_MANAGED_BY, UPSTREAM_ENDPOINTSLICE_MANAGER),
            ),
            want: vec![r(ES, "web", ECHO)],
            ..Default::default()
        },
        SliceRow {
            name: "marked for deletion under a finalizer: forgotten, Service queued",
            wrote: vec![a.clone(), b.clone()],
            event: updated(a.clone(), marked_for_deletion(a.clone())),
            want: vec![r(ES, "web", ECHO)],
            tracked: vec![("web", "b")],
            ..Default::default()
        },
        SliceRow {
            name: "foreign slice marked for deletion",
            event: updated(foreign.clone(), marked_for_deletion(foreign.clone())),
            ..Default::default()
        },
        SliceRow {
            name: "deleted by us (expected): no requeue",
            expects_deleted: vec![a.clone()],
            wrote: vec![b.clone()],
            event: deleted(a.clone()),
            tracked: vec![("web", "b")],
            ..Default::default()
        },
        SliceRow {
            name: "tracked slice deleted by someone else: recreate",
            wrote: vec![a.clone()],
            event: deleted(a.clone()),
            want: vec![r(ES, "web", NOW)],
            ..Default::default()
        },
        SliceRow {
            name: "untracked slice deleted: recreate",
            wrote: vec![b.clone()],
            event: deleted(a.clone()),
            want: vec![r(ES, "web", NOW)],
            tracked: vec![("web", "b")],
            ..Default::default()
        },
        SliceRow {
            name: "foreign slice deleted",
            event: deleted(foreign.clone()),
            ..Default::default()
        },
        SliceRow {
            name: "relisting: nothing yet",
            wrote: vec![a.clone()],
            event: Ev::Relisting,
            tracked: vec![("web", "a")],
            ..Default::default()
        },
        SliceRow {
            name: "deletion lost in a relist: forgotten, every Service queued",
            wrote: vec![a.clone(), b.clone()],
            event: relisted(vec![a.clone(), b.clone()], vec![b.clone()]),
            want: web_db.clone(),
            tracked: vec![("web", "b")],
            ..Default::default()
        },
        SliceRow {
            name: "our own deletion completed during a relist",
            expects_deleted: vec![a.clone()],
            event: relisted(vec![a.clone(), foreign.clone()], vec![foreign.clone()]),
            want: web_db.clone(),
            ..Default::default()
        },
        SliceRow {
            name: "relist hid a relabel to another Service: the old Service forgets it",
            wrote: vec![a.clone()],
            event: relisted(
                vec![a.clone()],
                vec![relabel(a.clone(), LABEL_SERVICE_NAME, "db")],
            ),
            want: web_db.clone(),
            ..Default::default()
        },
        SliceRow {
            name: "relist hid a relabel to a Service not cached: that one queued too",
            wrote: vec![a.clone()],
            event: relisted(
                vec![a.clone()],
                vec![relabel(a.clone(), LABEL_SERVICE_NAME, "gone")],
            ),
            want: [web_db.clone(), vec![r(ES, "gone", ECHO)]].concat(),
            ..Default::default()
        },
        SliceRow {
            name: "relist hid a mark for deletion: forgotten",
            wrote: vec![a.clone()],
            event: relisted(vec![a.clone()], vec![marked_for_deletion(a.clone())]),
            want: web_db.clone(),
            ..Default::default()
        },
        SliceRow {
            name: "relist hid a delete and re-create under the same name: old UID forgotten",
            wrote: vec![a.clone()],
            event: relisted(vec![a.clone()], {
                let mut again = a.clone();
                again.metadata.uid = Some("uid-a2".into());
                vec![again]
            }),
            want: web_db.clone(),
            ..Default::default()
        },
        SliceRow {
            name: "relist with nothing changed: our records stay",
            wrote: vec![a.clone()],
            event: relisted(vec![a.clone()], vec![a.clone()]),
            want: web_db.clone(),
            tracked: vec![("web", "a")],
            ..Default::default()
        },
    ]);
}

#[test]
fn mirroring_slice_events() {
    let a = sl("a", "web", OURS);
    let m = sl("m", "web", MIRROR);
    run_slice_rows(vec![
        SliceRow {
            name: "echo of the mirroring controller's write",
            mirror_wrote: vec![at_gen(m.clone(), 2)],
            event: updated(m.clone(), at_gen(m.clone(), 2)),
            mirror_tracked: vec![("web", "m")],
            ..Default::default()
        },
        SliceRow {
            name: "mirrored slice changed by someone else",
            mirror_wrote: vec![at_gen(m.clone(), 2)],
            event: updated(at_gen(m.clone(), 2), at_gen(m.clone(), 3)),
            want: vec![r(MIR, "web", BATCH)],
            mirror_tracked: vec![("web", "m")],
            ..Default::default()
        },
        SliceRow {
            name: "untracked mirrored slice added",
            event: added(m.clone()),
            want: vec![r(MIR, "web", BATCH)],
            ..Default::default()
        },
        SliceRow {
            name: "adopted mirroring manager's slice added",
            event: added(sl("u", "web", UPSTREAM_MIRRORING_MANAGER)),
            want: vec![r(MIR, "web", BATCH)],
            ..Default::default()
        },
        SliceRow {
            name: "mirrored slice relabelled to another Service: both queued",
            mirror_wrote: vec![m.clone()],
            event: updated(m.clone(), relabel(m.clone(), LABEL_SERVICE_NAME, "db")),
            want: vec![r(MIR, "web", BATCH), r(MIR, "db", BATCH)],
            ..Default::default()
        },
        SliceRow {
            name: "slice handed from the EndpointSlice controller to mirroring",
            wrote: vec![a.clone()],
            event: updated(a.clone(), relabel(a.clone(), LABEL_MANAGED_BY, MIRROR)),
            want: vec![r(ES, "web", ECHO), r(MIR, "web", BATCH)],
            ..Default::default()
        },
        SliceRow {
            name: "slice handed from mirroring to the EndpointSlice controller",
            mirror_wrote: vec![m.clone()],
            event: updated(m.clone(), relabel(m.clone(), LABEL_MANAGED_BY, OURS)),
            want: vec![r(MIR, "web", BATCH), r(ES, "web", ECHO)],
            ..Default::default()
        },
        SliceRow {
            name: "mirrored slice marked for deletion",
            mirror_wrote: vec![m.clone()],
            event: updated(m.clone(), marked_for_deletion(m.clone())),
            want: vec![r(MIR, "web", BATCH)],
            ..Default::default()
        },
        SliceRow {
            name: "mirrored slice deleted by someone else",
            mirror_wrote: vec![m.clone()],
            event: deleted(m.clone()),
            want: vec![r(MIR, "web", BATCH)],
            ..Default::default()
        },
        SliceRow {
            name: "mirrored slice deleted by the mirroring controller",
            mirror_expects_deleted: vec![m.clone()],
            event: deleted(m.clone()),
            ..Default::default()
        },
        SliceRow {
            name: "untracked mirrored slice deleted",
            event: deleted(m.clone()),
            want: vec![r(MIR, "web", BATCH)],
            ..Default::default()
        },
        SliceRow {
            name: "the EndpointSlice controller's slices leave the mirroring tracker alone",
            wrote: vec![a.clone()],
            mirror_wrote: vec![m.clone()],
            event: deleted(a.clone()),
            want: vec![r(ES, "web", NOW)],
            mirror_tracked: vec![("web", "m")],
            ..Default::default()
        },
        SliceRow {
            name: "untracked mirrored slice unchanged over a relist: no event hidden, none routed",
            event: relisted(vec![m.clone()], vec![m.clone()]),
            want: both_now(&["web", "db"]),
            ..Default::default()
        },
        SliceRow {
            name: "untracked mirrored slice changed during a relist",
            event: relisted(vec![m.clone()], vec![next(m.clone())]),
            want: [both_now(&["web", "db"]), vec![r(MIR, "web", BATCH)]].concat(),
            ..Default::default()
        },
        SliceRow {
            name: "mirrored slice's deletion lost in a relist",
            mirror_wrote: vec![m.clone()],
            event: relisted(vec![m.clone()], vec![]),
            want: [both_now(&["web", "db"]), vec![r(MIR, "web", BATCH)]].concat(),
            ..Default::default()
        },
    ]);
}

#[test]
fn without_a_mirroring_owner_mirrored_slices_route_nowhere() {
    let world = World::default();
    let cfg = slice_config();
    let mut tracker = GenerationTracker::new();
    let m = sl("m", "web", MIRROR);
    for ev in [added(m.clone()), deleted(m.clone())] {
        let got = ev.run(|c| {
            let mut owners = [SliceOwner::endpointslice(&cfg, &mut tracker)];
            on_slice(c, &mut owners, &world)
        });
        assert!(got.is_empty(), "{got:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

fn endpoints(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Endpoints {
    let map = |pairs: &[(&str, &str)]| {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    Endpoints {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        },
        subsets: None,
    }
}

#[test]
fn endpoints_events() {
    let world = World::with(vec![svc("web").build(), svc("db").build()]);
    let web = endpoints("web", &[], &[]);
    let gone = endpoints("gone", &[], &[]);
    let skip = |name| endpoints(name, &[(LABEL_SKIP_MIRROR, "true")], &[]);
    let lock = |name| endpoints(name, &[], &[(ANNOTATION_LEADER, "{}")]);
    let rows: Vec<(&str, Ev<Endpoints>, Vec<Route>)> = vec![
        (
            "deleted, Service cached: Endpoints controller recreates, mirroring syncs",
            deleted(web.clone()),
            vec![r(EP, "web", NOW), r(MIR, "web", NOW)],
        ),
        (
            "deleted, Service gone: no second DELETE, mirroring syncs",
            deleted(gone.clone()),
            vec![r(MIR, "gone", NOW)],
        ),
        (
            "deleted, Service gone, skip-mirror",
            deleted(skip("gone")),
            vec![],
        ),
        (
            "deleted, Service cached, a leader lock",
            deleted(lock("web")),
            vec![r(EP, "web", NOW)],
        ),
        (
            "added: mirroring only",
            added(gone.clone()),
            vec![r(MIR, "gone", NOW)],
        ),
        ("added with skip-mirror=true", added(skip("gone")), vec![]),
        (
            "added with skip-mirror=false",
            added(endpoints("gone", &[(LABEL_SKIP_MIRROR, "false")], &[])),
            vec![r(MIR, "gone", NOW)],
        ),
        ("added, a leader lock", added(lock("gone")), vec![]),
        (
            "updated, mirrored before and after",
            updated(gone.clone(), endpoints("gone", &[("x", "y")], &[])),
            vec![r(MIR, "gone", NOW)],
        ),
        (
            "updated, no longer mirrored",
            updated(gone.clone(), skip("gone")),
            vec![r(MIR, "gone", NOW)],
        ),
        (
            "updated, mirrored from now on",
            updated(lock("gone"), gone.clone()),
            vec![r(MIR, "gone", NOW)],
        ),
        (
            "updated, mirrored neither before nor after",
            updated(skip("gone"), lock("gone")),
            vec![],
        ),
        ("relisting", Ev::Relisting, vec![]),
        (
            "relisted: every Service, and what is mirrored before or after",
            relisted(
                vec![endpoints("old", &[], &[]), lock("lock"), skip("web")],
                vec![skip("web"), endpoints("new", &[], &[])],
            ),
            [
                both_now(&["web", "db"]),
                vec![r(MIR, "old", NOW), r(MIR, "new", NOW)],
            ]
            .concat(),
        ),
    ];
    for (name, ev, want) in rows {
        let got = ev.run(|c| on_endpoints(c, &world));
        check(name, &got, want);
        assert!(!got.reshare_zones(), "{name}: reshare");
    }
}

// ---------------------------------------------------------------------------------------------
// Routes and delays

#[test]
fn delays() {
    let ms = Duration::from_millis;
    // (delay, batch period, expected)
    for (delay, batch, want) in [
        (NOW, ms(500), ms(0)),
        (BATCH, ms(0), ms(0)),
        (BATCH, ms(500), ms(500)),
        (ECHO, ms(0), ms(1000)),
        (ECHO, ms(500), ms(1000)),
        (ECHO, ms(3000), ms(3000)),
    ] {
        assert_eq!(delay.duration(batch), want, "{delay:?} with {batch:?}");
    }
}

#[test]
fn a_key_is_routed_once_per_controller_with_the_soonest_delay() {
    let key = || ServiceKey::new("default", "web");
    let mut routes = Routes::default();
    routes.add(ES, key(), ECHO);
    routes.add(ES, key(), NOW);
    routes.add(ES, key(), BATCH);
    routes.add(MIR, key(), BATCH);
    check(
        "collapsed",
        &routes,
        vec![r(ES, "web", NOW), r(MIR, "web", BATCH)],
    );
    assert_eq!(routes.clone().into_iter().count(), 2);
}
