//! The clusterIP ranges of the cluster (KEP-1880, 1.33+): which ServiceCIDRs the apiserver
//! allocates from, and the pool each family gets from them. Pure.
//!
//! As upstream's allocator: a ServiceCIDR counts while its `Ready` condition is not `False` (a
//! missing condition counts as ready) and it has no `deletionTimestamp`; IPv6 prefixes shorter
//! than /64 are ignored. The families are the apiserver's own (`--service-cluster-ip-range`), as
//! the default ServiceCIDR `kubernetes` shows them: a ServiceCIDR of another family adds no
//! allocator, upstream's rule.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use portico_allocators::IpRange;

use super::ip_pool::{IpPool, OutsideError};
use super::plan::IpFamily;

/// Name of the ServiceCIDR the apiserver makes from its flags.
pub const DEFAULT_SERVICE_CIDR: &str = "kubernetes";

/// The CIDRs of the ServiceCIDRs the apiserver allocates from, by family, in name order with
/// `kubernetes` first.
pub fn usable_cidrs(objects: &[ServiceCIDR]) -> BTreeMap<IpFamily, Vec<IpNet>> {
    let mut sorted: Vec<&ServiceCIDR> = objects.iter().collect();
    sorted.sort_by_key(|o| {
        let name = o.metadata.name.as_deref().unwrap_or_default();
        (name != DEFAULT_SERVICE_CIDR, name.to_owned())
    });
    let mut out: BTreeMap<IpFamily, Vec<IpNet>> = BTreeMap::new();
    for obj in sorted {
        if obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let not_ready = obj
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "False");
        if not_ready {
            continue;
        }
        for cidr in obj
            .spec
            .as_ref()
            .and_then(|s| s.cidrs.as_ref())
            .into_iter()
            .flatten()
        {
            let Ok(net) = cidr.parse::<IpNet>() else { continue };
            let net = net.trunc();
            if matches!(net, IpNet::V6(_)) && net.prefix_len() < 64 {
                continue;
            }
            let family = IpFamily::of(net.addr());
            let list = out.entry(family).or_default();
            if !list.contains(&net) {
                list.push(net);
            }
        }
    }
    out
}

/// The apiserver's families, primary first, from the `kubernetes` ServiceCIDR.
pub fn apiserver_families(objects: &[ServiceCIDR]) -> Option<Vec<IpFamily>> {
    let default = objects
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some(DEFAULT_SERVICE_CIDR))?;
    let mut families = Vec::new();
    for cidr in default.spec.as_ref()?.cidrs.as_ref()? {
        let net = cidr.parse::<IpNet>().ok()?;
        let f = IpFamily::of(net.addr());
        if !families.contains(&f) {
            families.push(f);
        }
    }
    (!families.is_empty()).then_some(families)
}

/// How Portico narrows the cluster's ranges (`--service-cluster-ip-range` on 1.33+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowing {
    /// New values come only from these ranges (all of the cluster's when empty).
    pub ranges: Vec<IpRange>,
    /// Refuse explicit values outside `ranges` even where the apiserver would accept them
    /// (`--refuse-outside-service-cluster-ip-range`).
    pub strict: bool,
}

/// The pool of `family` over the cluster's CIDRs of that family and the narrowing.
pub fn pool_for(family: IpFamily, cluster: &BTreeMap<IpFamily, Vec<IpNet>>, narrowing: &Narrowing) -> IpPool {
    let mine: Vec<IpNet> = narrowing
        .ranges
        .iter()
        .filter(|r| IpFamily::of_range(r) == family)
        .map(IpRange::cidr)
        .collect();
    let theirs = cluster.get(&family).cloned().unwrap_or_default();
    if narrowing.strict && !mine.is_empty() {
        IpPool::new(&mine, &mine, OutsideError::MismatchedNetwork)
    } else {
        IpPool::new(&theirs, &mine, OutsideError::MismatchedNetwork)
    }
}

/// Checks that every narrowing range lies inside a ServiceCIDR of its family; the error names
/// both sides.
pub fn check_narrowing(
    narrowing: &Narrowing,
    cluster: &BTreeMap<IpFamily, Vec<IpNet>>,
) -> Result<(), String> {
    for r in &narrowing.ranges {
        let family = IpFamily::of_range(r);
        let theirs = cluster.get(&family).map(Vec::as_slice).unwrap_or_default();
        if !theirs.iter().any(|c| c.contains(&r.cidr())) {
            let list: Vec<String> = theirs.iter().map(IpNet::to_string).collect();
            return Err(format!(
                "--service-cluster-ip-range {} lies outside every ready ServiceCIDR of the cluster ({} ranges: {})",
                r.cidr(),
                family,
                if list.is_empty() {
                    "none".to_owned()
                } else {
                    list.join(", ")
                }
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_allocators::AllocError;
    use serde_json::json;

    use crate::range_state::Pool;

    fn cidr(name: &str, cidrs: &[&str], ready: Option<&str>, deleting: bool) -> ServiceCIDR {
        let mut v = json!({"metadata": {"name": name}, "spec": {"cidrs": cidrs}});
        if let Some(status) = ready {
            v["status"] = json!({"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "x", "message": ""}]});
        }
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(v).expect("servicecidr")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    #[test]
    fn ready_non_terminating_cidrs_count_with_the_default_first() {
        let objects = vec![
            cidr("extra", &["10.100.0.0/16"], None, false),
            cidr("kubernetes", &["10.96.0.0/12", "fd00::/108"], Some("True"), false),
            cidr("broken", &["10.101.0.0/16"], Some("False"), false),
            cidr("leaving", &["10.102.0.0/16"], Some("True"), true),
            cidr("huge-v6", &["fd01::/48"], None, false),
        ];
        let by_family = usable_cidrs(&objects);
        assert_eq!(by_family[&IpFamily::V4], nets(&["10.96.0.0/12", "10.100.0.0/16"]));
        assert_eq!(by_family[&IpFamily::V6], nets(&["fd00::/108"]));
        assert_eq!(
            apiserver_families(&objects),
            Some(vec![IpFamily::V4, IpFamily::V6])
        );
        assert_eq!(apiserver_families(&objects[..1]), None);
    }

    #[test]
    fn a_narrowing_draws_new_values_but_accepts_the_clusters_unless_strict() {
        let cluster = usable_cidrs(&[cidr("kubernetes", &["10.96.0.0/12"], None, false)]);
        let narrowing = Narrowing {
            ranges: vec!["10.96.0.0/24".parse().expect("range")],
            strict: false,
        };
        assert_eq!(check_narrowing(&narrowing, &cluster), Ok(()));
        let mut pool = pool_for(IpFamily::V4, &cluster, &narrowing);
        let next = pool.allocate_next().expect("free");
        assert!(narrowing.ranges[0].contains(next));
        assert_eq!(
            pool.allocate("10.100.0.1".parse().expect("ip")),
            Ok(()),
            "the apiserver accepts it"
        );
        let strict = Narrowing {
            strict: true,
            ..narrowing
        };
        let mut pool = pool_for(IpFamily::V4, &cluster, &strict);
        assert_eq!(
            pool.allocate("10.100.0.1".parse().expect("ip")),
            Err(AllocError::MismatchedNetwork)
        );
    }

    #[test]
    fn a_narrowing_outside_the_cluster_is_refused_naming_both() {
        let cluster = usable_cidrs(&[cidr("kubernetes", &["10.43.0.0/16"], None, false)]);
        let narrowing = Narrowing {
            ranges: vec!["10.96.0.0/20".parse().expect("range")],
            strict: false,
        };
        assert_eq!(
            check_narrowing(&narrowing, &cluster),
            Err("--service-cluster-ip-range 10.96.0.0/20 lies outside every ready ServiceCIDR of the cluster (IPv4 ranges: 10.43.0.0/16)".to_owned())
        );
    }
}
