//! Well-known label and annotation keys and values shared by both controllers.
//!
//! These are API constants (they appear on objects other components read), so their values
//! must stay byte-for-byte what Kubernetes uses.

/// Label on an EndpointSlice naming the Service it belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label on an EndpointSlice naming the controller that manages it.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Label (value `""`) on slices and Endpoints of a Service without a cluster IP.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label marking an Endpoints object as written by an endpoints controller (KEP-4974).
pub const LABEL_ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
/// Value of [`LABEL_ENDPOINTS_MANAGED_BY`]. Kept equal to kube-controller-manager's value so
/// consumers that look for it, and Endpoints written by kube-controller-manager before a
/// migration, stay identical.
pub const ENDPOINTS_MANAGED_BY_VALUE: &str = "endpoint-controller";

/// The manager name kube-controller-manager's EndpointSlice controller uses.
pub const UPSTREAM_ENDPOINTSLICE_MANAGER: &str = "endpointslice-controller.k8s.io";
/// The manager name kube-controller-manager's EndpointSliceMirroring controller uses.
pub const UPSTREAM_MIRRORING_MANAGER: &str = "endpointslicemirroring-controller.k8s.io";
/// Label on an Endpoints object: exactly `"true"` keeps it from being mirrored to slices.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// Annotation carrying the time of the oldest change that triggered this write (RFC 3339, UTC,
/// nanoseconds without trailing zeros). Read by kube-proxy for the network programming SLI.
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Annotation `kubectl apply` keeps its last input in. Not mirrored from Endpoints to slices:
/// on a slice it would describe an object kubectl never applied.
pub const ANNOTATION_LAST_APPLIED_CONFIG: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Annotation set on an Endpoints object whose addresses were truncated to
/// [`crate::legacy_endpoints::MAX_CAPACITY`].
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Value of [`ANNOTATION_OVER_CAPACITY`] when addresses were dropped.
pub const OVER_CAPACITY_TRUNCATED: &str = "truncated";
/// Leader-election annotation: Endpoints carrying it are locks, not Service endpoints, and are
/// never treated as leftovers.
pub const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";

/// Deprecated topology annotation; when present it wins over [`ANNOTATION_TOPOLOGY_MODE`].
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
/// Topology annotation (`Auto` enables CPU-proportional hints in upstream).
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";

/// Node label holding the node's zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
