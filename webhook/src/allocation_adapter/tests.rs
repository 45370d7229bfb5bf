//! Table-driven tests of the allocation decisions on AdmissionReview fixtures, through
//! [`admit`] over [`ServiceAllocator::in_memory`]: the production decision flow, with claims
//! held in memory instead of a `RangeAllocation` object.

use k8s_openapi::jiff::Timestamp;
use portico_allocation::{AllocationConfig, Holder, IpFamily, Pool, ServiceAllocator, ServiceRef};
use serde_json::{Value as Json, json};

use super::admit;
use crate::review::{self, AdmissionRequest, Decoded, Verdict};

fn config(cidrs: &str, ports: &str) -> AllocationConfig {
    AllocationConfig::parse(cidrs, ports).expect("test configuration")
}

/// The production decision flow ([`ServiceAllocator::decide`]) over in-memory claim stores, fed
/// with holdings the way the watches feed them.
struct Mem(ServiceAllocator);

impl Mem {
    fn new(cfg: &AllocationConfig) -> Self {
        Mem(ServiceAllocator::in_memory(cfg.clone()).expect("in-memory allocator"))
    }

    async fn admit(&self, request: &AdmissionRequest<'_>) -> Verdict {
        admit(&self.0, request).await
    }

    /// The watch saw Service `ns/holder` holding `value`.
    fn hold_as(&self, value: &str, holder: &str) {
        let h = Holder::Service(ServiceRef::new("ns", holder));
        let now = Timestamp::now();
        if let Ok(port) = value.parse::<i32>() {
            self.0.port_range().observe(move |s| s.hold(port, h.clone(), now));
            return;
        }
        let ip: std::net::IpAddr = value.parse().expect("ip");
        self.0
            .ip_range(IpFamily::of(ip))
            .expect("family configured")
            .observe(move |s| s.hold(ip, h.clone(), now));
    }

    /// The watch saw Service `ns/holder` go.
    fn unhold_as(&self, value: &str, holder: &str) {
        let h = Holder::Service(ServiceRef::new("ns", holder));
        if let Ok(port) = value.parse::<i32>() {
            self.0.port_range().observe(move |s| s.unhold(port, &h));
            return;
        }
        let ip: std::net::IpAddr = value.parse().expect("ip");
        self.0
            .ip_range(IpFamily::of(ip))
            .expect("family configured")
            .observe(move |s| s.unhold(ip, &h));
    }

    async fn pending_owner(&self, ip: &str) -> Option<ServiceRef> {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        let state = self.0.ip_range(IpFamily::of(ip))?.snapshot().await.ok()?;
        state.pending().get(&ip).map(|p| p.owner.clone())
    }
}

/// An AdmissionReview for a Service in namespace `ns`.
fn review(op: &str, object: Option<Json>, old: Option<Json>, dry_run: bool) -> AdmissionRequest<'static> {
    let name = object
        .as_ref()
        .or(old.as_ref())
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b0e5e0e-1111-4222-8333-944455556666",
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "name": name,
            "namespace": "ns",
            "operation": op,
            "userInfo": {"username": "admin"},
            "object": object,
            "oldObject": old,
            "dryRun": dry_run,
        }
    });
    match review::decode_value(body).expect("an AdmissionReview") {
        Decoded::Request(r) => *r,
        Decoded::Unreadable { message, .. } => panic!("unreadable fixture: {message}"),
    }
}

/// A Service object as the apiserver sends it to a mutating webhook on CREATE (defaulted, no
/// namespace, no clusterIP unless requested).
fn svc(name: &str, spec: Json) -> Json {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

fn tcp(port: i32) -> Json {
    json!({"name": format!("p{port}"), "port": port, "protocol": "TCP", "targetPort": port})
}

fn node(port: i32, protocol: &str, node_port: i32) -> Json {
    json!({"name": format!("p{port}-{}", protocol.to_lowercase()), "port": port, "protocol": protocol,
           "targetPort": port, "nodePort": node_port})
}

/// What a case expects.
enum Want {
    /// Allowed with exactly this patch (`None`: no patch).
    Allow(Option<Json>),
    /// Refused with this code and message.
    Deny(u16, &'static str),
}

struct Case {
    name: &'static str,
    cidrs: &'static str,
    ports: &'static str,
    /// Values held before the review (IPs or ports).
    held: &'static [&'static str],
    op: &'static str,
    object: Option<Json>,
    old: Option<Json>,
    want: Want,
    /// Values held afterwards (checked when non-empty).
    held_after: &'static [&'static str],
}

fn case(name: &'static str, object: Json, want: Want) -> Case {
    Case {
        name,
        cidrs: "10.96.0.0/24",
        ports: "30000-32767",
        held: &[],
        op: "CREATE",
        object: Some(object),
        old: None,
        want,
        held_after: &[],
    }
}

async fn held(m: &Mem) -> Vec<String> {
    let mut out = Vec::new();
    for (_, range) in m.0.ip_ranges() {
        let state = range.snapshot().await.expect("state");
        out.extend(state.pool().held().iter().map(|ip| ip.to_string()));
    }
    let ports = m.0.port_range().snapshot().await.expect("state");
    out.extend(ports.pool().held().iter().map(|p| p.to_string()));
    out
}

async fn run(c: Case) {
    let m = Mem::new(&config(c.cidrs, c.ports));
    for (i, v) in c.held.iter().enumerate() {
        m.hold_as(v, &format!("holder-{i}"));
    }
    let verdict: Verdict = m.admit(&review(c.op, c.object, c.old, false)).await;
    match c.want {
        Want::Allow(patch) => {
            assert!(
                verdict.allowed,
                "{}: refused: {:?}",
                c.name,
                verdict.status.map(|s| s.message)
            );
            assert_eq!(verdict.patch, patch, "{}: patch", c.name);
        }
        Want::Deny(code, message) => {
            assert!(!verdict.allowed, "{}: allowed with {:?}", c.name, verdict.patch);
            let status = verdict.status.expect("a refusal carries a status");
            assert_eq!(
                (status.code, status.message.as_str()),
                (code, message),
                "{}",
                c.name
            );
            assert!(verdict.patch.is_none());
            if code == 422 {
                let details = status.details.expect("422 details");
                assert_eq!(details.kind, "Service");
                assert!(!details.causes.is_empty());
            }
        }
    }
    if !c.held_after.is_empty() {
        assert_eq!(held(&m).await, c.held_after, "{}: held afterwards", c.name);
    }
}

fn cluster_ip_patch(ips: &[&str]) -> Vec<Json> {
    vec![
        json!({"op": "add", "path": "/spec/clusterIP", "value": ips[0]}),
        json!({"op": "add", "path": "/spec/clusterIPs", "value": ips}),
    ]
}

fn node_port_patch(index: usize, port: i32) -> Json {
    json!({"op": "add", "path": format!("/spec/ports/{index}/nodePort"), "value": port})
}

#[tokio::test]
async fn create_cluster_ip() {
    let cases = vec![
        Case {
            held_after: &["10.96.0.17"],
            ..case(
                "no clusterIP: first address of the dynamic band",
                svc("web", json!({"type": "ClusterIP", "ports": [tcp(80)]})),
                Want::Allow(Some(Json::Array(cluster_ip_patch(&["10.96.0.17"])))),
            )
        },
        Case {
            held_after: &["10.96.0.5"],
            ..case(
                "requested and free: taken, nothing to patch",
                svc(
                    "web",
                    json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ports": [tcp(80)]}),
                ),
                Want::Allow(None),
            )
        },
        Case {
            held: &["10.96.0.5"],
            ..case(
                "requested and taken",
                svc(
                    "web",
                    json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ports": [tcp(80)]}),
                ),
                Want::Deny(
                    422,
                    r#"Service "web" is invalid: spec.clusterIPs: Invalid value: ["10.96.0.5"]: failed to allocate IP 10.96.0.5: provided IP is already allocated"#,
                ),
            )
        },
        case(
            "requested outside the range",
            svc(
                "web",
                json!({"clusterIP": "10.97.0.5", "clusterIPs": ["10.97.0.5"], "ports": [tcp(80)]}),
            ),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.clusterIPs: Invalid value: ["10.97.0.5"]: failed to allocate IP 10.97.0.5: the provided IP (10.97.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/24"#,
            ),
        ),
        case(
            "the network address",
            svc("web", json!({"clusterIP": "10.96.0.0", "ports": [tcp(80)]})),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.clusterIPs: Invalid value: ["10.96.0.0"]: failed to allocate IP 10.96.0.0: the provided IP (10.96.0.0) is not in the valid range. The range of valid IPs is 10.96.0.0/24"#,
            ),
        ),
        case(
            "the broadcast address",
            svc(
                "web",
                json!({"clusterIP": "10.96.0.255", "clusterIPs": ["10.96.0.255"], "ports": [tcp(80)]}),
            ),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.clusterIPs: Invalid value: ["10.96.0.255"]: failed to allocate IP 10.96.0.255: the provided IP (10.96.0.255) is not in the valid range. The range of valid IPs is 10.96.0.0/24"#,
            ),
        ),
        Case {
            held_after: &[],
            ..case(
                "headless gets nothing",
                svc(
                    "db",
                    json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [tcp(5432)]}),
                ),
                Want::Allow(None),
            )
        },
        case(
            "ExternalName gets nothing",
            svc(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            Want::Allow(None),
        ),
        case(
            "malformed clusterIP: left to the apiserver's validation",
            svc(
                "web",
                json!({"clusterIP": "10.96.0.x", "clusterIPs": ["10.96.0.x"], "ports": [tcp(80)]}),
            ),
            Want::Allow(None),
        ),
        Case {
            cidrs: "10.96.0.0/30",
            held: &["10.96.0.1", "10.96.0.2"],
            ..case(
                "range full",
                svc("web", json!({"ports": [tcp(80)]})),
                Want::Deny(
                    500,
                    "Internal error occurred: failed to allocate a serviceIP: range is full",
                ),
            )
        },
        case(
            "IPv6 requested on an IPv4-only configuration",
            svc(
                "web",
                json!({"clusterIP": "fd00::5", "clusterIPs": ["fd00::5"], "ports": [tcp(80)]}),
            ),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.clusterIPs[0]: Invalid value: ["fd00::5"]: IPv6 is not configured on this cluster"#,
            ),
        ),
        case(
            "ipFamilies [IPv6] on an IPv4-only configuration",
            svc("web", json!({"ipFamilies": ["IPv6"], "ports": [tcp(80)]})),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster"#,
            ),
        ),
        case(
            "RequireDualStack on a single-stack configuration",
            svc(
                "web",
                json!({"ipFamilyPolicy": "RequireDualStack", "ports": [tcp(80)]}),
            ),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#,
            ),
        ),
        case(
            "PreferDualStack on a single-stack configuration: one address",
            svc(
                "web",
                json!({"ipFamilyPolicy": "PreferDualStack", "ports": [tcp(80)]}),
            ),
            Want::Allow(Some(Json::Array(cluster_ip_patch(&["10.96.0.17"])))),
        ),
        Case {
            cidrs: "10.96.0.0/24,fd00::/120",
            held_after: &["10.96.0.17", "fd00::11"],
            ..case(
                "PreferDualStack on dual-stack: both families, primary first",
                svc(
                    "web",
                    json!({"ipFamilyPolicy": "PreferDualStack", "ports": [tcp(80)]}),
                ),
                Want::Allow(Some(Json::Array(cluster_ip_patch(&["10.96.0.17", "fd00::11"])))),
            )
        },
        Case {
            cidrs: "10.96.0.0/24,fd00::/120",
            ..case(
                "RequireDualStack with IPv6 first",
                svc(
                    "web",
                    json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"], "ports": [tcp(80)]}),
                ),
                Want::Allow(Some(Json::Array(cluster_ip_patch(&["fd00::11", "10.96.0.17"])))),
            )
        },
        Case {
            cidrs: "10.96.0.0/24,fd00::/120",
            held: &["fd00::5"],
            ..case(
                "dual-stack with a requested primary: the quoted list carries the empty secondary",
                svc(
                    "web",
                    json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"],
                    "clusterIP": "fd00::5", "clusterIPs": ["fd00::5"], "ports": [tcp(80)]}),
                ),
                Want::Deny(
                    422,
                    r#"Service "web" is invalid: spec.clusterIPs: Invalid value: ["fd00::5",""]: failed to allocate IP fd00::5: provided IP is already allocated"#,
                ),
            )
        },
        Case {
            cidrs: "10.96.0.0/24,fd00::/120",
            ..case(
                "SingleStack by default on dual-stack",
                svc("web", json!({"ports": [tcp(80)]})),
                Want::Allow(Some(Json::Array(cluster_ip_patch(&["10.96.0.17"])))),
            )
        },
        case(
            "SingleStack with two IPs: left to the apiserver",
            svc(
                "web",
                json!({"clusterIPs": ["10.96.0.5", "fd00::5"], "clusterIP": "10.96.0.5", "ports": [tcp(80)]}),
            ),
            Want::Allow(None),
        ),
    ];
    for c in cases {
        run(c).await;
    }
}

#[tokio::test]
async fn create_node_ports() {
    let mut first = cluster_ip_patch(&["10.96.0.17"]);
    first.push(node_port_patch(0, 30086));
    let mut shared = cluster_ip_patch(&["10.96.0.17"]);
    shared.push(node_port_patch(0, 30086));
    shared.push(node_port_patch(1, 30086));
    let mut requested_later = cluster_ip_patch(&["10.96.0.17"]);
    requested_later.push(node_port_patch(0, 30053));
    let mut hc = cluster_ip_patch(&["10.96.0.17"]);
    hc.push(node_port_patch(0, 30086));
    hc.push(json!({"op": "add", "path": "/spec/healthCheckNodePort", "value": 30087}));

    let cases = vec![
        Case {
            held_after: &["10.96.0.17", "30086"],
            ..case(
                "NodePort: first port of the dynamic band 30086-32767",
                svc(
                    "web",
                    json!({"type": "NodePort", "externalTrafficPolicy": "Cluster", "ports": [tcp(80)]}),
                ),
                Want::Allow(Some(Json::Array(first))),
            )
        },
        Case {
            held_after: &["10.96.0.17", "30086"],
            ..case(
                "TCP and UDP of one service port share one node port",
                svc(
                    "dns",
                    json!({"type": "NodePort", "ports": [
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "dns-udp", "port": 53, "protocol": "UDP"}]}),
                ),
                Want::Allow(Some(Json::Array(shared))),
            )
        },
        Case {
            held_after: &["10.96.0.17", "30053"],
            ..case(
                "a node port requested on the UDP entry is shared with the TCP entry",
                svc(
                    "dns",
                    json!({"type": "NodePort", "ports": [
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    node(53, "UDP", 30053)]}),
                ),
                Want::Allow(Some(Json::Array(requested_later))),
            )
        },
        case(
            "two service ports requesting one node port",
            svc(
                "web",
                json!({"type": "NodePort", "ports": [node(93, "TCP", 30093), node(76, "UDP", 30093)]}),
            ),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.ports[1].nodePort: Invalid value: 30093: provided port is already allocated"#,
            ),
        ),
        case(
            "node port outside the range",
            svc("web", json!({"type": "NodePort", "ports": [node(80, "TCP", 80)]})),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"#,
            ),
        ),
        Case {
            held: &["30080"],
            held_after: &["30080"],
            ..case(
                "node port taken (and the clusterIP taken for it is given back)",
                svc(
                    "web",
                    json!({"type": "NodePort", "ports": [node(80, "TCP", 30080)]}),
                ),
                Want::Deny(
                    422,
                    r#"Service "web" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"#,
                ),
            )
        },
        Case {
            held_after: &["10.96.0.17", "30444"],
            ..case(
                "allocateLoadBalancerNodePorts: false allocates only requested node ports",
                svc(
                    "lb",
                    json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                    "externalTrafficPolicy": "Cluster", "ports": [tcp(80), node(443, "TCP", 30444)]}),
                ),
                Want::Allow(Some(Json::Array(cluster_ip_patch(&["10.96.0.17"])))),
            )
        },
        Case {
            held_after: &["10.96.0.17", "30086", "30087"],
            ..case(
                "LoadBalancer with externalTrafficPolicy Local gets a healthCheckNodePort",
                svc(
                    "lb",
                    json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": true,
                    "externalTrafficPolicy": "Local", "ports": [tcp(80)]}),
                ),
                Want::Allow(Some(Json::Array(hc))),
            )
        },
        Case {
            held: &["30001"],
            held_after: &["30001"],
            ..case(
                "requested healthCheckNodePort taken: 500 as upstream",
                svc(
                    "lb",
                    json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                    "healthCheckNodePort": 30001, "ports": [node(80, "TCP", 30080)]}),
                ),
                Want::Deny(
                    500,
                    "Internal error occurred: failed to allocate requested HealthCheck NodePort 30001: provided port is already allocated",
                ),
            )
        },
        Case {
            ports: "30000-30009",
            held: &[
                "30000", "30001", "30002", "30003", "30004", "30005", "30006", "30007", "30008", "30009",
            ],
            ..case(
                "node ports full",
                svc("web", json!({"type": "NodePort", "ports": [tcp(80)]})),
                Want::Deny(
                    500,
                    "Internal error occurred: failed to allocate a nodePort: range is full",
                ),
            )
        },
    ];
    for c in cases {
        run(c).await;
    }
}

fn update(name: &'static str, old: Json, new: Json, want: Want) -> Case {
    Case {
        op: "UPDATE",
        old: Some(old),
        ..case(name, new, want)
    }
}

#[tokio::test]
async fn update_transitions() {
    let cases = vec![
        Case {
            held: &["10.96.0.20"],
            held_after: &["10.96.0.20", "30086"],
            ..update(
                "ClusterIP -> NodePort allocates node ports",
                svc(
                    "web",
                    json!({"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [tcp(80)]}),
                ),
                svc(
                    "web",
                    json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [tcp(80)]}),
                ),
                Want::Allow(Some(json!([node_port_patch(0, 30086)]))),
            )
        },
        Case {
            held: &["10.96.0.20", "30080"],
            // Released by the repair loop once the Service no longer holds it, not here.
            held_after: &["10.96.0.20", "30080"],
            ..update(
                "NodePort -> ClusterIP changes nothing now",
                svc(
                    "web",
                    json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                svc(
                    "web",
                    json!({"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                Want::Allow(None),
            )
        },
        Case {
            held: &["10.96.0.20", "30080"],
            held_after: &["10.96.0.20", "30080"],
            ..update(
                "a replace without the allocated fields keeps the old values",
                svc(
                    "web",
                    json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                svc(
                    "web",
                    json!({"type": "NodePort", "ports": [{"name": "p80-tcp", "port": 80, "protocol": "TCP"}]}),
                ),
                Want::Allow(Some(json!([
                    {"op": "add", "path": "/spec/clusterIP", "value": "10.96.0.20"},
                    {"op": "add", "path": "/spec/clusterIPs", "value": ["10.96.0.20"]},
                    node_port_patch(0, 30080),
                ]))),
            )
        },
        Case {
            held: &["10.96.0.20", "30080", "30081"],
            ..update(
                "a new port requesting a taken node port",
                svc(
                    "web",
                    json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                svc(
                    "web",
                    json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080), node(81, "TCP", 30081)]}),
                ),
                Want::Deny(
                    422,
                    r#"Service "web" is invalid: spec.ports[1].nodePort: Invalid value: 30081: provided port is already allocated"#,
                ),
            )
        },
        update(
            "duplicate (protocol, nodePort) in an update: 500 as upstream",
            svc(
                "web",
                json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
            ),
            svc(
                "web",
                json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080), node(81, "TCP", 30080)]}),
            ),
            Want::Deny(500, "Internal error occurred: duplicate nodePort: {TCP 30080}"),
        ),
        Case {
            held_after: &["10.96.0.17"],
            ..update(
                "ExternalName -> ClusterIP allocates",
                svc(
                    "web",
                    json!({"type": "ExternalName", "externalName": "example.com"}),
                ),
                svc("web", json!({"type": "ClusterIP", "ports": [tcp(80)]})),
                Want::Allow(Some(Json::Array(cluster_ip_patch(&["10.96.0.17"])))),
            )
        },
        Case {
            held: &["10.96.0.20"],
            held_after: &["10.96.0.20"],
            ..update(
                "ClusterIP -> ExternalName: released later by repair",
                svc(
                    "web",
                    json!({"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [tcp(80)]}),
                ),
                svc(
                    "web",
                    json!({"type": "ExternalName", "externalName": "example.com"}),
                ),
                Want::Allow(None),
            )
        },
        Case {
            cidrs: "10.96.0.0/24,fd00::/120",
            held: &["10.96.0.20"],
            held_after: &["10.96.0.20", "fd00::11"],
            ..update(
                "upgrade to PreferDualStack adds the secondary",
                svc(
                    "web",
                    json!({"ipFamilyPolicy": "SingleStack", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ipFamilies": ["IPv4"], "ports": [tcp(80)]}),
                ),
                svc(
                    "web",
                    json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ipFamilies": ["IPv4"], "ports": [tcp(80)]}),
                ),
                Want::Allow(Some(Json::Array(cluster_ip_patch(&["10.96.0.20", "fd00::11"])))),
            )
        },
        Case {
            cidrs: "10.96.0.0/24,fd00::/120",
            held: &["10.96.0.20"],
            held_after: &["10.96.0.20"],
            ..update(
                "an unchanged PreferDualStack Service is not upgraded behind its back",
                svc(
                    "web",
                    json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ipFamilies": ["IPv4"], "ports": [tcp(80)]}),
                ),
                svc(
                    "web",
                    json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ipFamilies": ["IPv4"], "ports": [tcp(80)]}),
                ),
                Want::Allow(None),
            )
        },
        update(
            "RequireDualStack upgrade on a single-stack configuration",
            svc(
                "web",
                json!({"ipFamilyPolicy": "SingleStack", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [tcp(80)]}),
            ),
            svc(
                "web",
                json!({"ipFamilyPolicy": "RequireDualStack", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [tcp(80)]}),
            ),
            Want::Deny(
                422,
                r#"Service "web" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#,
            ),
        ),
        update(
            "a changed clusterIP is left to the apiserver (immutable)",
            svc(
                "web",
                json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [tcp(80)]}),
            ),
            svc(
                "web",
                json!({"clusterIP": "10.96.0.21", "clusterIPs": ["10.96.0.21"], "ports": [tcp(80)]}),
            ),
            Want::Allow(None),
        ),
        Case {
            held: &["10.96.0.20", "30080"],
            held_after: &["10.96.0.20", "30080", "30086"],
            ..update(
                "Cluster -> Local adds a healthCheckNodePort",
                svc(
                    "lb",
                    json!({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                svc(
                    "lb",
                    json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                Want::Allow(Some(
                    json!([{"op": "add", "path": "/spec/healthCheckNodePort", "value": 30086}]),
                )),
            )
        },
        Case {
            held: &["10.96.0.20", "30080", "30090"],
            held_after: &["10.96.0.20", "30080", "30090"],
            ..update(
                "a replace keeps the healthCheckNodePort",
                svc(
                    "lb",
                    json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30090, "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                svc(
                    "lb",
                    json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [node(80, "TCP", 30080)]}),
                ),
                Want::Allow(Some(
                    json!([{"op": "add", "path": "/spec/healthCheckNodePort", "value": 30090}]),
                )),
            )
        },
        Case {
            op: "DELETE",
            object: None,
            old: Some(svc(
                "web",
                json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [tcp(80)]}),
            )),
            held: &["10.96.0.20"],
            held_after: &["10.96.0.20"],
            ..case(
                "DELETE is admitted without side effects",
                json!(null),
                Want::Allow(None),
            )
        },
    ];
    for c in cases {
        run(c).await;
    }
}

#[tokio::test]
async fn dry_run_answers_the_same_and_changes_nothing() {
    let m = Mem::new(&config("10.96.0.0/24", "30000-32767"));
    let object = svc("web", json!({"type": "NodePort", "ports": [tcp(80)]}));
    let dry = m.admit(&review("CREATE", Some(object.clone()), None, true)).await;
    assert!(held(&m).await.is_empty());
    let real = m.admit(&review("CREATE", Some(object), None, false)).await;
    assert_eq!(dry, real);
    assert_eq!(held(&m).await, ["10.96.0.17", "30086"]);
}

#[tokio::test]
async fn claims_belong_to_their_service_and_renew_on_reinvocation() {
    let m = Mem::new(&config("10.96.0.0/24", "30000-32767"));
    let first = m
        .admit(&review(
            "CREATE",
            Some(svc("web", json!({"ports": [tcp(80)]}))),
            None,
            false,
        ))
        .await;
    assert!(first.allowed);
    assert_eq!(
        m.pending_owner("10.96.0.17").await,
        Some(ServiceRef::new("ns", "web"))
    );
    // The apiserver re-invokes the webhook with the patched object: same Service, same value.
    let again = m
        .admit(&review(
            "CREATE",
            Some(svc(
                "web",
                json!({"clusterIP": "10.96.0.17", "clusterIPs": ["10.96.0.17"], "ports": [tcp(80)]}),
            )),
            None,
            false,
        ))
        .await;
    assert!(again.allowed && again.patch.is_none());
    // Another Service may not have it.
    let other = m
        .admit(&review(
            "CREATE",
            Some(svc(
                "api",
                json!({"clusterIP": "10.96.0.17", "clusterIPs": ["10.96.0.17"], "ports": [tcp(80)]}),
            )),
            None,
            false,
        ))
        .await;
    assert!(!other.allowed);
    // generateName: no name yet, the claim is for the namespace.
    let generated = m
        .admit(&review(
            "CREATE",
            Some(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "web-"},
                "spec": {"ports": [tcp(80)]}}),
            ),
            None,
            false,
        ))
        .await;
    assert!(generated.allowed);
    assert_eq!(
        m.pending_owner("10.96.0.18").await,
        Some(ServiceRef::new("ns", ""))
    );
}

#[tokio::test]
async fn node_ports_fill_the_dynamic_band_before_the_static_one() {
    // 100 ports: static band 30000-30015, dynamic 30016-30099 (84 ports).
    let m = Mem::new(&config("10.96.0.0/16", "30000-30099"));
    let mut got = Vec::new();
    for i in 0..86 {
        let v = m
            .admit(&review(
                "CREATE",
                Some(svc(
                    &format!("s{i}"),
                    json!({"type": "NodePort", "ports": [tcp(80)]}),
                )),
                None,
                false,
            ))
            .await;
        let patch = v.patch.expect("patched");
        got.push(patch[2]["value"].as_i64().expect("nodePort"));
    }
    assert!(got[..84].iter().all(|p| (30016..=30099).contains(p)), "{got:?}");
    assert!(got[84..].iter().all(|p| (30000..=30015).contains(p)), "{got:?}");
    let mut unique = got.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), got.len());
}

#[tokio::test]
async fn other_kinds_and_subresources_are_not_touched() {
    let m = Mem::new(&config("10.96.0.0/24", "30000-32767"));
    let mut r = review(
        "CREATE",
        Some(svc("web", json!({"ports": [tcp(80)]}))),
        None,
        false,
    );
    r.sub_resource = Some("status".into());
    assert_eq!(m.admit(&r).await, Verdict::allow());
    r.sub_resource = None;
    r.kind.kind = "Pod".into();
    assert_eq!(m.admit(&r).await, Verdict::allow());
    let bad = review(
        "CREATE",
        Some(json!({"metadata": {"name": "x"}, "spec": {"ports": "nope"}})),
        None,
        false,
    );
    let v = m.admit(&bad).await;
    assert_eq!(v.status.map(|s| s.code), Some(400));
    assert!(held(&m).await.is_empty());
}

#[tokio::test]
async fn a_value_is_free_again_once_the_watch_sees_its_service_go() {
    let m = Mem::new(&config("10.96.0.0/24", "30000-32767"));
    let wanted = svc(
        "new",
        json!({"type": "NodePort", "ports": [node(80, "TCP", 30077)]}),
    );
    m.hold_as("30077", "old");
    let refused = m
        .admit(&review("CREATE", Some(wanted.clone()), None, false))
        .await;
    assert_eq!(
        refused.status.map(|s| s.code),
        Some(422),
        "held by the old Service"
    );
    // DELETE needs nothing from the webhook: it is admitted unchanged and changes nothing.
    let old = svc(
        "old",
        json!({"type": "NodePort", "ports": [node(80, "TCP", 30077)]}),
    );
    assert_eq!(
        m.admit(&review("DELETE", None, Some(old), false)).await,
        Verdict::allow()
    );
    assert!(held(&m).await.contains(&"30077".to_owned()));
    m.unhold_as("30077", "old");
    let v = m.admit(&review("CREATE", Some(wanted), None, false)).await;
    assert!(v.allowed, "{:?}", v.status.map(|s| s.message));
}

#[tokio::test]
async fn a_fulfilled_claim_does_not_keep_a_deleted_services_value() {
    let m = Mem::new(&config("10.96.0.0/24", "30000-32767"));
    let v = m
        .admit(&review(
            "CREATE",
            Some(svc("web", json!({"type": "NodePort", "ports": [tcp(80)]}))),
            None,
            false,
        ))
        .await;
    assert!(v.allowed);
    assert_eq!(held(&m).await, ["10.96.0.17", "30086"]);
    // The watch sees the Service with its values, then sees it deleted.
    m.hold_as("10.96.0.17", "web");
    m.hold_as("30086", "web");
    m.unhold_as("10.96.0.17", "web");
    m.unhold_as("30086", "web");
    assert!(
        held(&m).await.is_empty(),
        "free at once, not when the claim's TTL ends"
    );
    let again = svc(
        "again",
        json!({"type": "NodePort", "clusterIP": "10.96.0.17", "ports": [node(80, "TCP", 30086)]}),
    );
    let v = m.admit(&review("CREATE", Some(again), None, false)).await;
    assert!(v.allowed, "{:?}", v.status.map(|s| s.message));
}

#[tokio::test]
async fn reviews_that_cannot_be_genuine_touch_nothing() {
    let m = Mem::new(&config("10.96.0.0/24", "30000-32767"));
    let no_object = m.admit(&review("CREATE", None, None, false)).await;
    assert_eq!(no_object.status.map(|s| s.code), Some(400));
    let object = svc("web", json!({"type": "NodePort", "ports": [tcp(80)]}));
    let no_old = m.admit(&review("UPDATE", Some(object), None, false)).await;
    assert_eq!(no_old.status.map(|s| s.code), Some(400));
    assert!(held(&m).await.is_empty());
}

#[tokio::test]
async fn a_full_update_keeps_the_shared_node_port_of_a_tcp_udp_pair() {
    // patchAllocatedValues: both omitted ports get the old value of the port with their name.
    let m = Mem::new(&config("10.96.0.0/24", "30000-32767"));
    let ports = |np: Option<i32>| {
        let mut tcp = json!({"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53});
        let mut udp = json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53});
        if let Some(np) = np {
            tcp["nodePort"] = json!(np);
            udp["nodePort"] = json!(np);
        }
        json!([tcp, udp])
    };
    let old = svc(
        "dns",
        json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": ports(Some(30086))}),
    );
    let new = svc(
        "dns",
        json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": ports(None)}),
    );
    let v = m.admit(&review("UPDATE", Some(new), Some(old), false)).await;
    assert!(v.allowed);
    assert_eq!(
        v.patch,
        Some(json!([node_port_patch(0, 30086), node_port_patch(1, 30086)]))
    );
    assert!(held(&m).await.is_empty(), "nothing new taken");
}
