//! The repair loop: a periodic report of what the holdings show, as upstream's repair
//! controllers report it.
//!
//! Values come back through the watches (see the crate docs), not through this loop: a pass
//! frees nothing and marks nothing. Per range it finds, purely ([`findings`]):
//! * values held by more than one Service (`ClusterIPAlreadyAllocated`,
//!   `PortAlreadyAllocated`): every holder after the first, by name;
//! * values held by a Service outside every range (`ClusterIPOutOfRange`, `PortOutOfRange`),
//!   when reporting them is on;
//! * claims that lapsed since the last pass (an admission whose Service never appeared; counted
//!   as `leak`, listed in the summary).
//!
//! The summary goes on the range's `RangeAllocation` status (`portico status` shows it), the
//! counts to `portico_*_repair_*_errors_total`, and Events (`events.k8s.io/v1`, reporting
//! controller `portico-allocation-repair`, actions `ClusterIPAllocation` / `PortAllocation`) to
//! the Services concerned, with upstream's reasons and messages. RBAC: `create` and `patch` on
//! `events.k8s.io/events`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use portico_allocators::PortAllocator;

use super::AllocationError;
use super::claim_store::Range;
use super::crd::{RepairFinding, RepairSummary};
use super::ip_pool::IpPool;
use super::plan::{IpFamily, Value};
use super::range_state::{Holder, Pool, RangeKind, RangeState, ServiceRef};
use super::service_allocator::ServiceAllocator;

/// Reporting controller of the repair loop's Events.
pub const EVENT_CONTROLLER: &str = "portico-allocation-repair";

/// How the repair loop reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairConfig {
    /// Publish Events on the Services concerned.
    pub events: bool,
    /// Report clusterIPs and nodePorts outside every range.
    pub report_out_of_range: bool,
    /// `reportingInstance` of the Events (e.g. the pod name).
    pub instance: Option<String>,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            events: true,
            report_out_of_range: true,
            instance: None,
        }
    }
}

/// What one pass found, over every range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Claims that lapsed since the last pass (type `leak`), first few.
    pub leaked: Vec<(ServiceRef, Value)>,
    /// How many claims lapsed.
    pub leaked_count: u64,
    /// Values held by more than one Service: every holder after the first (type `duplicate`).
    pub duplicates: Vec<(ServiceRef, Value)>,
    /// Values outside every range of their kind/family (type `outOfRange`).
    pub out_of_range: Vec<(ServiceRef, Value)>,
}

impl RepairReport {
    /// Whether the pass found nothing to report.
    pub fn is_clean(&self) -> bool {
        self.leaked_count == 0 && self.duplicates.is_empty() && self.out_of_range.is_empty()
    }
}

/// The findings of one range (pure output of [`findings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings<V> {
    /// Extra Service holders of a value.
    pub duplicates: Vec<(ServiceRef, V)>,
    /// Values held by a Service outside the range.
    pub out_of_range: Vec<(ServiceRef, V)>,
}

/// What the holdings of `state` show: duplicates and, if asked, values outside the range. Only
/// Services count as holders here (an `IPAddress` next to its Service is the normal case).
pub fn findings<P: Pool>(state: &RangeState<P>, report_out_of_range: bool) -> Findings<P::Value> {
    let mut duplicates = Vec::new();
    let mut out_of_range = Vec::new();
    let mut values: Vec<(&P::Value, &Vec<Holder>)> = state.holdings().collect();
    values.sort_by_key(|(v, _)| **v);
    for (v, holders) in values {
        let mut services: Vec<&ServiceRef> = holders
            .iter()
            .filter_map(|h| match h {
                Holder::Service(s) => Some(s),
                Holder::Address { .. } => None,
            })
            .collect();
        services.sort();
        if report_out_of_range && !state.pool().contains(*v) {
            out_of_range.extend(services.iter().map(|s| ((*s).clone(), *v)));
        }
        duplicates.extend(services.iter().skip(1).map(|s| ((*s).clone(), *v)));
    }
    Findings {
        duplicates,
        out_of_range,
    }
}

/// Runs repair passes for a [`ServiceAllocator`].
pub struct Repair {
    allocator: Arc<ServiceAllocator>,
    recorder: Option<Recorder>,
    config: RepairConfig,
    /// Per range object: the lapsed-claim count already reported.
    marks: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl std::fmt::Debug for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repair")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How a kind of range words its Events (upstream's reasons and messages).
trait Describe: Pool {
    const ALREADY_ALLOCATED: &'static str;
    const OUT_OF_RANGE: &'static str;
    fn already_allocated(v: Self::Value) -> String;
    fn out_of_range(v: Self::Value, range: &str) -> String;
    fn value(v: Self::Value) -> Value;
}

impl Describe for IpPool {
    const ALREADY_ALLOCATED: &'static str = "ClusterIPAlreadyAllocated";
    const OUT_OF_RANGE: &'static str = "ClusterIPOutOfRange";
    fn already_allocated(ip: IpAddr) -> String {
        format!(
            "Cluster IP [{}]:{ip} was assigned to multiple services; please recreate service",
            IpFamily::of(ip)
        )
    }
    fn out_of_range(ip: IpAddr, range: &str) -> String {
        format!(
            "Cluster IP [{}]:{ip} is not within any configured Service CIDR ({range}); please recreate service",
            IpFamily::of(ip)
        )
    }
    fn value(v: IpAddr) -> Value {
        Value::Ip(v)
    }
}

impl Describe for PortAllocator {
    const ALREADY_ALLOCATED: &'static str = "PortAlreadyAllocated";
    const OUT_OF_RANGE: &'static str = "PortOutOfRange";
    fn already_allocated(p: i32) -> String {
        format!("Port {p} was assigned to multiple services; please recreate service")
    }
    fn out_of_range(p: i32, range: &str) -> String {
        format!("Port {p} is not within the port range {range}; please recreate service")
    }
    fn value(v: i32) -> Value {
        Value::Port(v)
    }
}

impl Repair {
    /// A repair loop for `allocator`, publishing Events through `client` when enabled.
    pub fn new(allocator: Arc<ServiceAllocator>, client: Client, config: RepairConfig) -> Self {
        let recorder = config.events.then(|| {
            Recorder::new(
                client,
                Reporter {
                    controller: EVENT_CONTROLLER.to_owned(),
                    instance: config.instance.clone(),
                },
            )
        });
        Repair {
            allocator,
            recorder,
            config,
            marks: std::sync::Mutex::default(),
        }
    }

    /// Runs passes every `interval` until `shutdown` completes. Failed passes are logged and
    /// counted (`portico_*_repair_reconcile_errors_total`); the loop goes on.
    pub async fn run(self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {
                    match self.run_once().await {
                        Ok(report) if report.is_clean() => tracing::debug!("repair pass clean"),
                        Ok(report) => tracing::info!(
                            leaked = report.leaked_count,
                            duplicates = report.duplicates.len(),
                            out_of_range = report.out_of_range.len(),
                            "repair pass",
                        ),
                        Err(e) => tracing::warn!(error = %e, "repair pass failed"),
                    }
                }
            }
        }
    }

    /// One pass over every range.
    #[tracing::instrument(name = "allocation_repair", skip_all)]
    pub async fn run_once(&self) -> Result<RepairReport, AllocationError> {
        let mut report = RepairReport::default();
        let allocator = Arc::clone(&self.allocator);
        // With the narrowing enforced the pool is the narrowing, not the cluster's range: values
        // outside it are legitimate (the apiserver gave them), so they are not reported.
        let ips_out_of_range = self.config.report_out_of_range && !allocator.config().refuse_outside_range;
        for (_, range) in allocator.ip_ranges() {
            self.range(range, ips_out_of_range, &mut report)
                .await
                .inspect_err(|_| self.count_failure(RangeKind::ClusterIp))?;
        }
        self.range(
            allocator.port_range(),
            self.config.report_out_of_range,
            &mut report,
        )
        .await
        .inspect_err(|_| self.count_failure(RangeKind::NodePort))?;
        Ok(report)
    }

    async fn range<P: Describe>(
        &self,
        range: &Range<P>,
        out_of_range: bool,
        report: &mut RepairReport,
    ) -> Result<(), AllocationError> {
        let mark = self
            .marks
            .lock()
            .map(|m| m.get(range.name()).copied().unwrap_or_default())
            .unwrap_or_default();
        let (found, lapsed, lapsed_count, next_mark, ranges) = range
            .update(move |s: &mut RangeState<P>| {
                let found = findings(s, out_of_range);
                let (lapsed, count, next_mark) = s.lapsed_since(mark);
                let held = |list: &[(ServiceRef, P::Value)]| {
                    RepairFinding::of(list.iter().map(|(s, v)| format!("{v} {s}")))
                };
                let summary = RepairSummary {
                    time: Timestamp::now().to_string(),
                    leaked: RepairFinding {
                        count,
                        examples: lapsed
                            .iter()
                            .take(RepairSummary::MAX_LISTED)
                            .map(|(v, p)| format!("{v} {}", p.owner))
                            .collect(),
                    },
                    duplicates: held(&found.duplicates),
                    out_of_range: held(&found.out_of_range),
                };
                // Write only when something changed: a clean range keeps its last report.
                if s.last_repair()
                    .is_none_or(|last| !(summary.is_clean() && last.is_clean()))
                {
                    s.record_repair(summary);
                }
                (found, lapsed, count, next_mark, s.pool().range_string())
            })
            .await?;
        if let Ok(mut marks) = self.marks.lock() {
            marks.insert(range.name().to_owned(), next_mark);
        }
        let kind = P::KIND;
        self.metric(kind, "leak", lapsed_count as usize);
        self.metric(kind, "duplicate", found.duplicates.len());
        self.metric(kind, "outOfRange", found.out_of_range.len());
        for (svc, v) in &found.duplicates {
            self.event(svc, P::ALREADY_ALLOCATED, P::already_allocated(*v), kind)
                .await;
        }
        for (svc, v) in &found.out_of_range {
            self.event(svc, P::OUT_OF_RANGE, P::out_of_range(*v, &ranges), kind)
                .await;
        }
        report.leaked_count += lapsed_count;
        report
            .leaked
            .extend(lapsed.into_iter().map(|(v, p)| (p.owner, P::value(v))));
        report
            .duplicates
            .extend(found.duplicates.into_iter().map(|(s, v)| (s, P::value(v))));
        report
            .out_of_range
            .extend(found.out_of_range.into_iter().map(|(s, v)| (s, P::value(v))));
        Ok(())
    }

    fn metric(&self, kind: RangeKind, what: &str, n: usize) {
        if let Some(m) = self.allocator.metrics() {
            m.repair_error(kind, what, n);
        }
    }

    fn count_failure(&self, kind: RangeKind) {
        if let Some(m) = self.allocator.metrics() {
            m.reconcile_error(kind);
        }
    }

    async fn event(&self, svc: &ServiceRef, reason: &str, note: String, kind: RangeKind) {
        tracing::warn!(service = %svc, reason, "{note}");
        let Some(recorder) = &self.recorder else { return };
        let reference = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Service".to_owned()),
            namespace: Some(svc.namespace.clone()),
            name: Some(svc.name.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note),
            action: match kind {
                RangeKind::ClusterIp => "ClusterIPAllocation".to_owned(),
                RangeKind::NodePort => "PortAllocation".to_owned(),
            },
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(service = %svc, error = %e, "could not publish an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_allocators::PortRange;

    fn holder(name: &str) -> Holder {
        Holder::Service(ServiceRef::new("ns", name))
    }

    #[test]
    fn duplicates_name_every_holder_after_the_first_and_out_of_range_every_holder() {
        let now = Timestamp::UNIX_EPOCH;
        let mut s = RangeState::new(PortAllocator::new(PortRange::new(30000, 30009).expect("range")));
        s.hold(30001, holder("b"), now);
        s.hold(30001, holder("a"), now);
        s.hold(30002, holder("c"), now);
        s.hold(
            30002,
            Holder::Address {
                parent: Some(ServiceRef::new("ns", "c")),
            },
            now,
        );
        s.hold(40000, holder("far"), now);
        let f = findings(&s, true);
        assert_eq!(f.duplicates, vec![(ServiceRef::new("ns", "b"), 30001)]);
        assert_eq!(f.out_of_range, vec![(ServiceRef::new("ns", "far"), 40000)]);
        assert!(findings(&s, false).out_of_range.is_empty());
    }

    #[test]
    fn a_fresh_allocation_is_not_a_finding() {
        let now = Timestamp::UNIX_EPOCH;
        let mut s = RangeState::new(PortAllocator::new(PortRange::new(30000, 30009).expect("range")));
        let web = ServiceRef::new("ns", "web");
        let v = s
            .claim_next(&web, Timestamp::from_second(60).expect("ts"))
            .expect("free");
        s.hold(v, Holder::Service(web), now);
        let f = findings(&s, true);
        assert!(f.duplicates.is_empty() && f.out_of_range.is_empty());
        assert_eq!(s.lapsed_since(0).1, 0);
    }
}
