//! Test builders for Endpoints objects, and an in-memory apiserver that applies mirroring
//! plans the way the real one would (names from `generateName`, resourceVersion bumps and
//! optimistic-concurrency checks).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{MirrorConfig, MirrorPlan, reconcile};
use crate::builders::t;

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An address without targetRef.
pub fn addr(ip: &str) -> EndpointAddress {
    EndpointAddress {
        ip: ip.to_string(),
        ..Default::default()
    }
}

/// An address of pod `pod` on `node`, with hostname `pod`.
pub fn pod_addr(ip: &str, pod: &str, node: &str) -> EndpointAddress {
    EndpointAddress {
        ip: ip.to_string(),
        hostname: Some(pod.to_string()),
        node_name: Some(node.to_string()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_string()),
            namespace: Some("default".to_string()),
            name: Some(pod.to_string()),
            uid: Some(format!("uid-{pod}")),
            resource_version: Some("5".to_string()),
            ..Default::default()
        }),
    }
}

/// A TCP port.
pub fn port(name: &str, n: i32) -> EndpointPort {
    EndpointPort {
        name: Some(name.to_string()),
        port: n,
        protocol: Some("TCP".to_string()),
        app_protocol: None,
    }
}

pub struct EpB(pub Endpoints);

/// Endpoints `default/<name>` with uid `uid-<name>` and no subsets.
pub fn endpoints(name: &str) -> EpB {
    EpB(Endpoints {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        subsets: None,
    })
}

impl EpB {
    pub fn subset(
        mut self,
        ready: Vec<EndpointAddress>,
        not_ready: Vec<EndpointAddress>,
        ports: Vec<EndpointPort>,
    ) -> Self {
        self.0.subsets.get_or_insert_with(Vec::new).push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        });
        self
    }
    /// A subset of ready IPs without targetRefs, on one port `http:80`.
    pub fn ips(self, ips: &[&str]) -> Self {
        self.subset(
            ips.iter().map(|ip| addr(ip)).collect(),
            vec![],
            vec![port("http", 80)],
        )
    }
    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0.metadata.labels = Some(map(pairs));
        self
    }
    pub fn annotations(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0.metadata.annotations = Some(map(pairs));
        self
    }
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(t(0));
        self
    }
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.to_string());
        self
    }
    pub fn build(self) -> Endpoints {
        self.0
    }
}

/// An in-memory apiserver for EndpointSlices.
#[derive(Default, Clone, Debug)]
pub struct Api {
    pub slices: Vec<EndpointSlice>,
    counter: u64,
}

impl Api {
    pub fn with(slices: Vec<EndpointSlice>) -> Self {
        Api {
            slices,
            counter: 1000,
        }
    }

    pub fn refs(&self) -> Vec<&EndpointSlice> {
        self.slices.iter().collect()
    }

    fn bump(&mut self) -> String {
        self.counter += 1;
        self.counter.to_string()
    }

    /// Applies a plan; panics on what the apiserver would refuse (a create with a name or
    /// without generateName, an update of an unknown slice or with a stale resourceVersion,
    /// an address type change, a delete of an unknown slice).
    pub fn apply(&mut self, plan: &MirrorPlan) {
        for c in &plan.create {
            assert!(c.metadata.name.is_none(), "create carries a name");
            assert!(
                c.metadata.resource_version.is_none(),
                "create carries a resourceVersion"
            );
            let prefix = c
                .metadata
                .generate_name
                .clone()
                .expect("create without generateName");
            let id = self.bump();
            let mut s = c.clone();
            s.metadata.name = Some(format!("{prefix}{id}"));
            s.metadata.generate_name = None;
            s.metadata.uid = Some(format!("uid-slice-{id}"));
            s.metadata.resource_version = Some(id);
            self.slices.push(s);
        }
        for u in &plan.update {
            let name = u.metadata.name.clone().expect("update without name");
            assert!(u.metadata.generate_name.is_none(), "update carries generateName");
            let idx = self
                .slices
                .iter()
                .position(|s| s.metadata.name.as_deref() == Some(&name))
                .unwrap_or_else(|| panic!("update of unknown slice {name}"));
            let cur = &self.slices[idx];
            assert_eq!(
                u.metadata.resource_version, cur.metadata.resource_version,
                "409 Conflict on {name}"
            );
            assert_eq!(
                u.address_type, cur.address_type,
                "addressType is immutable ({name})"
            );
            let uid = cur.metadata.uid.clone();
            let mut s = u.clone();
            s.metadata.uid = uid;
            s.metadata.resource_version = Some(self.bump());
            self.slices[idx] = s;
        }
        for d in &plan.delete {
            let before = self.slices.len();
            self.slices.retain(|s| s.metadata.name != d.metadata.name);
            assert_eq!(
                before,
                self.slices.len() + 1,
                "delete of unknown slice {:?}",
                d.metadata.name
            );
        }
    }

    /// Reconciles, applies, and checks that reconciling the result plans no write.
    pub fn sync(&mut self, ep: &Endpoints, cfg: &MirrorConfig) -> MirrorPlan {
        let plan = reconcile(ep, &self.refs(), cfg).expect("reconcile");
        self.apply(&plan);
        let again = reconcile(ep, &self.refs(), cfg).expect("reconcile");
        assert!(again.is_empty(), "not converged after one pass: {again:#?}");
        plan
    }
}
