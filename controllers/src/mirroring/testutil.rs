//! Test builders for Endpoints objects, and an in-memory apiserver that applies mirroring
//! plans the way the real one would (names from `generateName`, resourceVersion bumps and
//! optimistic-concurrency checks).

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{MirrorConfig, MirrorPlan, reconcile};
pub use crate::builders::map;
use crate::builders::t;

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

/// The crate's in-memory apiserver ([`crate::builders::Api`]), taking mirroring plans.
pub use crate::builders::Api;

/// Mirroring plans on the in-memory apiserver.
pub trait MirrorApi {
    /// Applies a plan the way the real apiserver would.
    fn apply_mirror(&mut self, plan: &MirrorPlan);
    /// Reconciles, applies, and checks that reconciling the result plans no write.
    fn sync(&mut self, ep: &Endpoints, cfg: &MirrorConfig) -> MirrorPlan;
}

impl MirrorApi for Api {
    fn apply_mirror(&mut self, plan: &MirrorPlan) {
        self.apply_writes(&plan.create, &plan.update, &plan.delete);
    }

    fn sync(&mut self, ep: &Endpoints, cfg: &MirrorConfig) -> MirrorPlan {
        let plan = reconcile(ep, &self.refs(), cfg).expect("reconcile");
        self.apply_mirror(&plan);
        let again = reconcile(ep, &self.refs(), cfg).expect("reconcile");
        assert!(again.is_empty(), "not converged after one pass: {again:#?}");
        plan
    }
}
