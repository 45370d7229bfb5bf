//! A cluster-wide index of Service clusterIPs for the endpoint-address rule
//! ([`crate::validation::endpoints`]): which Service, if any, holds an address.
//!
//! [`ClusterIpIndex`] keeps only `address → Service` (and the reverse, to forget a Service's
//! addresses), never the Services themselves. [`service_ip_index`] feeds it from a watch of every
//! Service; it is separate from the allocation path's watch, which is not running when Portico
//! only validates and keeps more than this per Service. The rule is best-effort like the
//! `targetPort` warning: until the first list has arrived, no address is a clusterIP.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::validation::endpoints::{ServiceIpIndex, ServiceRef, parse_ip_sloppy};

#[derive(Debug, Default)]
struct Maps {
    by_ip: HashMap<IpAddr, BTreeSet<ServiceRef>>,
    by_service: HashMap<ServiceRef, Vec<IpAddr>>,
}

impl Maps {
    fn set(&mut self, svc: ServiceRef, ips: Vec<IpAddr>) {
        self.remove(&svc);
        if ips.is_empty() {
            return;
        }
        for ip in &ips {
            self.by_ip.entry(*ip).or_default().insert(svc.clone());
        }
        self.by_service.insert(svc, ips);
    }

    fn remove(&mut self, svc: &ServiceRef) {
        for ip in self.by_service.remove(svc).unwrap_or_default() {
            if let Some(holders) = self.by_ip.get_mut(&ip) {
                holders.remove(svc);
                if holders.is_empty() {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }
}

/// Which Service holds which clusterIP, cluster-wide; an in-memory [`ServiceIpIndex`]. Filled by
/// [`service_ip_index`], or by hand ([`ClusterIpIndex::apply`]) in tests.
#[derive(Debug, Default)]
pub struct ClusterIpIndex {
    maps: RwLock<Maps>,
    synced: AtomicBool,
}

/// The Service's clusterIPs (`spec.clusterIPs`, else `spec.clusterIP`), parsed; `None` and
/// anything unparseable are left out.
fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    let mut ips: Vec<IpAddr> = match &spec.cluster_ips {
        Some(list) if !list.is_empty() => list.iter().filter_map(|s| parse_ip_sloppy(s)).collect(),
        _ => spec
            .cluster_ip
            .iter()
            .filter_map(|s| parse_ip_sloppy(s))
            .collect(),
    };
    ips.dedup();
    ips
}

fn service_ref(svc: &Service) -> ServiceRef {
    ServiceRef {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    }
}

impl ClusterIpIndex {
    /// An empty index (not synced).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `svc` as it is now (its previous addresses are forgotten).
    pub fn apply(&self, svc: &Service) {
        if let Ok(mut m) = self.maps.write() {
            m.set(service_ref(svc), cluster_ips(svc));
        }
    }

    /// Forgets `svc`.
    pub fn delete(&self, svc: &Service) {
        if let Ok(mut m) = self.maps.write() {
            m.remove(&service_ref(svc));
        }
    }

    /// Replaces everything with `services` (a full list) and marks the index synced.
    pub fn replace(&self, services: impl IntoIterator<Item = (ServiceRef, Vec<IpAddr>)>) {
        let mut fresh = Maps::default();
        for (svc, ips) in services {
            fresh.set(svc, ips);
        }
        if let Ok(mut m) = self.maps.write() {
            *m = fresh;
        }
        self.synced.store(true, Ordering::Release);
    }

    /// Whether a full list has been loaded.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// How many Services hold at least one clusterIP.
    pub fn services(&self) -> usize {
        self.maps.read().map(|m| m.by_service.len()).unwrap_or(0)
    }
}

impl ServiceIpIndex for ClusterIpIndex {
    fn service_with_cluster_ip(&self, ip: IpAddr) -> Option<ServiceRef> {
        let m = self.maps.read().ok()?;
        m.by_ip.get(&ip)?.iter().next().cloned()
    }
}

/// A [`ClusterIpIndex`] of the Services `api` sees (`Api::all` for the whole cluster) and the
/// future that keeps it up to date until `stop` completes; run the future. A relist is applied
/// whole once it is complete, so lookups never see a half-empty index.
pub fn service_ip_index(
    api: Api<Service>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (Arc<ClusterIpIndex>, impl Future<Output = ()> + Send + 'static) {
    let index = Arc::new(ClusterIpIndex::new());
    let weak = Arc::downgrade(&index);
    let run = async move {
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut relist: Option<Vec<(ServiceRef, Vec<IpAddr>)>> = None;
        let watch = async {
            loop {
                let event = match stream.try_next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "Service watch for the webhook's clusterIP rule failed; retrying");
                        continue;
                    }
                };
                let Some(index) = weak.upgrade() else { return };
                match event {
                    watcher::Event::Init => relist = Some(Vec::new()),
                    watcher::Event::InitApply(svc) => {
                        if let Some(r) = &mut relist {
                            r.push((service_ref(&svc), cluster_ips(&svc)));
                        }
                    }
                    watcher::Event::InitDone => {
                        index.replace(relist.take().unwrap_or_default());
                        tracing::debug!(services = index.services(), "clusterIP index synced");
                    }
                    watcher::Event::Apply(svc) => index.apply(&svc),
                    watcher::Event::Delete(svc) => index.delete(&svc),
                }
            }
        };
        tokio::select! {
            () = watch => {}
            () = stop => {}
        }
    };
    (index, run)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(ns: &str, name: &str, ips: &[&str]) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ips.first().copied().unwrap_or(""), "clusterIPs": ips}
        }))
        .unwrap()
    }

    fn at(index: &ClusterIpIndex, ip: &str) -> Option<String> {
        index
            .service_with_cluster_ip(parse_ip_sloppy(ip).unwrap())
            .map(|s| s.to_string())
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let index = ClusterIpIndex::new();
        assert!(!index.synced());
        index.apply(&svc("a", "web", &["10.96.0.10", "fd00::10"]));
        index.apply(&svc("a", "headless", &["None"]));
        assert_eq!(at(&index, "10.96.0.10").as_deref(), Some("a/web"));
        assert_eq!(at(&index, "fd00::10").as_deref(), Some("a/web"));
        assert_eq!(at(&index, "::ffff:10.96.0.10").as_deref(), Some("a/web"));
        assert_eq!(index.services(), 1);
        // A change of addresses forgets the old ones.
        index.apply(&svc("a", "web", &["10.96.0.11"]));
        assert_eq!(at(&index, "10.96.0.10"), None);
        assert_eq!(at(&index, "fd00::10"), None);
        assert_eq!(at(&index, "10.96.0.11").as_deref(), Some("a/web"));
        // Two holders (a transient state the allocator never leaves): the first by name; the other
        // is still known when the first goes.
        index.apply(&svc("b", "dup", &["10.96.0.11"]));
        assert_eq!(at(&index, "10.96.0.11").as_deref(), Some("a/web"));
        index.delete(&svc("a", "web", &[]));
        assert_eq!(at(&index, "10.96.0.11").as_deref(), Some("b/dup"));
        // An ExternalName Service (no spec.clusterIP) holds nothing.
        let ext: Service = serde_json::from_value(
            json!({"metadata": {"namespace": "a", "name": "ext"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}),
        )
        .unwrap();
        index.apply(&ext);
        assert_eq!(index.services(), 1);
        index.replace([(
            ServiceRef {
                namespace: "default".into(),
                name: "kubernetes".into(),
            },
            vec!["10.96.0.1".parse().unwrap()],
        )]);
        assert!(index.synced());
        assert_eq!(at(&index, "10.96.0.11"), None);
        assert_eq!(at(&index, "10.96.0.1").as_deref(), Some("default/kubernetes"));
    }

    #[test]
    fn a_single_cluster_ip_without_the_list_counts() {
        let index = ClusterIpIndex::new();
        let old: Service = serde_json::from_value(
            json!({"metadata": {"namespace": "a", "name": "old"}, "spec": {"clusterIP": "10.0.0.7"}}),
        )
        .unwrap();
        index.apply(&old);
        assert_eq!(at(&index, "10.0.0.7").as_deref(), Some("a/old"));
    }
}
