//! Test builders (`svc`, `pod`, `node`, `slice`) and a tiny in-memory apiserver that applies
//! plans the way the real one would (names from `generateName`, resourceVersion and
//! generation bumps, optimistic-concurrency checks).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::endpointslice::SlicePlan;
use crate::keys::*;

pub fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn sport(name: &str, port: i32, target: IntOrString, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(target),
        protocol: Some(protocol.to_string()),
        ..Default::default()
    }
}

pub fn named(name: &str, port: i32, target: &str) -> ServicePort {
    sport(name, port, IntOrString::String(target.to_string()), "TCP")
}

pub fn num(name: &str, port: i32, target: i32) -> ServicePort {
    sport(name, port, IntOrString::Int(target), "TCP")
}

pub struct SvcB(pub Service);

pub fn svc(name: &str) -> SvcB {
    SvcB(Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(map(&[("app", "web")])),
            cluster_ip: Some("10.96.0.10".to_string()),
            ip_families: Some(vec!["IPv4".to_string()]),
            type_: Some("ClusterIP".to_string()),
            ports: Some(vec![num("http", 80, 8080)]),
            ..Default::default()
        }),
        status: None,
    })
}

impl SvcB {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }
    pub fn selector(mut self, pairs: &[(&str, &str)]) -> Self {
        self.spec().selector = Some(map(pairs));
        self
    }
    pub fn no_selector(mut self) -> Self {
        self.spec().selector = None;
        self
    }
    pub fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.to_string());
        self
    }
    pub fn headless(mut self) -> Self {
        self.spec().cluster_ip = Some("None".to_string());
        self
    }
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.to_string());
        self
    }
    pub fn families(mut self, fams: &[&str]) -> Self {
        self.spec().ip_families = Some(fams.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn ports(mut self, ports: Vec<ServicePort>) -> Self {
        self.spec().ports = Some(ports);
        self
    }
    pub fn pnra(mut self) -> Self {
        self.spec().publish_not_ready_addresses = Some(true);
        self
    }
    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0.metadata.labels = Some(map(pairs));
        self
    }
    pub fn annotations(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0.metadata.annotations = Some(map(pairs));
        self
    }
    pub fn traffic_distribution(mut self, td: &str) -> Self {
        self.spec().traffic_distribution = Some(td.to_string());
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
    pub fn created(mut self, at: Time) -> Self {
        self.0.metadata.creation_timestamp = Some(at);
        self
    }
    pub fn build(self) -> Service {
        self.0
    }
}

pub struct PodB(pub Pod);

/// A deterministic IPv4 address for the n-th test pod.
pub fn ip4(n: usize) -> String {
    format!("10.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, n % 256)
}

/// A deterministic IPv6 address for the n-th test pod.
pub fn ip6(n: usize) -> String {
    format!("fd00::{:x}", n + 1)
}

pub fn pod(name: &str) -> PodB {
    let n = name
        .bytes()
        .fold(0usize, |acc, b| acc.wrapping_mul(31).wrapping_add(b as usize))
        % 60000;
    PodB(Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            uid: Some(format!("uid-{name}")),
            labels: Some(map(&[("app", "web")])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-1".to_string()),
            containers: vec![Container {
                name: "c".to_string(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_string()),
            pod_ip: Some(ip4(n)),
            pod_ips: Some(vec![PodIP { ip: ip4(n) }]),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_string(),
                status: "True".to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    })
}

/// `n` ready pods `p000`, `p001`, ... with distinct IPv4 addresses.
pub fn pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| pod(&format!("p{i:03}")).ips(&[&ip4(i)]).build())
        .collect()
}

/// `n` pods named from `start`.
pub fn pods_from(start: usize, n: usize) -> Vec<Pod> {
    (start..start + n)
        .map(|i| pod(&format!("p{i:03}")).ips(&[&ip4(i)]).build())
        .collect()
}

impl PodB {
    fn status(&mut self) -> &mut PodStatus {
        self.0.status.get_or_insert_with(Default::default)
    }
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }
    pub fn ips(mut self, ips: &[&str]) -> Self {
        let st = self.status();
        st.pod_ip = ips.first().map(|s| s.to_string());
        st.pod_ips = Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
        self
    }
    pub fn legacy_pod_ip(mut self, ip: &str) -> Self {
        self.status().pod_ip = Some(ip.to_string());
        self
    }
    pub fn ready(mut self, ready: bool) -> Self {
        let st = self.status();
        st.conditions = Some(vec![PodCondition {
            type_: "Ready".to_string(),
            status: if ready { "True" } else { "False" }.to_string(),
            ..Default::default()
        }]);
        self
    }
    pub fn ready_at(mut self, at: Time) -> Self {
        if let Some(c) = self
            .status()
            .conditions
            .iter_mut()
            .flatten()
            .find(|c| c.type_ == "Ready")
        {
            c.last_transition_time = Some(at);
        }
        self
    }
    pub fn phase(mut self, phase: &str) -> Self {
        self.status().phase = Some(phase.to_string());
        self
    }
    pub fn restart_policy(mut self, rp: &str) -> Self {
        self.spec().restart_policy = Some(rp.to_string());
        self
    }
    pub fn terminating(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(t(5));
        self
    }
    pub fn node(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.to_string());
        self
    }
    pub fn hostname(mut self, hostname: &str, subdomain: &str) -> Self {
        let spec = self.spec();
        spec.hostname = Some(hostname.to_string());
        spec.subdomain = Some(subdomain.to_string());
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.to_string());
        self
    }
    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0.metadata.labels = Some(map(pairs));
        self
    }
    pub fn no_labels(mut self) -> Self {
        self.0.metadata.labels = None;
        self
    }
    fn port(name: &str, port: i32, proto: &str) -> ContainerPort {
        ContainerPort {
            name: Some(name.to_string()),
            container_port: port,
            protocol: Some(proto.to_string()),
            ..Default::default()
        }
    }
    pub fn container_port(mut self, name: &str, port: i32, proto: &str) -> Self {
        let spec = self.spec();
        if spec.containers.is_empty() {
            spec.containers.push(Container {
                name: "c".to_string(),
                ..Default::default()
            });
        }
        spec.containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(Self::port(name, port, proto));
        self
    }
    fn init(mut self, name: &str, port: i32, proto: &str, restart: Option<&str>) -> Self {
        self.spec()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(Container {
                name: format!("init-{name}"),
                restart_policy: restart.map(str::to_string),
                ports: Some(vec![Self::port(name, port, proto)]),
                ..Default::default()
            });
        self
    }
    pub fn sidecar_port(self, name: &str, port: i32, proto: &str) -> Self {
        self.init(name, port, proto, Some("Always"))
    }
    pub fn init_port(self, name: &str, port: i32, proto: &str) -> Self {
        self.init(name, port, proto, None)
    }
    pub fn build(self) -> Pod {
        self.0
    }
}

pub fn node(name: &str, zone: Option<&str>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: zone.map(|z| map(&[(LABEL_TOPOLOGY_ZONE, z)])),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn refs<T>(v: &[T]) -> Vec<&T> {
    v.iter().collect()
}

/// A hand-made existing slice for `svc` (owned by it, our manager unless changed).
pub struct SliceB(pub EndpointSlice);

pub fn slice(name: &str, svc: &Service, manager: &str) -> SliceB {
    let svc_name = svc.metadata.name.clone().unwrap();
    SliceB(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: svc.metadata.namespace.clone(),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("1".to_string()),
            generation: Some(1),
            labels: Some(map(&[
                (LABEL_SERVICE_NAME, &svc_name),
                (LABEL_MANAGED_BY, manager),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_string(),
                kind: "Service".to_string(),
                name: svc_name,
                uid: svc.metadata.uid.clone().unwrap(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: "IPv4".to_string(),
        endpoints: vec![],
        ports: Some(vec![EndpointPort {
            name: Some("http".to_string()),
            port: Some(8080),
            protocol: Some("TCP".to_string()),
            app_protocol: None,
        }]),
    })
}

impl SliceB {
    pub fn address_type(mut self, at: &str) -> Self {
        self.0.address_type = at.to_string();
        self
    }
    pub fn ports(mut self, ports: Option<Vec<EndpointPort>>) -> Self {
        self.0.ports = ports;
        self
    }
    pub fn owner_uid(mut self, uid: &str) -> Self {
        for r in self.0.metadata.owner_references.iter_mut().flatten() {
            r.uid = uid.to_string();
        }
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(k.to_string(), v.to_string());
        self
    }
    /// Adds endpoints for `pods` exactly as the controller would build them (node-1, no zone).
    pub fn endpoints_for(mut self, pods: &[Pod]) -> Self {
        for p in pods {
            let ip = p.status.as_ref().unwrap().pod_ips.as_ref().unwrap()[0].ip.clone();
            self.0
                .endpoints
                .push(ep(p.metadata.name.as_deref().unwrap(), &ip, true));
        }
        self
    }
    pub fn build(self) -> EndpointSlice {
        self.0
    }
}

/// A ready endpoint for pod `name` on node-1, as the controller builds it.
pub fn ep(name: &str, ip: &str, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        node_name: Some("node-1".to_string()),
        target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Pod".to_string()),
            namespace: Some("default".to_string()),
            name: Some(name.to_string()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An in-memory apiserver for EndpointSlices.
#[derive(Default, Clone)]
pub struct Api {
    pub slices: Vec<EndpointSlice>,
    counter: u64,
    pub writes: usize,
}

impl Api {
    pub fn with(slices: Vec<EndpointSlice>) -> Self {
        Api {
            slices,
            counter: 1000,
            writes: 0,
        }
    }

    pub fn refs(&self) -> Vec<&EndpointSlice> {
        self.slices.iter().collect()
    }

    fn bump(&mut self) -> String {
        self.counter += 1;
        self.counter.to_string()
    }

    /// Applies a plan: creates, then updates, then deletes.
    pub fn apply(&mut self, plan: &SlicePlan) -> Vec<EndpointSlice> {
        self.apply_writes(&plan.create, &plan.update, &plan.delete)
    }

    /// Applies writes in the order given; panics on anything the real apiserver would refuse
    /// (a create with a name, a resourceVersion or no generateName; an update of an unknown
    /// name, with a stale resourceVersion or another addressType; a delete of an unknown name).
    pub fn apply_writes(
        &mut self,
        create: &[EndpointSlice],
        update: &[EndpointSlice],
        delete: &[EndpointSlice],
    ) -> Vec<EndpointSlice> {
        let mut written = Vec::new();
        for c in create {
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
            let mut s = c.clone();
            let id = self.bump();
            s.metadata.name = Some(format!("{prefix}{id}"));
            s.metadata.generate_name = None;
            s.metadata.uid = Some(format!("uid-slice-{id}"));
            s.metadata.resource_version = Some(id);
            s.metadata.generation = Some(1);
            written.push(s.clone());
            self.slices.push(s);
            self.writes += 1;
        }
        for u in update {
            let name = u.metadata.name.clone().expect("update without name");
            let idx = self
                .slices
                .iter()
                .position(|s| s.metadata.name.as_deref() == Some(&name))
                .unwrap_or_else(|| panic!("update of unknown slice {name}"));
            let cur = self.slices[idx].clone();
            if let Some(rv) = &u.metadata.resource_version {
                assert_eq!(
                    Some(rv),
                    cur.metadata.resource_version.as_ref(),
                    "409 Conflict on {name}"
                );
            }
            assert_eq!(
                u.address_type, cur.address_type,
                "addressType is immutable ({name})"
            );
            let mut s = u.clone();
            let spec_changed = s.endpoints != cur.endpoints
                || s.ports != cur.ports
                || s.metadata.labels != cur.metadata.labels;
            s.metadata.uid = cur.metadata.uid.clone();
            s.metadata.resource_version = Some(self.bump());
            s.metadata.generation = Some(cur.metadata.generation.unwrap_or(1) + i64::from(spec_changed));
            written.push(s.clone());
            self.slices[idx] = s;
            self.writes += 1;
        }
        for d in delete {
            let before = self.slices.len();
            self.slices.retain(|s| s.metadata.name != d.metadata.name);
            assert_eq!(
                before,
                self.slices.len() + 1,
                "delete of unknown slice {:?}",
                d.metadata.name
            );
            self.writes += 1;
        }
        written
    }
}
