//! Prometheus metrics of the allocation ranges and the repair loop.
//!
//! Names follow upstream's allocator and repair metrics with `portico_` in place of
//! `kube_apiserver_` / `apiserver_` (so dashboards port over, and nothing collides when the
//! apiserver's metrics are scraped into the same Prometheus):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `portico_clusterip_allocator_allocated_ips` / `_available_ips` | gauge | `cidr` |
//! | `portico_clusterip_allocator_allocation_total` / `_allocation_errors_total` | counter | `cidr`, `scope` (`static` = requested, `dynamic` = next free) |
//! | `portico_nodeport_allocator_allocated_ports` / `_available_ports` | gauge | `range` (upstream has none) |
//! | `portico_nodeport_allocator_allocation_total` / `_allocation_errors_total` | counter | `range`, `scope` |
//! | `portico_clusterip_repair_ip_errors_total` | counter | `type`: `leak`, `repair`, `outOfRange`, `duplicate`, `invalid` |
//! | `portico_nodeport_repair_port_errors_total` | counter | `type`: `leak`, `repair`, `outOfRange`, `duplicate` |
//! | `portico_clusterip_repair_reconcile_errors_total`, `portico_nodeport_repair_reconcile_errors_total` | counter | – |
//!
//! Portico's own additions:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `portico_allocator_items` | gauge | `kind` (`clusterip`/`nodeport`), `range`, `band` (`static`/`dynamic`), `state` (`used`/`free`) |
//! | `portico_allocator_pending` | gauge | `kind`, `range` |
//! | `portico_allocator_write_conflicts_total` | counter | `kind`, `range` (lost compare-and-swaps; `range` is the object's name) |
//! | `portico_allocator_writes_total` | counter | `kind`, `object` (successful writes of a RangeAllocation's claims) |
//! | `portico_allocator_status_writes_total` | counter | `kind`, `object` (successful writes of its status subresource) |
//! | `portico_allocator_state_recoveries_total` | counter | `kind`, `object`, `reason` (`deleted`/`corrupt`: the RangeAllocation was rebuilt from a replica's state) |
//!
//! Repair type `leak` counts claims that lapsed (an admission whose Service never appeared);
//! `duplicate` values held by two Services; `outOfRange` values outside every range.
//! Dry runs are never counted.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use portico_allocators::Band;

use super::range_state::{Pool, RangeKind, RangeState};

/// The allocation metrics, registered once per registry.
#[derive(Debug, Clone)]
pub struct AllocationMetrics {
    ip_allocated: IntGaugeVec,
    ip_available: IntGaugeVec,
    ip_allocations: IntCounterVec,
    ip_errors: IntCounterVec,
    port_allocated: IntGaugeVec,
    port_available: IntGaugeVec,
    port_allocations: IntCounterVec,
    port_errors: IntCounterVec,
    items: IntGaugeVec,
    pending: IntGaugeVec,
    recoveries: IntCounterVec,
    writes: IntCounterVec,
    status_writes: IntCounterVec,
    conflicts: IntCounterVec,
    ip_repair: IntCounterVec,
    port_repair: IntCounterVec,
    ip_reconcile_errors: IntCounter,
    port_reconcile_errors: IntCounter,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl AllocationMetrics {
    /// Registers the metrics on `registry` (fails if they are already registered there).
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(AllocationMetrics {
            ip_allocated: gauge(
                registry,
                "portico_clusterip_allocator_allocated_ips",
                "ClusterIPs held, per service CIDR",
                &["cidr"],
            )?,
            ip_available: gauge(
                registry,
                "portico_clusterip_allocator_available_ips",
                "ClusterIPs free, per service CIDR",
                &["cidr"],
            )?,
            ip_allocations: counter(
                registry,
                "portico_clusterip_allocator_allocation_total",
                "ClusterIPs handed out in admissions",
                &["cidr", "scope"],
            )?,
            ip_errors: counter(
                registry,
                "portico_clusterip_allocator_allocation_errors_total",
                "ClusterIP allocations refused",
                &["cidr", "scope"],
            )?,
            port_allocated: gauge(
                registry,
                "portico_nodeport_allocator_allocated_ports",
                "NodePorts held",
                &["range"],
            )?,
            port_available: gauge(
                registry,
                "portico_nodeport_allocator_available_ports",
                "NodePorts free",
                &["range"],
            )?,
            port_allocations: counter(
                registry,
                "portico_nodeport_allocator_allocation_total",
                "NodePorts handed out in admissions",
                &["range", "scope"],
            )?,
            port_errors: counter(
                registry,
                "portico_nodeport_allocator_allocation_errors_total",
                "NodePort allocations refused",
                &["range", "scope"],
            )?,
            items: gauge(
                registry,
                "portico_allocator_items",
                "Values per range, band (static/dynamic) and state (used/free)",
                &["kind", "range", "band", "state"],
            )?,
            pending: gauge(
                registry,
                "portico_allocator_pending",
                "Claims: values handed out whose Service has not been seen yet, and replicas' reservations",
                &["kind", "range"],
            )?,
            recoveries: counter(
                registry,
                "portico_allocator_state_recoveries_total",
                "RangeAllocation objects rebuilt from a replica's state after being deleted or corrupted",
                &["kind", "object", "reason"],
            )?,
            writes: counter(
                registry,
                "portico_allocator_writes_total",
                "Writes of a RangeAllocation object that succeeded",
                &["kind", "object"],
            )?,
            status_writes: counter(
                registry,
                "portico_allocator_status_writes_total",
                "Writes of a RangeAllocation's status subresource (counters and conditions) that succeeded",
                &["kind", "object"],
            )?,
            conflicts: counter(
                registry,
                "portico_allocator_write_conflicts_total",
                "Writes of a RangeAllocation lost to a concurrent writer (409) and retried",
                &["kind", "range"],
            )?,
            ip_repair: counter(
                registry,
                "portico_clusterip_repair_ip_errors_total",
                "ClusterIP problems found by the repair loop",
                &["type"],
            )?,
            port_repair: counter(
                registry,
                "portico_nodeport_repair_port_errors_total",
                "NodePort problems found by the repair loop",
                &["type"],
            )?,
            ip_reconcile_errors: plain_counter(
                registry,
                "portico_clusterip_repair_reconcile_errors_total",
                "Failed ClusterIP repair passes",
            )?,
            port_reconcile_errors: plain_counter(
                registry,
                "portico_nodeport_repair_reconcile_errors_total",
                "Failed NodePort repair passes",
            )?,
        })
    }

    /// Sets the gauges of a range from its committed state.
    pub fn observe<P: Pool>(&self, state: &RangeState<P>) {
        let pool = state.pool();
        let range = pool.range_string();
        let kind = P::KIND.as_str();
        let (st, dy) = (pool.band_stats(Band::Static), pool.band_stats(Band::Dynamic));
        let used = i64::try_from(st.used + dy.used).unwrap_or(i64::MAX);
        let free = i64::try_from(st.free + dy.free).unwrap_or(i64::MAX);
        let (allocated, available) = match P::KIND {
            RangeKind::ClusterIp => (&self.ip_allocated, &self.ip_available),
            RangeKind::NodePort => (&self.port_allocated, &self.port_available),
        };
        allocated.with_label_values(&[range.as_str()]).set(used);
        available.with_label_values(&[range.as_str()]).set(free);
        for band in [Band::Static, Band::Dynamic] {
            let stats = pool.band_stats(band);
            for (state_label, n) in [("used", stats.used), ("free", stats.free)] {
                self.items
                    .with_label_values(&[kind, range.as_str(), band.as_str(), state_label])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        self.pending
            .with_label_values(&[kind, range.as_str()])
            .set(i64::try_from(state.pending().len()).unwrap_or(i64::MAX));
    }

    /// Counts one allocation attempt of an admission.
    pub fn allocation(&self, kind: RangeKind, range: &str, scope: &str, ok: bool) {
        let vec = match (kind, ok) {
            (RangeKind::ClusterIp, true) => &self.ip_allocations,
            (RangeKind::ClusterIp, false) => &self.ip_errors,
            (RangeKind::NodePort, true) => &self.port_allocations,
            (RangeKind::NodePort, false) => &self.port_errors,
        };
        vec.with_label_values(&[range, scope]).inc();
    }

    /// Counts a lost compare-and-swap.
    pub fn conflict(&self, kind: RangeKind, range: &str) {
        self.conflicts.with_label_values(&[kind.as_str(), range]).inc();
    }

    /// Counts a successful write of a RangeAllocation object.
    pub fn write(&self, kind: RangeKind, object: &str) {
        self.writes.with_label_values(&[kind.as_str(), object]).inc();
    }

    /// Counts a write of a RangeAllocation's status subresource.
    pub fn status_write(&self, kind: RangeKind, object: &str) {
        self.status_writes
            .with_label_values(&[kind.as_str(), object])
            .inc();
    }

    /// Counts a rebuild of a RangeAllocation object (`deleted` or `corrupt`).
    pub fn recovery(&self, kind: RangeKind, object: &str, reason: &str) {
        self.recoveries
            .with_label_values(&[kind.as_str(), object, reason])
            .inc();
    }

    /// Counts repair findings of one type (`leak`, `repair`, `outOfRange`, `duplicate`,
    /// `invalid`).
    pub fn repair_error(&self, kind: RangeKind, kind_of_error: &str, n: usize) {
        if n == 0 {
            return;
        }
        let vec = match kind {
            RangeKind::ClusterIp => &self.ip_repair,
            RangeKind::NodePort => &self.port_repair,
        };
        vec.with_label_values(&[kind_of_error]).inc_by(n as u64);
    }

    /// Counts a failed repair pass.
    pub fn reconcile_error(&self, kind: RangeKind) {
        match kind {
            RangeKind::ClusterIp => self.ip_reconcile_errors.inc(),
            RangeKind::NodePort => self.port_reconcile_errors.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IpPool;
    use crate::range_state::{Holder, ServiceRef};
    use portico_allocators::{PortAllocator, PortRange};

    /// The sample of `name` whose labels include all of `labels`, from the text exposition.
    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels_part, number) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| labels_part.contains(&format!("{k}=\"{v}\"")))
                .then(|| number.trim().parse().ok())?
        })
    }

    #[test]
    fn gauges_follow_the_state_per_band() {
        let registry = Registry::new();
        let m = AllocationMetrics::new(&registry).expect("registers");
        assert!(
            AllocationMetrics::new(&registry).is_err(),
            "twice on one registry"
        );
        let now = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        let holder = |n: &str| Holder::Service(ServiceRef::new("ns", n));
        let mut ips = RangeState::new(IpPool::single("10.0.0.0/24".parse().expect("cidr")));
        ips.hold("10.0.0.1".parse().expect("ip"), holder("a"), now);
        ips.hold("10.0.0.100".parse().expect("ip"), holder("b"), now);
        m.observe(&ips);
        let mut ports = RangeState::new(PortAllocator::new(PortRange::default()));
        ports.hold(30090, holder("c"), now);
        m.observe(&ports);
        m.allocation(RangeKind::ClusterIp, "10.0.0.0/24", "dynamic", true);
        m.repair_error(RangeKind::NodePort, "leak", 2);

        let v = |n: &str, l: &[(&str, &str)]| value(&registry, n, l);
        assert_eq!(
            v(
                "portico_clusterip_allocator_allocated_ips",
                &[("cidr", "10.0.0.0/24")]
            ),
            Some(2.0)
        );
        assert_eq!(
            v(
                "portico_clusterip_allocator_available_ips",
                &[("cidr", "10.0.0.0/24")]
            ),
            Some(252.0)
        );
        let band = |kind, range, band, state| {
            v(
                "portico_allocator_items",
                &[("kind", kind), ("range", range), ("band", band), ("state", state)],
            )
        };
        assert_eq!(band("clusterip", "10.0.0.0/24", "static", "used"), Some(1.0));
        assert_eq!(band("clusterip", "10.0.0.0/24", "static", "free"), Some(15.0));
        assert_eq!(band("clusterip", "10.0.0.0/24", "dynamic", "free"), Some(237.0));
        assert_eq!(band("nodeport", "30000-32767", "dynamic", "used"), Some(1.0));
        assert_eq!(band("nodeport", "30000-32767", "static", "free"), Some(86.0));
        assert_eq!(
            v(
                "portico_clusterip_allocator_allocation_total",
                &[("scope", "dynamic")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("portico_nodeport_repair_port_errors_total", &[("type", "leak")]),
            Some(2.0)
        );
    }
}
