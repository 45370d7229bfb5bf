//! From pods to endpoints: address types of a Service, endpoint construction and conditions,
//! and the identity under which endpoints are diffed.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

use crate::address_family::{AddressType, canonical_ip, family_of_loose, parse_ip_sloppy};
use crate::natural::NaturalString;
use crate::pod_predicates::{hostname_for, is_ready, is_terminating, node_name, pod_ips, target_ref};
use crate::service_predicates::{is_service_ip_set, publish_not_ready};

/// The address types a Service gets slices for: its `spec.ipFamilies` (unknown entries
/// ignored); when that is empty (objects from old apiservers), the family of the cluster IP,
/// or both families for a Service without a cluster IP.
pub(crate) fn address_types(svc: &Service) -> BTreeSet<AddressType> {
    let spec = svc.spec.as_ref();
    let mut types: BTreeSet<AddressType> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| AddressType::parse(f))
        .collect();
    if types.is_empty() {
        if is_service_ip_set(svc) {
            types.insert(family_of_loose(
                spec.and_then(|s| s.cluster_ip.as_deref()).unwrap_or_default(),
            ));
        } else {
            types.extend([AddressType::IPv4, AddressType::IPv6]);
        }
    }
    types
}

/// Builds the endpoint of `pod` for one address type. `zone` is the zone label of the pod's
/// node when the node is known.
///
/// Conditions (all three always set): `serving` = pod Ready, `terminating` = pod has a
/// deletionTimestamp, `ready` = `publishNotReadyAddresses || (serving && !terminating)`.
/// The targetRef carries no resourceVersion: publishing it churned every slice on every pod
/// status write. The returned endpoint may have no addresses (pod has no IP of this family);
/// callers must skip it then.
pub(crate) fn build_endpoint(pod: &Pod, svc: &Service, at: AddressType, zone: Option<String>) -> Endpoint {
    // As the pod reports them, as upstream writes them (no canonical form); one that does not
    // parse is skipped (upstream would write it and have the whole slice refused).
    let addresses: Vec<String> = pod_ips(pod)
        .filter(|ip| parse_ip_sloppy(ip).is_some() && family_of_loose(ip) == at)
        .map(str::to_string)
        .collect();
    let serving = is_ready(pod);
    let terminating = is_terminating(pod);
    let ready = publish_not_ready(svc) || (serving && !terminating);
    let node = node_name(pod);
    Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname_for(pod, svc),
        node_name: (!node.is_empty()).then(|| node.to_string()),
        zone: zone.filter(|z| !z.is_empty()),
        target_ref: Some(target_ref(pod)),
        hints: None,
        deprecated_topology: None,
    }
}

/// The identity of an endpoint: which pod (namespace, name), its sorted addresses and its
/// hostname. Two endpoints with the same identity are "the same endpoint", possibly with
/// changed attributes (an in-place update); anything else is a removal plus an addition.
/// Including the pod name keeps two pods that share an IP (hostNetwork, a reused IP) apart.
/// The derived order (pod namespace, pod name in natural order, ...) is the order new
/// endpoints are placed in: see [`crate::natural`] for why natural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EndpointKey {
    namespace: String,
    name: NaturalString,
    addresses: Vec<String>,
    hostname: String,
}

pub(crate) fn endpoint_key(ep: &Endpoint) -> EndpointKey {
    let mut addresses: Vec<String> = ep
        .addresses
        .iter()
        .map(|a| canonical_ip(a).map(|(_, c)| c).unwrap_or_else(|| a.clone()))
        .collect();
    addresses.sort();
    let target = ep.target_ref.as_ref();
    EndpointKey {
        namespace: target.and_then(|t| t.namespace.clone()).unwrap_or_default(),
        name: NaturalString(target.and_then(|t| t.name.clone()).unwrap_or_default()),
        addresses,
        hostname: ep.hostname.clone().unwrap_or_default(),
    }
}

/// Whether two endpoints of the same identity also agree on everything else that matters:
/// nodeName, zone, the three conditions (an unset condition differs from `false`) and the
/// targetRef apart from its resourceVersion. Hints are reconciled separately.
pub(crate) fn equal_beyond_key(a: &Endpoint, b: &Endpoint) -> bool {
    let cond = |e: &Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    let target = |e: &Endpoint| {
        e.target_ref.clone().map(|mut t| {
            t.resource_version = None;
            t
        })
    };
    a.node_name == b.node_name && a.zone == b.zone && cond(a) == cond(b) && target(a) == target(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    #[test]
    fn address_types_table() {
        use AddressType::*;
        let cases: Vec<(&str, Service, Vec<AddressType>)> = vec![
            ("v4", svc("s").build(), vec![IPv4]),
            (
                "dual",
                svc("s").families(&["IPv6", "IPv4"]).build(),
                vec![IPv4, IPv6],
            ),
            (
                "unknown ignored",
                svc("s").families(&["IPv5", "IPv6"]).build(),
                vec![IPv6],
            ),
            (
                "no families, v6 cluster ip",
                svc("s").families(&[]).cluster_ip("fd00::10").build(),
                vec![IPv6],
            ),
            (
                "no families, v4 cluster ip",
                svc("s").families(&[]).build(),
                vec![IPv4],
            ),
            (
                "no families, headless",
                svc("s").families(&[]).headless().build(),
                vec![IPv4, IPv6],
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(address_types(&s).into_iter().collect::<Vec<_>>(), want, "{name}");
        }
    }

    #[test]
    fn conditions_table() {
        // (name, pod, pnra, ready, serving, terminating)
        let cases: Vec<(&str, Pod, bool, bool, bool, bool)> = vec![
            ("ready", pod("a").build(), false, true, true, false),
            (
                "not ready",
                pod("a").ready(false).build(),
                false,
                false,
                false,
                false,
            ),
            (
                "ready terminating",
                pod("a").terminating().build(),
                false,
                false,
                true,
                true,
            ),
            (
                "not ready terminating",
                pod("a").ready(false).terminating().build(),
                false,
                false,
                false,
                true,
            ),
            (
                "pnra not ready",
                pod("a").ready(false).build(),
                true,
                true,
                false,
                false,
            ),
            (
                "pnra terminating",
                pod("a").terminating().build(),
                true,
                true,
                true,
                true,
            ),
        ];
        for (name, p, pnra, ready, serving, terminating) in cases {
            let s = if pnra {
                svc("web").pnra().build()
            } else {
                svc("web").build()
            };
            let ep = build_endpoint(&p, &s, AddressType::IPv4, None);
            let c = ep.conditions.unwrap();
            assert_eq!(
                (c.ready, c.serving, c.terminating),
                (Some(ready), Some(serving), Some(terminating)),
                "{name}"
            );
        }
    }

    #[test]
    fn endpoint_fields() {
        let p = pod("a")
            .ips(&["10.0.0.1", "fd00::0001", "bogus"])
            .node("n1")
            .hostname("h", "web")
            .build();
        let s = svc("web").build();
        let v4 = build_endpoint(&p, &s, AddressType::IPv4, Some("z1".into()));
        assert_eq!(v4.addresses, vec!["10.0.0.1"]);
        assert_eq!(v4.node_name.as_deref(), Some("n1"));
        assert_eq!(v4.zone.as_deref(), Some("z1"));
        assert_eq!(v4.hostname.as_deref(), Some("h"));
        let tr = v4.target_ref.unwrap();
        assert_eq!(
            (
                tr.kind.as_deref(),
                tr.namespace.as_deref(),
                tr.name.as_deref(),
                tr.uid.as_deref()
            ),
            (Some("Pod"), Some("default"), Some("a"), Some("uid-a"))
        );
        assert!(tr.resource_version.is_none());
        let v6 = build_endpoint(&p, &s, AddressType::IPv6, Some(String::new()));
        assert_eq!(v6.addresses, vec!["fd00::0001"], "as the pod reports it");
        assert_eq!(v6.zone, None, "empty zone label is no zone");
    }

    #[test]
    fn identity_and_attributes() {
        let a = ep("p1", "10.0.0.1", true);
        let mut b = a.clone();
        b.target_ref.as_mut().unwrap().resource_version = Some("7".into());
        b.hints = Some(Default::default());
        assert_eq!(endpoint_key(&a), endpoint_key(&b));
        assert!(equal_beyond_key(&a, &b), "RV and hints are not attributes");
        b.zone = Some("z".into());
        assert!(!equal_beyond_key(&a, &b));
        let mut c = a.clone();
        c.conditions.as_mut().unwrap().terminating = None;
        assert!(!equal_beyond_key(&a, &c), "unset differs from false");
        let d = ep("p2", "10.0.0.1", true);
        assert_ne!(endpoint_key(&a), endpoint_key(&d), "same IP, other pod");
        let mut e = a.clone();
        e.addresses = vec!["010.0.0.1".into()];
        assert_eq!(
            endpoint_key(&a),
            endpoint_key(&e),
            "addresses compared canonically"
        );
    }
}
