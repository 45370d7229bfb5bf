//! Service predicates shared by both controllers: which Services are handled, which pods a
//! Service selects, and the identity of a Service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::reconcile_error::ReconcileError;

/// `namespace/name` of a Service; the work-queue key of both controllers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Service, `None` if it lacks a name (namespace defaults to empty).
    pub fn of_service(svc: &Service) -> Option<Self> {
        let name = svc.metadata.name.clone()?;
        Some(ServiceKey {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name,
        })
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether either controller manages endpoints for this Service at all: it must have a
/// selector (`spec.selector` present; an empty map selects every pod of the namespace, as
/// upstream) and must not be of type `ExternalName`.
///
/// When this is false the controllers leave everything alone: slices or an Endpoints object
/// written earlier are neither updated nor deleted (upstream behaviour, so that a selector
/// removed by mistake does not drop traffic, and so that the mirroring controller can take
/// over user-written Endpoints).
pub fn is_service_handled(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    spec.selector.is_some() && spec.type_.as_deref() != Some("ExternalName")
}

/// Whether `pod` is selected by `svc`: same namespace and every selector pair present in the
/// pod's labels. A Service without a selector selects nothing.
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if svc.metadata.namespace.as_deref().unwrap_or_default()
        != pod.metadata.namespace.as_deref().unwrap_or_default()
    {
        return false;
    }
    labels_match(selector, pod.metadata.labels.as_ref())
}

/// Equality-based selector match (the only kind a Service has).
pub fn labels_match(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The pods of `pods` that `svc` selects, in input order. The reconcile functions apply the
/// same filter themselves, so callers may pass either this or all pods of the namespace.
pub fn select_pods<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<&'a Pod> {
    pods.into_iter().filter(|p| selects(svc, p)).collect()
}

/// Upstream's `IsServiceIPSet`: a cluster IP that is neither empty nor `None`.
pub(crate) fn is_service_ip_set(svc: &Service) -> bool {
    match svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) {
        None | Some("") | Some("None") => false,
        Some(_) => true,
    }
}

/// `clusterIP: None` exactly (the legacy controller's notion of headless for port-less
/// subsets).
pub(crate) fn is_cluster_ip_none(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// `spec.publishNotReadyAddresses`.
pub(crate) fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The identity fields of a Service every reconcile needs.
#[derive(Debug, Clone)]
pub(crate) struct ServiceId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ServiceId {
    pub(crate) fn of(svc: &Service) -> Result<Self, ReconcileError> {
        let name = match svc.metadata.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Err(ReconcileError::MissingServiceName),
        };
        let namespace = match svc.metadata.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => return Err(ReconcileError::MissingServiceNamespace { name }),
        };
        let uid = match svc.metadata.uid.as_deref() {
            Some(u) if !u.is_empty() => u.to_string(),
            _ => return Err(ReconcileError::MissingServiceUid { namespace, name }),
        };
        Ok(ServiceId { namespace, name, uid })
    }

    pub(crate) fn key_string(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    #[test]
    fn handled_services() {
        let cases: Vec<(&str, Service, bool)> = vec![
            ("selector", svc("a").build(), true),
            ("empty selector selects all", svc("a").selector(&[]).build(), true),
            ("no selector", svc("a").no_selector().build(), false),
            ("external name", svc("a").type_("ExternalName").build(), false),
            (
                "no spec",
                Service {
                    spec: None,
                    ..svc("a").build()
                },
                false,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(is_service_handled(&s), want, "{name}");
        }
    }

    #[test]
    fn selection() {
        let s = svc("web").selector(&[("app", "web")]).build();
        let p1 = pod("p1").labels(&[("app", "web"), ("x", "y")]).build();
        let p2 = pod("p2").labels(&[("app", "db")]).build();
        let p3 = pod("p3").labels(&[("app", "web")]).namespace("other").build();
        let p4 = pod("p4").no_labels().build();
        let got: Vec<_> = select_pods(&s, [&p1, &p2, &p3, &p4])
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(got, vec![Some("p1".to_string())]);
        let all = svc("web").selector(&[]).build();
        assert!(selects(&all, &p4));
        assert!(!selects(&svc("web").no_selector().build(), &p1));
    }

    #[test]
    fn service_identity_errors() {
        let mut s = svc("a").build();
        s.metadata.uid = None;
        assert!(matches!(
            ServiceId::of(&s),
            Err(ReconcileError::MissingServiceUid { .. })
        ));
        s.metadata.namespace = None;
        assert!(matches!(
            ServiceId::of(&s),
            Err(ReconcileError::MissingServiceNamespace { .. })
        ));
        s.metadata.name = Some(String::new());
        assert_eq!(ServiceId::of(&s).unwrap_err(), ReconcileError::MissingServiceName);
    }
}
