//! The canonical layout of Endpoints subsets that mirroring starts from (upstream's
//! `RepackSubsets`, k8s.io/kubernetes `pkg/api/v1/endpoints`).
//!
//! Hand-written Endpoints can list the same address under several subsets, split one port set
//! over two subsets, or mark an address ready in one place and not ready in another. Repacking
//! expands everything to (port, address, ready) and regroups it, so that each resulting subset
//! has a distinct address set and every port appears in exactly one subset.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset};

use crate::pod_predicates::DEFAULT_PROTOCOL;

/// A port as repacking tells ports apart: by value, with an unset name read as `""` and an
/// unset protocol as `TCP` (the apiserver's default). `None` stands for "no port": addresses
/// of a subset without ports are kept under it rather than dropped, and it never shows up in
/// the output ports.
type PortId = Option<(String, i32, String, Option<String>)>;

/// An address as repacking tells addresses apart: its IP text exactly as written and its
/// targetRef UID (`""` without one), so two pods sharing an IP (host network) stay apart.
/// The derived order is upstream's address order: IP text bytewise, then UID.
type AddrId = (String, String);

fn port_id(port: Option<&EndpointPort>) -> PortId {
    port.map(|p| {
        (
            p.name.clone().unwrap_or_default(),
            p.port,
            p.protocol.clone().unwrap_or_else(|| DEFAULT_PROTOCOL.to_string()),
            p.app_protocol.clone(),
        )
    })
}

fn addr_id(a: &EndpointAddress) -> AddrId {
    let uid = a.target_ref.as_ref().and_then(|t| t.uid.clone());
    (a.ip.clone(), uid.unwrap_or_default())
}

/// Repacks subsets into the canonical layout.
///
/// * Every (port, address) pair is collected; an address seen both ready and not ready for the
///   same port is not ready ("not ready wins"). Of several entries for the same address
///   (IP text and UID), the first one met (subsets in order, ready before not-ready) supplies
///   hostname, nodeName and targetRef.
/// * Ports whose address sets, readiness included, are equal form one subset.
/// * Addresses are sorted by IP text then UID (upstream's order, which decides which addresses
///   a cap keeps), ports by name, port, protocol and appProtocol; subsets by their address set.
///   Upstream sorts ports and subsets by a hash; any fixed order does, as slices are keyed
///   by their port set.
/// * Ports with a number below 1 are dropped like the "no port" marker (the apiserver
///   refuses them in Endpoints anyway). Subsets without addresses disappear.
///
/// Upstream keys ports by Go struct equality, under which two equal `appProtocol` strings
/// held by different pointers are different ports; here ports are compared by value.
pub(super) fn repack(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    let mut first_seen: BTreeMap<AddrId, &EndpointAddress> = BTreeMap::new();
    let mut by_port: BTreeMap<PortId, (Option<&EndpointPort>, BTreeMap<AddrId, bool>)> = BTreeMap::new();
    for subset in subsets {
        let ports: Vec<Option<&EndpointPort>> = match subset.ports.as_deref() {
            Some(p) if !p.is_empty() => p.iter().map(Some).collect(),
            _ => vec![None],
        };
        for port in ports {
            let lists = [(&subset.addresses, true), (&subset.not_ready_addresses, false)];
            for (list, ready) in lists {
                for a in list.iter().flatten() {
                    let id = addr_id(a);
                    first_seen.entry(id.clone()).or_insert(a);
                    by_port
                        .entry(port_id(port))
                        .or_insert_with(|| (port, BTreeMap::new()))
                        .1
                        .entry(id)
                        .and_modify(|r| *r = *r && ready)
                        .or_insert(ready);
                }
            }
        }
    }

    let mut groups: BTreeMap<Vec<(AddrId, bool)>, Vec<&EndpointPort>> = BTreeMap::new();
    for (port, addrs) in by_port.into_values() {
        let ports = groups.entry(addrs.into_iter().collect()).or_default();
        ports.extend(port.filter(|p| p.port > 0));
    }

    groups
        .into_iter()
        .map(|(addrs, ports)| {
            let mut ports: Vec<EndpointPort> = ports.into_iter().cloned().collect();
            ports.sort_by_cached_key(|p| port_id(Some(p)));
            let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
            // `addrs` is in AddrId order already, which is the order wanted.
            for (id, r) in addrs {
                let a = first_seen[&id].clone();
                if r { ready.push(a) } else { not_ready.push(a) }
            }
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;

    use super::*;

    fn addr(ip: &str, uid: Option<&str>, host: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.to_string(),
            hostname: (!host.is_empty()).then(|| host.to_string()),
            node_name: None,
            target_ref: uid.map(|u| ObjectReference {
                uid: Some(u.to_string()),
                ..Default::default()
            }),
        }
    }

    fn port(name: &str, n: i32) -> EndpointPort {
        EndpointPort {
            name: Some(name.to_string()),
            port: n,
            protocol: Some("TCP".to_string()),
            app_protocol: None,
        }
    }

    fn subset(
        ready: Vec<EndpointAddress>,
        not_ready: Vec<EndpointAddress>,
        ports: Vec<EndpointPort>,
    ) -> EndpointSubset {
        EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        }
    }

    /// A compact picture of repacked subsets: (ports, ready IPs, not-ready IPs).
    fn shape(subsets: &[EndpointSubset]) -> Vec<(Vec<i32>, Vec<String>, Vec<String>)> {
        let ips = |v: &Option<Vec<EndpointAddress>>| v.iter().flatten().map(|a| a.ip.clone()).collect();
        subsets
            .iter()
            .map(|s| {
                (
                    s.ports.iter().flatten().map(|p| p.port).collect(),
                    ips(&s.addresses),
                    ips(&s.not_ready_addresses),
                )
            })
            .collect()
    }

    type Shape = Vec<(Vec<i32>, Vec<&'static str>, Vec<&'static str>)>;

    #[test]
    fn repack_table() {
        let a = |ip: &str| addr(ip, None, "");
        let cases: Vec<(&str, Vec<EndpointSubset>, Shape)> = vec![
            ("empty", vec![], vec![]),
            (
                "subset without addresses vanishes",
                vec![subset(vec![], vec![], vec![port("a", 80)])],
                vec![],
            ),
            (
                "same ports in two subsets merge, sorted by IP text",
                vec![
                    subset(vec![a("10.0.0.2")], vec![], vec![port("a", 80)]),
                    subset(vec![a("10.0.0.10"), a("10.0.0.1")], vec![], vec![port("a", 80)]),
                ],
                vec![(vec![80], vec!["10.0.0.1", "10.0.0.10", "10.0.0.2"], vec![])],
            ),
            (
                "same addresses on two ports become one subset",
                vec![
                    subset(vec![a("10.0.0.1")], vec![], vec![port("b", 81)]),
                    subset(vec![a("10.0.0.1")], vec![], vec![port("a", 80)]),
                ],
                vec![(vec![80, 81], vec!["10.0.0.1"], vec![])],
            ),
            (
                "not ready wins over ready for the same port",
                vec![subset(
                    vec![a("10.0.0.1"), a("10.0.0.1")],
                    vec![a("10.0.0.1")],
                    vec![port("a", 80)],
                )],
                vec![(vec![80], vec![], vec!["10.0.0.1"])],
            ),
            (
                "readiness differing per port splits the ports",
                vec![
                    subset(vec![a("10.0.0.1")], vec![], vec![port("a", 80)]),
                    subset(vec![], vec![a("10.0.0.1")], vec![port("b", 81)]),
                ],
                vec![
                    (vec![81], vec![], vec!["10.0.0.1"]),
                    (vec![80], vec!["10.0.0.1"], vec![]),
                ],
            ),
            (
                "port-less subsets are kept, without ports",
                vec![subset(vec![a("10.0.0.1")], vec![], vec![])],
                vec![(vec![], vec!["10.0.0.1"], vec![])],
            ),
            (
                "a port-less subset with the same addresses joins the ported one",
                vec![
                    subset(vec![a("10.0.0.1")], vec![], vec![]),
                    subset(vec![a("10.0.0.1")], vec![], vec![port("a", 80)]),
                ],
                vec![(vec![80], vec!["10.0.0.1"], vec![])],
            ),
        ];
        for (name, input, want) in cases {
            let want: Vec<(Vec<i32>, Vec<String>, Vec<String>)> = want
                .into_iter()
                .map(|(p, r, n)| {
                    (
                        p,
                        r.into_iter().map(String::from).collect(),
                        n.into_iter().map(String::from).collect(),
                    )
                })
                .collect();
            let mut got = shape(&repack(&input));
            got.sort();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn identity_is_ip_text_and_uid_first_entry_wins() {
        let input = vec![
            subset(
                vec![addr("10.0.0.1", Some("u2"), "first")],
                vec![],
                vec![port("a", 80)],
            ),
            subset(
                vec![
                    addr("10.0.0.1", Some("u1"), ""),
                    addr("10.0.0.1", Some("u2"), "second"),
                ],
                vec![],
                vec![port("a", 80)],
            ),
        ];
        let got = repack(&input);
        assert_eq!(got.len(), 1);
        let addrs = got[0].addresses.as_ref().unwrap();
        let uids: Vec<&str> = addrs
            .iter()
            .map(|a| a.target_ref.as_ref().unwrap().uid.as_deref().unwrap())
            .collect();
        assert_eq!(
            uids,
            vec!["u1", "u2"],
            "same IP, two pods: both kept, ordered by UID"
        );
        assert_eq!(
            addrs[1].hostname.as_deref(),
            Some("first"),
            "first entry supplies the fields"
        );
    }

    #[test]
    fn unset_protocol_is_tcp_and_bad_ports_are_dropped() {
        let mut bare = port("a", 80);
        bare.protocol = None;
        let input = vec![
            subset(vec![addr("10.0.0.1", None, "")], vec![], vec![bare]),
            subset(vec![addr("10.0.0.2", None, "")], vec![], vec![port("a", 80)]),
            subset(vec![addr("10.0.0.3", None, "")], vec![], vec![port("zero", 0)]),
        ];
        let got = shape(&repack(&input));
        assert!(
            got.contains(&(vec![80], vec!["10.0.0.1".into(), "10.0.0.2".into()], vec![])),
            "{got:?}"
        );
        assert!(
            got.contains(&(vec![], vec!["10.0.0.3".into()], vec![])),
            "{got:?}"
        );
    }
}
