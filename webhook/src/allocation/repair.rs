//! The repair loop: reconcile each range's bitmap with the Services that exist.
//!
//! One pass, per range:
//! 1. read the object (time T0, through the store: a fresh GET);
//! 2. list the Services (a consistent list, after T0);
//! 3. decide, purely ([`reconcile`]): values in use but missing from the bitmap are marked
//!    (upstream's `NotAllocated; repairing`), values held by two Services are reported
//!    (`AlreadyAllocated`), values outside the range are reported (`OutOfRange`), pending claims
//!    whose Service holds the value are confirmed, expired pending claims are freed (a leak: the
//!    admission never turned into a Service), and values no Service holds and no claim covers
//!    are freed (the Service was deleted or gave the value up);
//! 4. apply the decisions in one compare-and-swap. Each release is guarded: it only happens if
//!    the value's claim is still exactly what it was at T0, so an allocation made after T0 (which
//!    the Service list cannot know about) is never undone, whichever replica made it.
//!
//! Unlike upstream there is no three-pass hold-off for unreferenced values: every value handed
//! out by an admission carries a pending claim until a pass has seen its Service, and the list is
//! taken after the state it is compared with, so an unreferenced value without a claim is not in
//! use. A value freed this way returns to the pool right away (next-fit hands it out last).
//!
//! Events (`events.k8s.io/v1`, reporting controller `portico-allocation-repair`, actions
//! `ClusterIPAllocation` / `PortAllocation`) go to the Services concerned, with upstream's
//! reasons and messages: `ClusterIPNotValid`, `ClusterIPNotAllocated`,
//! `ClusterIPAlreadyAllocated`, `ClusterIPOutOfRange`, `PortNotAllocated`,
//! `PortAlreadyAllocated`, `PortOutOfRange`. RBAC: `create` and `patch` on
//! `events.k8s.io/events`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use portico_allocators::{IpAllocator, PortAllocator, parse_service_ip};

use super::AllocationError;
use super::crd::{RepairFinding, RepairSummary};
use super::plan::{IpFamily, Value, cluster_ips_of, service_type};
use super::pool::{Pending, Pool, RangeKind, RangeState, ServiceRef};
use super::service::ServiceAllocator;
use super::store::AllocationStore;

/// Reporting controller of the repair loop's Events.
pub const EVENT_CONTROLLER: &str = "portico-allocation-repair";

/// How the repair loop reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairConfig {
    /// Publish Events on the Services concerned.
    pub events: bool,
    /// Report clusterIPs and nodePorts outside Portico's ranges. Turn off when Portico manages
    /// a sub-range of the apiserver's: Services outside it are then legitimate.
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

/// What one pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Pending claims that expired before their Service held the value: freed (type `leak`).
    pub leaked_released: Vec<Value>,
    /// Values no Service holds and no claim covers (deleted Services, dropped values): freed.
    pub released: Vec<Value>,
    /// Values a Service holds that the bitmap did not know: marked (type `repair`).
    pub unknown: Vec<(ServiceRef, Value)>,
    /// Values held by more than one Service: every holder after the first (type `duplicate`).
    pub duplicates: Vec<(ServiceRef, Value)>,
    /// Values outside the range of their kind/family (type `outOfRange`).
    pub out_of_range: Vec<(ServiceRef, Value)>,
    /// clusterIPs that do not parse (type `invalid`).
    pub invalid: Vec<(ServiceRef, String)>,
    /// Pending claims whose Service now holds the value.
    pub confirmed: Vec<Value>,
}

impl RepairReport {
    /// Whether the pass found nothing to report or do beyond confirmations.
    pub fn is_clean(&self) -> bool {
        self.leaked_released.is_empty()
            && self.released.is_empty()
            && self.unknown.is_empty()
            && self.duplicates.is_empty()
            && self.out_of_range.is_empty()
            && self.invalid.is_empty()
    }

    fn merge(&mut self, other: RepairReport) {
        self.leaked_released.extend(other.leaked_released);
        self.released.extend(other.released);
        self.unknown.extend(other.unknown);
        self.duplicates.extend(other.duplicates);
        self.out_of_range.extend(other.out_of_range);
        self.invalid.extend(other.invalid);
        self.confirmed.extend(other.confirmed);
    }
}

/// The decisions of one pass over one range (pure output of [`reconcile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings<V> {
    /// Held by a Service, missing from the bitmap: mark.
    pub mark: Vec<(ServiceRef, V)>,
    /// Extra holders of a value.
    pub duplicates: Vec<(ServiceRef, V)>,
    /// Outside the range.
    pub out_of_range: Vec<(ServiceRef, V)>,
    /// Pending and held by its Service: drop the claim, keep the value.
    pub confirm: Vec<V>,
    /// Pending claims to drop while the value stays held (another Service holds it, or the value
    /// is not even held).
    pub drop_claim: Vec<V>,
    /// Expired pending claims of unreferenced values: free.
    pub release_leaked: Vec<V>,
    /// Unreferenced values without a claim: free.
    pub release: Vec<V>,
}

impl<V> Default for Findings<V> {
    fn default() -> Self {
        Findings {
            mark: Vec::new(),
            duplicates: Vec::new(),
            out_of_range: Vec::new(),
            confirm: Vec::new(),
            drop_claim: Vec::new(),
            release_leaked: Vec::new(),
            release: Vec::new(),
        }
    }
}

/// Compares a range's state (read at T0) with the values the Services hold (listed after T0).
/// `holders` has one entry per (Service, value) occurrence; a value listed twice for one Service
/// (same nodePort on two ports of one protocol) counts as a duplicate, as upstream.
pub fn reconcile<P: Pool>(
    state: &RangeState<P>,
    holders: &[(ServiceRef, P::Value)],
    now: Timestamp,
) -> Findings<P::Value> {
    let pool = state.pool();
    let mut f = Findings::default();
    let mut by_value: BTreeMap<P::Value, Vec<&ServiceRef>> = BTreeMap::new();
    for (svc, v) in holders {
        if pool.contains(*v) {
            by_value.entry(*v).or_default().push(svc);
        } else {
            f.out_of_range.push((svc.clone(), *v));
        }
    }
    for (v, svcs) in &by_value {
        f.duplicates
            .extend(svcs.iter().skip(1).map(|s| ((*s).clone(), *v)));
        if !pool.has(*v) {
            f.mark.push((svcs[0].clone(), *v));
        }
        if let Some(p) = state.pending().get(v) {
            if svcs.iter().any(|s| p.owner.is_fulfilled_by(s)) {
                f.confirm.push(*v);
            } else if p.expires <= now {
                f.drop_claim.push(*v);
            }
        }
    }
    for v in pool.held() {
        if by_value.contains_key(&v) {
            continue;
        }
        match state.pending().get(&v) {
            Some(p) if p.expires > now => {}
            Some(_) => f.release_leaked.push(v),
            None => f.release.push(v),
        }
    }
    // Claims on values the bitmap does not hold (a hand-edited object) mean nothing.
    for v in state.pending().keys() {
        if !pool.has(*v) && !by_value.contains_key(v) {
            f.drop_claim.push(*v);
        }
    }
    f
}

/// What applying [`Findings`] changed (the guarded releases may skip values).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied<V> {
    leaked: Vec<V>,
    released: Vec<V>,
    confirmed: Vec<V>,
}

/// Applies `f` to `state`; releases and claim drops only where the claim is unchanged since
/// `t0`. With `mark_only`, only marks.
fn apply<P: Pool>(
    state: &mut RangeState<P>,
    f: &Findings<P::Value>,
    t0: &BTreeMap<P::Value, Option<Pending>>,
    mark_only: bool,
) -> Applied<P::Value> {
    for (_, v) in &f.mark {
        // Err: out of range cannot happen (filtered); taken is fine.
        let _ = state.mark(*v);
    }
    let mut applied = Applied {
        leaked: Vec::new(),
        released: Vec::new(),
        confirmed: Vec::new(),
    };
    if mark_only {
        return applied;
    }
    let unchanged =
        |state: &RangeState<P>, v: &P::Value| t0.get(v).cloned().flatten() == state.pending().get(v).cloned();
    for v in &f.confirm {
        if unchanged(state, v) && state.confirm(*v) {
            applied.confirmed.push(*v);
        }
    }
    for v in &f.drop_claim {
        if unchanged(state, v) {
            state.confirm(*v);
        }
    }
    for (list, out) in [
        (&f.release_leaked, &mut applied.leaked),
        (&f.release, &mut applied.released),
    ] {
        for v in list {
            if state.pool().has(*v) && unchanged(state, v) && state.release(*v) {
                out.push(*v);
            }
        }
    }
    applied
}

/// The claims at T0 of every value the findings may touch.
fn claims_at<P: Pool>(state: &RangeState<P>, f: &Findings<P::Value>) -> BTreeMap<P::Value, Option<Pending>> {
    f.confirm
        .iter()
        .chain(&f.drop_claim)
        .chain(&f.release_leaked)
        .chain(&f.release)
        .map(|v| (*v, state.pending().get(v).cloned()))
        .collect()
}

/// The clusterIPs of each Service, per family; unparseable ones separately.
/// `(Service, value)` occurrences.
type Holders<V> = Vec<(ServiceRef, V)>;

fn ip_holders(services: &[Service]) -> (Holders<IpAddr>, Holders<String>) {
    let mut ips = Vec::new();
    let mut invalid = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if service_type(spec) == "ExternalName" {
            continue;
        }
        let r = service_key(svc);
        for ip in cluster_ips_of(spec) {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            match parse_service_ip(&ip) {
                Ok(addr) => ips.push((r.clone(), addr)),
                Err(_) => invalid.push((r.clone(), ip)),
            }
        }
    }
    (ips, invalid)
}

/// The node ports of each Service as upstream's repair collects them: a number shared by
/// different protocols counts once, a repeat with the same protocol counts twice (a
/// duplicate); the health-check port counts as TCP.
pub fn service_node_ports(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<i32> {
    let entries = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let np = p.node_port.unwrap_or(0);
            (np != 0).then(|| (np, p.protocol.as_deref().unwrap_or("TCP")))
        })
        .chain(
            spec.health_check_node_port
                .filter(|p| *p != 0)
                .map(|hc| (hc, "TCP")),
        );
    let mut seen: Vec<(i32, &str)> = Vec::new();
    let mut out = Vec::new();
    for (port, protocol) in entries {
        if seen.iter().any(|(p, pr)| *p == port && *pr != protocol) {
            continue;
        }
        seen.push((port, protocol));
        out.push(port);
    }
    out
}

fn port_holders(services: &[Service]) -> Vec<(ServiceRef, i32)> {
    services
        .iter()
        .filter_map(|svc| Some((service_key(svc), svc.spec.as_ref()?)))
        .flat_map(|(r, spec)| service_node_ports(spec).into_iter().map(move |p| (r.clone(), p)))
        .collect()
}

fn service_key(svc: &Service) -> ServiceRef {
    ServiceRef::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// Runs repair passes for a [`ServiceAllocator`].
pub struct Repair {
    allocator: Arc<ServiceAllocator>,
    recorder: Option<Recorder>,
    config: RepairConfig,
}

impl std::fmt::Debug for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repair")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Pass<'a> {
    services: &'a [Service],
    refs: HashMap<ServiceRef, ObjectReference>,
    now: Timestamp,
}

impl Repair {
    /// A repair loop for `allocator`, publishing Events through its client when enabled.
    pub fn new(allocator: Arc<ServiceAllocator>, config: RepairConfig) -> Self {
        let recorder = config.events.then(|| {
            Recorder::new(
                allocator.client().clone(),
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
                        Ok(report) if report.is_clean() => tracing::debug!(confirmed = report.confirmed.len(), "repair pass clean"),
                        Ok(report) => tracing::info!(
                            leaked = report.leaked_released.len(),
                            released = report.released.len(),
                            unknown = report.unknown.len(),
                            duplicates = report.duplicates.len(),
                            out_of_range = report.out_of_range.len(),
                            invalid = report.invalid.len(),
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
        self.pass().await
    }

    async fn pass(&self) -> Result<RepairReport, AllocationError> {
        let allocator = Arc::clone(&self.allocator);
        let mut report = RepairReport::default();
        // T0 for every range, then the Service list.
        let mut ip_states = Vec::new();
        for (family, store) in allocator.ip_stores() {
            match store.read().await {
                Ok(s) => ip_states.push((*family, store, s)),
                Err(e) => {
                    self.count_failure(RangeKind::ClusterIp);
                    return Err(e.into());
                }
            }
        }
        let port_state = match allocator.port_store().read().await {
            Ok(s) => s,
            Err(e) => {
                self.count_failure(RangeKind::NodePort);
                return Err(e.into());
            }
        };
        let services = match allocator.list_services().await {
            Ok(s) => s,
            Err(e) => {
                self.count_failure(RangeKind::ClusterIp);
                self.count_failure(RangeKind::NodePort);
                return Err(e.into());
            }
        };
        let pass = Pass {
            refs: services
                .iter()
                .map(|s| (service_key(s), s.object_ref(&())))
                .collect(),
            services: &services,
            now: Timestamp::now(),
        };

        let (ips, invalid) = ip_holders(pass.services);
        for (r, ip) in &invalid {
            self.event(
                &pass,
                r,
                "ClusterIPNotValid",
                format!("Cluster IP {ip} is not a valid IP; please recreate service"),
                RangeKind::ClusterIp,
            )
            .await;
        }
        self.metric(RangeKind::ClusterIp, "invalid", invalid.len());
        report.invalid = invalid;
        for (family, store, t0) in ip_states {
            let holders: Vec<(ServiceRef, IpAddr)> = ips
                .iter()
                .filter(|(_, ip)| IpFamily::of(*ip) == family)
                .cloned()
                .collect();
            match self.repair_range(&pass, store, &t0, &holders).await {
                Ok(r) => report.merge(r),
                Err(e) => {
                    self.count_failure(RangeKind::ClusterIp);
                    return Err(e);
                }
            }
        }
        let ports = port_holders(pass.services);
        match self
            .repair_range(&pass, allocator.port_store(), &port_state, &ports)
            .await
        {
            Ok(r) => report.merge(r),
            Err(e) => {
                self.count_failure(RangeKind::NodePort);
                return Err(e);
            }
        }
        Ok(report)
    }

    async fn repair_range<P>(
        &self,
        pass: &Pass<'_>,
        store: &AllocationStore<P>,
        t0: &RangeState<P>,
        holders: &[(ServiceRef, P::Value)],
    ) -> Result<RepairReport, AllocationError>
    where
        P: Pool + Describe,
        Value: From<P::Value>,
    {
        let findings = reconcile(t0, holders, pass.now);
        let claims = claims_at(t0, &findings);
        let job_findings = findings.clone();
        // Whole seconds, as Kubernetes writes times.
        let time = Timestamp::from_second(pass.now.as_second())
            .unwrap_or(pass.now)
            .to_string();
        let report_out_of_range = self.config.report_out_of_range;
        let applied = store
            .update(move |state: &mut RangeState<P>| {
                let owners = state.pending().clone();
                let applied = apply(state, &job_findings, &claims, false);
                let summary = summarize(&time, &job_findings, &applied, &owners, report_out_of_range);
                state.record_repair(summary);
                applied
            })
            .await?;
        let range = t0.pool().range_string();
        let mut report = RepairReport {
            unknown: findings
                .mark
                .iter()
                .map(|(s, v)| (s.clone(), Value::from(*v)))
                .collect(),
            duplicates: findings
                .duplicates
                .iter()
                .map(|(s, v)| (s.clone(), Value::from(*v)))
                .collect(),
            ..RepairReport::default()
        };
        if self.config.report_out_of_range {
            report.out_of_range = findings
                .out_of_range
                .iter()
                .map(|(s, v)| (s.clone(), Value::from(*v)))
                .collect();
        }
        report.leaked_released = applied.leaked.iter().map(|v| Value::from(*v)).collect();
        report.released = applied.released.iter().map(|v| Value::from(*v)).collect();
        report.confirmed = applied.confirmed.iter().map(|v| Value::from(*v)).collect();

        for (s, v) in &findings.mark {
            self.event(pass, s, P::NOT_ALLOCATED, P::not_allocated(*v), P::KIND)
                .await;
        }
        for (s, v) in &findings.duplicates {
            self.event(pass, s, P::ALREADY_ALLOCATED, P::already_allocated(*v), P::KIND)
                .await;
        }
        if self.config.report_out_of_range {
            for (s, v) in &findings.out_of_range {
                self.event(pass, s, P::OUT_OF_RANGE, P::out_of_range(*v, &range), P::KIND)
                    .await;
            }
            self.metric(P::KIND, "outOfRange", findings.out_of_range.len());
        }
        self.metric(P::KIND, "repair", findings.mark.len());
        self.metric(P::KIND, "duplicate", findings.duplicates.len());
        self.metric(P::KIND, "leak", applied.leaked.len());
        if let Some(m) = self.allocator.metrics() {
            m.released(P::KIND, &range, applied.released.len());
        }
        for v in &applied.leaked {
            tracing::info!(range = %range, value = %v, "a pending allocation expired without its Service: released");
        }
        for v in &applied.released {
            tracing::debug!(range = %range, value = %v, "no Service holds this value any more: released");
        }
        Ok(report)
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

    async fn event(&self, pass: &Pass<'_>, svc: &ServiceRef, reason: &str, note: String, kind: RangeKind) {
        tracing::warn!(service = %svc, reason, "{note}");
        let (Some(recorder), Some(reference)) = (&self.recorder, pass.refs.get(svc)) else {
            return;
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
        if let Err(e) = recorder.publish(&event, reference).await {
            tracing::warn!(service = %svc, error = %e, "could not publish an Event");
        }
    }
}

/// The report of one pass over one range, as stored on its object for `portico status`.
fn summarize<V: Copy + std::fmt::Display + Ord>(
    time: &str,
    f: &Findings<V>,
    applied: &Applied<V>,
    owners: &BTreeMap<V, Pending>,
    report_out_of_range: bool,
) -> RepairSummary {
    let held = |list: &[(ServiceRef, V)]| RepairFinding::of(list.iter().map(|(s, v)| format!("{v} {s}")));
    RepairSummary {
        time: time.to_owned(),
        leaked: RepairFinding::of(applied.leaked.iter().map(|v| match owners.get(v) {
            Some(p) => format!("{v} {}", p.owner),
            None => v.to_string(),
        })),
        released: RepairFinding::of(applied.released.iter().map(|v| v.to_string())),
        unknown: held(&f.mark),
        duplicates: held(&f.duplicates),
        out_of_range: if report_out_of_range {
            held(&f.out_of_range)
        } else {
            RepairFinding::default()
        },
    }
}

/// The start-up rebuild: marks every value the Services hold (MetalLB's "assigned first"),
/// frees nothing and publishes no Event. Returns what it marked as `unknown`.
pub(crate) async fn rebuild(allocator: &ServiceAllocator) -> Result<RepairReport, AllocationError> {
    let services = allocator.list_services().await?;
    let (ips, _) = ip_holders(&services);
    let mut report = RepairReport::default();
    for (family, store) in allocator.ip_stores() {
        let holders: Vec<(ServiceRef, IpAddr)> = ips
            .iter()
            .filter(|(_, ip)| IpFamily::of(*ip) == *family)
            .cloned()
            .collect();
        report.merge(mark_range(store, holders).await?);
    }
    report.merge(mark_range(allocator.port_store(), port_holders(&services)).await?);
    Ok(report)
}

async fn mark_range<P>(
    store: &AllocationStore<P>,
    holders: Vec<(ServiceRef, P::Value)>,
) -> Result<RepairReport, AllocationError>
where
    P: Pool,
    Value: From<P::Value>,
{
    let now = Timestamp::now();
    let marked = store
        .update(move |state: &mut RangeState<P>| {
            let findings = reconcile(state, &holders, now);
            apply(state, &findings, &BTreeMap::new(), true);
            findings.mark
        })
        .await?;
    Ok(RepairReport {
        unknown: marked.into_iter().map(|(s, v)| (s, Value::from(v))).collect(),
        ..RepairReport::default()
    })
}

/// Upstream's event reasons and messages per range kind.
pub trait Describe: Pool {
    /// Reason for a value in use but not allocated.
    const NOT_ALLOCATED: &'static str;
    /// Reason for a value held by several Services.
    const ALREADY_ALLOCATED: &'static str;
    /// Reason for a value outside the range.
    const OUT_OF_RANGE: &'static str;
    /// Message for [`Self::NOT_ALLOCATED`].
    fn not_allocated(v: Self::Value) -> String;
    /// Message for [`Self::ALREADY_ALLOCATED`].
    fn already_allocated(v: Self::Value) -> String;
    /// Message for [`Self::OUT_OF_RANGE`].
    fn out_of_range(v: Self::Value, range: &str) -> String;
}

impl Describe for IpAllocator {
    const NOT_ALLOCATED: &'static str = "ClusterIPNotAllocated";
    const ALREADY_ALLOCATED: &'static str = "ClusterIPAlreadyAllocated";
    const OUT_OF_RANGE: &'static str = "ClusterIPOutOfRange";
    fn not_allocated(ip: IpAddr) -> String {
        format!(
            "Cluster IP [{}]:{ip} is not allocated; repairing",
            IpFamily::of(ip)
        )
    }
    fn already_allocated(ip: IpAddr) -> String {
        format!(
            "Cluster IP [{}]:{ip} was assigned to multiple services; please recreate service",
            IpFamily::of(ip)
        )
    }
    fn out_of_range(ip: IpAddr, range: &str) -> String {
        format!(
            "Cluster IP [{}]:{ip} is not within the service CIDR {range}; please recreate service",
            IpFamily::of(ip)
        )
    }
}

impl Describe for PortAllocator {
    const NOT_ALLOCATED: &'static str = "PortNotAllocated";
    const ALREADY_ALLOCATED: &'static str = "PortAlreadyAllocated";
    const OUT_OF_RANGE: &'static str = "PortOutOfRange";
    fn not_allocated(p: i32) -> String {
        format!("Port {p} is not allocated; repairing")
    }
    fn already_allocated(p: i32) -> String {
        format!("Port {p} was assigned to multiple services; please recreate service")
    }
    fn out_of_range(p: i32, range: &str) -> String {
        format!("Port {p} is not within the port range {range}; please recreate service")
    }
}

impl From<IpAddr> for Value {
    fn from(ip: IpAddr) -> Self {
        Value::Ip(ip)
    }
}

impl From<i32> for Value {
    fn from(p: i32) -> Self {
        Value::Port(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_allocators::PortRange;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("ts")
    }

    fn svc(name: &str) -> ServiceRef {
        ServiceRef::new("ns", name)
    }

    fn ports() -> RangeState<PortAllocator> {
        RangeState::new(PortAllocator::new(PortRange::new(30000, 30099).expect("range")))
    }

    #[test]
    fn confirms_marks_reports_and_frees() {
        let mut s = ports();
        s.claim(30001, &svc("a"), ts(100)).expect("free"); // a exists: confirmed
        s.claim(30002, &svc("b"), ts(100)).expect("free"); // b not yet: kept
        s.claim(30003, &svc("c"), ts(10)).expect("free"); // c never came: leaked
        s.mark(30004).expect("free"); // deleted Service: released
        s.mark(30005).expect("free"); // held by d and e: duplicate
        s.claim(30006, &svc("x"), ts(10)).expect("free"); // expired, but f holds it
        let holders = vec![
            (svc("a"), 30001),
            (svc("d"), 30005),
            (svc("e"), 30005),
            (svc("f"), 30006),
            (svc("g"), 30007), // unknown to the bitmap
            (svc("h"), 8080),  // out of range
        ];
        let f = reconcile(&s, &holders, ts(50));
        assert_eq!(f.confirm, vec![30001]);
        assert_eq!(f.mark, vec![(svc("g"), 30007)]);
        assert_eq!(f.duplicates, vec![(svc("e"), 30005)]);
        assert_eq!(f.out_of_range, vec![(svc("h"), 8080)]);
        assert_eq!(f.drop_claim, vec![30006]);
        assert_eq!(f.release_leaked, vec![30003]);
        assert_eq!(f.release, vec![30004]);

        let claims = claims_at(&s, &f);
        let applied = apply(&mut s, &f, &claims, false);
        assert_eq!(applied.leaked, vec![30003]);
        assert_eq!(applied.released, vec![30004]);
        assert_eq!(applied.confirmed, vec![30001]);
        let held = s.pool().held();
        assert_eq!(held, vec![30001, 30002, 30005, 30006, 30007]);
        assert_eq!(s.pending().keys().copied().collect::<Vec<_>>(), vec![30002]);
    }

    #[test]
    fn the_summary_names_what_a_pass_found_and_survives_encoding() {
        let mut s = ports();
        s.claim(30003, &svc("c"), ts(10)).expect("free"); // leaked
        s.mark(30004).expect("free"); // released
        s.mark(30005).expect("free");
        let holders = vec![(svc("d"), 30005), (svc("e"), 30005), (svc("h"), 8080)];
        let f = reconcile(&s, &holders, ts(50));
        let (claims, owners) = (claims_at(&s, &f), s.pending().clone());
        let applied = apply(&mut s, &f, &claims, false);
        let summary = summarize("2026-11-22T01:00:00Z", &f, &applied, &owners, true);
        assert_eq!(summary.leaked.examples, vec!["30003 ns/c"]);
        assert_eq!(summary.released.examples, vec!["30004"]);
        assert_eq!(summary.duplicates.examples, vec!["30005 ns/e"]);
        assert_eq!(summary.out_of_range.examples, vec!["8080 ns/h"]);
        assert_eq!(summary.unknown.count, 0);
        assert!(!summary.is_clean());
        assert_eq!(
            summarize("t", &f, &applied, &owners, false).out_of_range,
            RepairFinding::default(),
            "not reported when turned off"
        );

        s.clear_dirty();
        s.record_repair(summary.clone());
        assert!(s.is_dirty(), "a recorded pass is written");
        let (_, status) = super::super::crd::encode(&s);
        assert_eq!(status.last_repair.as_ref(), Some(&summary));

        // Lists stay short; counts stay exact.
        let many = RepairFinding::of((0..25).map(|i| i.to_string()));
        assert_eq!((many.count, many.examples.len()), (25, RepairSummary::MAX_LISTED));
    }

    #[test]
    fn guarded_apply_never_undoes_a_later_allocation() {
        // T0: 30004 is held without a claim, nobody references it.
        let mut t0 = ports();
        t0.mark(30004).expect("free");
        t0.claim(30003, &svc("c"), ts(10)).expect("free");
        let f = reconcile(&t0, &[], ts(50));
        let claims = claims_at(&t0, &f);
        // Meanwhile another replica's repair freed both and an admission re-claimed them.
        let mut now = t0.clone();
        now.release(30004);
        now.release(30003);
        now.claim(30004, &svc("new"), ts(500)).expect("free");
        now.claim(30003, &svc("other"), ts(500)).expect("free");
        let applied = apply(&mut now, &f, &claims, false);
        assert!(applied.released.is_empty() && applied.leaked.is_empty());
        assert!(now.pool().has(30004) && now.pool().has(30003));
        assert_eq!(now.pending().len(), 2);
    }

    #[test]
    fn mark_only_never_frees() {
        let mut s = ports();
        s.mark(30004).expect("free");
        let f = reconcile(&s, &[(svc("a"), 30010)], ts(0));
        let claims = claims_at(&s, &f);
        apply(&mut s, &f, &claims, true);
        assert_eq!(s.pool().held(), vec![30004, 30010]);
    }

    #[test]
    fn node_ports_are_collected_like_upstream() {
        // (ports as (nodePort, protocol), healthCheckNodePort, expected)
        type Ports<'a> = Vec<(i32, &'a str)>;
        let cases: Vec<(Ports, i32, Vec<i32>)> = vec![
            (
                vec![(111, "TCP"), (112, "UDP"), (113, "UDP")],
                0,
                vec![111, 112, 113],
            ),
            (
                vec![(111, "TCP"), (111, "TCP"), (112, "UDP")],
                0,
                vec![111, 111, 112],
            ),
            (
                vec![(111, "UDP"), (111, "UDP"), (112, "TCP")],
                0,
                vec![111, 111, 112],
            ),
            (vec![(111, "TCP"), (112, "TCP"), (111, "UDP")], 0, vec![111, 112]),
            (vec![(111, "TCP"), (112, "UDP")], 113, vec![111, 112, 113]),
            (vec![(111, "UDP"), (112, "TCP")], 111, vec![111, 112]),
            (vec![(111, "UDP"), (112, "TCP")], 112, vec![111, 112, 112]),
        ];
        for (ports, hc, expected) in cases {
            let spec: k8s_openapi::api::core::v1::ServiceSpec = serde_json::from_value(serde_json::json!({
                "ports": ports.iter().enumerate().map(|(i, (np, proto))| serde_json::json!({
                    "name": format!("p{i}"), "port": 80 + i, "protocol": proto, "nodePort": np})).collect::<Vec<_>>(),
                "healthCheckNodePort": hc,
            }))
            .expect("spec");
            assert_eq!(service_node_ports(&spec), expected, "{ports:?} + {hc}");
        }
    }

    #[test]
    fn event_messages_are_upstream_s() {
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        assert_eq!(
            IpAllocator::out_of_range(ip, "10.1.0.0/16"),
            "Cluster IP [IPv4]:10.0.0.5 is not within the service CIDR 10.1.0.0/16; please recreate service"
        );
        assert_eq!(
            IpAllocator::already_allocated(ip),
            "Cluster IP [IPv4]:10.0.0.5 was assigned to multiple services; please recreate service"
        );
        assert_eq!(
            PortAllocator::not_allocated(30001),
            "Port 30001 is not allocated; repairing"
        );
        assert_eq!(
            PortAllocator::out_of_range(80, "30000-32767"),
            "Port 80 is not within the port range 30000-32767; please recreate service"
        );
    }
}
