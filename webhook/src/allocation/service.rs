//! [`ServiceAllocator`]: the ranges of one process and the admission entry points.

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use json_patch::Patch;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::core::admission::Operation as AdmissionOperation;
use kube::core::response::Status;
use portico_allocators::{IpAllocator, PortAllocator, Refusal};

use super::metrics::AllocationMetrics;
use super::plan::{Assignment, IpFamily, Operation, ServicePlan, Value, Want, plan_service, review_name};
use super::pool::{Pool, RangeKind, RangeState};
use super::repair::{self, RepairReport};
use super::store::{AllocationStore, expiry};
use super::{AllocationConfig, AllocationError};
use crate::admission::Mutate;
use crate::review::{AdmissionRequest, Verdict};
use crate::status;

/// What to answer to a Service admission.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit, applying `patch` (empty: admit unchanged).
    Allow {
        /// JSON patch setting the allocated (and kept) values.
        patch: Patch,
        /// Values taken for this Service in this admission.
        allocated: Vec<Value>,
        /// Values the Service gives up; the repair loop frees them once unreferenced.
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

    /// The answer for the webhook server.
    pub fn verdict(&self) -> Verdict {
        match self {
            Decision::Allow { patch, .. } if patch.0.is_empty() => Verdict::allow(),
            Decision::Allow { patch, .. } => match serde_json::to_value(patch) {
                Ok(p) => Verdict::allow().with_patch(p),
                Err(e) => Verdict::deny(status::internal(format!("cannot encode the patch: {e}"))),
            },
            Decision::Deny(d) => Verdict::deny(d.status()),
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

    fn internal(&self) -> Option<&Refusal> {
        self.refusals.iter().find(|r| matches!(r, Refusal::Internal(_)))
    }

    /// `Status.message`, e.g. `Service "web" is invalid: spec.clusterIPs: Invalid value:
    /// []string{"10.96.0.5"}: failed to allocate IP 10.96.0.5: provided IP is already allocated`.
    pub fn message(&self) -> String {
        self.status().message
    }

    /// The `Status` to answer with (422 `Invalid` with one cause per field error, or 500
    /// `InternalError`).
    pub fn status(&self) -> Status {
        if let Some(r) = self.internal() {
            return status::internal(match r {
                Refusal::Internal(m) => m.as_str(),
                Refusal::Invalid(_) => "",
            });
        }
        let errs: Vec<_> = self
            .refusals
            .iter()
            .filter_map(|r| r.field_error().cloned())
            .collect();
        status::invalid("", "Service", &self.name, &errs)
    }
}

/// The allocation ranges of one process (one webhook replica), backed by `RangeAllocation`
/// objects. Build one with [`ServiceAllocator::start`], share it in an `Arc`: it implements the
/// webhook's [`Mutate`] and feeds the [`repair::Repair`] loop.
pub struct ServiceAllocator {
    client: Client,
    config: AllocationConfig,
    ips: Vec<(IpFamily, AllocationStore<IpAllocator>)>,
    ports: AllocationStore<PortAllocator>,
    metrics: Option<AllocationMetrics>,
}

impl std::fmt::Debug for ServiceAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAllocator")
            .field("ips", &self.ips)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl ServiceAllocator {
    /// Opens (creating when absent) the `RangeAllocation` object of every configured range,
    /// restores them, then marks the values of every existing Service in scope, before returning.
    /// The CRD must be installed ([`super::install_crds`]). Needs `get, create, update` on
    /// `rangeallocations.portico.dev` and `list` on `services`.
    #[tracing::instrument(name = "allocation_start", skip_all, fields(prefix = %config.object_prefix))]
    pub async fn start(
        client: Client,
        config: AllocationConfig,
        metrics: Option<AllocationMetrics>,
    ) -> Result<Self, AllocationError> {
        config.validate()?;
        let mut ips = Vec::new();
        for range in &config.service_cidrs {
            let family = IpFamily::of_range(range);
            let store = AllocationStore::open(
                client.clone(),
                config.ip_object_name(family),
                IpAllocator::new(*range),
                config.max_attempts,
                metrics.clone(),
            )
            .await?;
            ips.push((family, store));
        }
        let ports = AllocationStore::open(
            client.clone(),
            config.port_object_name(),
            PortAllocator::new(config.node_ports),
            config.max_attempts,
            metrics.clone(),
        )
        .await?;
        let allocator = ServiceAllocator {
            client,
            config,
            ips,
            ports,
            metrics,
        };
        let report = allocator.rebuild().await?;
        tracing::info!(
            marked = report.unknown.len(),
            "allocation ranges restored and existing Services marked"
        );
        Ok(allocator)
    }

    /// Marks the values of every existing Service in scope that the bitmaps lack (done by
    /// [`start`](Self::start); frees nothing).
    pub async fn rebuild(&self) -> Result<RepairReport, AllocationError> {
        repair::rebuild(self).await
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration.
    pub fn config(&self) -> &AllocationConfig {
        &self.config
    }

    /// The metrics, when enabled.
    pub fn metrics(&self) -> Option<&AllocationMetrics> {
        self.metrics.as_ref()
    }

    /// The ClusterIP stores, primary family first.
    pub fn ip_stores(&self) -> &[(IpFamily, AllocationStore<IpAllocator>)] {
        &self.ips
    }

    /// The ClusterIP store of `family`.
    pub fn ip_store(&self, family: IpFamily) -> Option<&AllocationStore<IpAllocator>> {
        self.ips.iter().find(|(f, _)| *f == family).map(|(_, s)| s)
    }

    /// The node-port store.
    pub fn port_store(&self) -> &AllocationStore<PortAllocator> {
        &self.ports
    }

    /// The Services in scope (a consistent, paginated list).
    pub async fn list_services(&self) -> Result<Vec<Service>, kube::Error> {
        let api: Api<Service> = match &self.config.scope.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut params = ListParams::default().limit(500);
        if let Some(selector) = &self.config.scope.label_selector {
            params = params.labels(selector);
        }
        let mut out = Vec::new();
        loop {
            let page = api.list(&params).await?;
            out.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(out),
            }
        }
    }

    /// Decides a Service admission: plans it, takes the values (writing them with pending claims,
    /// unless `dry_run`), and returns the patch or the refusal. On a refusal or an error nothing
    /// stays taken. `new`/`old` must carry `metadata.namespace` (see [`admit`](Self::admit)).
    #[tracing::instrument(name = "allocate", skip_all, fields(op = ?op, dry_run))]
    pub async fn decide(
        &self,
        op: Operation,
        new: Option<&Service>,
        old: Option<&Service>,
        dry_run: bool,
    ) -> Result<Decision, AllocationError> {
        let name = review_name(new, old);
        let plan = match plan_service(op, new, old, &self.config.families()) {
            Ok(plan) => plan,
            Err(refusals) => return Ok(Decision::Deny(Denial { name, refusals })),
        };
        if let Some(why) = plan.passthrough {
            tracing::debug!(service = %plan.service, why, "left to the apiserver");
        }
        if !dry_run && !plan.existing.is_empty() {
            self.confirm(&plan).await;
        }
        if plan.is_noop() {
            return Ok(Decision::allow_unchanged(plan.released));
        }
        let plan = Arc::new(plan);
        let expires = expiry(self.config.pending_grace);
        let mut assignment = Assignment::default();
        let mut taken_ips: Vec<(IpFamily, Vec<IpAddr>)> = Vec::new();
        for family in plan.ip_families() {
            let Some(store) = self.ip_store(family) else {
                return Ok(Decision::Deny(Denial {
                    name,
                    refusals: vec![Refusal::Internal(format!("{family} is not configured"))],
                }));
            };
            let job_plan = Arc::clone(&plan);
            let job = move |s: &mut RangeState<IpAllocator>| job_plan.execute_ips(family, s, expires);
            let result = if dry_run {
                store.dry_run(job).await
            } else {
                store.update(job).await
            };
            let claims = plan.ip_claims.iter().filter(|c| c.family == family);
            match result {
                Ok(Ok(ips)) => {
                    for c in claims {
                        self.count(store.range(), RangeKind::ClusterIp, &c.want, true, dry_run);
                    }
                    // A dry run took nothing, so it leaves nothing to revert.
                    if !dry_run {
                        taken_ips.push((family, ips.iter().map(|(_, ip)| *ip).collect()));
                    }
                    assignment.ips.extend(ips);
                }
                Ok(Err(refusal)) => {
                    self.count_refusal(store.range(), RangeKind::ClusterIp, &refusal, dry_run);
                    self.revert(&plan, &taken_ips).await;
                    return Ok(Decision::Deny(Denial {
                        name,
                        refusals: vec![refusal],
                    }));
                }
                Err(failure) => {
                    self.revert(&plan, &taken_ips).await;
                    return Err(failure.into());
                }
            }
        }
        if !plan.port_claims.is_empty() {
            let job_plan = Arc::clone(&plan);
            let job = move |s: &mut RangeState<PortAllocator>| job_plan.execute_ports(s, expires);
            let result = if dry_run {
                self.ports.dry_run(job).await
            } else {
                self.ports.update(job).await
            };
            match result {
                Ok(Ok(ports)) => {
                    for c in &plan.port_claims {
                        self.count(self.ports.range(), RangeKind::NodePort, &c.want, true, dry_run);
                    }
                    assignment.ports = ports;
                }
                Ok(Err(refusal)) => {
                    self.count_refusal(self.ports.range(), RangeKind::NodePort, &refusal, dry_run);
                    self.revert(&plan, &taken_ips).await;
                    return Ok(Decision::Deny(Denial {
                        name,
                        refusals: vec![refusal],
                    }));
                }
                Err(failure) => {
                    self.revert(&plan, &taken_ips).await;
                    return Err(failure.into());
                }
            }
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

    /// Drops the claims an existing Service (UPDATE, DELETE) holds on its values. Best effort:
    /// the repair loop confirms them anyway.
    async fn confirm(&self, plan: &ServicePlan) {
        let plan = Arc::new(plan.clone());
        for (_, store) in &self.ips {
            let p = Arc::clone(&plan);
            if let Err(e) = store
                .update(move |s: &mut RangeState<IpAllocator>| p.confirm(s))
                .await
            {
                tracing::debug!(error = %e, "could not confirm clusterIP claims");
            }
        }
        let p = Arc::clone(&plan);
        if let Err(e) = self
            .ports
            .update(move |s: &mut RangeState<PortAllocator>| p.confirm(s))
            .await
        {
            tracing::debug!(error = %e, "could not confirm nodePort claims");
        }
    }

    /// Frees the clusterIPs taken for `plan` after a later range refused (best effort: what
    /// is not freed here expires and the repair loop frees it). Node ports come last, so they
    /// never need reverting.
    async fn revert(&self, plan: &Arc<ServicePlan>, ips: &[(IpFamily, Vec<IpAddr>)]) {
        for (family, taken) in ips {
            let Some(store) = self.ip_store(*family) else {
                continue;
            };
            let owner = plan.service.clone();
            let taken = taken.clone();
            if let Err(e) = store
                .update(move |s: &mut RangeState<IpAllocator>| {
                    for ip in &taken {
                        s.unclaim(*ip, &owner);
                    }
                })
                .await
            {
                tracing::warn!(error = %e, "could not revert clusterIP claims; they will expire");
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

    /// Answers one AdmissionReview of the mutating endpoint. Anything but a CREATE, UPDATE or
    /// DELETE of a core/v1 Service (no subresource) is admitted unchanged. A DELETE is always
    /// admitted unchanged; it only drops the Service's pending claims (see the module docs).
    /// Infrastructure failures are refused with a 500.
    pub async fn admit(&self, request: &AdmissionRequest) -> Verdict {
        let req = match service_request(request) {
            Ok(Some(req)) => req,
            Ok(None) => return Verdict::allow(),
            Err(message) => return Verdict::deny(status::bad_request(message)),
        };
        match self
            .decide(req.op, req.new.as_ref(), req.old.as_ref(), req.dry_run)
            .await
        {
            Ok(decision) => decision.verdict(),
            Err(e) => {
                tracing::warn!(error = %e, name = %request.object_name(), "allocation failed");
                Verdict::deny(status::internal(format!(
                    "portico could not allocate for this Service: {e}"
                )))
            }
        }
    }
}

/// A Service admission, decoded from a review.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// CREATE, UPDATE or DELETE.
    pub op: Operation,
    /// `request.object`, with `metadata.namespace` (and `name`) filled from the request when the
    /// object lacks them (the apiserver sends a CREATE's object without namespace).
    pub new: Option<Service>,
    /// `request.oldObject`.
    pub old: Option<Service>,
    /// `request.dryRun`.
    pub dry_run: bool,
}

/// The Service admission in a review: `Ok(None)` for anything the allocator does not handle
/// (other kinds, subresources, CONNECT); `Err` with a message (answer 400) when the object is
/// not a valid Service.
pub fn service_request(request: &AdmissionRequest) -> Result<Option<ServiceRequest>, String> {
    if !request.kind.group.is_empty() || request.kind.kind != "Service" || request.sub_resource.is_some() {
        return Ok(None);
    }
    let op = match request.operation {
        AdmissionOperation::Create => Operation::Create,
        AdmissionOperation::Update => Operation::Update,
        AdmissionOperation::Delete => Operation::Delete,
        AdmissionOperation::Connect => return Ok(None),
    };
    let decode = |field: &str, v: &Option<serde_json::Value>| -> Result<Option<Service>, String> {
        let Some(v) = v else { return Ok(None) };
        let mut svc: Service = serde_json::from_value(v.clone())
            .map_err(|e| format!("request.{field} is not a valid Service: {e}"))?;
        if svc.metadata.namespace.as_deref().unwrap_or_default().is_empty() {
            svc.metadata.namespace = request.namespace.clone();
        }
        if svc.metadata.name.as_deref().unwrap_or_default().is_empty() && !request.name.is_empty() {
            svc.metadata.name = Some(request.name.clone());
        }
        Ok(Some(svc))
    };
    Ok(Some(ServiceRequest {
        op,
        new: decode("object", &request.object)?,
        old: decode("oldObject", &request.old_object)?,
        dry_run: request.dry_run,
    }))
}

impl Mutate for ServiceAllocator {
    fn mutate<'a>(&'a self, request: &'a AdmissionRequest) -> BoxFuture<'a, Verdict> {
        Box::pin(self.admit(request))
    }
}

/// Used by tests and tools: the state of every range, as this process last saw it.
impl ServiceAllocator {
    /// The held values of every range (re-reads the objects).
    pub async fn held(&self) -> Result<Vec<Value>, AllocationError> {
        let mut out = Vec::new();
        for (_, store) in &self.ips {
            out.extend(store.read().await?.pool().held().into_iter().map(Value::Ip));
        }
        out.extend(
            self.ports
                .read()
                .await?
                .pool()
                .held()
                .into_iter()
                .map(Value::Port),
        );
        Ok(out)
    }
}
