//! The whole allocation decision in memory, without an apiserver: for unit tests of the
//! mutating route and for reasoning about a request.

use json_patch::Patch;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use portico_allocators::{IpAllocator, PortAllocator, Refusal};

use super::AllocationConfig;
use super::plan::{Assignment, IpFamily, Operation, ServicePlan, plan_service, review_name};
use super::pool::RangeState;
use super::service::{Decision, Denial, service_request};
use crate::review::{AdmissionRequest, Verdict};
use crate::status;

/// In-memory ranges with the same decision logic as [`super::ServiceAllocator`].
#[derive(Debug, Clone)]
pub struct MemoryAllocator {
    ips: Vec<(IpFamily, RangeState<IpAllocator>)>,
    ports: RangeState<PortAllocator>,
}

/// The outcome of [`MemoryAllocator::decide`]: the plan, what it took and the patch to answer.
pub type MemoryDecision = (ServicePlan, Assignment, Patch);

impl MemoryAllocator {
    /// Empty ranges as configured.
    pub fn new(config: &AllocationConfig) -> Self {
        MemoryAllocator {
            ips: config
                .service_cidrs
                .iter()
                .map(|r| (IpFamily::of_range(r), RangeState::new(IpAllocator::new(*r))))
                .collect(),
            ports: RangeState::new(PortAllocator::new(config.node_ports)),
        }
    }

    /// The configured families, primary first.
    pub fn families(&self) -> Vec<IpFamily> {
        self.ips.iter().map(|(f, _)| *f).collect()
    }

    /// The state of a ClusterIP range.
    pub fn ip_state(&self, family: IpFamily) -> Option<&RangeState<IpAllocator>> {
        self.ips.iter().find(|(f, _)| *f == family).map(|(_, s)| s)
    }

    /// The state of a ClusterIP range, mutably.
    pub fn ip_state_mut(&mut self, family: IpFamily) -> Option<&mut RangeState<IpAllocator>> {
        self.ips.iter_mut().find(|(f, _)| *f == family).map(|(_, s)| s)
    }

    /// The node-port range state.
    pub fn port_state(&self) -> &RangeState<PortAllocator> {
        &self.ports
    }

    /// The node-port range state, mutably.
    pub fn port_state_mut(&mut self) -> &mut RangeState<PortAllocator> {
        &mut self.ports
    }

    /// Plans and executes one admission, all or nothing: on a refusal no range changes.
    /// Claims expire at `expires`.
    pub fn decide(
        &mut self,
        op: Operation,
        new: Option<&Service>,
        old: Option<&Service>,
        expires: Timestamp,
    ) -> Result<MemoryDecision, Vec<Refusal>> {
        let plan = plan_service(op, new, old, &self.families())?;
        let mut scratch = self.clone();
        for (_, state) in &mut scratch.ips {
            plan.confirm(state);
        }
        plan.confirm(&mut scratch.ports);
        let mut assignment = Assignment::default();
        for family in plan.ip_families() {
            let state = scratch
                .ip_state_mut(family)
                .ok_or_else(|| vec![Refusal::Internal(format!("{family} is not configured"))])?;
            assignment
                .ips
                .extend(plan.execute_ips(family, state, expires).map_err(|r| vec![r])?);
        }
        assignment.ports = plan
            .execute_ports(&mut scratch.ports, expires)
            .map_err(|r| vec![r])?;
        *self = scratch;
        let patch = plan.patch(&assignment);
        Ok((plan, assignment, patch))
    }

    /// [`super::ServiceAllocator::admit`] in memory: the same verdict for the same review (claims
    /// expire at `expires`; a dry run changes nothing).
    pub fn admit(&mut self, request: &AdmissionRequest, expires: Timestamp) -> Verdict {
        let req = match service_request(request) {
            Ok(Some(req)) => req,
            Ok(None) => return Verdict::allow(),
            Err(message) => return Verdict::deny(status::bad_request(message)),
        };
        let name = review_name(req.new.as_ref(), req.old.as_ref());
        let mut target = self.clone();
        let decision = match target.decide(req.op, req.new.as_ref(), req.old.as_ref(), expires) {
            Ok((plan, assignment, patch)) => {
                let mut allocated: Vec<_> = assignment
                    .ips
                    .iter()
                    .map(|(_, ip)| super::Value::Ip(*ip))
                    .collect();
                allocated.extend(assignment.ports.iter().map(|p| super::Value::Port(*p)));
                Decision::Allow {
                    patch,
                    allocated,
                    released: plan.released,
                }
            }
            Err(refusals) => Decision::Deny(Denial { name, refusals }),
        };
        if !req.dry_run {
            *self = target;
        }
        decision.verdict()
    }
}
