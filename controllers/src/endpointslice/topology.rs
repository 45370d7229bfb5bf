//! Topology-aware hints (`service.kubernetes.io/topology-mode: Auto`): upstream's allocation of
//! ready endpoints to zones in proportion to each zone's allocatable CPU.
//!
//! Every ready endpoint starts hinted for its own zone; zones holding more than their share
//! (beyond an overload threshold of 20 %) then give endpoints to zones holding less. Slices
//! that already carry valid hints are left alone, so a steady Service is never rewritten. When
//! no sensible allocation exists (too few endpoints, nodes without zone or CPU, an endpoint
//! without a zone), all hints are removed and the reason is reported as an Event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::{EndpointHints, EndpointSlice, ForZone};

use crate::keys::LABEL_TOPOLOGY_ZONE;

/// How far above its CPU share a zone may be loaded (upstream's `overloadThreshold`).
const OVERLOAD_THRESHOLD: f64 = 0.2;

/// Nodes with either label are not counted (upstream's exclusion labels).
const EXCLUDED_NODE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// Messages of upstream's `TopologyAwareHintsDisabled` Events.
pub(crate) const INSUFFICIENT_NODE_INFO: &str =
    "Insufficient Node information: allocatable CPU or zone not specified on one or more nodes";
pub(crate) const NO_ZONE_SPECIFIED: &str = "One or more endpoints do not have a zone specified";
pub(crate) const NO_ALLOCATED_HINTS: &str = "No hints allocated for zones";
const INSUFFICIENT_ENDPOINTS: &str = "Insufficient number of endpoints";
const MIN_EXCEEDS_THRESHOLD: &str =
    "Unable to allocate minimum required endpoints to each zone without exceeding overload threshold";

/// Each zone's share of the allocatable CPU of the Ready, non-control-plane Nodes; `None` when
/// any such Node lacks a zone or CPU, or fewer than two zones have any (upstream's
/// `SetNodes`).
pub fn zone_cpu_shares<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Option<BTreeMap<String, f64>> {
    // Exact sums in nanocores, rounded to millicores only at the end, as upstream adds
    // Quantities and then takes their MilliValue.
    let mut by_zone: BTreeMap<String, i128> = BTreeMap::new();
    for node in nodes {
        let labels = node.metadata.labels.as_ref();
        if EXCLUDED_NODE_LABELS
            .iter()
            .any(|l| labels.is_some_and(|m| m.contains_key(*l)))
            || !node_ready(node)
        {
            continue;
        }
        let zone = labels
            .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
            .filter(|z| !z.is_empty())?;
        let cpu = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            .and_then(|q| cpu_nanocores(&q.0))
            .filter(|n| *n > 0)?;
        let sum = by_zone.entry(zone.clone()).or_default();
        *sum = sum.checked_add(cpu)?;
    }
    let milli = |nano: i128| (nano + 999_999) / 1_000_000;
    let total = milli(by_zone.values().try_fold(0i128, |a, b| a.checked_add(*b))?);
    if by_zone.len() < 2 || total <= 0 {
        return None;
    }
    Some(
        by_zone
            .into_iter()
            .map(|(z, cpu)| (z, milli(cpu) as f64 / total as f64))
            .collect(),
    )
}

/// What of a Node enters [`zone_cpu_shares`]: a change here may move hints.
pub fn topology_inputs(node: &Node) -> (Option<&str>, bool, Option<&str>, bool) {
    let labels = node.metadata.labels.as_ref();
    (
        labels
            .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
            .map(String::as_str),
        node_ready(node),
        node.status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            .map(|q| q.0.as_str()),
        EXCLUDED_NODE_LABELS
            .iter()
            .any(|l| labels.is_some_and(|m| m.contains_key(*l))),
    )
}

pub(crate) fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A CPU quantity (`4`, `3920m`, `0.5`, `100n`, `1Ki`, `1e3`) in nanocores, exactly (smaller
/// fractions round up); `None` when it is not a Kubernetes quantity.
pub(crate) fn cpu_nanocores(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    // (power of ten, power of two) of the suffix.
    let (mut exp10, exp2): (i32, u32) = match suffix {
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "" => (0, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => return None,
    };
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((m, e)) if suffix.is_empty() => (m, e.parse::<i32>().ok()?),
        Some(_) => return None,
        None => (number, 0),
    };
    exp10 += exponent;
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{frac}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 30 {
        return None;
    }
    let mut value: i128 = digits.parse().ok()?;
    // Scale to nanocores: times 10^(exp10 + 9 - fraction digits), times 2^exp2.
    let shift = exp10
        .checked_add(9)?
        .checked_sub(i32::try_from(frac.len()).ok()?)?;
    if shift >= 0 {
        value = value.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?;
    } else {
        let div = 10i128.checked_pow(u32::try_from(shift.checked_neg()?).ok()?)?;
        value = (value + div - 1) / div;
    }
    value.checked_mul(1i128.checked_shl(exp2)?)
}

/// How many endpoints a zone should be hinted: at least `min`, at most `max`, ideally
/// `desired` (upstream's `allocation`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Allocation {
    min: usize,
    max: usize,
    desired: f64,
}

/// Upstream's `getAllocations` for `n` ready endpoints, or the Event message saying why none.
pub(crate) fn allocations(
    shares: Option<&BTreeMap<String, f64>>,
    n: usize,
) -> Result<BTreeMap<String, Allocation>, String> {
    let Some(shares) = shares.filter(|s| s.len() >= 2) else {
        return Err(INSUFFICIENT_NODE_INFO.to_owned());
    };
    let zones = shares.len();
    if zones > n {
        return Err(format!("{INSUFFICIENT_ENDPOINTS} ({n} endpoints, {zones} zones)"));
    }
    let mut out = BTreeMap::new();
    let mut min_total = 0;
    for (zone, share) in shares {
        let desired = share * n as f64;
        let min = (desired / (1.0 + OVERLOAD_THRESHOLD)).ceil() as usize;
        min_total += min;
        if min_total > n {
            return Err(format!("{MIN_EXCEEDS_THRESHOLD} ({n} endpoints, {zones} zones)"));
        }
        out.insert(
            zone.clone(),
            Allocation {
                min,
                max: 0,
                desired: desired.max(min as f64),
            },
        );
    }
    for a in out.values_mut() {
        a.max = a.min + n - min_total;
    }
    Ok(out)
}

/// The result of hinting one address type of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoHints {
    /// Hints written: ready endpoints hinted per zone.
    Allocated(BTreeMap<String, usize>),
    /// No hints (all removed); the Event message.
    Refused(String),
}

fn is_ready(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready) == Some(true)
}

fn zone_hint(zone: &str) -> Option<EndpointHints> {
    Some(EndpointHints {
        for_zones: Some(vec![ForZone {
            name: zone.to_owned(),
        }]),
        for_nodes: None,
    })
}

/// Upstream's `AddHints`. `create` and `update` are being written anyway and get hints;
/// an `unchanged` slice whose hints are no longer valid moves to `update` (via `rewrite`).
/// On [`AutoHints::Refused`] the caller removes every hint.
pub(crate) fn add_hints(
    create: &mut [EndpointSlice],
    update: &mut Vec<EndpointSlice>,
    unchanged: &mut Vec<&EndpointSlice>,
    shares: Option<&BTreeMap<String, f64>>,
    rewrite: impl Fn(&EndpointSlice) -> EndpointSlice,
) -> AutoHints {
    let ready = create
        .iter()
        .chain(update.iter())
        .chain(unchanged.iter().copied())
        .flat_map(|s| &s.endpoints)
        .filter(|e| is_ready(e))
        .count();
    let alloc = match allocations(shares, ready) {
        Ok(a) => a,
        Err(message) => return AutoHints::Refused(message),
    };

    let mut allocated: BTreeMap<String, usize> = BTreeMap::new();
    let mut keep = Vec::with_capacity(unchanged.len());
    for s in unchanged.drain(..) {
        match valid_hints_by_zone(s, &allocated, &alloc) {
            Some(counts) => {
                for (zone, n) in counts {
                    *allocated.entry(zone).or_default() += n;
                }
                keep.push(s);
            }
            None => update.push(rewrite(s)),
        }
    }
    *unchanged = keep;

    // 1. Every ready endpoint being written is hinted for its own zone.
    for s in create.iter_mut().chain(update.iter_mut()) {
        for ep in &mut s.endpoints {
            if !is_ready(ep) {
                ep.hints = None;
                continue;
            }
            let Some(zone) = ep.zone.as_deref().filter(|z| !z.is_empty()) else {
                return AutoHints::Refused(NO_ZONE_SPECIFIED.to_owned());
            };
            *allocated.entry(zone.to_owned()).or_default() += 1;
            ep.hints = zone_hint(zone);
        }
    }
    // 2. and 3. Zones over their share give endpoints to zones under it.
    let (mut giving, mut receiving) = giving_and_receiving(&alloc, &allocated);
    for s in create.iter_mut().chain(update.iter_mut()) {
        for ep in &mut s.endpoints {
            if giving.is_empty() || receiving.is_empty() {
                break;
            }
            let Some(zone) = ep.zone.clone().filter(|z| is_ready(ep) && giving.contains_key(z)) else {
                continue;
            };
            let Some(to) = receiving.keys().next().cloned() else {
                break;
            };
            ep.hints = zone_hint(&to);
            for (map, z) in [(&mut giving, &zone), (&mut receiving, &to)] {
                if let Some(left) = map.get_mut(z) {
                    *left -= 1;
                    if *left == 0 {
                        map.remove(z);
                    }
                }
            }
            if let Some(n) = allocated.get_mut(&zone) {
                *n -= 1;
            }
            *allocated.entry(to).or_default() += 1;
        }
    }
    if allocated.is_empty() {
        return AutoHints::Refused(NO_ALLOCATED_HINTS.to_owned());
    }
    AutoHints::Allocated(allocated)
}

/// The hints of an unchanged slice by zone, if they are all still valid: every ready endpoint
/// hinted, only for allocated zones, and no zone pushed past its maximum (upstream's
/// `getHintsByZone`).
fn valid_hints_by_zone(
    slice: &EndpointSlice,
    allocated: &BTreeMap<String, usize>,
    alloc: &BTreeMap<String, Allocation>,
) -> Option<BTreeMap<String, usize>> {
    let mut by_zone: BTreeMap<String, usize> = BTreeMap::new();
    for ep in slice.endpoints.iter().filter(|e| is_ready(e)) {
        let zones = ep.hints.as_ref()?.for_zones.as_ref().filter(|z| !z.is_empty())?;
        for z in zones {
            alloc.get(&z.name)?;
            *by_zone.entry(z.name.clone()).or_default() += 1;
        }
    }
    for (zone, n) in &by_zone {
        let already = allocated.get(zone).copied().unwrap_or(0);
        if n + already > alloc.get(zone)?.max {
            return None;
        }
    }
    Some(by_zone)
}

/// Upstream's `getGivingAndReceivingZones`: whole endpoints to move, one at a time from the
/// zone with the largest surplus to the zone with the largest deficit, while both are at least
/// half an endpoint and one of them at least a whole one. Ties go to the first zone by name.
fn giving_and_receiving(
    alloc: &BTreeMap<String, Allocation>,
    allocated: &BTreeMap<String, usize>,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut surplus: BTreeMap<&str, f64> = BTreeMap::new();
    let mut deficit: BTreeMap<&str, f64> = BTreeMap::new();
    for (zone, a) in alloc {
        let have = allocated.get(zone).copied().unwrap_or(0) as f64;
        if have > a.desired {
            surplus.insert(zone, have - a.desired);
        } else if have < a.desired {
            deficit.insert(zone, a.desired - have);
        }
    }
    let most = |m: &BTreeMap<&str, f64>| -> Option<(String, f64)> {
        let mut best: Option<(&str, f64)> = None;
        for (z, v) in m {
            if best.is_none_or(|(_, b)| *v > b) {
                best = Some((z, *v));
            }
        }
        best.map(|(z, v)| (z.to_owned(), v))
    };
    let (mut giving, mut receiving) = (BTreeMap::new(), BTreeMap::new());
    while let (Some((g, give)), Some((r, take))) = (most(&surplus), most(&deficit)) {
        if (give < 1.0 && take < 1.0) || give < 0.5 || take < 0.5 {
            break;
        }
        *giving.entry(g.clone()).or_default() += 1;
        *receiving.entry(r.clone()).or_default() += 1;
        if let Some(v) = surplus.get_mut(g.as_str()) {
            *v -= 1.0;
        }
        if let Some(v) = deficit.get_mut(r.as_str()) {
            *v -= 1.0;
        }
    }
    (giving, receiving)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(name: &str, zone: Option<&str>, cpu: &str, ready: bool) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = zone.map(|z| [(LABEL_TOPOLOGY_ZONE.to_owned(), z.to_owned())].into());
        n.status = Some(NodeStatus {
            allocatable: Some([("cpu".to_owned(), Quantity(cpu.into()))].into()),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    fn endpoint(i: usize, zone: &str, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![format!("10.0.0.{i}")],
            zone: Some(zone.into()),
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            endpoints: eps,
            ..Default::default()
        }
    }

    fn hinted(s: &EndpointSlice) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for ep in s.endpoints.iter().filter(|e| is_ready(e)) {
            let z = &ep.hints.as_ref().unwrap().for_zones.as_ref().unwrap()[0].name;
            *m.entry(z.clone()).or_default() += 1;
        }
        m
    }

    fn shares(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(z, s)| (z.to_string(), *s)).collect()
    }

    #[test]
    fn cpu_quantities() {
        const N: i128 = 1_000_000_000;
        let cases = [
            ("4", Some(4 * N)),
            ("3920m", Some(3_920_000_000)),
            ("0.5", Some(N / 2)),
            ("16.1", Some(16_100_000_000)),
            ("100n", Some(100)),
            ("1.5u", Some(1_500)),
            ("2k", Some(2_000 * N)),
            ("1Ki", Some(1_024 * N)),
            ("1e2", Some(100 * N)),
            ("1.5e-9", Some(2)),
            ("", None),
            ("x", None),
            ("4Q", None),
            ("1e3m", None),
            ("1.2.3", None),
            ("1e-2147483648", None),
            ("1e-30", Some(1)),
        ];
        for (q, want) in cases {
            assert_eq!(cpu_nanocores(q), want, "{q}");
        }
    }

    #[test]
    fn zone_shares_follow_upstream_s_set_nodes() {
        let nodes = [
            node("a1", Some("a"), "2", true),
            node("a2", Some("a"), "1", true),
            node("b1", Some("b"), "3", true),
            node("b2", Some("b"), "100", false), // not Ready: not counted
        ];
        assert_eq!(zone_cpu_shares(&nodes), Some(shares(&[("a", 0.5), ("b", 0.5)])));
        let mut cp = node("cp", None, "8", true); // a control-plane node without a zone: ignored
        cp.metadata.labels = Some([(EXCLUDED_NODE_LABELS[0].to_owned(), String::new())].into());
        assert!(zone_cpu_shares(nodes.iter().chain([&cp])).is_some());
        let zoneless = node("x", None, "1", true);
        assert_eq!(zone_cpu_shares(nodes.iter().chain([&zoneless])), None);
        let no_cpu = node("y", Some("c"), "0", true);
        assert_eq!(zone_cpu_shares(nodes.iter().chain([&no_cpu])), None);
        assert_eq!(zone_cpu_shares(&nodes[..2]), None, "one zone");
    }

    #[test]
    fn allocations_follow_upstream() {
        let two = shares(&[("a", 0.5), ("b", 0.5)]);
        let a = allocations(Some(&two), 10).unwrap();
        // desired 5, min ceil(5/1.2) = 5, max = 5 + 10 - 10 = 5
        assert_eq!((a["a"].min, a["a"].max), (5, 5));
        let skewed = shares(&[("a", 0.75), ("b", 0.25)]);
        let a = allocations(Some(&skewed), 100).unwrap();
        // desired 75 / 25, min 63 / 21, max = min + 16
        assert_eq!((a["a"].min, a["a"].max, a["b"].min, a["b"].max), (63, 79, 21, 37));
        assert_eq!(allocations(None, 10).unwrap_err(), INSUFFICIENT_NODE_INFO);
        assert_eq!(
            allocations(Some(&shares(&[("a", 0.3), ("b", 0.3), ("c", 0.4)])), 2).unwrap_err(),
            "Insufficient number of endpoints (2 endpoints, 3 zones)"
        );
    }

    #[test]
    fn hints_follow_cpu_not_endpoint_placement() {
        // 6 ready endpoints in zone a, 2 in b, zones of equal CPU: a gives 2 to b.
        let mut create = vec![slice(
            (0..8)
                .map(|i| endpoint(i, if i < 6 { "a" } else { "b" }, true))
                .chain([endpoint(9, "a", false)])
                .collect(),
        )];
        let (mut update, mut unchanged) = (Vec::new(), Vec::new());
        let even = shares(&[("a", 0.5), ("b", 0.5)]);
        let out = add_hints(
            &mut create,
            &mut update,
            &mut unchanged,
            Some(&even),
            Clone::clone,
        );
        let want: BTreeMap<String, usize> = [("a".to_owned(), 4), ("b".to_owned(), 4)].into();
        assert_eq!(out, AutoHints::Allocated(want.clone()));
        assert_eq!(hinted(&create[0]), want);
        assert!(
            create[0].endpoints[8].hints.is_none(),
            "not-ready endpoints carry none"
        );

        // The same slice, now stored: valid hints keep it unchanged (no write).
        let stored = create.pop().unwrap();
        let (mut create, mut update, mut unchanged) = (Vec::new(), Vec::new(), vec![&stored]);
        let out = add_hints(
            &mut create,
            &mut update,
            &mut unchanged,
            Some(&even),
            Clone::clone,
        );
        assert_eq!(out, AutoHints::Allocated(want));
        assert!(update.is_empty() && unchanged.len() == 1);

        // CPU moves to zone b: the stored hints overload it, so the slice is rewritten.
        let skewed = shares(&[("a", 0.1), ("b", 0.9)]);
        let mut unchanged = vec![&stored];
        let out = add_hints(
            &mut create,
            &mut update,
            &mut unchanged,
            Some(&skewed),
            Clone::clone,
        );
        assert!(unchanged.is_empty() && update.len() == 1);
        let AutoHints::Allocated(by_zone) = out else {
            panic!("{out:?}")
        };
        assert_eq!(by_zone, hinted(&update[0]));
        assert_eq!(by_zone.get("b"), Some(&7), "b's share: 0.9 of 8, rounded");
    }

    #[test]
    fn refusals() {
        let even = shares(&[("a", 0.5), ("b", 0.5)]);
        let hint = |eps: Vec<Endpoint>| {
            add_hints(
                &mut [slice(eps)],
                &mut Vec::new(),
                &mut Vec::new(),
                Some(&even),
                Clone::clone,
            )
        };
        let mut zoneless = endpoint(1, "a", true);
        zoneless.zone = None;
        let eps = vec![
            endpoint(0, "a", true),
            zoneless,
            endpoint(2, "b", true),
            endpoint(3, "b", true),
        ];
        assert_eq!(hint(eps), AutoHints::Refused(NO_ZONE_SPECIFIED.to_owned()));
        assert_eq!(
            hint((0..3).map(|i| endpoint(i, "a", true)).collect()),
            AutoHints::Refused(
                "Unable to allocate minimum required endpoints to each zone without exceeding \
                 overload threshold (3 endpoints, 2 zones)"
                    .into()
            )
        );
        assert_eq!(
            hint(vec![endpoint(0, "a", true)]),
            AutoHints::Refused("Insufficient number of endpoints (1 endpoints, 2 zones)".into())
        );
    }
}
