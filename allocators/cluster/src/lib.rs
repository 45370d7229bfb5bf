//! ClusterIP and NodePort allocation on the cluster's own truth.
//!
//! Portico picks a Service's `clusterIP(s)`, `nodePort`s and `healthCheckNodePort` in a mutating
//! admission and hands them to the apiserver as a JSON patch; the apiserver then allocates
//! exactly those values in its own allocator. This crate decides which values, so that the
//! apiserver never has reason to refuse them:
//!
//! * **What is used is what the cluster holds.** [`cluster_watch`] watches Services in every
//!   namespace and, on 1.33+, `IPAddress` objects (whatever their manager), and feeds
//!   [`holdings`] into each range. A value is free again the moment the watch reports its
//!   Service (or `IPAddress`) gone; a value the apiserver handed out on its own (excluded
//!   namespaces, `failurePolicy: Ignore`, other webhooks) is never handed out again once the
//!   watch has it.
//! * **Pending claims are the only shared state.** A value handed out in an admission is
//!   claimed in the range's `RangeAllocation` object ([`mod@crd`]) with compare-and-swap
//!   ([`claim_store`]), until the Service carrying it shows up in the watch or its TTL (30 s by
//!   default) passes. Claims are bounded in number. A replica claims next-free values in
//!   batches (reservations, see [`RangeState::with_reservations`]) and hands them out without a
//!   write.
//! * **Ranges from the cluster.** On 1.33+ the clusterIP ranges are the apiserver's ready
//!   ServiceCIDRs ([`service_cidrs`]), followed at run time; `--service-cluster-ip-range` only
//!   narrows where new values come from.
//!
//! # Layers
//!
//! * [`plan`]: pure decisions. [`plan_service`] turns a CREATE/UPDATE/DELETE of a Service into
//!   a [`ServicePlan`] (which values to take, requested or next-free, which to write back),
//!   following upstream's `initIPFamilyFields`, `initNodePorts`, `updateNodePorts`,
//!   `patchAllocatedValues` and the health-check rules; executing a plan against a
//!   [`RangeState`] is pure too.
//! * [`range_state`] and [`ip_pool`]: one range's holdings, claims and bitmap (pure).
//! * [`claim_store`]: where a range's state lives: the [`ClaimStore`] seam, with the shared
//!   [`ObjectStore`] and the in-memory [`MemoryStore`] the table tests use.
//! * [`ServiceAllocator`]: the per-process facade: [`ServiceAllocator::decide`] answers an
//!   admission, [`ServiceAllocator::start`] opens the stores and the watches.
//! * [`repair`]: the periodic report of what the holdings show (duplicates, values outside
//!   every range, lapsed claims), with upstream's Events.
//! * [`allocation_metrics`]: Prometheus gauges and counters, registered on a caller-supplied registry.
//!
//! # Values a Service gives up
//!
//! They are not freed in the admission (the request may still fail, the Service may carry
//! finalizers): the watch frees them when it sees the Service without them, as upstream frees
//! them after the write ("better leak briefly than double-allocate"). DELETE needs nothing.
//!
//! # dryRun
//!
//! A dry-run admission re-reads the claims, runs the same decision on a copy of the state and
//! writes nothing: it answers what a real request would have at that moment. The webhook must be
//! registered with `sideEffects: NoneOnDryRun`.
//!
//! # Start
//!
//! [`ServiceAllocator::start`] reads the claims and waits for the watches' first full lists
//! before answering any admission (MetalLB's "assigned first" order), so nothing in use is ever
//! handed out.

#![warn(missing_docs)]

pub mod allocation_metrics;
pub mod claim_store;
pub mod cluster_watch;
pub mod crd;
pub mod holdings;
pub mod ip_pool;
pub mod plan;
pub mod range_state;
pub mod repair;
pub mod service_allocator;
pub mod service_cidrs;

use std::time::Duration;

use portico_allocators::{IpRange, PortRange, RangeError};

pub use allocation_metrics::AllocationMetrics;
pub use claim_store::{ClaimStore, MemoryStore, Mode, ObjectStore, Range, StoreFailure};
pub use crd::{
    CRD_NAME, FIELD_MANAGER, RangeAllocation, RangeAllocationSpec, RangeAllocationStatus, Recovery,
    RepairFinding, RepairSummary, crd, install_crds,
};
pub use ip_pool::{IpPool, OutsideError};
pub use plan::{
    Assignment, IpClaim, IpFamily, Operation, PortClaim, ServicePlan, Value, Want, apply_patch, plan_service,
};
pub use range_state::{ClaimsSnapshot, Holder, Pending, Pool, RangeKind, RangeState, ServiceRef};
pub use repair::{Repair, RepairConfig, RepairReport};
pub use service_allocator::{Decision, Denial, ServiceAllocator};
pub use service_cidrs::Narrowing;

/// Which Services the watches look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceScope {
    /// Only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Only Services matching this label selector.
    pub label_selector: Option<String>,
}

/// What a [`ServiceAllocator`] manages and how.
#[derive(Debug, Clone)]
pub struct AllocationConfig {
    /// `--service-cluster-ip-range`: one or two CIDRs of different families, primary first.
    /// Before 1.33 these are the ranges; on 1.33+ (the apiserver serves ServiceCIDRs) they
    /// narrow where new values come from, and may be empty.
    pub service_cidrs: Vec<IpRange>,
    /// With a narrowing, also refuse explicit clusterIPs outside it that the apiserver would
    /// accept (`--refuse-outside-service-cluster-ip-range`).
    pub refuse_outside_range: bool,
    /// The node-port range; must be the apiserver's `--service-node-port-range` or inside it.
    pub node_ports: PortRange,
    /// Prefix of the `RangeAllocation` object names: objects are `<prefix>clusterip-ipv4`,
    /// `<prefix>clusterip-ipv6` and `<prefix>nodeports`. Empty in production.
    pub object_prefix: String,
    /// How long a value handed out in an admission stays claimed for a Service that has not
    /// shown up yet (`--allocation-claim-ttl`).
    pub claim_ttl: Duration,
    /// Most claims one range holds at once; beyond, admissions get a 500 to retry.
    pub max_claims: usize,
    /// Most next-free values a replica reserves per shared write and hands out without one (1:
    /// a write per value). A replica reserves at most one value per 32 free ones.
    pub reservation_batch: usize,
    /// Attempts of one read-modify-write before giving up under contention.
    pub max_attempts: u32,
    /// The Services the watches look at. Production: all.
    pub scope: ServiceScope,
}

impl AllocationConfig {
    /// A configuration with the defaults: no prefix, 30 s claims, at most 10,000 claims per
    /// range, reservations of up to 64, 20 attempts, all Services, ranges discovered.
    pub fn new(service_cidrs: Vec<IpRange>, node_ports: PortRange) -> Self {
        AllocationConfig {
            service_cidrs,
            refuse_outside_range: false,
            node_ports,
            object_prefix: String::new(),
            claim_ttl: Duration::from_secs(30),
            max_claims: 10_000,
            reservation_batch: 64,
            max_attempts: 20,
            scope: ServiceScope::default(),
        }
    }

    /// Parses `--service-cluster-ip-range`-style input (`""`, `"10.96.0.0/16"` or
    /// `"10.96.0.0/16,fd00::/108"`) and a node-port range (`"30000-32767"`).
    pub fn parse(service_cidrs: &str, node_ports: &str) -> Result<Self, AllocationError> {
        let cidrs = service_cidrs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse::<IpRange>)
            .collect::<Result<Vec<_>, RangeError>>()
            .map_err(|e| AllocationError::Config(e.to_string()))?;
        let ports = node_ports
            .parse::<PortRange>()
            .map_err(|e| AllocationError::Config(e.to_string()))?;
        let config = AllocationConfig::new(cidrs, ports);
        config.validate()?;
        Ok(config)
    }

    /// Checks the CIDR list: at most two entries, of different families.
    pub fn validate(&self) -> Result<(), AllocationError> {
        match self.service_cidrs.as_slice() {
            [] | [_] => Ok(()),
            [a, b] if IpFamily::of_range(a) == IpFamily::of_range(b) => Err(AllocationError::Config(
                format!("service CIDRs {a} and {b} must be of different IP families"),
            )),
            [_, _] => Ok(()),
            _ => Err(AllocationError::Config(
                "at most two service CIDRs (one per IP family)".to_owned(),
            )),
        }
    }

    /// The configured families, primary first.
    pub fn families(&self) -> Vec<IpFamily> {
        self.service_cidrs.iter().map(IpFamily::of_range).collect()
    }

    /// The narrowing the configured ranges make of the cluster's.
    pub fn narrowing(&self) -> Narrowing {
        Narrowing {
            ranges: self.service_cidrs.clone(),
            strict: self.refuse_outside_range,
        }
    }

    /// Name of the `RangeAllocation` object of a ClusterIP family.
    pub fn ip_object_name(&self, family: IpFamily) -> String {
        let suffix = match family {
            IpFamily::V4 => "clusterip-ipv4",
            IpFamily::V6 => "clusterip-ipv6",
        };
        format!("{}{suffix}", self.object_prefix)
    }

    /// Name of the node-port `RangeAllocation` object.
    pub fn port_object_name(&self) -> String {
        format!("{}nodeports", self.object_prefix)
    }
}

/// Everything that can go wrong around allocation (never a refused request: that is a
/// [`Decision::Deny`]).
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    /// A request to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A range store could not complete a read-modify-write.
    #[error(transparent)]
    Store(#[from] StoreFailure),
    /// The configuration is unusable.
    #[error("invalid allocation configuration: {0}")]
    Config(String),
    /// The RangeAllocation resource is unknown to the apiserver.
    #[error(
        "the RangeAllocation CRD (rangeallocations.portico.dev) is not installed: install it with \
         `portico crds | kubectl apply -f -`, or start Portico once with --install-crds (the Helm \
         chart installs it unless installCRDs=false)"
    )]
    CrdMissing,
    /// The CRD did not become Established in time.
    #[error("CustomResourceDefinition {name} not established after {after:?}")]
    CrdNotEstablished {
        /// The CRD's name.
        name: String,
        /// How long we waited.
        after: Duration,
    },
    /// The metrics could not be registered.
    #[error("cannot register the allocation metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// An admission object could not be read as a Service.
    #[error("cannot decode the admission object as a Service: {0}")]
    Decode(#[from] serde_json::Error),
}
