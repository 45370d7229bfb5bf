//! Property tests: random Endpoints (duplicated, sloppy, invalid and dual-stack addresses,
//! overlapping port sets), a random earlier state, random caps.
//!
//! * One pass converges: reconciling the applied plan again plans no write.
//! * No slice exceeds the cap; no two slices share an address type and port set.
//! * Every address written is canonical and of its slice's address type.
//! * Below the cap, exactly the valid input IPs are mirrored, each not ready iff some
//!   entry of it is not ready for the slice's ports.
//! * Slices of other managers are never in a plan.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;

use super::testutil::*;
use super::*;
use crate::address_family::{AddressType, canonical_ip};
use crate::keys::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME};

/// Address texts: several spellings of the same IPs, IPv6, and garbage.
const IPS: [&str; 10] = [
    "10.0.0.1",
    "010.0.0.1",
    "10.0.0.2",
    "::ffff:10.0.0.2",
    "10.0.0.3",
    "fd00::1",
    "FD00::1",
    "fd00::2",
    "bogus",
    "10.0.0.300",
];

const PORTS: [(&str, i32); 3] = [("http", 80), ("https", 443), ("dns", 53)];

#[derive(Debug, Clone)]
struct AddrSpec {
    ip: usize,
    pod: Option<u8>,
    ready: bool,
}

#[derive(Debug, Clone)]
struct SubsetSpec {
    addrs: Vec<AddrSpec>,
    ports: Vec<usize>,
}

fn subset_spec() -> impl Strategy<Value = SubsetSpec> {
    let addr = (0..IPS.len(), prop::option::of(0u8..3), prop::bool::weighted(0.7))
        .prop_map(|(ip, pod, ready)| AddrSpec { ip, pod, ready });
    (
        prop::collection::vec(addr, 0..6),
        prop::collection::vec(0..PORTS.len(), 0..3),
    )
        .prop_map(|(addrs, ports)| SubsetSpec { addrs, ports })
}

fn endpoints_spec() -> impl Strategy<Value = (Vec<SubsetSpec>, bool)> {
    (prop::collection::vec(subset_spec(), 0..4), any::<bool>())
}

fn build(spec: &(Vec<SubsetSpec>, bool)) -> Endpoints {
    let (subsets, labelled) = spec;
    let mut b = endpoints("web");
    if *labelled {
        b = b.labels(&[("team", "x")]).annotations(&[("note", "y")]);
    }
    for s in subsets {
        let address = |a: &AddrSpec| match a.pod {
            Some(p) => pod_addr(IPS[a.ip], &format!("p{p}"), "n1"),
            None => addr(IPS[a.ip]),
        };
        let ready: Vec<EndpointAddress> = s.addrs.iter().filter(|a| a.ready).map(address).collect();
        let not_ready: Vec<EndpointAddress> = s.addrs.iter().filter(|a| !a.ready).map(address).collect();
        let ports: Vec<EndpointPort> = s.ports.iter().map(|&i| port(PORTS[i].0, PORTS[i].1)).collect();
        b = b.subset(ready, not_ready, ports);
    }
    b.build()
}

fn foreign(slices: &[EndpointSlice]) -> Vec<EndpointSlice> {
    slices
        .iter()
        .take(1)
        .map(|s| {
            let mut f = s.clone();
            f.metadata.name = Some("web-upstream".into());
            f.metadata.labels.get_or_insert_with(BTreeMap::new).insert(
                LABEL_MANAGED_BY.into(),
                crate::keys::UPSTREAM_MIRRORING_MANAGER.into(),
            );
            f
        })
        .collect()
}

/// A naive model of what the slices must hold when no cap applies: (address type, canonical
/// IP and pod UID) -> ready. Per port, an address is ready unless some entry of it (in any
/// spelling of its IP) is not ready. The readiness is only meaningful when there is a single
/// port, which the caller checks.
fn model(ep: &Endpoints) -> BTreeMap<(AddressType, String), bool> {
    let mut per_port: BTreeMap<Option<i32>, BTreeMap<(String, String), bool>> = BTreeMap::new();
    for s in ep.subsets.iter().flatten() {
        let ports: Vec<Option<i32>> = match s.ports.as_deref() {
            Some(p) if !p.is_empty() => p.iter().map(|p| Some(p.port)).collect(),
            _ => vec![None],
        };
        for p in ports {
            for (list, ready) in [(&s.addresses, true), (&s.not_ready_addresses, false)] {
                for a in list.iter().flatten() {
                    let uid = a
                        .target_ref
                        .as_ref()
                        .and_then(|t| t.uid.clone())
                        .unwrap_or_default();
                    per_port
                        .entry(p)
                        .or_default()
                        .entry((a.ip.clone(), uid))
                        .and_modify(|r| *r = *r && ready)
                        .or_insert(ready);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for addrs in per_port.values() {
        for ((ip, uid), ready) in addrs {
            if let Some((at, canonical)) = canonical_ip(ip) {
                // Identity in a slice: canonical IP plus pod (the UID stands for the pod here).
                out.entry((at, format!("{canonical}/{uid}")))
                    .and_modify(|r: &mut bool| *r = *r && *ready)
                    .or_insert(*ready);
            }
        }
    }
    out
}

fn actual(slices: &[EndpointSlice]) -> BTreeMap<(AddressType, String), bool> {
    let mut out = BTreeMap::new();
    for s in slices {
        let at = AddressType::parse(&s.address_type).unwrap();
        for e in &s.endpoints {
            let uid = e
                .target_ref
                .as_ref()
                .and_then(|t| t.uid.clone())
                .unwrap_or_default();
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap();
            out.insert((at, format!("{}/{uid}", e.addresses[0])), ready);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mirrored_slices_are_bounded_canonical_and_converge(
        before in endpoints_spec(),
        after in endpoints_spec(),
        max in 1usize..8,
        adopt in any::<bool>(),
    ) {
        let cfg = MirrorConfig {
            max_endpoints_per_subset: max,
            adopt_from: adopt.then(|| crate::keys::UPSTREAM_MIRRORING_MANAGER.to_string()),
            ..MirrorConfig::default()
        };
        let (ep_before, ep_after) = (build(&before), build(&after));
        let mut api = Api::default();
        api.sync(&ep_before, &cfg);
        // Another manager's copy of a slice: adopted or ignored, never lost track of.
        let extra = foreign(&api.slices);
        api.slices.extend(extra.iter().cloned());

        let plan = reconcile(&ep_after, &api.refs(), &cfg).unwrap();
        if !adopt {
            for s in plan.update.iter().chain(&plan.delete) {
                prop_assert!(!extra.iter().any(|f| f.metadata.name == s.metadata.name), "foreign slice in plan");
            }
        }
        api.apply_mirror(&plan);
        let again = reconcile(&ep_after, &api.refs(), &cfg).unwrap();
        prop_assert!(again.is_empty(), "not converged: {:#?}", again);

        let ours: Vec<EndpointSlice> = api
            .slices
            .iter()
            .filter(|s| s.metadata.labels.as_ref().unwrap()[LABEL_MANAGED_BY] == cfg.managed_by
                || (adopt && s.metadata.name.as_deref() == Some("web-upstream")))
            .cloned()
            .collect();
        let mut keys = BTreeSet::new();
        for s in &ours {
            prop_assert!(s.endpoints.len() <= max);
            prop_assert!(!s.endpoints.is_empty(), "no empty slices are kept");
            prop_assert_eq!(s.metadata.labels.as_ref().unwrap()[LABEL_SERVICE_NAME].as_str(), "web");
            let mut ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
            ports.sort_unstable();
            prop_assert!(keys.insert((s.address_type.clone(), ports)), "two slices for one key");
            for e in &s.endpoints {
                let (at, canonical) = canonical_ip(&e.addresses[0]).unwrap();
                prop_assert_eq!(at.as_str(), s.address_type.as_str());
                prop_assert_eq!(&canonical, &e.addresses[0]);
            }
        }

        let total: usize = ep_after
            .subsets
            .iter()
            .flatten()
            .map(|s| s.addresses.iter().flatten().count() + s.not_ready_addresses.iter().flatten().count())
            .sum();
        if total <= max {
            prop_assert!(plan.events.iter().all(|e| e.reason == REASON_INVALID_IP_ADDRESS));
            // Readiness can only be checked per IP when no IP has different readiness on
            // different ports (then it has one entry per slice); check presence always.
            let want = model(&ep_after);
            let got = actual(&ours);
            let want_ids: BTreeSet<_> = want.keys().collect();
            let got_ids: BTreeSet<_> = got.keys().collect();
            prop_assert_eq!(got_ids, want_ids);
            let uniform = ep_after.subsets.iter().flatten().all(|s| s.ports.iter().flatten().count() <= 1)
                && ep_after.subsets.as_ref().is_none_or(|v| v.len() <= 1);
            if uniform {
                prop_assert_eq!(got, want);
            }
        }
    }
}
