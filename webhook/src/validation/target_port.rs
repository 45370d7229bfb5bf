//! Portico's soft rule: a Service whose named `targetPort` matches no port of the pods it selects.
//!
//! Upstream never checks this: the endpoint controllers silently skip such pods for that port, and
//! the Service ends up with no endpoints. It is a warning and never a denial, because creation order
//! is free (the pods may come later, or be fixed later) and selectors are dynamic.
//!
//! Resolution follows upstream's `FindPort`: the first port with that name *and* the Service port's
//! protocol, in the pod's containers, then in its sidecars (init containers with
//! `restartPolicy: Always`, Kubernetes 1.29+). Plain init containers are never endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use portico_allocators::field::go_quote;

use super::Options;
use super::names::{PortRef, is_valid_port_name};
use super::service::effective_protocol;

/// How many pod names a warning spells out before "and N more" (warnings should stay short:
/// kubectl prints each on one line, and the apiserver truncates them past 4 KiB in total).
const NAMED_PODS: usize = 3;

/// Whether a Service `selector` selects an object with these `labels`: every pair must be present.
///
/// An empty selector selects nothing here. A Service with no (or an empty) selector gets no
/// endpoints from the endpoint controllers: its endpoints are managed by hand, so no pod is "its".
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    if selector.is_empty() {
        return false;
    }
    let Some(labels) = labels else { return false };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `service` selects `pod`: its selector matches the pod's labels and, when both objects
/// carry a namespace, they are the same (AdmissionReview objects may leave it empty on CREATE; the
/// caller then compares with the request's namespace).
pub fn service_selects(service: &Service, pod: &Pod) -> bool {
    let same_namespace = match (&service.metadata.namespace, &pod.metadata.namespace) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    same_namespace && selector_matches(selector, pod.metadata.labels.as_ref())
}

/// What a pod offers for a port name and protocol.
enum Lookup {
    Found,
    /// The name exists, but only with these (other) protocols.
    OtherProtocols(BTreeSet<String>),
    Missing,
}

fn lookup(pod: &Pod, name: &str, protocol: &str) -> Lookup {
    let Some(spec) = &pod.spec else {
        return Lookup::Missing;
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut other = BTreeSet::new();
    for container in spec.containers.iter().chain(sidecars) {
        for port in container.ports.iter().flatten() {
            if port.name.as_deref() == Some(name) {
                let p = effective_protocol(port.protocol.as_ref());
                if p == protocol {
                    return Lookup::Found;
                }
                other.insert(p.to_owned());
            }
        }
    }
    if other.is_empty() {
        Lookup::Missing
    } else {
        Lookup::OtherProtocols(other)
    }
}

fn pod_name(pod: &Pod) -> &str {
    let meta = &pod.metadata;
    meta.name
        .as_deref()
        .or(meta.generate_name.as_deref())
        .unwrap_or_default()
}

/// `pod "a"` / `pods "a", "b", "c" and 2 more`, names sorted, and whether it is plural.
fn pods_phrase(mut names: Vec<&str>) -> (String, bool) {
    names.sort_unstable();
    names.dedup();
    let shown: Vec<String> = names.iter().take(NAMED_PODS).map(|n| go_quote(n)).collect();
    let plural = names.len() > 1;
    let mut phrase = format!("{} {}", if plural { "pods" } else { "pod" }, shown.join(", "));
    if names.len() > NAMED_PODS {
        phrase.push_str(&format!(" and {} more", names.len() - NAMED_PODS));
    }
    (phrase, plural)
}

/// The two warning tails for one `(name, protocol)`: pods without the name, pods with it for
/// other protocols only.
type Tails = (Option<String>, Option<String>);

/// The `targetPort` warnings of one Service, port by port, against a fixed set of pods.
///
/// Cost: the pods' ports are indexed once (how many pods serve each `(name, protocol)`); a port
/// every pod serves costs a lookup, and the pods are looked at one by one only for a
/// `(name, protocol)` that warns, once per distinct pair. At most `limit` warnings are made.
pub(crate) struct TargetPortWarnings<'p> {
    pods: &'p [&'p Pod],
    serving: HashMap<(&'p str, &'p str), usize>,
    tails: HashMap<(String, String), Tails>,
    skip: bool,
    limit: usize,
    warnings: Vec<String>,
}

impl<'p> TargetPortWarnings<'p> {
    /// For a Service of type `service_type` (absent: ClusterIP) selecting `pods`.
    pub(crate) fn new(service_type: Option<&str>, pods: &'p [&'p Pod], limit: usize) -> Self {
        let mut serving: HashMap<(&str, &str), usize> = HashMap::new();
        for pod in pods {
            let mut seen = HashSet::new();
            for port in pod_ports(pod) {
                if let Some(name) = port.name.as_deref() {
                    let key = (name, effective_protocol(port.protocol.as_ref()));
                    if seen.insert(key) {
                        *serving.entry(key).or_default() += 1;
                    }
                }
            }
        }
        TargetPortWarnings {
            pods,
            serving,
            tails: HashMap::new(),
            // No pods, no warning: the Service may simply come first.
            skip: pods.is_empty() || service_type == Some("ExternalName") || limit == 0,
            limit,
            warnings: Vec::new(),
        }
    }

    /// Whether no further port can add a warning.
    pub(crate) fn done(&self) -> bool {
        self.skip || self.warnings.len() >= self.limit
    }

    /// Service port `i`, with its `targetPort` and protocol as written.
    pub(crate) fn port(&mut self, i: usize, target: Option<PortRef<'_>>, protocol: Option<&str>) {
        if self.done() {
            return;
        }
        let Some(PortRef::Str(name)) = target else {
            return;
        };
        if !is_valid_port_name(name, &Options::default()).is_empty() {
            return;
        }
        let protocol = protocol.unwrap_or("TCP");
        if self.serving.get(&(name, protocol)) == Some(&self.pods.len()) {
            return;
        }
        let pods = self.pods;
        let (missing, mismatched) = self
            .tails
            .entry((name.to_owned(), protocol.to_owned()))
            .or_insert_with(|| tails(pods, name, protocol));
        let field = format!("spec.ports[{i}].targetPort");
        for tail in [missing, mismatched].into_iter().flatten() {
            if self.warnings.len() < self.limit {
                self.warnings.push(format!("{field}: {tail}"));
            }
        }
    }

    /// The warnings, in port order.
    pub(crate) fn into_warnings(self) -> Vec<String> {
        self.warnings
    }
}

/// The ports a pod offers to a Service: its containers', then its sidecars' (init containers
/// with `restartPolicy: Always`).
fn pod_ports(pod: &Pod) -> impl Iterator<Item = &k8s_openapi::api::core::v1::ContainerPort> {
    let spec = pod.spec.as_ref();
    let sidecars = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.into_iter()
        .flat_map(|s| s.containers.iter())
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
}

fn tails(pods: &[&Pod], name: &str, protocol: &str) -> Tails {
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut other_protocols = BTreeSet::new();
    for pod in pods {
        match lookup(pod, name, protocol) {
            Lookup::Found => {}
            Lookup::Missing => missing.push(pod_name(pod)),
            Lookup::OtherProtocols(found) => {
                mismatched.push(pod_name(pod));
                other_protocols.extend(found);
            }
        }
    }
    let missing = (!missing.is_empty()).then(|| {
        let (pods, plural) = pods_phrase(missing);
        let (verb, tail) = if plural {
            ("declare", "they are not endpoints")
        } else {
            ("declares", "it is not an endpoint")
        };
        format!(
            "{pods} {verb} no port named {}, so {tail} of this Service port",
            go_quote(name)
        )
    });
    let mismatched = (!mismatched.is_empty()).then(|| {
        let (pods, plural) = pods_phrase(mismatched);
        let (verb, tail) = if plural {
            ("declare", "they are not endpoints")
        } else {
            ("declares", "it is not an endpoint")
        };
        let others: Vec<String> = other_protocols.into_iter().collect();
        format!(
            "{pods} {verb} port {} only for {}, not {protocol}, so {tail} of this Service port",
            go_quote(name),
            others.join("/")
        )
    });
    (missing, mismatched)
}

/// Warnings for the named `targetPort`s of `service` that some of `pods` cannot serve.
///
/// `pods` are the pods the Service currently selects (see [`service_selects`]); the caller also
/// decides whether terminating or finished pods count. No pods, no warning: the Service may simply
/// come first. A port whose `targetPort` is a number, absent, or not a valid name (already an error)
/// gets no warning. At most two warnings per Service port, one for pods without the name and one
/// for pods that declare it with another protocol; each names the pods, quoted like Go's `%q`, so a
/// warning never carries a control character (the apiserver would silently drop it).
pub fn target_port_warnings(service: &Service, pods: &[&Pod]) -> Vec<String> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let mut w = TargetPortWarnings::new(spec.type_.as_deref(), pods, usize::MAX);
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        w.port(
            i,
            port.target_port.as_ref().map(PortRef::of),
            port.protocol.as_deref(),
        );
    }
    w.into_warnings()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(name: &str, containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(labels(&[("app", "web")])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn container(ports: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ContainerPort {
                        name: Some((*n).into()),
                        container_port: 80,
                        protocol: (!p.is_empty()).then(|| (*p).to_owned()),
                        ..ContainerPort::default()
                    })
                    .collect(),
            ),
            ..Container::default()
        }
    }

    fn service(ports: &[(&str, Option<IntOrString>)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(labels(&[("app", "web")])),
                ports: Some(
                    ports
                        .iter()
                        .enumerate()
                        .map(|(i, (proto, target))| ServicePort {
                            name: Some(format!("p{i}")),
                            port: 80 + i as i32,
                            protocol: (!proto.is_empty()).then(|| (*proto).to_owned()),
                            target_port: target.clone(),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn named(n: &str) -> Option<IntOrString> {
        Some(IntOrString::String(n.into()))
    }

    #[test]
    fn selectors() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(selector_matches(&labels(&[("app", "web")]), Some(&l)));
        assert!(selector_matches(&l, Some(&l)));
        assert!(!selector_matches(&labels(&[("app", "db")]), Some(&l)));
        assert!(!selector_matches(
            &labels(&[("app", "web"), ("x", "y")]),
            Some(&l)
        ));
        assert!(!selector_matches(&labels(&[("app", "web")]), None));
        assert!(
            !selector_matches(&BTreeMap::new(), Some(&l)),
            "an empty selector selects nothing"
        );

        let svc = service(&[]);
        let p = pod("a", vec![], vec![]);
        assert!(service_selects(&svc, &p));
        let mut elsewhere = p.clone();
        elsewhere.metadata.namespace = Some("other".into());
        assert!(!service_selects(&svc, &elsewhere));
        let mut unset = p.clone();
        unset.metadata.namespace = None;
        assert!(service_selects(&svc, &unset));
        let mut no_selector = svc.clone();
        no_selector.spec.as_mut().unwrap().selector = None;
        assert!(!service_selects(&no_selector, &p));
    }

    #[test]
    fn no_warning_when_the_name_resolves() {
        let svc = service(&[
            ("TCP", named("http")),
            ("", named("http")),
            ("TCP", Some(IntOrString::Int(8080))),
            ("TCP", None),
        ]);
        let a = pod("a", vec![container(&[("http", "TCP")])], vec![]);
        let b = pod("b", vec![container(&[]), container(&[("http", "")])], vec![]);
        assert!(target_port_warnings(&svc, &[&a, &b]).is_empty());
        // Sidecars count (FindPort, 1.29+), plain init containers do not.
        let mut sidecar = container(&[("http", "TCP")]);
        sidecar.restart_policy = Some("Always".into());
        let c = pod("c", vec![], vec![sidecar]);
        assert!(target_port_warnings(&svc, &[&c]).is_empty());
        let d = pod("d", vec![], vec![container(&[("http", "TCP")])]);
        assert_eq!(
            target_port_warnings(&svc, &[&d]),
            [
                r#"spec.ports[0].targetPort: pod "d" declares no port named "http", so it is not an endpoint of this Service port"#,
                r#"spec.ports[1].targetPort: pod "d" declares no port named "http", so it is not an endpoint of this Service port"#,
            ]
        );
    }

    #[test]
    fn no_pods_or_no_name_means_no_warning() {
        let svc = service(&[("TCP", named("metrics"))]);
        assert!(
            target_port_warnings(&svc, &[]).is_empty(),
            "creation order is free"
        );
        let p = pod("a", vec![container(&[])], vec![]);
        let mut external = svc.clone();
        external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert!(target_port_warnings(&external, &[&p]).is_empty());
        assert!(target_port_warnings(&Service::default(), &[&p]).is_empty());
        let invalid = service(&[
            ("TCP", named("Metrics")),
            ("TCP", named("")),
            ("TCP", named("8080")),
        ]);
        assert!(
            target_port_warnings(&invalid, &[&p]).is_empty(),
            "already refused as errors"
        );
    }

    #[test]
    fn missing_names_list_the_pods() {
        let svc = service(&[("TCP", named("metrics"))]);
        let ok = pod("ok", vec![container(&[("metrics", "TCP")])], vec![]);
        let pods: Vec<Pod> = ["web-e", "web-b", "web-d", "web-a", "web-c"]
            .iter()
            .map(|n| pod(n, vec![container(&[("http", "TCP")])], vec![]))
            .collect();
        let mut refs: Vec<&Pod> = pods.iter().collect();
        refs.push(&ok);
        assert_eq!(
            target_port_warnings(&svc, &refs),
            [
                r#"spec.ports[0].targetPort: pods "web-a", "web-b", "web-c" and 2 more declare no port named "metrics", so they are not endpoints of this Service port"#
            ]
        );
        assert_eq!(
            target_port_warnings(&svc, &refs[..2]),
            [
                r#"spec.ports[0].targetPort: pods "web-b", "web-e" declare no port named "metrics", so they are not endpoints of this Service port"#
            ]
        );
        assert_eq!(
            target_port_warnings(&svc, &refs[..3]),
            [
                r#"spec.ports[0].targetPort: pods "web-b", "web-d", "web-e" declare no port named "metrics", so they are not endpoints of this Service port"#
            ]
        );
        let specless = Pod {
            metadata: ObjectMeta {
                generate_name: Some("job-".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        assert_eq!(
            target_port_warnings(&svc, &[&specless]),
            [
                r#"spec.ports[0].targetPort: pod "job-" declares no port named "metrics", so it is not an endpoint of this Service port"#
            ]
        );
    }

    #[test]
    fn protocol_mismatch_is_its_own_warning() {
        let svc = service(&[("TCP", named("dns")), ("UDP", named("dns"))]);
        let udp = pod("dns-1", vec![container(&[("dns", "UDP")])], vec![]);
        let both = pod(
            "dns-2",
            vec![container(&[("dns", "UDP")]), container(&[("dns", "TCP")])],
            vec![],
        );
        let sctp = pod("dns-3", vec![container(&[("dns", "SCTP")])], vec![]);
        let none = pod("dns-4", vec![container(&[])], vec![]);
        assert_eq!(
            target_port_warnings(&svc, &[&udp, &both, &sctp, &none]),
            [
                r#"spec.ports[0].targetPort: pod "dns-4" declares no port named "dns", so it is not an endpoint of this Service port"#,
                r#"spec.ports[0].targetPort: pods "dns-1", "dns-3" declare port "dns" only for SCTP/UDP, not TCP, so they are not endpoints of this Service port"#,
                r#"spec.ports[1].targetPort: pod "dns-4" declares no port named "dns", so it is not an endpoint of this Service port"#,
                r#"spec.ports[1].targetPort: pod "dns-3" declares port "dns" only for SCTP, not UDP, so it is not an endpoint of this Service port"#,
            ]
        );
    }

    #[test]
    fn hostile_pod_names_are_quoted() {
        let svc = service(&[("TCP", named("http"))]);
        let p = pod("a\nb\u{200b}\"", vec![], vec![]);
        let w = target_port_warnings(&svc, &[&p]);
        assert_eq!(
            w,
            [
                r#"spec.ports[0].targetPort: pod "a\nb\u200b\"" declares no port named "http", so it is not an endpoint of this Service port"#
            ]
        );
        assert!(w.iter().all(|w| !w.chars().any(char::is_control)));
    }
}
