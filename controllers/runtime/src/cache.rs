//! What the controllers keep of watched objects: Pods, Services and Nodes trimmed to the fields
//! the reconcile reads ([`portico_controllers::fields`]), so a large cluster costs little memory.
//! EndpointSlices and Endpoints are kept whole but for `managedFields`: updates are full PUTs
//! built from the cached object, and a trimmed field would be erased on the server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, NodeStatus, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use portico_controllers::keys::{
    ANNOTATION_TOPOLOGY_AWARE_HINTS, ANNOTATION_TOPOLOGY_MODE, LABEL_TOPOLOGY_ZONE,
};

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
}

/// Keeps identity, labels, deletion state and the endpoint-relevant parts of spec and status.
pub fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.take() {
        let keep_ports = |c: Container| Container {
            name: c.name,
            ports: c.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ContainerPort {
                        name: p.name,
                        container_port: p.container_port,
                        protocol: p.protocol,
                        ..Default::default()
                    })
                    .collect()
            }),
            restart_policy: c.restart_policy,
            ..Default::default()
        };
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            hostname: spec.hostname,
            subdomain: spec.subdomain,
            containers: spec.containers.into_iter().map(keep_ports).collect(),
            init_containers: spec
                .init_containers
                .map(|cs| cs.into_iter().map(keep_ports).collect()),
            ..Default::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            conditions: status
                .conditions
                .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
            ..Default::default()
        });
    }
}

/// Keeps the Service but for status, managed fields and annotations other than topology.
pub fn trim_service(svc: &mut Service) {
    trim_meta(&mut svc.metadata);
    if let Some(annotations) = svc.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k == ANNOTATION_TOPOLOGY_MODE || k == ANNOTATION_TOPOLOGY_AWARE_HINTS);
    }
    svc.status = None;
}

/// Keeps what endpoints and topology-aware hints use: the Node's name, resourceVersion, zone
/// and control-plane labels, allocatable CPU and Ready condition.
pub fn trim_node(node: &mut Node) {
    const KEPT_LABELS: [&str; 3] = [
        LABEL_TOPOLOGY_ZONE,
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    ];
    let labels: BTreeMap<String, String> = node
        .metadata
        .labels
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| KEPT_LABELS.contains(&k.as_str()))
        .collect();
    node.metadata = ObjectMeta {
        name: node.metadata.name.take(),
        resource_version: node.metadata.resource_version.take(),
        labels: (!labels.is_empty()).then_some(labels),
        ..Default::default()
    };
    node.spec = None;
    node.status = node.status.take().map(|st| NodeStatus {
        allocatable: st
            .allocatable
            .and_then(|mut a| a.remove("cpu"))
            .map(|cpu| [("cpu".to_owned(), cpu)].into()),
        conditions: st
            .conditions
            .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..Default::default()
    });
}

/// Drops only `managedFields`, which the apiserver maintains itself.
pub fn drop_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_pods_reconcile_like_full_ones() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "ns", "uid": "u1", "labels": {"app": "web"},
                "annotations": {"big": "x".repeat(4096)}, "resourceVersion": "7"},
            "spec": {"nodeName": "n1", "hostname": "h", "subdomain": "s",
                "containers": [{"name": "app", "image": "img", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 80}]}],
                "initContainers": [{"name": "side", "restartPolicy": "Always",
                    "ports": [{"name": "m", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "hostIP": "192.168.0.1",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}
        }))
        .unwrap();
        let mut trimmed = pod.clone();
        trim_pod(&mut trimmed);
        assert!(trimmed.metadata.annotations.is_none());
        let spec = trimmed.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].ports.as_ref().unwrap()[0].container_port, 8080);
        assert_eq!(spec.containers[0].ports.as_ref().unwrap()[0].host_port, None);
        assert!(spec.containers[0].env.is_none());
        assert_eq!(
            spec.init_containers.as_ref().unwrap()[0]
                .restart_policy
                .as_deref(),
            Some("Always")
        );
        let status = trimmed.status.as_ref().unwrap();
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        assert!(status.host_ip.is_none());

        // The reconcile reads only kept fields, so it gives the same slices for both.
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "s1"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.1", "ipFamilies": ["IPv4"],
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                          {"name": "m", "port": 90, "targetPort": "m", "protocol": "TCP"}]}
        }))
        .unwrap();
        let nodes = portico_controllers::endpointslice::NodeZoneMap::default();
        let cfg = portico_controllers::endpointslice::Config::default();
        let mut nodes = nodes;
        nodes.insert("n1", Some("z1"));
        let full =
            portico_controllers::endpointslice::reconcile(&svc, &[&pod], &nodes, &[], &cfg, None).unwrap();
        let lean = portico_controllers::endpointslice::reconcile(&svc, &[&trimmed], &nodes, &[], &cfg, None)
            .unwrap();
        assert_eq!(full, lean);
        assert_eq!(full.create.len(), 1);
    }

    #[test]
    fn trimmed_nodes_keep_zone_cpu_and_readiness() {
        let full = |zone: &str, cpu: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("n-{zone}"), "labels": {"topology.kubernetes.io/zone": zone, "other": "x"},
                    "annotations": {"big": "x".repeat(4096)}},
                "spec": {"podCIDR": "10.244.0.0/24"},
                "status": {"capacity": {"cpu": "8"}, "allocatable": {"cpu": cpu, "memory": "16Gi"},
                    "conditions": [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}],
                    "images": [{"names": ["registry/big:1"], "sizeBytes": 1}]}
            }))
            .unwrap()
        };
        let nodes = [full("z1", "3"), full("z2", "1")];
        let mut trimmed = nodes.clone();
        trimmed.iter_mut().for_each(trim_node);
        assert_eq!(
            portico_controllers::endpointslice::node_zone(&trimmed[0]),
            Some("z1")
        );
        assert_eq!(trimmed[0].metadata.labels.as_ref().unwrap().len(), 1);
        let st = trimmed[0].status.as_ref().unwrap();
        assert_eq!(st.allocatable.as_ref().unwrap().len(), 1);
        assert_eq!(st.conditions.as_ref().unwrap().len(), 1);
        assert!(st.images.is_none() && st.capacity.is_none() && trimmed[0].spec.is_none());
        let shares = portico_controllers::endpointslice::zone_cpu_shares(&trimmed);
        assert_eq!(
            shares,
            portico_controllers::endpointslice::zone_cpu_shares(&nodes)
        );
        assert_eq!(shares.unwrap()["z1"], 0.75);
    }
}
