//! Legacy Endpoints subsets: one address per pod, grouped so that ports with the same
//! address set share a subset, and a canonical form for comparisons.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Pod, Service};

use crate::address_family::{AddressType, family_of_loose, ip_sort_key, parse_ip_sloppy};
use crate::pod_predicates::{
    DEFAULT_PROTOCOL, find_port, hostname_for, is_ready, node_name, pod_ips, should_be_in_endpoints,
    target_ref,
};
use crate::service_predicates::{is_cluster_ip_none, is_service_ip_set, publish_not_ready, selects};

/// The single address of a pod in a legacy Endpoints object: the first pod IP of the
/// Service's primary family (`ipFamilies[0]`; without ipFamilies, the family of the cluster IP,
/// or for a headless Service the family of `status.podIP`). `None` if the pod has no IP of
/// that family.
pub(crate) fn endpoint_address(svc: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let spec = svc.spec.as_ref();
    let family = match spec.and_then(|s| s.ip_families.as_ref()).and_then(|f| f.first()) {
        Some(f) => AddressType::parse(f).unwrap_or(AddressType::IPv4),
        None if is_service_ip_set(svc) => {
            family_of_loose(spec.and_then(|s| s.cluster_ip.as_deref()).unwrap_or_default())
        }
        None => family_of_loose(
            pod.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .unwrap_or_default(),
        ),
    };
    // Written as the pod reports it, as upstream does (no canonical form). An address that
    // does not parse at all is skipped rather than written: upstream would count it as IPv4
    // and have the apiserver refuse the whole Endpoints object.
    let ip = pod_ips(pod)
        .find(|ip| parse_ip_sloppy(ip).is_some() && family_of_loose(ip) == family)?
        .to_string();
    Some(EndpointAddress {
        ip,
        hostname: hostname_for(pod, svc),
        // Always set, even when empty, as upstream does.
        node_name: Some(node_name(pod).to_string()),
        target_ref: Some(target_ref(pod)),
    })
}

/// Identity of an address within a port: (IP in 16-byte order, IP text, pod UID).
type AddrKey = ([u8; 17], String, String);

fn addr_key(a: &EndpointAddress) -> AddrKey {
    let uid = a
        .target_ref
        .as_ref()
        .and_then(|t| t.uid.clone())
        .unwrap_or_default();
    (ip_sort_key(&a.ip), a.ip.clone(), uid)
}

type PortNorm = (String, i32, String, Option<String>);

fn port_norm(p: &EndpointPort) -> PortNorm {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| DEFAULT_PROTOCOL.to_string()),
        p.app_protocol.clone(),
    )
}

/// Builds the packed, sorted subsets for a Service's pods.
///
/// Per pod (terminating pods only with `publishNotReadyAddresses`) and per resolvable Service
/// port, the pod's address goes into `addresses` if the Service publishes not-ready addresses
/// or the pod is Ready, else into `notReadyAddresses`. A Service without ports gets port-less
/// subsets only when it is `clusterIP: None`. Packing: an address is de-duplicated by (IP, pod
/// UID) per port, not-ready wins over ready, and ports whose address→readiness sets are equal
/// share one subset. Addresses are sorted by IP bytes then UID, ports by name; subsets by
/// their addresses.
pub(crate) fn build(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let pnra = publish_not_ready(svc);
    let svc_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let portless = svc_ports.is_empty() && is_cluster_ip_none(svc);

    let mut selected: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| selects(svc, p) && should_be_in_endpoints(p, pnra))
        .collect();
    selected.sort_by(|a, b| (&a.metadata.name, &a.metadata.uid).cmp(&(&b.metadata.name, &b.metadata.uid)));

    // port (None = the port-less group) -> address -> (address, ready)
    type ByAddr = BTreeMap<AddrKey, (EndpointAddress, bool)>;
    let mut by_port: BTreeMap<Option<PortNorm>, (Option<EndpointPort>, ByAddr)> = BTreeMap::new();
    let mut add = |port: Option<EndpointPort>, addr: &EndpointAddress, ready: bool| {
        let entry = by_port
            .entry(port.as_ref().map(port_norm))
            .or_insert_with(|| (port, BTreeMap::new()));
        entry
            .1
            .entry(addr_key(addr))
            .and_modify(|(_, r)| *r = *r && ready)
            .or_insert_with(|| (addr.clone(), ready));
    };
    for pod in selected {
        let Some(addr) = endpoint_address(svc, pod) else {
            continue;
        };
        let ready = pnra || is_ready(pod);
        if svc_ports.is_empty() {
            if portless {
                add(None, &addr, ready);
            }
            continue;
        }
        for sp in &svc_ports {
            let Some(port) = find_port(pod, sp) else { continue };
            let ep = EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: Some(
                    sp.protocol
                        .clone()
                        .unwrap_or_else(|| DEFAULT_PROTOCOL.to_string()),
                ),
                app_protocol: sp.app_protocol.clone(),
            };
            add(Some(ep), &addr, ready);
        }
    }

    // Group ports by identical address→readiness sets.
    type Signature = Vec<(AddrKey, bool)>;
    let mut groups: BTreeMap<Signature, (Vec<EndpointPort>, ByAddr)> = BTreeMap::new();
    for (port, addrs) in by_port.into_values() {
        let sig: Signature = addrs.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
        let g = groups.entry(sig).or_insert_with(|| (Vec::new(), addrs));
        g.0.extend(port);
    }
    groups
        .into_values()
        .map(|(mut ports, addrs)| {
            ports.sort_by_cached_key(port_norm);
            let (ready, not_ready): (Vec<_>, Vec<_>) = addrs.into_values().partition(|(_, r)| *r);
            let strip = |v: Vec<(EndpointAddress, bool)>| {
                let v: Vec<EndpointAddress> = v.into_iter().map(|(a, _)| a).collect();
                (!v.is_empty()).then_some(v)
            };
            EndpointSubset {
                addresses: strip(ready),
                not_ready_addresses: strip(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

type AddrNorm = (
    AddrKey,
    String,
    String,
    Option<(String, String, String, String, String, String)>,
);

fn addr_norm(a: &EndpointAddress) -> AddrNorm {
    let target = a.target_ref.as_ref().map(|t| {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        // resourceVersion deliberately left out: it is not published and must not cause writes.
        (
            s(&t.kind),
            s(&t.namespace),
            s(&t.name),
            s(&t.uid),
            s(&t.api_version),
            s(&t.field_path),
        )
    });
    (
        addr_key(a),
        a.hostname.clone().unwrap_or_default(),
        a.node_name.clone().unwrap_or_default(),
        target,
    )
}

type SubsetNorm = (Vec<PortNorm>, Vec<AddrNorm>, Vec<AddrNorm>);

/// Subsets in a canonical form: order of subsets, ports and addresses, `null` versus `[]`,
/// unset versus empty strings and targetRef resourceVersions do not matter.
fn canonical(subsets: Option<&[EndpointSubset]>) -> Vec<SubsetNorm> {
    let mut out: Vec<SubsetNorm> = subsets
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let mut ports: Vec<PortNorm> = s.ports.iter().flatten().map(port_norm).collect();
            ports.sort();
            let addrs = |v: &Option<Vec<EndpointAddress>>| {
                let mut v: Vec<AddrNorm> = v.iter().flatten().map(addr_norm).collect();
                v.sort();
                v
            };
            (ports, addrs(&s.addresses), addrs(&s.not_ready_addresses))
        })
        .collect();
    out.sort();
    out
}

/// Semantic equality of two subset lists (see [`canonical`]).
pub(crate) fn subsets_equal(a: Option<&[EndpointSubset]>, b: Option<&[EndpointSubset]>) -> bool {
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    fn ips(v: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        v.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn three_ready_pods_two_ports_one_subset() {
        let s = svc("web")
            .ports(vec![num("a", 80, 8080), num("b", 81, 8081)])
            .build();
        let p = [
            pod("p1").ips(&["10.0.0.3"]).build(),
            pod("p2").ips(&["10.0.0.1"]).build(),
            pod("p3").ips(&["10.0.0.20"]).build(),
        ];
        let got = build(&s, &refs(&p));
        assert_eq!(got.len(), 1);
        assert_eq!(
            ips(&got[0].addresses),
            vec!["10.0.0.1", "10.0.0.3", "10.0.0.20"],
            "sorted by IP bytes"
        );
        assert_eq!(got[0].ports.as_ref().unwrap().len(), 2);
        assert!(got[0].not_ready_addresses.is_none());
    }

    #[test]
    fn readiness_and_named_ports_split_subsets() {
        let s = svc("web").ports(vec![named("http", 80, "http")]).build();
        let p = [
            pod("a")
                .ips(&["10.0.0.1"])
                .container_port("http", 8080, "TCP")
                .build(),
            pod("b")
                .ips(&["10.0.0.2"])
                .container_port("http", 8080, "TCP")
                .ready(false)
                .build(),
            pod("c")
                .ips(&["10.0.0.3"])
                .container_port("http", 9090, "TCP")
                .build(),
            pod("d").ips(&["10.0.0.4"]).build(),
            pod("e")
                .ips(&["10.0.0.5"])
                .container_port("http", 8080, "TCP")
                .terminating()
                .build(),
            pod("f")
                .ips(&["10.0.0.6"])
                .container_port("http", 8080, "TCP")
                .phase("Succeeded")
                .build(),
        ];
        let got = build(&s, &refs(&p));
        assert_eq!(got.len(), 2, "{got:?}");
        let s8080 = got
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(ips(&s8080.addresses), vec!["10.0.0.1"]);
        assert_eq!(ips(&s8080.not_ready_addresses), vec!["10.0.0.2"]);
        let s9090 = got
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 9090)
            .unwrap();
        assert_eq!(ips(&s9090.addresses), vec!["10.0.0.3"]);
        let port = &s8080.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.protocol.as_deref()),
            (Some("http"), Some("TCP"))
        );
    }

    #[test]
    fn publish_not_ready_and_terminating() {
        let s = svc("web").pnra().build();
        let p = [pod("a").ready(false).build(), pod("b").terminating().build()];
        let got = build(&s, &refs(&p));
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].addresses.as_ref().unwrap().len(),
            2,
            "both published as ready"
        );
    }

    #[test]
    fn portless_headless_only() {
        let p = [pod("a").build()];
        let headless = svc("web").headless().ports(vec![]).build();
        let got = build(&headless, &refs(&p));
        assert_eq!(got.len(), 1);
        assert!(got[0].ports.is_none());
        let headful = svc("web").ports(vec![]).build();
        assert!(build(&headful, &refs(&p)).is_empty());
    }

    #[test]
    fn address_family_choice() {
        let dual = pod("a")
            .ips(&["10.0.0.1", "fd00::1"])
            .node("n1")
            .hostname("h", "web")
            .build();
        let v6first = svc("web").families(&["IPv6", "IPv4"]).build();
        let a = endpoint_address(&v6first, &dual).unwrap();
        assert_eq!(a.ip, "fd00::1");
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.hostname.as_deref(), Some("h"));
        let no_fam_v6 = svc("web").families(&[]).cluster_ip("fd00::10").build();
        assert_eq!(endpoint_address(&no_fam_v6, &dual).unwrap().ip, "fd00::1");
        let no_fam_headless = svc("web").families(&[]).headless().build();
        assert_eq!(
            endpoint_address(&no_fam_headless, &dual).unwrap().ip,
            "10.0.0.1",
            "family of podIP"
        );
        let v4only = pod("b").ips(&["10.0.0.2"]).build();
        assert!(endpoint_address(&v6first, &v4only).is_none());
        let unscheduled = pod("c").build();
        let mut unscheduled = unscheduled;
        unscheduled.spec.as_mut().unwrap().node_name = None;
        assert_eq!(
            endpoint_address(&svc("web").build(), &unscheduled)
                .unwrap()
                .node_name
                .as_deref(),
            Some("")
        );
    }

    #[test]
    fn equality_is_semantic() {
        let s = svc("web")
            .ports(vec![num("a", 80, 8080), num("b", 81, 8081)])
            .build();
        let p = [
            pod("a").ips(&["10.0.0.1"]).build(),
            pod("b").ips(&["10.0.0.2"]).ready(false).build(),
        ];
        let built = build(&s, &refs(&p));
        let mut shuffled = built.clone();
        shuffled.reverse();
        for sub in &mut shuffled {
            sub.ports.as_mut().unwrap().reverse();
            for a in sub.addresses.iter_mut().flatten() {
                a.target_ref.as_mut().unwrap().resource_version = Some("9".into());
            }
        }
        assert!(subsets_equal(Some(&built), Some(&shuffled)));
        assert!(subsets_equal(None, Some(&[])));
        let mut other = built.clone();
        other[0].addresses.as_mut().unwrap()[0].ip = "10.0.0.9".into();
        assert!(!subsets_equal(Some(&built), Some(&other)));
    }
}
