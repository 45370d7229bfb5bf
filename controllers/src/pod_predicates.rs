//! Pod predicates shared by both controllers: inclusion, readiness, hostname, port lookup.

use k8s_openapi::api::core::v1::{ContainerPort, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The protocol the apiserver defaults an unset `protocol` to.
pub(crate) const DEFAULT_PROTOCOL: &str = "TCP";

/// The `Ready` condition is `True`.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// `lastTransitionTime` of the `Ready` condition; drives the trigger-time annotation.
pub(crate) fn ready_transition_time(pod: &Pod) -> Option<&Time> {
    ready_condition(pod).and_then(|c| c.last_transition_time.as_ref())
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The pod is being deleted.
pub(crate) fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Upstream's `ShouldPodBeInEndpoints` (newest): terminal pods (Failed or Succeeded, whatever
/// the restart policy) and pods without any IP are never endpoints; terminating pods only
/// when `include_terminating`. Readiness is *not* a filter.
pub(crate) fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    ) {
        return false;
    }
    let has_ip = status.is_some_and(|s| {
        s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    });
    if !has_ip {
        return false;
    }
    include_terminating || !is_terminating(pod)
}

/// `status.podIPs[*].ip`, in order.
pub(crate) fn pod_ips(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str())
}

/// The hostname is published only when the pod names this Service as its subdomain: a
/// non-empty `spec.hostname`, `spec.subdomain == service name`, same namespace. Whether the
/// Service is headless is deliberately not checked (upstream does not either).
pub(crate) fn hostname_for(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    let same_subdomain = spec.subdomain.as_deref().is_some() && spec.subdomain == svc.metadata.name;
    let same_ns = pod.metadata.namespace.as_deref().unwrap_or_default()
        == svc.metadata.namespace.as_deref().unwrap_or_default();
    (same_subdomain && same_ns).then(|| hostname.to_string())
}

/// `spec.nodeName`, empty when unscheduled.
/// The reference from an endpoint (slice or Endpoints address) to its pod, as upstream writes
/// it: kind, namespace, name and uid, no resourceVersion.
pub(crate) fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

pub(crate) fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// Resolves a Service port's `targetPort` on a pod.
///
/// * A number is used as is (it is not checked against the containers).
/// * Unset, `0` or `""` means "same as `port`" (the apiserver defaults it so).
/// * A name is looked up in the regular containers' ports, then in restartable init
///   containers (sidecars, `restartPolicy: Always`); the port must also have the Service
///   port's protocol. The first match wins, so a regular container beats a sidecar.
///
/// `None` means the name is not found; the caller leaves this port out for this pod only.
pub(crate) fn find_port(pod: &Pod, svc_port: &ServicePort) -> Option<i32> {
    let name = match &svc_port.target_port {
        None => return Some(svc_port.port),
        Some(IntOrString::Int(0)) => return Some(svc_port.port),
        Some(IntOrString::Int(n)) => return Some(*n),
        Some(IntOrString::String(s)) if s.is_empty() => return Some(svc_port.port),
        Some(IntOrString::String(s)) => s.as_str(),
    };
    let protocol = svc_port.protocol.as_deref().unwrap_or(DEFAULT_PROTOCOL);
    let spec = pod.spec.as_ref()?;
    let matches = |p: &&ContainerPort| {
        p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or(DEFAULT_PROTOCOL) == protocol
    };
    let regular = spec.containers.iter().flat_map(|c| c.ports.iter().flatten());
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .flat_map(|c| c.ports.iter().flatten());
    regular.chain(sidecars).find(matches).map(|p| p.container_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    #[test]
    fn inclusion_table() {
        let cases: Vec<(&str, Pod, bool, bool)> = vec![
            // (name, pod, include_terminating, want)
            ("running ready", pod("a").build(), false, true),
            (
                "not ready is still included",
                pod("a").ready(false).build(),
                false,
                true,
            ),
            ("failed", pod("a").phase("Failed").build(), true, false),
            (
                "failed with restartPolicy Always",
                pod("a").phase("Failed").restart_policy("Always").build(),
                true,
                false,
            ),
            ("succeeded", pod("a").phase("Succeeded").build(), true, false),
            ("pending with ip", pod("a").phase("Pending").build(), true, true),
            ("no ip", pod("a").ips(&[]).build(), true, false),
            (
                "only legacy podIP",
                pod("a").ips(&[]).legacy_pod_ip("10.1.1.1").build(),
                true,
                true,
            ),
            (
                "terminating excluded",
                pod("a").terminating().build(),
                false,
                false,
            ),
            ("terminating included", pod("a").terminating().build(), true, true),
            (
                "no status",
                Pod {
                    status: None,
                    ..pod("a").build()
                },
                true,
                false,
            ),
        ];
        for (name, p, inc, want) in cases {
            assert_eq!(should_be_in_endpoints(&p, inc), want, "{name}");
        }
    }

    #[test]
    fn hostname_rules() {
        let s = svc("web").build();
        let cases: Vec<(&str, Pod, Option<&str>)> = vec![
            (
                "hostname+subdomain",
                pod("a").hostname("h", "web").build(),
                Some("h"),
            ),
            ("other subdomain", pod("a").hostname("h", "db").build(), None),
            ("no hostname", pod("a").hostname("", "web").build(), None),
            (
                "other namespace",
                pod("a").hostname("h", "web").namespace("x").build(),
                None,
            ),
        ];
        for (name, p, want) in cases {
            assert_eq!(hostname_for(&p, &s).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn find_port_table() {
        let p = pod("a")
            .container_port("http", 8080, "TCP")
            .container_port("dns", 5353, "UDP")
            .sidecar_port("http", 9090, "TCP")
            .sidecar_port("metrics", 9100, "TCP")
            .init_port("init-only", 7000, "TCP")
            .build();
        let cases: Vec<(&str, ServicePort, Option<i32>)> = vec![
            (
                "numeric",
                sport("a", 80, IntOrString::Int(8081), "TCP"),
                Some(8081),
            ),
            (
                "zero means port",
                sport("a", 80, IntOrString::Int(0), "TCP"),
                Some(80),
            ),
            (
                "empty name means port",
                sport("a", 80, IntOrString::String(String::new()), "TCP"),
                Some(80),
            ),
            (
                "named",
                sport("a", 80, IntOrString::String("http".into()), "TCP"),
                Some(8080),
            ),
            (
                "named protocol mismatch",
                sport("a", 80, IntOrString::String("http".into()), "UDP"),
                None,
            ),
            (
                "named udp",
                sport("a", 53, IntOrString::String("dns".into()), "UDP"),
                Some(5353),
            ),
            (
                "sidecar",
                sport("a", 80, IntOrString::String("metrics".into()), "TCP"),
                Some(9100),
            ),
            (
                "plain init container ignored",
                sport("a", 80, IntOrString::String("init-only".into()), "TCP"),
                None,
            ),
            (
                "missing",
                sport("a", 80, IntOrString::String("nope".into()), "TCP"),
                None,
            ),
        ];
        for (name, sp, want) in cases {
            assert_eq!(find_port(&p, &sp), want, "{name}");
        }
        let mut unset = sport("a", 81, IntOrString::Int(1), "TCP");
        unset.target_port = None;
        assert_eq!(find_port(&p, &unset), Some(81));
    }
}
