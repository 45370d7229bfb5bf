//! ClusterIP and NodePort allocation for the mutating admission webhook.
//!
//! Portico picks a Service's `clusterIP(s)`, `nodePort`s and `healthCheckNodePort` itself, in a
//! mutating admission, and hands them to the apiserver as a JSON patch. The apiserver then
//! allocates exactly those values in its own allocator, which accepts them as long as Portico's
//! ranges lie **inside the apiserver's own** `--service-cluster-ip-range` /
//! `--service-node-port-range` (a sub-range is fine). Services that bypass the webhook (excluded
//! namespaces, `failurePolicy: Ignore` while it is down) still get addresses from the apiserver,
//! anywhere in its range: the repair loop adopts those it finds inside Portico's ranges.
//!
//! # Layers
//!
//! * [`plan`]: pure decisions. [`plan_service`] turns a CREATE/UPDATE/DELETE of a Service into
//!   a [`ServicePlan`] (which values to take, requested or next-free, which to write back, which
//!   the Service no longer holds), following upstream's `initIPFamilyFields`, `initNodePorts`,
//!   `updateNodePorts`, `patchAllocatedValues` and the health-check rules. Executing a plan
//!   against a [`RangeState`] is pure too, so the store can re-run it after a lost
//!   compare-and-swap. [`MemoryAllocator`] runs the whole decision in memory (tests, dry runs).
//! * [`mod@crd`]: the `RangeAllocation` custom resource (`portico.dev/v1alpha1`, cluster-scoped,
//!   one object per range) that persists each range's bitmap and pending claims.
//! * [`store`]: [`AllocationStore`], one per range: a single writer task per process that
//!   batches concurrent requests into one read-modify-write of the object, fenced by its
//!   `resourceVersion` (HTTP PUT with a precondition; 409 → re-read, re-run, retry). This is what
//!   keeps two webhook replicas from handing out the same value.
//! * [`ServiceAllocator`]: the per-process facade the webhook calls ([`ServiceAllocator::admit`])
//!   and `portico run` starts ([`ServiceAllocator::start`]).
//! * [`repair`]: the periodic reconciliation of the bitmaps with the Services that exist.
//! * [`metrics`]: Prometheus gauges and counters, registered on a caller-supplied registry.
//!
//! # Pending claims, releases and DELETE
//!
//! A value handed out in an admission is written to the object together with a *pending* entry
//! `value → {namespace/name, expires}` in the same compare-and-swap. The repair loop drops the
//! entry once the Service exists with that value, and frees the value if the entry expires first
//! (a later webhook or the apiserver refused the request, the client went away, or the request
//! was a dry run that somehow wrote). Values a Service stops holding (type change to ClusterIP or
//! ExternalName, a dropped secondary family, a deleted Service) are **not** released in the
//! admission, because the request may still fail, the Service may carry finalizers, and releasing
//! early would let two Services share a value. The repair loop releases them once no Service
//! references them ("better leak briefly than double-allocate"). An UPDATE or DELETE admission
//! proves the Service exists, so it drops the Service's pending claims on the values it holds:
//! with DELETE in the webhook's rules, a Service deleted before any repair pass saw it gets its
//! values back at the next pass; without, when its claims expire. DELETE is always allowed.
//!
//! # dryRun
//!
//! A dry-run admission re-reads the objects, runs the same decision on a copy of the state and
//! writes nothing: it answers exactly what a real request would have at that moment (unlike
//! upstream's dry run, which only checks the range). The webhook must be registered with
//! `sideEffects: NoneOnDryRun`.
//!
//! # Restart
//!
//! [`ServiceAllocator::start`] restores each range from its object (creating it when absent),
//! then marks every existing Service's values found in range before answering any admission
//! (MetalLB's "assigned first" order), so nothing in use is ever handed out again.

pub mod crd;
pub mod metrics;
pub mod plan;
pub mod pool;
pub mod repair;
pub mod service;
pub mod store;

mod memory;
#[cfg(test)]
mod tests;

use std::time::Duration;

use portico_allocators::{IpRange, PortRange, RangeError};

pub use crd::{
    CRD_NAME, FIELD_MANAGER, PendingAllocation, RangeAllocation, RangeAllocationSpec, RangeAllocationStatus,
    RepairFinding, RepairSummary, crd, install_crds,
};
pub use memory::{MemoryAllocator, MemoryDecision};
pub use metrics::AllocationMetrics;
pub use plan::{
    Assignment, IpClaim, IpFamily, Operation, PortClaim, ServicePlan, Value, Want, apply_patch, plan_service,
};
pub use pool::{Pending, Pool, RangeKind, RangeState, ServiceRef};
pub use repair::{Repair, RepairConfig, RepairReport};
pub use service::{Decision, Denial, ServiceAllocator, ServiceRequest, service_request};
pub use store::{AllocationStore, StoreFailure};

/// Which Services the rebuild and the repair loop look at.
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
    /// One or two service CIDRs of different families, primary first (as
    /// `--service-cluster-ip-range`). Each must lie inside the apiserver's range of its family.
    pub service_cidrs: Vec<IpRange>,
    /// The node-port range; must lie inside the apiserver's `--service-node-port-range`.
    pub node_ports: PortRange,
    /// Prefix of the `RangeAllocation` object names: objects are `<prefix>clusterip-ipv4`,
    /// `<prefix>clusterip-ipv6` and `<prefix>nodeports`. Empty in production.
    pub object_prefix: String,
    /// How long a value handed out in an admission stays reserved for a Service that has not
    /// appeared yet. Must exceed the apiserver's request timeout (60 s by default).
    pub pending_grace: Duration,
    /// Attempts of one read-modify-write before giving up under contention.
    pub max_attempts: u32,
    /// The Services considered by the start-up rebuild and the repair loop. Production: all.
    pub scope: ServiceScope,
}

impl AllocationConfig {
    /// A configuration with the defaults: no prefix, 3 minutes of grace, 20 attempts, all
    /// Services.
    pub fn new(service_cidrs: Vec<IpRange>, node_ports: PortRange) -> Self {
        AllocationConfig {
            service_cidrs,
            node_ports,
            object_prefix: String::new(),
            pending_grace: Duration::from_secs(180),
            max_attempts: 20,
            scope: ServiceScope::default(),
        }
    }

    /// Parses `--service-cluster-ip-range`-style input (`"10.96.0.0/16"` or
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

    /// Checks the CIDR list: one or two entries, of different families.
    pub fn validate(&self) -> Result<(), AllocationError> {
        match self.service_cidrs.as_slice() {
            [] => Err(AllocationError::Config(
                "at least one service CIDR is required".to_owned(),
            )),
            [_] => Ok(()),
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
