//! The `RangeAllocation` custom resource: one cluster-scoped object per range holding its
//! allocation bitmap and pending claims, the unit of compare-and-swap between webhook replicas.
//!
//! ```yaml
//! apiVersion: portico.dev/v1alpha1
//! kind: RangeAllocation
//! metadata:
//!   name: clusterip-ipv4          # clusterip-ipv6, nodeports
//!   resourceVersion: "4711"       # the fence: every write is a PUT with this precondition
//! spec:
//!   range: 10.96.0.0/16           # or 30000-32767
//!   data: OjAAAAEAAAAAAAEAEAAAAA==  # base64 of the portable roaring bitmap of used offsets
//!   pending:                      # handed out, Service not seen yet
//!     10.96.14.3: {service: default/web, expires: "2026-11-21T22:03:00Z"}
//! status:                         # counters for humans, written in the same PUT
//!   kind: ClusterIP
//!   size: 65534
//!   used: 12
//!   free: 65522
//!   staticUsed: 1
//!   staticFree: 255
//!   dynamicUsed: 11
//!   dynamicFree: 65267
//!   pending: 1
//! ```
//!
//! The CRD has **no status subresource**, on purpose: the counters are part of the same write as
//! the bitmap, so they never lag it and a single PUT stays the only write.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResource, CustomResourceExt};
use portico_allocators::{Band, Snapshot};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AllocationError;
use super::pool::{Pending, Pool, RangeKind, RangeState, ServiceRef};

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
    doc = "Allocation state of one Portico ClusterIP or NodePort range (bitmap plus pending claims).",
    printcolumn(name = "Range", type_ = "string", json_path = ".spec.range"),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.used"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.free"),
    printcolumn(name = "Dynamic Free", type_ = "integer", json_path = ".status.dynamicFree"),
    printcolumn(name = "Static Free", type_ = "integer", json_path = ".status.staticFree"),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RangeAllocationSpec {
    /// The range: a CIDR (`10.96.0.0/16`) or a port range (`30000-32767`).
    pub range: String,
    /// Base64 of the used offsets as a portable roaring bitmap (offset 0 = first allocatable
    /// value). Empty when nothing is used.
    #[serde(default)]
    pub data: String,
    /// Values handed out in an admission whose Service has not been seen yet, by value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending: BTreeMap<String, PendingAllocation>,
}

/// A value handed out and not yet seen on its Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingAllocation {
    /// `namespace/name` of the Service (name empty for `generateName`).
    pub service: String,
    /// RFC 3339 time after which the repair loop frees the value if the Service still does not
    /// hold it.
    pub expires: String,
}

/// Counters derived from the spec, for `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeAllocationStatus {
    /// `ClusterIP` or `NodePort`.
    pub kind: String,
    /// Allocatable values.
    pub size: u64,
    /// Held values (including pending ones).
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
    /// What the last repair pass over this range found and did (absent until one has run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<RepairSummary>,
}

/// One repair pass over one range, written in the same compare-and-swap as its fixes. Each
/// list keeps at most [`RepairSummary::MAX_LISTED`] entries (`value namespace/name`); the
/// counts are complete.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairSummary {
    /// When the pass ran (RFC 3339).
    pub time: String,
    /// Pending claims that expired before their Service held the value: freed (leaks).
    #[serde(default)]
    pub leaked: RepairFinding,
    /// Values no Service holds any more (deleted Services): freed.
    #[serde(default)]
    pub released: RepairFinding,
    /// Values a Service holds that the bitmap did not know: marked.
    #[serde(default)]
    pub unknown: RepairFinding,
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
        [
            &self.leaked,
            &self.released,
            &self.unknown,
            &self.duplicates,
            &self.out_of_range,
        ]
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

/// The CRD as installed: the derived definition without the status subresource (see the
/// module docs).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = RangeAllocation::crd();
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    crd
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

/// Why a stored object could not be turned into a [`RangeState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The object is for another range than the one configured.
    #[error("holds range {stored}, this allocator is configured for {configured}")]
    RangeMismatch {
        /// The range in the object.
        stored: String,
        /// The configured range.
        configured: String,
    },
    /// `spec.data` is unusable.
    #[error("spec.data: {0}")]
    Data(String),
}

/// The object's spec and status for `state`.
pub fn encode<P: Pool>(state: &RangeState<P>) -> (RangeAllocationSpec, RangeAllocationStatus) {
    let pool = state.pool();
    let snapshot = pool.snapshot();
    let pending = state
        .pending()
        .iter()
        .map(|(v, p)| {
            (
                v.to_string(),
                PendingAllocation {
                    service: p.owner.to_string(),
                    expires: p.expires.to_string(),
                },
            )
        })
        .collect();
    let spec = RangeAllocationSpec {
        range: snapshot.range,
        data: STANDARD.encode(&snapshot.data),
        pending,
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
        size: pool.size(),
        used: pool.used(),
        free: pool.size().saturating_sub(pool.used()),
        static_used: stat.used,
        static_free: stat.free,
        dynamic_used: dynamic.used,
        dynamic_free: dynamic.free,
        pending: state.pending().len() as u64,
        last_repair: state.last_repair().cloned(),
    }
}

/// Restores the state stored in `spec` into an empty copy of `template`'s range. Pending entries
/// with an unparseable value are dropped (the value stays held until repair decides); an
/// unparseable expiry counts as expired.
pub fn decode<P: Pool>(template: &P, spec: &RangeAllocationSpec) -> Result<RangeState<P>, DecodeError> {
    let configured = template.range_string();
    let data = STANDARD
        .decode(spec.data.trim())
        .map_err(|e| DecodeError::Data(format!("not base64: {e}")))?;
    let mut pool = template.empty_like();
    // An object created by hand (or by an older writer) may leave `data` empty: nothing used.
    let data = if data.is_empty() {
        pool.snapshot().data
    } else {
        data
    };
    let snapshot = Snapshot {
        range: spec.range.clone(),
        data,
    };
    pool.restore(&snapshot).map_err(|e| match e {
        portico_allocators::SnapshotError::MismatchedNetwork
        | portico_allocators::SnapshotError::MismatchedPortRange => DecodeError::RangeMismatch {
            stored: spec.range.clone(),
            configured: configured.clone(),
        },
        other => DecodeError::Data(other.to_string()),
    })?;
    let mut pending = BTreeMap::new();
    for (value, entry) in &spec.pending {
        let Ok(v) = value.parse::<P::Value>() else {
            tracing::warn!(range = %configured, value, "dropping a pending entry with an unparseable value");
            continue;
        };
        let expires = entry
            .expires
            .parse::<Timestamp>()
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let owner: ServiceRef = entry.service.parse().unwrap_or_default();
        pending.insert(v, Pending { owner, expires });
    }
    Ok(RangeState::from_parts(pool, pending))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_allocators::{IpAllocator, PortAllocator, PortRange};

    #[test]
    fn crd_is_cluster_scoped_without_status_subresource() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, "portico.dev");
        assert_eq!(crd.spec.names.kind, "RangeAllocation");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(v.subresources.is_none());
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
                "Age"
            ]
        );
        let schema = serde_json::to_value(v.schema.as_ref().expect("schema")).expect("json");
        let props = &schema["openAPIV3Schema"]["properties"];
        assert_eq!(props["spec"]["required"], serde_json::json!(["range"]));
        assert!(props["status"]["properties"]["dynamicFree"].is_object());
    }

    #[test]
    fn state_round_trips_through_the_object() {
        let mut state = RangeState::new(IpAllocator::new("10.96.0.0/24".parse().expect("range")));
        let owner = ServiceRef::new("default", "web");
        let expires = Timestamp::from_second(1_800_000_000).expect("ts");
        state.claim_next(&owner, expires).expect("free");
        state.mark("10.96.0.3".parse().expect("ip")).expect("free");
        let (spec, status) = encode(&state);
        assert_eq!(spec.range, "10.96.0.0/24");
        assert_eq!(status.used, 2);
        assert_eq!((status.static_used, status.dynamic_used), (1, 1));
        assert_eq!(status.free, 252);
        assert_eq!(status.pending, 1);
        let (value, entry) = spec.pending.iter().next().expect("one pending");
        assert_eq!(value, "10.96.0.17");
        assert_eq!(entry.service, "default/web");
        assert_eq!(entry.expires, "2027-01-15T08:00:00Z");

        let back = decode(state.pool(), &spec).expect("decodes");
        assert!(back.pool().same_state(state.pool()));
        assert_eq!(back.pending(), state.pending());

        let other = IpAllocator::new("10.97.0.0/24".parse().expect("range"));
        assert_eq!(
            decode(&other, &spec).unwrap_err().to_string(),
            "holds range 10.96.0.0/24, this allocator is configured for 10.97.0.0/24"
        );
        let mut bad = spec.clone();
        bad.data = "***".into();
        assert!(matches!(decode(state.pool(), &bad), Err(DecodeError::Data(_))));
    }

    #[test]
    fn empty_object_decodes_to_an_empty_state() {
        let ports = PortAllocator::new(PortRange::default());
        let spec = RangeAllocationSpec {
            range: "30000-32767".into(),
            ..Default::default()
        };
        let state = decode(&ports, &spec).expect("decodes");
        assert_eq!(state.pool().used(), 0);
        let (again, status) = encode(&state);
        assert_eq!(again.range, spec.range);
        assert_eq!(
            (status.size, status.static_free, status.dynamic_free),
            (2768, 86, 2682)
        );
    }
}
