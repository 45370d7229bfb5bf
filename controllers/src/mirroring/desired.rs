//! From repacked subsets to the desired endpoints per slice key, with the per-subset cap and
//! the counts behind the Warning events; and the endpoint comparisons of the diff.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{self as core, EndpointAddress, EndpointSubset};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

use super::repack::repack;
use crate::address_family::{AddressType, parse_ip_sloppy};
use crate::pod_predicates::DEFAULT_PROTOCOL;

type NormPort = (String, Option<i32>, String, Option<String>);

/// What a slice holds: its address type (API spelling) and its port set, normalised (unset
/// name `""`, unset protocol `TCP`) and sorted, so that port order and `null` versus `[]`
/// never tell two slices apart. Upstream keys slices by the same two things (a hash of the
/// ports plus the address type). Existing slices of any other address type (`FQDN`) have keys
/// that are never desired, so they are deleted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SliceKey {
    pub(super) address_type: String,
    ports: Vec<NormPort>,
}

fn norm(p: &EndpointPort) -> NormPort {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| DEFAULT_PROTOCOL.to_string()),
        p.app_protocol.clone(),
    )
}

pub(super) fn slice_key(address_type: &str, ports: Option<&[EndpointPort]>) -> SliceKey {
    let mut ports: Vec<NormPort> = ports.unwrap_or_default().iter().map(norm).collect();
    ports.sort();
    SliceKey {
        address_type: address_type.to_string(),
        ports,
    }
}

/// Endpoints ports become slice ports one to one: name (`""` when unset, as upstream writes
/// it), number, protocol (`TCP` when unset, the apiserver's default) and appProtocol.
fn slice_ports(ports: &[core::EndpointPort]) -> Vec<EndpointPort> {
    ports
        .iter()
        .map(|p| EndpointPort {
            name: Some(p.name.clone().unwrap_or_default()),
            port: Some(p.port),
            protocol: Some(p.protocol.clone().unwrap_or_else(|| DEFAULT_PROTOCOL.to_string())),
            app_protocol: p.app_protocol.clone(),
        })
        .collect()
}

/// The slice endpoint of an Endpoints address, or `None` if its IP does not parse.
///
/// The IP is parsed as leniently as the apiserver's legacy parser (leading zeros, IPv4-mapped
/// IPv6 read as IPv4) and written canonically; its family gives the address type. Only the
/// `ready` condition is set (true for `addresses`, false for `notReadyAddresses`); hostname
/// (when non-empty), nodeName and targetRef are copied. An empty nodeName is dropped: slice
/// validation refuses it (so does Endpoints validation, so it is never expected).
fn address_to_endpoint(a: &EndpointAddress, ready: bool) -> Option<(AddressType, Endpoint)> {
    let ip = parse_ip_sloppy(&a.ip)?;
    let endpoint = Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: None,
            terminating: None,
        }),
        hostname: a.hostname.clone().filter(|h| !h.is_empty()),
        node_name: a.node_name.clone().filter(|n| !n.is_empty()),
        target_ref: a.target_ref.clone(),
        ..Default::default()
    };
    Some((AddressType::of(&ip), endpoint))
}

/// Which endpoint an endpoint is, for the diff: its sorted addresses, hostname, and the
/// namespace and name of its targetRef (upstream's endpoint hash). Two entries with the same
/// identity are one endpoint, possibly with changed attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct EndpointId {
    addresses: Vec<String>,
    hostname: String,
    namespace: String,
    name: String,
}

pub(super) fn endpoint_id(ep: &Endpoint) -> EndpointId {
    let mut addresses = ep.addresses.clone();
    addresses.sort();
    let target = ep.target_ref.as_ref();
    EndpointId {
        addresses,
        hostname: ep.hostname.clone().unwrap_or_default(),
        namespace: target.and_then(|t| t.namespace.clone()).unwrap_or_default(),
        name: target.and_then(|t| t.name.clone()).unwrap_or_default(),
    }
}

/// Endpoints of the same identity that agree on everything else a slice shows: the EndpointSlice
/// controller's rule, shared.
pub(super) use crate::endpointslice::equal_beyond_key;

/// The endpoints wanted in one slice, in the order they were added.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) ports: Vec<EndpointPort>,
    pub(super) endpoints: Vec<Endpoint>,
    index: HashMap<EndpointId, usize>,
}

impl Group {
    /// Adds an endpoint; one of the same identity already present is replaced in place (the
    /// later entry wins, as in upstream's endpoint set).
    fn insert(&mut self, ep: Endpoint) {
        match self.index.get(&endpoint_id(&ep)) {
            Some(&i) => self.endpoints[i] = ep,
            None => {
                self.index.insert(endpoint_id(&ep), self.endpoints.len());
                self.endpoints.push(ep);
            }
        }
    }
}

/// The desired state of all slices of one Endpoints object.
#[derive(Debug, Default)]
pub(super) struct Desired {
    /// Every key a repacked subset names, for both address types, even when it got no
    /// endpoints: existing slices of such a key are deleted, not left over.
    pub(super) groups: BTreeMap<SliceKey, Group>,
    /// Addresses not mirrored, for whatever reason.
    pub(super) skipped: usize,
    /// Of those, addresses whose IP did not parse.
    pub(super) invalid: usize,
}

/// Computes the desired endpoints per slice key.
///
/// Per repacked subset, its ready addresses then its not-ready ones are taken until `max` of
/// them were mirrored; every address not mirrored counts as skipped, and those whose IP did
/// not parse (among the ones looked at before the cap was reached) also count as invalid.
///
/// A key is normally fed by a single subset, since repacking gives every port to one subset
/// only; a key fed twice (possible only with ports the apiserver refuses) is cut to `max`
/// endpoints here, where upstream cuts it when filling the slice but compares the uncut set,
/// which would rewrite the slice on every sync.
pub(super) fn desired(subsets: &[EndpointSubset], max: usize) -> Desired {
    let mut d = Desired::default();
    for subset in repack(subsets) {
        let ports = slice_ports(subset.ports.as_deref().unwrap_or_default());
        let keys = [AddressType::IPv4, AddressType::IPv6].map(|at| slice_key(at.as_str(), Some(&ports)));
        for key in &keys {
            d.groups.entry(key.clone()).or_insert_with(|| Group {
                ports: ports.clone(),
                ..Group::default()
            });
        }
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset.not_ready_addresses.iter().flatten().map(|a| (a, false));
        let total = subset.addresses.as_ref().map_or(0, Vec::len)
            + subset.not_ready_addresses.as_ref().map_or(0, Vec::len);
        let mut added = 0;
        for (a, is_ready) in ready.chain(not_ready) {
            if added >= max {
                break;
            }
            match address_to_endpoint(a, is_ready) {
                Some((at, ep)) => {
                    let key = &keys[usize::from(at == AddressType::IPv6)];
                    if let Some(g) = d.groups.get_mut(key) {
                        g.insert(ep);
                    }
                    added += 1;
                }
                None => d.invalid += 1,
            }
        }
        d.skipped += total - added;
    }
    for g in d.groups.values_mut() {
        g.endpoints.truncate(max);
    }
    d
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;

    use super::*;

    fn addr(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn address_conversion_table() {
        let cases: &[(&str, Option<(AddressType, &str)>)] = &[
            ("10.0.0.1", Some((AddressType::IPv4, "10.0.0.1"))),
            ("010.000.000.001", Some((AddressType::IPv4, "10.0.0.1"))),
            ("::ffff:10.0.0.2", Some((AddressType::IPv4, "10.0.0.2"))),
            ("2001:DB8::0001", Some((AddressType::IPv6, "2001:db8::1"))),
            ("fe80::1%eth0", None),
            ("10.0.0.0/8", None),
            ("", None),
            ("bogus", None),
        ];
        for (ip, want) in cases {
            let got = address_to_endpoint(&addr(ip), true).map(|(at, ep)| (at, ep.addresses[0].clone()));
            assert_eq!(got, want.map(|(at, s)| (at, s.to_string())), "{ip:?}");
        }
    }

    #[test]
    fn address_fields_and_conditions() {
        let a = EndpointAddress {
            ip: "10.0.0.1".into(),
            hostname: Some(String::new()),
            node_name: Some("n1".into()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some("p".into()),
                ..Default::default()
            }),
        };
        let (_, ep) = address_to_endpoint(&a, false).unwrap();
        assert_eq!(ep.hostname, None, "empty hostname is not copied");
        assert_eq!(ep.node_name.as_deref(), Some("n1"));
        assert_eq!(ep.target_ref, a.target_ref);
        assert_eq!(
            ep.conditions,
            Some(EndpointConditions {
                ready: Some(false),
                serving: None,
                terminating: None
            })
        );
        assert_eq!((ep.zone.as_ref(), ep.hints.as_ref()), (None, None));
    }

    #[test]
    fn key_ignores_port_order_and_defaults() {
        let p = |name: Option<&str>, n: i32, proto: Option<&str>| EndpointPort {
            name: name.map(String::from),
            port: Some(n),
            protocol: proto.map(String::from),
            app_protocol: None,
        };
        let a = [p(None, 80, None), p(Some("b"), 81, Some("UDP"))];
        let b = [p(Some("b"), 81, Some("UDP")), p(Some(""), 80, Some("TCP"))];
        assert_eq!(slice_key("IPv4", Some(&a)), slice_key("IPv4", Some(&b)));
        assert_ne!(slice_key("IPv4", Some(&a)), slice_key("IPv6", Some(&a)));
        assert_eq!(slice_key("IPv4", None), slice_key("IPv4", Some(&[])));
        assert_ne!(slice_key("IPv4", Some(&a[..1])), slice_key("IPv4", Some(&a)));
    }

    #[test]
    fn equality_beyond_identity() {
        let (_, base) = address_to_endpoint(&addr("10.0.0.1"), true).unwrap();
        let mut rv = base.clone();
        rv.target_ref = Some(ObjectReference {
            resource_version: Some("7".into()),
            ..Default::default()
        });
        let mut no_rv = rv.clone();
        no_rv.target_ref.as_mut().unwrap().resource_version = None;
        assert!(equal_beyond_key(&rv, &no_rv), "targetRef resourceVersion ignored");
        let mut serving = base.clone();
        serving.conditions.as_mut().unwrap().serving = Some(true);
        assert!(
            !equal_beyond_key(&base, &serving),
            "an extra condition is a change"
        );
        let mut hinted = base.clone();
        hinted.hints = Some(Default::default());
        assert!(equal_beyond_key(&base, &hinted), "hints are not compared");
        let mut zoned = base.clone();
        zoned.zone = Some("z".into());
        assert!(!equal_beyond_key(&base, &zoned));
        let mut other_host = base.clone();
        other_host.hostname = Some("h".into());
        assert_ne!(
            endpoint_id(&base),
            endpoint_id(&other_host),
            "hostname is identity"
        );
    }

    #[test]
    fn cap_counts_skipped_and_invalid() {
        let subset = |ready: &[&str], not_ready: &[&str]| EndpointSubset {
            addresses: Some(ready.iter().map(|ip| addr(ip)).collect()),
            not_ready_addresses: Some(not_ready.iter().map(|ip| addr(ip)).collect()),
            ports: None,
        };
        // (name, subsets, max, ready IPs, not-ready IPs, skipped, invalid)
        type Case<'a> = (&'a str, Vec<EndpointSubset>, usize, usize, usize, usize, usize);
        let cases: Vec<Case> = vec![
            (
                "under the cap",
                vec![subset(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"])],
                5,
                2,
                1,
                0,
                0,
            ),
            (
                "ready first",
                vec![subset(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"])],
                2,
                2,
                0,
                1,
                0,
            ),
            (
                "then not ready",
                vec![subset(&["10.0.0.1"], &["10.0.0.2", "10.0.0.3"])],
                2,
                1,
                1,
                1,
                0,
            ),
            (
                "invalid does not use the cap",
                vec![subset(&["0bad", "10.0.0.1"], &[])],
                1,
                1,
                0,
                1,
                1,
            ),
            (
                "invalid past the cap is only skipped",
                vec![subset(&["10.0.0.1", "zbad"], &[])],
                1,
                1,
                0,
                1,
                0,
            ),
        ];
        for (name, subsets, max, ready, not_ready, skipped, invalid) in cases {
            let d = desired(&subsets, max);
            let eps: Vec<&Endpoint> = d.groups.values().flat_map(|g| &g.endpoints).collect();
            let count = |r: bool| {
                eps.iter()
                    .filter(|e| e.conditions.as_ref().unwrap().ready == Some(r))
                    .count()
            };
            assert_eq!(
                (count(true), count(false), d.skipped, d.invalid),
                (ready, not_ready, skipped, invalid),
                "{name}"
            );
        }
    }

    #[test]
    fn same_identity_collapses_later_wins() {
        // Different IP texts (so repacking keeps both) that parse to the same address.
        let s = EndpointSubset {
            addresses: Some(vec![addr("10.0.0.1")]),
            not_ready_addresses: Some(vec![addr("010.0.0.1")]),
            ports: None,
        };
        let d = desired(&[s], 10);
        let g = &d.groups[&slice_key("IPv4", Some(&[]))];
        assert_eq!(g.endpoints.len(), 1);
        assert_eq!(g.endpoints[0].conditions.as_ref().unwrap().ready, Some(false));
        assert!(
            d.groups[&slice_key("IPv6", Some(&[]))].endpoints.is_empty(),
            "both keys exist"
        );
    }
}
