//! The fields of cached objects the reconcile functions read, as JSON paths, so the caller
//! can trim its caches (e.g. with a reflector `modify` step) without changing results.
//!
//! Pods, Services and Nodes may be trimmed to these fields. EndpointSlices and Endpoints
//! must **not** be trimmed beyond `metadata.managedFields`: an update is a full PUT built from
//! the cached object, so any field dropped from the cache would be erased on the server.

/// Service fields read by both controllers and the trigger-time tracker.
pub const SERVICE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations[service.kubernetes.io/topology-mode]",
    "metadata.annotations[service.kubernetes.io/topology-aware-hints]",
    "metadata.creationTimestamp",
    "metadata.deletionTimestamp",
    "spec.type",
    "spec.selector",
    "spec.clusterIP",
    "spec.ipFamilies",
    "spec.ports[*].name",
    "spec.ports[*].protocol",
    "spec.ports[*].port",
    "spec.ports[*].targetPort",
    "spec.ports[*].appProtocol",
    "spec.publishNotReadyAddresses",
    "spec.trafficDistribution",
];

/// Pod fields read by both controllers and the trigger-time tracker. Containers must keep
/// their list position only as far as ports go; names of containers are not read.
pub const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.deletionTimestamp",
    "spec.nodeName",
    "spec.hostname",
    "spec.subdomain",
    "spec.containers[*].ports[*].name",
    "spec.containers[*].ports[*].containerPort",
    "spec.containers[*].ports[*].protocol",
    "spec.initContainers[*].restartPolicy",
    "spec.initContainers[*].ports[*].name",
    "spec.initContainers[*].ports[*].containerPort",
    "spec.initContainers[*].ports[*].protocol",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.conditions[type=Ready].status",
    "status.conditions[type=Ready].lastTransitionTime",
];

/// Node fields read (EndpointSlice controller only, for zones, the missing-node rule and the
/// CPU shares of topology-aware hints).
pub const NODE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.labels[topology.kubernetes.io/zone]",
    "metadata.labels[node-role.kubernetes.io/control-plane]",
    "metadata.labels[node-role.kubernetes.io/master]",
    "status.allocatable[cpu]",
    "status.conditions[type=Ready]",
];

/// EndpointSlice fields read; keep the whole object (see the module docs).
pub const ENDPOINTSLICE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.resourceVersion",
    "metadata.generation",
    "metadata.labels",
    "metadata.ownerReferences",
    "metadata.deletionTimestamp",
    "addressType",
    "endpoints",
    "ports",
];

/// Endpoints fields read; keep the whole object (see the module docs).
pub const ENDPOINTS_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.resourceVersion",
    "metadata.labels",
    "metadata.annotations",
    "subsets",
];
