//! The `RangeAllocation` custom resource: one cluster-scoped object per range holding the
//! values handed out in admissions whose Service has not shown up yet (claims) and where
//! next-fit resumes: the only allocation state Portico shares between replicas, and the unit of
//! compare-and-swap between them.
//!
//! What is *used* is not stored: every replica learns it from its own watches of Services and
//! `IPAddress` objects, the apiserver's truth. Losing this object therefore loses at most the
//! claims of the last few seconds, which each replica still holds in memory and writes back.
//!
//! ```yaml
//! apiVersion: portico.dev/v1alpha1
//! kind: RangeAllocation
//! metadata:
//!   name: clusterip-ipv4          # clusterip-ipv6, nodeports
//!   resourceVersion: "4711"       # the fence: every write is a PUT with this precondition
//! spec:
//!   range: 10.96.0.0/12           # the ranges in use, for humans (comma-separated)
//!   pending: |                    # handed out, Service not seen yet (or seen < 3 s ago):
//!     10.96.14.3 default/web 2026-11-21T22:03:00Z
//!     10.96.14.4 :reserved/portico-7d9f-1a2b3c4d 2026-11-21T22:03:00Z
//!   cursors:                      # next-fit offsets per range
//!     10.96.0.0/12: {static: 0, dynamic: 4099}
//! status:                         # the status subresource: counters and conditions
//!   kind: ClusterIP
//!   size: 1048574
//!   used: 12
//!   ...
//!   conditions:
//!   - {type: Exhausted, status: "False", reason: ValuesFree, ...}
//! ```
//!
//! The status is a subresource, so `kubectl wait --for=condition=Exhausted` and status-only RBAC
//! work as for any controller's object. It is written separately from the claims, and not after
//! every claim write: at once when a condition, the repair report or the recovery record
//! changes, otherwise at most every 5 s (counters may lag the claims by that much; the claims
//! themselves never wait for it).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResource, CustomResourceExt};
use portico_allocators::Band;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AllocationError;
use super::range_state::{Cursors, Pending, Pool, RangeKind, RangeState, ServiceRef};

/// Name of the CRD (`<plural>.<group>`).
pub const CRD_NAME: &str = "rangeallocations.portico.dev";

/// Field manager used for server-side apply of the CRD.
pub const FIELD_MANAGER: &str = "portico-allocation";

/// How long [`install_crds`] waits for the CRD to be Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The persisted state of one allocation range.
// Several `printcolumn(...)` are several columns, not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "RangeAllocation",
    plural = "rangeallocations",
    shortname = "pra",
    category = "portico",
    status = "RangeAllocationStatus",
    derive = "PartialEq",
    doc = "Claims shared between Portico replicas for one ClusterIP family or the NodePort range.",
    printcolumn(name = "Range", type_ = "string", json_path = ".spec.range"),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.used"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.free"),
    printcolumn(name = "Dynamic Free", type_ = "integer", json_path = ".status.dynamicFree"),
    printcolumn(name = "Static Free", type_ = "integer", json_path = ".status.staticFree"),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending"),
    printcolumn(
        name = "Exhausted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Exhausted\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RangeAllocationSpec {
    /// The ranges in use (`10.96.0.0/12`, `10.96.0.0/12,10.100.0.0/16` or `30000-32767`), for
    /// humans: the claims below are values, valid whatever the ranges are.
    pub range: String,
    /// Values handed out in an admission whose Service has not been seen yet, one per line:
    /// `<value> <namespace>/<name> <expires, RFC 3339>`. The owner `:reserved/<replica>` is a
    /// replica's reservation. One string rather than a map: the apiserver's cost of a custom
    /// resource update grows with its number of fields, and this object is written under load.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pending: String,
    /// Where next-fit resumes in each range (offsets into it), so that a restart does not hand a
    /// just-freed value straight back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<String, Cursor>,
}

/// Next-fit positions of one range.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Cursor {
    /// Offset where the static (lower) band resumes.
    #[serde(rename = "static")]
    pub static_band: u32,
    /// Offset where the dynamic (upper) band resumes.
    pub dynamic: u32,
}

/// Counters derived from the spec, for `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeAllocationStatus {
    /// `ClusterIP` or `NodePort`.
    pub kind: String,
    /// Allocatable values.
    pub size: u64,
    /// Used values of the ranges new values come from (held in the cluster or claimed).
    pub used: u64,
    /// Free values.
    pub free: u64,
    /// Held values in the static (lower) band.
    pub static_used: u64,
    /// Free values in the static band.
    pub static_free: u64,
    /// Held values in the dynamic (upper) band.
    pub dynamic_used: u64,
    /// Free values in the dynamic band.
    pub dynamic_free: u64,
    /// Pending claims.
    pub pending: u64,
    /// The last time this object was lost or unreadable and rebuilt from a replica's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recovery: Option<Recovery>,
    /// What the last repair pass over this range found and did (absent until one has run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<RepairSummary>,
    /// `Exhausted`: `True` while no value is free (new Services needing one are refused with
    /// upstream's "range is full").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<RangeCondition>,
}

/// A condition, shaped as `metav1.Condition` (what `kubectl wait --for=condition=` reads).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeCondition {
    /// The condition's name (`Exhausted`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// CamelCase reason of the last transition.
    pub reason: String,
    /// For humans.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The `Exhausted` condition type.
pub const EXHAUSTED: &str = "Exhausted";

impl RangeAllocationStatus {
    /// Sets the conditions from the counters; a condition whose status is unchanged from
    /// `previous` keeps its transition time.
    pub fn with_conditions(mut self, previous: Option<&RangeAllocationStatus>, now: Timestamp) -> Self {
        let (status, reason, message) = if self.size > 0 && self.free == 0 {
            (
                "True",
                "RangeFull",
                format!(
                    "all {} values are held or claimed: new values are refused as \"range is full\"",
                    self.size
                ),
            )
        } else {
            (
                "False",
                "ValuesFree",
                format!("{} of {} values free", self.free, self.size),
            )
        };
        let since = previous
            .and_then(|p| p.condition(EXHAUSTED))
            .filter(|c| c.status == status)
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
        self.conditions = vec![RangeCondition {
            type_: EXHAUSTED.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: since,
        }];
        self
    }

    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&RangeCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether writing `self` over `stored` cannot wait: a condition flips, or the repair
    /// report or the recovery record changes (counters alone can).
    pub fn is_urgent_over(&self, stored: Option<&RangeAllocationStatus>) -> bool {
        let Some(stored) = stored else { return true };
        let statuses = |s: &RangeAllocationStatus| -> Vec<(String, String)> {
            s.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone()))
                .collect()
        };
        statuses(self) != statuses(stored)
            || self.last_repair != stored.last_repair
            || self.last_recovery != stored.last_recovery
    }
}

/// A rebuild of the object from a replica's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Recovery {
    /// When (RFC 3339).
    pub time: String,
    /// What had happened to the object.
    pub reason: String,
}

/// One repair pass over one range, written in the same compare-and-swap as its fixes. Each
/// list keeps at most [`RepairSummary::MAX_LISTED`] entries (`value namespace/name`); the
/// counts are complete.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairSummary {
    /// When the pass ran (RFC 3339).
    pub time: String,
    /// Claims that lapsed before their Service held the value (leaks), since the last pass.
    #[serde(default)]
    pub leaked: RepairFinding,
    /// Values held by more than one Service: every holder after the first.
    #[serde(default)]
    pub duplicates: RepairFinding,
    /// Values outside this range held by Services of its kind and family (when reported).
    #[serde(default)]
    pub out_of_range: RepairFinding,
}

/// How many values of one kind a repair pass found, and the first few of them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairFinding {
    /// How many.
    pub count: u64,
    /// The first few, as `value` or `value namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

impl RepairSummary {
    /// Entries listed per finding; an object stays small however bad a range gets.
    pub const MAX_LISTED: usize = 10;

    /// Whether the pass found nothing to report or fix.
    pub fn is_clean(&self) -> bool {
        [&self.leaked, &self.duplicates, &self.out_of_range]
            .iter()
            .all(|f| f.count == 0)
    }
}

impl RepairFinding {
    /// A finding from all its entries.
    pub fn of<I: IntoIterator<Item = String>>(entries: I) -> Self {
        let mut f = RepairFinding::default();
        for e in entries {
            f.count += 1;
            if f.examples.len() < RepairSummary::MAX_LISTED {
                f.examples.push(e);
            }
        }
        f
    }
}

/// The CRD as installed, with its status subresource.
pub fn crd() -> CustomResourceDefinition {
    RangeAllocation::crd()
}

/// Installs (server-side apply, forced, field manager [`FIELD_MANAGER`]) the `RangeAllocation`
/// CRD and waits until it is Established. Idempotent; needs `get, create, patch` on
/// `customresourcedefinitions`.
pub async fn install_crds(client: Client) -> Result<(), AllocationError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    api.patch(
        CRD_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd()),
    )
    .await?;
    let established = await_condition(api, CRD_NAME, conditions::is_crd_established());
    match tokio::time::timeout(ESTABLISH_TIMEOUT, established).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(AllocationError::Config(format!("waiting for {CRD_NAME}: {e}"))),
        Err(_) => Err(AllocationError::CrdNotEstablished {
            name: CRD_NAME.to_owned(),
            after: ESTABLISH_TIMEOUT,
        }),
    }
}

/// What a `RangeAllocation` object stores, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<V: Ord> {
    /// The claims by value.
    pub claims: BTreeMap<V, Pending>,
    /// Next-fit positions by range.
    pub cursors: Cursors,
    /// The last repair report.
    pub last_repair: Option<RepairSummary>,
    /// Entries that could not be read (value or owner), as `key: why`; a corrupted object is
    /// reported, never trusted.
    pub unreadable: Vec<String>,
}

/// The object's spec and status for `state`.
pub fn encode<P: Pool>(state: &RangeState<P>) -> (RangeAllocationSpec, RangeAllocationStatus) {
    let mut pending = String::new();
    for (v, p) in state.stored_claims() {
        use std::fmt::Write as _;
        let _ = writeln!(pending, "{v} {} {}", p.owner, p.expires);
    }
    let cursors = state
        .pool()
        .cursors()
        .into_iter()
        .map(|(range, (s, d))| {
            (
                range,
                Cursor {
                    static_band: s,
                    dynamic: d,
                },
            )
        })
        .collect();
    let spec = RangeAllocationSpec {
        range: state.pool().range_string(),
        pending,
        cursors,
    };
    (spec, status_of(state))
}

/// The counters of `state`.
pub fn status_of<P: Pool>(state: &RangeState<P>) -> RangeAllocationStatus {
    let pool = state.pool();
    let stat = pool.band_stats(Band::Static);
    let dynamic = pool.band_stats(Band::Dynamic);
    RangeAllocationStatus {
        kind: match P::KIND {
            RangeKind::ClusterIp => "ClusterIP".to_owned(),
            RangeKind::NodePort => "NodePort".to_owned(),
        },
        size: stat.size + dynamic.size,
        used: stat.used + dynamic.used,
        free: stat.free + dynamic.free,
        static_used: stat.used,
        static_free: stat.free,
        dynamic_used: dynamic.used,
        dynamic_free: dynamic.free,
        pending: state.pending().len() as u64,
        last_recovery: None,
        last_repair: state.last_repair().cloned(),
        conditions: Vec::new(),
    }
}

/// Reads what `obj` stores. Entries that do not parse are listed in
/// [`Stored::unreadable`] and left out; an expiry that does not parse counts as expired.
pub fn decode<V: Ord + std::str::FromStr>(obj: &RangeAllocation) -> Stored<V> {
    let mut claims = BTreeMap::new();
    let mut unreadable = Vec::new();
    for line in obj.spec.pending.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(value), Some(service), Some(expires), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            unreadable.push(format!("{line:?}: not `<value> <namespace>/<name> <expires>`"));
            continue;
        };
        let Ok(v) = value.parse::<V>() else {
            unreadable.push(format!("{value}: not a value of this range"));
            continue;
        };
        let Ok(expires) = expires.parse::<Timestamp>() else {
            unreadable.push(format!("{value}: expiry {expires:?} is not a time"));
            continue;
        };
        let owner: ServiceRef = service.parse().unwrap_or_default();
        if owner.namespace.is_empty() || owner.name.is_empty() && owner.is_reservation() {
            unreadable.push(format!("{value}: owner {service:?} is not namespace/name"));
            continue;
        }
        claims.insert(v, Pending { owner, expires });
    }
    let cursors = obj
        .spec
        .cursors
        .iter()
        .map(|(range, c)| (range.clone(), (c.static_band, c.dynamic)))
        .collect();
    Stored {
        claims,
        cursors,
        last_repair: obj.status.as_ref().and_then(|s| s.last_repair.clone()),
        unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IpPool;
    use crate::range_state::Holder;
    use portico_allocators::{PortAllocator, PortRange};

    #[test]
    fn crd_is_cluster_scoped_with_a_status_subresource() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, "portico.dev");
        assert_eq!(crd.spec.names.kind, "RangeAllocation");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        let cols: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Range",
                "Used",
                "Free",
                "Dynamic Free",
                "Static Free",
                "Pending",
                "Exhausted",
                "Age"
            ]
        );
        let schema = serde_json::to_value(v.schema.as_ref().expect("schema")).expect("json");
        let props = &schema["openAPIV3Schema"]["properties"];
        assert_eq!(props["spec"]["required"], serde_json::json!(["range"]));
        assert!(props["status"]["properties"]["dynamicFree"].is_object());
        assert!(props["status"]["properties"]["conditions"].is_object());
    }

    #[test]
    fn exhausted_follows_the_free_count_and_keeps_its_transition_time() {
        let t0: Timestamp = "2026-12-05T01:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-12-05T01:05:00Z".parse().unwrap();
        let counters = |free| RangeAllocationStatus {
            size: 4,
            used: 4 - free,
            free,
            ..Default::default()
        };
        let free = counters(2).with_conditions(None, t0);
        let c = free.condition(EXHAUSTED).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ValuesFree"));
        assert_eq!(c.message, "2 of 4 values free");
        assert!(free.is_urgent_over(None));
        // Counters alone change: same transition time, and it can wait.
        let fewer = counters(1).with_conditions(Some(&free), t1);
        assert_eq!(
            fewer.condition(EXHAUSTED).unwrap().last_transition_time,
            t0.to_string()
        );
        assert!(!fewer.is_urgent_over(Some(&free)));
        // Full: flips, with a new transition time, at once.
        let full = counters(0).with_conditions(Some(&fewer), t1);
        let c = full.condition(EXHAUSTED).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "RangeFull"));
        assert_eq!(c.last_transition_time, t1.to_string());
        assert!(full.is_urgent_over(Some(&fewer)));
        // A new repair report cannot wait either.
        let mut repaired = fewer.clone();
        repaired.last_repair = Some(RepairSummary::default());
        assert!(repaired.is_urgent_over(Some(&fewer)));
    }

    #[test]
    fn claims_and_cursors_round_trip_through_the_object() {
        let mut state = RangeState::new(IpPool::single("10.96.0.0/24".parse().expect("range")));
        let owner = ServiceRef::new("default", "web");
        let expires = Timestamp::from_second(1_800_000_000).expect("ts");
        state.claim_next(&owner, expires).expect("free");
        let now = Timestamp::from_second(1_700_000_000).expect("ts");
        state.hold(
            "10.96.0.3".parse().expect("ip"),
            Holder::Service(ServiceRef::new("default", "db")),
            now,
        );
        let (spec, status) = encode(&state);
        assert_eq!(spec.range, "10.96.0.0/24");
        assert_eq!(status.used, 2);
        assert_eq!((status.static_used, status.dynamic_used), (1, 1));
        assert_eq!(status.free, 252);
        assert_eq!(status.pending, 1);
        assert_eq!(spec.pending, "10.96.0.17 default/web 2027-01-15T08:00:00Z\n");
        assert_eq!(
            spec.cursors["10.96.0.0/24"],
            Cursor {
                static_band: 0,
                dynamic: 17
            }
        );

        let obj = RangeAllocation::new("clusterip-ipv4", spec.clone());
        let back: Stored<std::net::IpAddr> = decode(&obj);
        assert_eq!(&back.claims, state.pending());
        assert_eq!(back.cursors, state.pool().cursors());
        assert!(back.unreadable.is_empty());
    }

    #[test]
    fn unreadable_entries_are_reported_not_trusted() {
        let spec = RangeAllocationSpec {
            range: "30000-32767".into(),
            pending: [
                "30001 ns/web 2027-01-15T08:00:00Z",
                "",
                "web ns/web 2027-01-15T08:00:00Z",
                "30002 ns/web soon",
                "30003 web 2027-01-15T08:00:00Z",
                "30004 ns/web",
                "30005 ns/web 2027-01-15T08:00:00Z extra",
            ]
            .join("\n"),
            ..Default::default()
        };
        let stored: Stored<i32> = decode(&RangeAllocation::new("nodeports", spec));
        assert_eq!(stored.claims.keys().copied().collect::<Vec<_>>(), vec![30001]);
        assert_eq!(stored.unreadable.len(), 5, "{:?}", stored.unreadable);
    }

    #[test]
    fn empty_object_decodes_to_nothing_stored() {
        let spec = RangeAllocationSpec {
            range: "30000-32767".into(),
            ..Default::default()
        };
        let stored: Stored<i32> = decode(&RangeAllocation::new("nodeports", spec));
        assert!(stored.claims.is_empty() && stored.cursors.is_empty());
        let state = RangeState::new(PortAllocator::new(PortRange::default()));
        let (_, status) = encode(&state);
        assert_eq!(
            (status.size, status.static_free, status.dynamic_free),
            (2768, 86, 2682)
        );
    }
}
