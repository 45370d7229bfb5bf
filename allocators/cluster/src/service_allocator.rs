//! [`ServiceAllocator`]: the ranges of one process and the admission decision.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use json_patch::Patch;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use portico_allocators::field::invalid_message;
use portico_allocators::{IpRange, PortAllocator, Refusal};

use super::allocation_metrics::AllocationMetrics;
use super::claim_store::{MemoryStore, ObjectStore, Range, expiry};
use super::cluster_watch::{self, ClusterView};
use super::ip_pool::IpPool;
use super::plan::{Assignment, IpFamily, Operation, Value, Want, held_values, plan_service, review_name};
use super::range_state::{Pool, RangeKind, RangeState};
use super::{AllocationConfig, AllocationError};

/// How long [`ServiceAllocator::decide`] keeps looking at a full range for values the watch is
/// about to report free.
pub const FULL_WAIT: Duration = Duration::from_secs(1);

fn is_full(r: &Refusal) -> bool {
    matches!(r, Refusal::Internal(m) if m.ends_with(&portico_allocators::AllocError::Full.to_string()))
}

/// This process's name in reservations: the pod name in a cluster, else host and pid; with a
/// random suffix, so a restarted pod never takes over its predecessor's reservations.
fn replica_id() -> String {
    let base = std::env::var("POD_NAME").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    format!("{base}-{:08x}", rand::random::<u32>())
}

/// What to answer to a Service admission.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit, applying `patch` (empty: admit unchanged).
    Allow {
        /// JSON patch setting the allocated (and kept) values.
        patch: Patch,
        /// Values taken for this Service in this admission.
        allocated: Vec<Value>,
        /// Values the Service gives up; free once the watch sees the Service without them.
        released: Vec<Value>,
    },
    /// Refuse.
    Deny(Denial),
}

impl Decision {
    fn allow_unchanged(released: Vec<Value>) -> Self {
        Decision::Allow {
            patch: Patch(Vec::new()),
            allocated: Vec::new(),
            released,
        }
    }
}

/// A refused allocation, as the apiserver would have refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The Service's name (for the message).
    pub name: String,
    /// The refusals: field errors of one 422, or a 500.
    pub refusals: Vec<Refusal>,
}

impl Denial {
    /// HTTP code: 500 if any refusal is internal, else 422.
    pub fn code(&self) -> u16 {
        if self.internal().is_some() { 500 } else { 422 }
    }

    /// The first internal refusal's text, if any (the answer is then a 500).
    pub fn internal(&self) -> Option<&str> {
        self.refusals.iter().find_map(|r| match r {
            Refusal::Internal(m) => Some(m.as_str()),
            Refusal::Invalid(_) => None,
        })
    }

    /// `Status.message`, e.g. `Service "web" is invalid: spec.clusterIPs: Invalid value:
    /// ["10.96.0.5"]: failed to allocate IP 10.96.0.5: provided IP is already allocated`.
    pub fn message(&self) -> String {
        if let Some(m) = self.internal() {
            return format!("Internal error occurred: {m}");
        }
        let errs: Vec<_> = self
            .refusals
            .iter()
            .filter_map(|r| r.field_error().cloned())
            .collect();
        invalid_message("Service", &self.name, &errs)
    }
}

/// The allocation ranges of one process (one webhook replica). Build one with
/// [`ServiceAllocator::start`] (shared `RangeAllocation` objects, cluster watches) or
/// [`ServiceAllocator::in_memory`] (tests, tools); both run the same [`decide`](Self::decide).
pub struct ServiceAllocator {
    config: AllocationConfig,
    families: Vec<IpFamily>,
    ips: Vec<(IpFamily, Range<IpPool>)>,
    ports: Range<PortAllocator>,
    metrics: Option<AllocationMetrics>,
    cluster: Option<Arc<ClusterView>>,
}

impl std::fmt::Debug for ServiceAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAllocator")
            .field("families", &self.families)
            .field("ips", &self.ips)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl ServiceAllocator {
    /// In-memory ranges over the configured CIDRs and node ports: nothing shared, nothing
    /// watched; holdings are fed with [`Range::observe`].
    pub fn in_memory(config: AllocationConfig) -> Result<Self, AllocationError> {
        config.validate()?;
        if config.service_cidrs.is_empty() {
            return Err(AllocationError::Config(
                "at least one service CIDR is required".to_owned(),
            ));
        }
        let ips = config
            .service_cidrs
            .iter()
            .map(|r: &IpRange| {
                let family = IpFamily::of_range(r);
                let store = MemoryStore::new(config.ip_object_name(family), IpPool::single(*r));
                (family, Range::new(store))
            })
            .collect();
        let ports = Range::new(MemoryStore::new(
            config.port_object_name(),
            PortAllocator::new(config.node_ports),
        ));
        Ok(ServiceAllocator {
            families: config.families(),
            config,
            ips,
            ports,
            metrics: None,
            cluster: None,
        })
    }

    /// Finds the clusterIP ranges (the apiserver's ServiceCIDRs on 1.33+, else the configured
    /// ones), opens (creating when absent) the `RangeAllocation` object of every range, starts
    /// the watches of Services, `IPAddress`es and ServiceCIDRs, and returns once their first
    /// full lists are in: nothing in use is handed out. The CRD must be installed
    /// ([`super::install_crds`]). RBAC: `get, list, watch, create, update` on `rangeallocations.portico.dev`;
    /// `list, watch` on `services`, `ipaddresses.networking.k8s.io` and
    /// `servicecidrs.networking.k8s.io`; `create, patch` on `events.k8s.io/events`.
    #[tracing::instrument(name = "allocation_start", skip_all, fields(prefix = %config.object_prefix))]
    pub async fn start(
        client: Client,
        config: AllocationConfig,
        metrics: Option<AllocationMetrics>,
    ) -> Result<Self, AllocationError> {
        config.validate()?;
        require_crd(&client).await?;
        let ranges = cluster_watch::discover_ranges(&client, &config).await?;
        let replica = replica_id();
        let mut ips = Vec::new();
        for (family, pool) in &ranges.pools {
            let state = RangeState::new(pool.clone()).with_reservations(
                &replica,
                config.reservation_batch,
                config.claim_ttl,
            );
            let store = ObjectStore::open(
                client.clone(),
                config.ip_object_name(*family),
                state,
                config.max_attempts,
                metrics.clone(),
            )
            .await?;
            ips.push((*family, Range::new(store)));
        }
        let state = RangeState::new(PortAllocator::new(config.node_ports)).with_reservations(
            &replica,
            config.reservation_batch,
            config.claim_ttl,
        );
        let ports = Range::new(
            ObjectStore::open(
                client.clone(),
                config.port_object_name(),
                state,
                config.max_attempts,
                metrics.clone(),
            )
            .await?,
        );
        let cluster = cluster_watch::start(client, &config, &ranges, ips.clone(), ports.clone()).await?;
        tracing::info!(
            families = ?ranges.families,
            ranges = ?ranges.pools.iter().map(|(f, p)| (f.as_str(), p.ranges().iter().map(ToString::to_string).collect::<Vec<_>>())).collect::<Vec<_>>(),
            from_service_cidrs = ranges.from_service_cidrs,
            services = cluster.services(),
            "allocation ranges open; the cluster's holdings are in"
        );
        Ok(ServiceAllocator {
            families: ranges.families.clone(),
            config,
            ips,
            ports,
            metrics,
            cluster: Some(cluster),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AllocationConfig {
        &self.config
    }

    /// The clusterIP families, primary first (the apiserver's, when discovered).
    pub fn families(&self) -> &[IpFamily] {
        &self.families
    }

    /// The metrics, when enabled.
    pub fn metrics(&self) -> Option<&AllocationMetrics> {
        self.metrics.as_ref()
    }

    /// What the watches see, when started against a cluster.
    pub fn cluster(&self) -> Option<&ClusterView> {
        self.cluster.as_deref()
    }

    /// The clusterIP ranges, primary family first.
    pub fn ip_ranges(&self) -> &[(IpFamily, Range<IpPool>)] {
        &self.ips
    }

    /// The clusterIP range of `family`.
    pub fn ip_range(&self, family: IpFamily) -> Option<&Range<IpPool>> {
        self.ips.iter().find(|(f, _)| *f == family).map(|(_, s)| s)
    }

    /// The node-port range.
    pub fn port_range(&self) -> &Range<PortAllocator> {
        &self.ports
    }

    /// Decides a Service admission: plans it, takes the values (claiming them, unless
    /// `dry_run`), and returns the patch or the refusal. On a refusal or an error nothing stays
    /// claimed. `new`/`old` must carry `metadata.namespace`.
    ///
    /// A range found full, or requested values refused only because of holders the apiserver
    /// no longer has, are looked at again for up to [`FULL_WAIT`]: the apiserver frees a deleted
    /// Service's values in the delete request itself, and the watch reports it a moment later,
    /// so a create right after a delete must not fail for that moment.
    #[tracing::instrument(name = "allocate", skip_all, fields(op = ?op, dry_run))]
    pub async fn decide(
        &self,
        op: Operation,
        new: Option<&Service>,
        old: Option<&Service>,
        dry_run: bool,
    ) -> Result<Decision, AllocationError> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            let decision = self.decide_once(op, new, old, dry_run).await?;
            let Decision::Deny(denial) = &decision else {
                return Ok(decision);
            };
            let again = denial.refusals.iter().any(is_full) || self.watch_is_behind(denial, new).await;
            if !again || started.elapsed() + pause > FULL_WAIT {
                return Ok(decision);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Whether a refusal of requested values comes only from holders the apiserver no longer
    /// has: the Service was deleted (the apiserver freed its values in that request) and the
    /// watch has not said so yet. Costs a read per holder, only on such refusals.
    async fn watch_is_behind(&self, denial: &Denial, new: Option<&Service>) -> bool {
        let (Some(cluster), Some(spec)) = (self.cluster.as_deref(), new.and_then(|s| s.spec.as_ref())) else {
            return false;
        };
        if !denial.refusals.iter().any(|r| {
            r.field_error()
                .is_some_and(|e| e.detail.ends_with("already allocated"))
        }) {
            return false;
        }
        let mut any = false;
        for v in held_values(spec) {
            let holders = match v {
                Value::Ip(ip) => match self.ip_range(IpFamily::of(ip)) {
                    Some(r) => r.read(move |s| s.holders(ip).to_vec()).await.unwrap_or_default(),
                    None => continue,
                },
                Value::Port(p) => self
                    .ports
                    .read(move |s| s.holders(p).to_vec())
                    .await
                    .unwrap_or_default(),
            };
            if holders.is_empty() {
                continue;
            }
            if !cluster.holders_are_gone(v, &holders).await {
                return false;
            }
            any = true;
        }
        any
    }

    async fn decide_once(
        &self,
        op: Operation,
        new: Option<&Service>,
        old: Option<&Service>,
        dry_run: bool,
    ) -> Result<Decision, AllocationError> {
        let name = review_name(new, old);
        let plan = match plan_service(op, new, old, &self.families) {
            Ok(plan) => plan,
            Err(refusals) => return Ok(Decision::Deny(Denial { name, refusals })),
        };
        if let Some(why) = plan.passthrough {
            tracing::debug!(service = %plan.service, why, "left to the apiserver");
        }
        if plan.is_noop() {
            return Ok(Decision::allow_unchanged(plan.released));
        }
        let plan = Arc::new(plan);
        let expires = expiry(self.config.claim_ttl);
        let limit = self.config.max_claims;
        let mut ranges = Vec::new();
        for family in plan.ip_families() {
            let Some(range) = self.ip_range(family) else {
                return Ok(Decision::Deny(Denial {
                    name,
                    refusals: vec![Refusal::Internal(format!("{family} is not configured"))],
                }));
            };
            ranges.push((family, range));
        }
        // Every range at once: each may need a shared write, and they are independent.
        let ip_jobs = ranges.iter().map(|(family, range)| {
            let (family, job_plan) = (*family, Arc::clone(&plan));
            let job = move |s: &mut RangeState<IpPool>| {
                (
                    job_plan.execute_ips(family, s, expires, limit),
                    s.pool().range_string(),
                )
            };
            async move {
                let result = if dry_run {
                    range.dry_run(job).await
                } else {
                    range.update(job).await
                };
                (family, result)
            }
        });
        let port_job = async {
            if plan.port_claims.is_empty() {
                return None;
            }
            let job_plan = Arc::clone(&plan);
            let job = move |s: &mut RangeState<PortAllocator>| {
                (job_plan.execute_ports(s, expires, limit), s.pool().range_string())
            };
            Some(if dry_run {
                self.ports.dry_run(job).await
            } else {
                self.ports.update(job).await
            })
        };
        let (ip_results, port_result) = futures::join!(futures::future::join_all(ip_jobs), port_job);

        let mut assignment = Assignment::default();
        let mut taken_ips: Vec<(IpFamily, Vec<IpAddr>)> = Vec::new();
        let mut taken_ports: Vec<i32> = Vec::new();
        // The first refusal in upstream's order (clusterIPs, then node ports), or the first error.
        let mut refused: Option<Refusal> = None;
        let mut failed: Option<AllocationError> = None;
        for (family, result) in ip_results {
            match result {
                Ok((Ok(ips), label)) => {
                    for c in plan.ip_claims.iter().filter(|c| c.family == family) {
                        self.count(&label, RangeKind::ClusterIp, &c.want, true, dry_run);
                    }
                    // A dry run took nothing, so it leaves nothing to revert.
                    if !dry_run {
                        taken_ips.push((family, ips.iter().map(|(_, ip)| *ip).collect()));
                    }
                    assignment.ips.extend(ips);
                }
                Ok((Err(refusal), label)) => {
                    self.count_refusal(&label, RangeKind::ClusterIp, &refusal, dry_run);
                    refused.get_or_insert(refusal);
                }
                Err(failure) => {
                    failed.get_or_insert(failure.into());
                }
            }
        }
        match port_result {
            None => {}
            Some(Ok((Ok(ports), label))) => {
                for c in &plan.port_claims {
                    self.count(&label, RangeKind::NodePort, &c.want, true, dry_run);
                }
                if !dry_run {
                    taken_ports.clone_from(&ports);
                }
                assignment.ports = ports;
            }
            Some(Ok((Err(refusal), label))) => {
                self.count_refusal(&label, RangeKind::NodePort, &refusal, dry_run);
                refused.get_or_insert(refusal);
            }
            Some(Err(failure)) => {
                failed.get_or_insert(failure.into());
            }
        }
        if refused.is_some() || failed.is_some() {
            self.revert(&plan.service, &taken_ips, &taken_ports).await;
            return match (refused, failed) {
                (Some(refusal), _) => Ok(Decision::Deny(Denial {
                    name,
                    refusals: vec![refusal],
                })),
                (None, Some(e)) => Err(e),
                (None, None) => unreachable!("checked above"),
            };
        }
        let patch = plan.patch(&assignment);
        let mut allocated: Vec<Value> = assignment.ips.iter().map(|(_, ip)| Value::Ip(*ip)).collect();
        allocated.extend(assignment.ports.iter().map(|p| Value::Port(*p)));
        tracing::debug!(service = %plan.service, ?allocated, "allocated");
        Ok(Decision::Allow {
            patch,
            allocated,
            released: plan.released.clone(),
        })
    }

    /// Drops the claims made for `owner` after another range refused (best effort: what is not
    /// dropped here lapses at its TTL).
    async fn revert(&self, owner: &super::ServiceRef, ips: &[(IpFamily, Vec<IpAddr>)], ports: &[i32]) {
        for (family, taken) in ips {
            let Some(range) = self.ip_range(*family) else {
                continue;
            };
            let owner = owner.clone();
            let taken = taken.clone();
            if let Err(e) = range
                .update(move |s: &mut RangeState<IpPool>| {
                    for ip in &taken {
                        s.unclaim(*ip, &owner);
                    }
                })
                .await
            {
                tracing::warn!(error = %e, "could not revert clusterIP claims; they will lapse");
            }
        }
        if !ports.is_empty() {
            let (owner, taken) = (owner.clone(), ports.to_vec());
            if let Err(e) = self
                .ports
                .update(move |s: &mut RangeState<PortAllocator>| {
                    for p in &taken {
                        s.unclaim(*p, &owner);
                    }
                })
                .await
            {
                tracing::warn!(error = %e, "could not revert nodePort claims; they will lapse");
            }
        }
    }

    fn count<T>(&self, range: &str, kind: RangeKind, want: &Want<T>, ok: bool, dry_run: bool) {
        if let (Some(m), false) = (&self.metrics, dry_run) {
            m.allocation(kind, range, want.scope(), ok);
        }
    }

    fn count_refusal(&self, range: &str, kind: RangeKind, refusal: &Refusal, dry_run: bool) {
        // A 422 is a requested value; the 500s are next-free failures (or the health-check port).
        let scope = match refusal {
            Refusal::Invalid(_) => Want::Value(()),
            Refusal::Internal(_) => Want::Next,
        };
        self.count(range, kind, &scope, false, dry_run);
    }

    /// The used values of every range, as this process has them (tests and tools).
    pub async fn held(&self) -> Result<Vec<Value>, AllocationError> {
        let mut out = Vec::new();
        for (_, range) in &self.ips {
            out.extend(range.read(|s| s.pool().held()).await?.into_iter().map(Value::Ip));
        }
        out.extend(
            self.ports
                .read(|s| s.pool().held())
                .await?
                .into_iter()
                .map(Value::Port),
        );
        Ok(out)
    }
}

/// Fails with [`AllocationError::CrdMissing`] when the apiserver does not serve RangeAllocations
/// (it answers a bare "404 page not found", which says nothing of what to do). A CRD installed
/// a moment ago may answer 404 while its group is registered: asked again for a few seconds.
async fn require_crd(client: &Client) -> Result<(), AllocationError> {
    let api = kube::Api::<crate::RangeAllocation>::all(client.clone());
    for attempt in 1..=10 {
        match api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 && attempt < 10 => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => break,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AllocationError::CrdMissing)
}
