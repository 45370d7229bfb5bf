//! Which Services a pod event concerns (both controllers use the same rules).
//!
//! Pod add and delete events concern every Service selecting the pod ([`services_for_pod`]).
//! Pod updates are filtered: only changes that can alter an endpoint requeue anything
//! ([`services_for_pod_update`]). Queue these keys after the batch period; Service events
//! are queued immediately.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::pod_predicates::is_ready;
use crate::service_predicates::{ServiceKey, selects};

/// What changed between two versions of a pod, as far as endpoints are concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodChange {
    /// Something in the endpoint itself may differ: deletion started, readiness flipped, the
    /// IPs changed, the pod reached a terminal phase, or its hostname/subdomain changed.
    pub pod_changed: bool,
    /// The set of selecting Services may differ (labels).
    pub labels_changed: bool,
}

fn ips(p: &Pod) -> Vec<&str> {
    crate::pod_predicates::pod_ips(p).collect()
}

fn terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn host(p: &Pod) -> (Option<&str>, Option<&str>) {
    let spec = p.spec.as_ref();
    (
        spec.and_then(|s| s.hostname.as_deref()),
        spec.and_then(|s| s.subdomain.as_deref()),
    )
}

/// Compares two versions of a pod. Node name, UID, name and namespace are immutable.
/// Two deliberate differences from upstream: the terminal phase is checked too, so a
/// not-ready pod that fails is dropped promptly rather than at the next unrelated event; and
/// a hostname/subdomain change counts as an endpoint change (upstream files it under label
/// changes, where with unchanged labels it requeues nothing).
pub fn pod_change(old: &Pod, new: &Pod) -> PodChange {
    PodChange {
        pod_changed: old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
            || is_ready(old) != is_ready(new)
            || ips(old) != ips(new)
            || terminal(old) != terminal(new)
            || host(old) != host(new),
        labels_changed: old.metadata.labels != new.metadata.labels,
    }
}

/// Keys of the Services selecting `pod` (for pod add and delete events).
pub fn services_for_pod<'a>(
    pod: &Pod,
    services: impl IntoIterator<Item = &'a Service>,
) -> BTreeSet<ServiceKey> {
    services
        .into_iter()
        .filter(|s| selects(s, pod))
        .filter_map(ServiceKey::of_service)
        .collect()
}

/// Keys of the Services to sync after a pod update. Nothing for a resync (same
/// resourceVersion) or an irrelevant change. Otherwise the Services selecting the new pod;
/// when labels changed, also those that selected the old one: all of them if the endpoint
/// itself changed, else only the Services that gained or lost the pod.
pub fn services_for_pod_update<'a>(
    old: &Pod,
    new: &Pod,
    services: impl IntoIterator<Item = &'a Service> + Clone,
) -> BTreeSet<ServiceKey> {
    if old.metadata.resource_version.is_some()
        && old.metadata.resource_version == new.metadata.resource_version
    {
        return BTreeSet::new();
    }
    let change = pod_change(old, new);
    if !change.pod_changed && !change.labels_changed {
        return BTreeSet::new();
    }
    let current = services_for_pod(new, services.clone());
    if !change.labels_changed {
        return current;
    }
    let previous = services_for_pod(old, services);
    if change.pod_changed {
        current.union(&previous).cloned().collect()
    } else {
        current.symmetric_difference(&previous).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    fn keys(names: &[&str]) -> BTreeSet<ServiceKey> {
        names.iter().map(|n| ServiceKey::new("default", *n)).collect()
    }

    fn with_rv(mut p: Pod, rv: &str) -> Pod {
        p.metadata.resource_version = Some(rv.into());
        p
    }

    #[test]
    fn update_table() {
        let services = vec![
            svc("web").selector(&[("app", "web")]).build(),
            svc("web-canary")
                .selector(&[("app", "web"), ("track", "canary")])
                .build(),
            svc("db").selector(&[("app", "db")]).build(),
            svc("all").selector(&[]).build(),
            svc("none").no_selector().build(),
        ];
        let base = pod("p").labels(&[("app", "web")]).build();
        // (name, old, new, expected Service keys)
        let cases: Vec<(&str, Pod, Pod, Vec<&str>)> = vec![
            (
                "resync",
                with_rv(base.clone(), "1"),
                with_rv(base.clone(), "1"),
                vec![],
            ),
            (
                "irrelevant change",
                with_rv(base.clone(), "1"),
                with_rv(pod("p").labels(&[("app", "web")]).phase("Pending").build(), "2"),
                vec![],
            ),
            (
                "readiness",
                base.clone(),
                pod("p").labels(&[("app", "web")]).ready(false).build(),
                vec!["all", "web"],
            ),
            (
                "ips",
                base.clone(),
                pod("p").labels(&[("app", "web")]).ips(&["10.9.9.9"]).build(),
                vec!["all", "web"],
            ),
            (
                "terminating",
                base.clone(),
                pod("p").labels(&[("app", "web")]).terminating().build(),
                vec!["all", "web"],
            ),
            (
                "failed",
                base.clone(),
                pod("p").labels(&[("app", "web")]).phase("Failed").build(),
                vec!["all", "web"],
            ),
            (
                "labels only: symmetric difference",
                base.clone(),
                pod("p").labels(&[("app", "web"), ("track", "canary")]).build(),
                vec!["web-canary"],
            ),
            (
                "labels and readiness: union",
                base.clone(),
                pod("p").labels(&[("app", "db")]).ready(false).build(),
                vec!["all", "db", "web"],
            ),
            (
                "hostname",
                base.clone(),
                pod("p").labels(&[("app", "web")]).hostname("h", "web").build(),
                vec!["all", "web"],
            ),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(
                services_for_pod_update(&old, &new, &services),
                keys(&want),
                "{name}"
            );
        }
        assert_eq!(services_for_pod(&base, &services), keys(&["all", "web"]));
        let hostname = pod_change(
            &base,
            &pod("p").labels(&[("app", "web")]).hostname("h", "web").build(),
        );
        assert_eq!(
            hostname,
            PodChange {
                pod_changed: true,
                labels_changed: false
            }
        );
    }
}
