//! The `endpoints.kubernetes.io/last-change-trigger-time` value: the time of the oldest change
//! (pod readiness transition, Service creation) not yet reflected in a write. kube-proxy
//! subtracts it from the time it programs the rules to export network programming latency.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::pod_predicates::ready_transition_time;
use crate::service_predicates::ServiceKey;

/// Formats a trigger time as the annotation expects: RFC 3339 in UTC with nanoseconds and
/// trailing zeros dropped (Go's `RFC3339Nano`), e.g. `2024-05-01T10:00:00.5Z`.
pub fn format_trigger_time(t: &Time) -> String {
    // jiff's default Display is exactly that: UTC, `Z`, minimal fractional digits.
    t.0.to_string()
}

/// Remembers, per Service, what the last computation saw, so that the next computation can
/// report only changes that happened since.
///
/// Pure state; no clock. Each controller needs its own instance (the EndpointSlice and the
/// Endpoints controller write independently). Call [`TriggerTimeTracker::compute`] once per
/// sync of a Service, with the pods that the sync uses, *before* building the plan, even if
/// the plan then turns out empty; call [`TriggerTimeTracker::delete_service`] when the Service
/// is gone.
#[derive(Debug, Default, Clone)]
pub struct TriggerTimeTracker {
    services: HashMap<ServiceKey, ServiceState>,
}

#[derive(Debug, Default, Clone)]
struct ServiceState {
    service_time: Option<Time>,
    pod_times: HashMap<String, Time>,
}

impl TriggerTimeTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The trigger time for this sync of `svc`:
    /// * the first time a Service is seen (or after `delete_service`), its creationTimestamp;
    /// * otherwise the earliest of: the Ready-condition `lastTransitionTime` of every pod whose
    ///   transition is newer than the one remembered for that pod name (a pod not seen before
    ///   counts with its own time), and the Service creationTimestamp if it is newer than the
    ///   remembered one;
    /// * `None` when nothing changed, which removes the annotation from the objects written.
    ///
    /// The state is replaced by what this call saw. Pods without a Ready transition time are
    /// ignored. A Service without a name yields `None` and is not tracked.
    pub fn compute(&mut self, svc: &Service, pods: &[&Pod]) -> Option<Time> {
        let key = ServiceKey::of_service(svc)?;
        let service_time = svc.metadata.creation_timestamp.clone();
        let pod_times: HashMap<String, Time> = pods
            .iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, ready_transition_time(p)?.clone())))
            .collect();
        let new_state = ServiceState {
            service_time: service_time.clone(),
            pod_times,
        };
        let Some(old) = self.services.insert(key, new_state.clone()) else {
            return service_time;
        };
        let mut min: Option<Time> = None;
        let mut consider = |t: &Time| {
            if min.as_ref().is_none_or(|m| t < m) {
                min = Some(t.clone());
            }
        };
        for (name, t) in &new_state.pod_times {
            if old.pod_times.get(name).is_none_or(|prev| t > prev) {
                consider(t);
            }
        }
        if let Some(st) = &new_state.service_time
            && old.service_time.as_ref().is_none_or(|prev| st > prev)
        {
            consider(st);
        }
        min
    }

    /// Forgets a Service (call when it is deleted).
    pub fn delete_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    #[test]
    fn new_service_without_pods_is_its_creation_time() {
        let mut tr = TriggerTimeTracker::new();
        let s = svc("web").created(t(2)).build();
        assert_eq!(tr.compute(&s, &[]), Some(t(2)));
    }

    #[test]
    fn pods_added_updated_unchanged_deleted() {
        let mut tr = TriggerTimeTracker::new();
        let s = svc("web").created(t(0)).build();
        assert_eq!(tr.compute(&s, &[]), Some(t(0)));
        let p1 = pod("p1").ready_at(t(2)).build();
        let p2 = pod("p2").ready_at(t(1)).build();
        assert_eq!(
            tr.compute(&s, &[&p1, &p2]),
            Some(t(1)),
            "pods added: the earliest"
        );
        let p1b = pod("p1").ready_at(t(4)).build();
        assert_eq!(tr.compute(&s, &[&p1b, &p2]), Some(t(4)), "pod updated");
        assert_eq!(tr.compute(&s, &[&p1b, &p2]), None, "unchanged");
        assert_eq!(tr.compute(&s, &[&p2]), None, "pod deleted");
        let p1c = pod("p1").ready_at(t(4)).build();
        assert_eq!(tr.compute(&s, &[&p1c, &p2]), Some(t(4)), "pod added back");
        let no_time = pod("p3").build();
        assert_eq!(
            tr.compute(&s, &[&p1c, &p2, &no_time]),
            None,
            "pods without a transition time are ignored"
        );
    }

    #[test]
    fn service_deleted_then_added() {
        let mut tr = TriggerTimeTracker::new();
        let s = svc("web").created(t(1)).build();
        let p = pod("p1").ready_at(t(2)).build();
        tr.compute(&s, &[&p]);
        tr.compute(&s, &[&p]);
        tr.delete_service(&ServiceKey::new("default", "web"));
        let s2 = svc("web").created(t(3)).build();
        assert_eq!(tr.compute(&s2, &[&p]), Some(t(3)));
    }

    #[test]
    fn formatting_trims_fraction() {
        use k8s_openapi::jiff::Timestamp;
        assert_eq!(
            format_trigger_time(&Time(Timestamp::new(0, 500_000_000).unwrap())),
            "1970-01-01T00:00:00.5Z"
        );
        assert_eq!(
            format_trigger_time(&Time(Timestamp::new(1, 0).unwrap())),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(
            format_trigger_time(&Time(Timestamp::new(0, 123_456_789).unwrap())),
            "1970-01-01T00:00:00.123456789Z"
        );
    }
}
