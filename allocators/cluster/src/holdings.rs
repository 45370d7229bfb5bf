//! What the cluster holds, as an index fed by the watches: Service → its clusterIPs and node
//! ports, `IPAddress` name → its address. Pure: each event returns the [`Change`]s to apply to
//! the ranges, and a relist (kube-runtime's `Init` … `InitDone`) returns the changes that bring
//! the ranges in line with the fresh list, deletions missed while the watch was down included.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::IPAddress;
use portico_allocators::parse_service_ip;

use super::plan::{Value, held_values};
use super::range_state::{Holder, ServiceRef};

/// One change to a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `holder` now holds the value.
    Hold(Value, Holder),
    /// `holder` no longer holds the value.
    Unhold(Value, Holder),
}

/// The values each Service and each `IPAddress` holds.
#[derive(Debug, Default, Clone)]
pub struct HoldingsIndex {
    services: HashMap<ServiceRef, BTreeSet<Value>>,
    addresses: HashMap<String, (IpAddr, Holder)>,
    relisted_services: Option<HashSet<ServiceRef>>,
    relisted_addresses: Option<HashSet<String>>,
}

fn service_key(svc: &Service) -> ServiceRef {
    ServiceRef::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

impl HoldingsIndex {
    /// An empty index.
    pub fn new() -> Self {
        HoldingsIndex::default()
    }

    /// Number of Services indexed.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Number of `IPAddress` objects indexed.
    pub fn addresses(&self) -> usize {
        self.addresses.len()
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: &Service) -> Vec<Change> {
        let key = service_key(svc);
        if let Some(seen) = &mut self.relisted_services {
            seen.insert(key.clone());
        }
        let now: BTreeSet<Value> = svc
            .spec
            .as_ref()
            .map(held_values)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let before = self.services.get(&key).cloned().unwrap_or_default();
        let holder = Holder::Service(key.clone());
        let mut out: Vec<Change> = before
            .difference(&now)
            .map(|v| Change::Unhold(*v, holder.clone()))
            .collect();
        out.extend(now.difference(&before).map(|v| Change::Hold(*v, holder.clone())));
        if now.is_empty() {
            self.services.remove(&key);
        } else {
            self.services.insert(key, now);
        }
        out
    }

    /// A Service was deleted (gone from storage: finalizers keep it until then).
    pub fn delete_service(&mut self, svc: &Service) -> Vec<Change> {
        self.remove_service(&service_key(svc))
    }

    fn remove_service(&mut self, key: &ServiceRef) -> Vec<Change> {
        let holder = Holder::Service(key.clone());
        self.services
            .remove(key)
            .unwrap_or_default()
            .into_iter()
            .map(|v| Change::Unhold(v, holder.clone()))
            .collect()
    }

    /// The Service watch restarts with a full list.
    pub fn relist_services(&mut self) {
        self.relisted_services = Some(HashSet::new());
    }

    /// The Service list is complete: Services indexed but not listed are gone.
    pub fn relisted_services_done(&mut self) -> Vec<Change> {
        let Some(seen) = self.relisted_services.take() else {
            return Vec::new();
        };
        let gone: Vec<ServiceRef> = self
            .services
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        gone.iter().flat_map(|k| self.remove_service(k)).collect()
    }

    /// An `IPAddress` was added or changed. Objects whose name is not an address are ignored
    /// (the apiserver's validation makes them impossible).
    pub fn apply_address(&mut self, obj: &IPAddress) -> Vec<Change> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        if let Some(seen) = &mut self.relisted_addresses {
            seen.insert(name.clone());
        }
        let Ok(ip) = parse_service_ip(&name) else {
            return Vec::new();
        };
        let parent = obj
            .spec
            .as_ref()
            .map(|s| &s.parent_ref)
            .filter(|p| p.group.as_deref().unwrap_or_default().is_empty() && p.resource == "services")
            .map(|p| ServiceRef::new(p.namespace.clone().unwrap_or_default(), p.name.clone()));
        let holder = Holder::Address { parent };
        let mut out = Vec::new();
        match self.addresses.insert(name, (ip, holder.clone())) {
            Some((old_ip, old)) if old_ip == ip && old == holder => return out,
            Some((old_ip, old)) => out.push(Change::Unhold(Value::Ip(old_ip), old)),
            None => {}
        }
        out.push(Change::Hold(Value::Ip(ip), holder));
        out
    }

    /// An `IPAddress` was deleted.
    pub fn delete_address(&mut self, obj: &IPAddress) -> Vec<Change> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        self.remove_address(&name)
    }

    fn remove_address(&mut self, name: &str) -> Vec<Change> {
        self.addresses
            .remove(name)
            .map(|(ip, holder)| Change::Unhold(Value::Ip(ip), holder))
            .into_iter()
            .collect()
    }

    /// The `IPAddress` watch restarts with a full list.
    pub fn relist_addresses(&mut self) {
        self.relisted_addresses = Some(HashSet::new());
    }

    /// The `IPAddress` list is complete: objects indexed but not listed are gone.
    pub fn relisted_addresses_done(&mut self) -> Vec<Change> {
        let Some(seen) = self.relisted_addresses.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .addresses
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        gone.iter().flat_map(|k| self.remove_address(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .expect("service")
    }

    fn addr(ip: &str, parent: serde_json::Value) -> IPAddress {
        serde_json::from_value(json!({"metadata": {"name": ip}, "spec": {"parentRef": parent}}))
            .expect("ipaddress")
    }

    fn holder(ns: &str, name: &str) -> Holder {
        Holder::Service(ServiceRef::new(ns, name))
    }

    #[test]
    fn a_service_change_holds_the_new_values_and_lets_go_of_the_old() {
        let mut idx = HoldingsIndex::new();
        let ip = Value::Ip("10.96.0.10".parse().expect("ip"));
        let a = svc(
            "ns",
            "web",
            json!({"type": "NodePort", "clusterIPs": ["10.96.0.10"], "ports": [
                {"port": 53, "protocol": "TCP", "nodePort": 30053},
                {"port": 53, "protocol": "UDP", "nodePort": 30053},
            ]}),
        );
        let h = holder("ns", "web");
        assert_eq!(
            idx.apply_service(&a),
            vec![
                Change::Hold(ip, h.clone()),
                Change::Hold(Value::Port(30053), h.clone())
            ],
            "the TCP/UDP pair holds one port once"
        );
        assert!(
            idx.apply_service(&a).is_empty(),
            "an unchanged Service changes nothing"
        );
        let b = svc(
            "ns",
            "web",
            json!({"type": "ClusterIP", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 53}]}),
        );
        assert_eq!(
            idx.apply_service(&b),
            vec![Change::Unhold(Value::Port(30053), h.clone())]
        );
        assert_eq!(idx.delete_service(&b), vec![Change::Unhold(ip, h)]);
        assert_eq!(idx.services(), 0);
    }

    #[test]
    fn a_relist_lets_go_of_what_was_deleted_while_the_watch_was_down() {
        let mut idx = HoldingsIndex::new();
        let kept = svc("ns", "kept", json!({"clusterIPs": ["10.96.0.1"]}));
        let gone = svc("ns", "gone", json!({"clusterIPs": ["10.96.0.2"]}));
        idx.apply_service(&kept);
        idx.apply_service(&gone);
        idx.relist_services();
        assert!(idx.apply_service(&kept).is_empty());
        assert_eq!(
            idx.relisted_services_done(),
            vec![Change::Unhold(
                Value::Ip("10.96.0.2".parse().expect("ip")),
                holder("ns", "gone")
            )]
        );
        assert!(
            idx.relisted_services_done().is_empty(),
            "a second InitDone changes nothing"
        );
    }

    #[test]
    fn ipaddresses_hold_their_name_and_know_their_service() {
        let mut idx = HoldingsIndex::new();
        let a = addr(
            "10.96.0.5",
            json!({"group": "", "resource": "services", "namespace": "ns", "name": "web"}),
        );
        let v = Value::Ip("10.96.0.5".parse().expect("ip"));
        let h = Holder::Address {
            parent: Some(ServiceRef::new("ns", "web")),
        };
        assert_eq!(idx.apply_address(&a), vec![Change::Hold(v, h.clone())]);
        assert!(idx.apply_address(&a).is_empty());
        let other = addr(
            "10.96.0.6",
            json!({"group": "example.com", "resource": "reservations", "name": "r"}),
        );
        assert_eq!(
            idx.apply_address(&other),
            vec![Change::Hold(
                Value::Ip("10.96.0.6".parse().expect("ip")),
                Holder::Address { parent: None }
            )],
            "a reservation of another manager holds the address too"
        );
        idx.relist_addresses();
        idx.apply_address(&other);
        assert_eq!(idx.relisted_addresses_done(), vec![Change::Unhold(v, h)]);
        assert!(
            idx.apply_address(&addr("not-an-ip", json!({"resource": "services", "name": "x"})))
                .is_empty()
        );
    }
}
