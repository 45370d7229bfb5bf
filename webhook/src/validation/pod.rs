//! Container port rules of a pod spec (a Pod's `spec` or a workload's pod template).
//!
//! Upstream's rules, with its messages: port names are IANA service names, unique within their
//! container; `containerPort` required and in range; `hostPort` in range and unique per
//! `(protocol, hostIP)` across the containers (each init container on its own, since they run one at
//! a time); `containerPort == hostPort` under `hostNetwork`; ephemeral containers may not declare
//! ports, probes or lifecycle handlers; probe and lifecycle ports are numbers or IANA names.
//!
//! Portico's rules, which upstream leaves to run time:
//! * a port name is unique across the whole pod, containers and init containers alike: a Service
//!   `targetPort` resolves a name in the first container that declares it, so a second declaration
//!   elsewhere is at best dead and at worst a silent misroute;
//! * a named `httpGet`/`tcpSocket` port of a probe or lifecycle handler is declared by the same
//!   container: the kubelet resolves it there only, and otherwise fails the probe at run time (a
//!   liveness probe then restarts the container forever, a readiness probe keeps the pod unready).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Lifecycle, Pod, PodSpec, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_allocators::field::{BadValue, FieldError, go_quote};

use super::Options;
use super::names::{is_valid_port_name, is_valid_port_num, validate_port_num_or_name};
use super::service::{effective_protocol, validate_protocol};

/// Where a port name was first declared in the pod, for Portico's pod-wide uniqueness message.
struct FirstDeclaration<'a> {
    container: &'a str,
    port_path: String,
}

/// The pod-wide context a container is validated in.
struct PodContext<'a> {
    spec: &'a PodSpec,
    opts: &'a Options,
    /// Valid port names already declared, across containers and init containers.
    names: HashMap<&'a str, FirstDeclaration<'a>>,
}

/// Validates the ports of a pod spec and the port references of its probes and lifecycle handlers.
///
/// `path` is the field path of the spec: `"spec"` for a Pod, `"spec.template.spec"` for Deployments,
/// StatefulSets, DaemonSets, ReplicaSets and Jobs, `"spec.jobTemplate.spec.template.spec"` for
/// CronJobs (see [`super::pod_spec_path`]).
///
/// Order: each container of `containers` (ports, then `lifecycle.postStart`, `lifecycle.preStop`,
/// `livenessProbe`, `readinessProbe`, `startupProbe`), the hostPort conflicts among them, the same for
/// `initContainers`, then `ephemeralContainers`, then the `hostNetwork` check, as upstream orders them.
pub fn validate_pod_spec_ports(spec: &PodSpec, path: &str, opts: &Options) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut ctx = PodContext {
        spec,
        opts,
        names: HashMap::new(),
    };

    let containers_path = format!("{path}.containers");
    for (i, container) in spec.containers.iter().enumerate() {
        validate_container(container, &format!("{containers_path}[{i}]"), &mut ctx, &mut errs);
    }
    host_port_conflicts(spec.containers.iter().enumerate(), &containers_path, &mut errs);

    let init_path = format!("{path}.initContainers");
    let init: &[Container] = spec.init_containers.as_deref().unwrap_or_default();
    for (i, container) in init.iter().enumerate() {
        validate_container(container, &format!("{init_path}[{i}]"), &mut ctx, &mut errs);
    }
    // Upstream checks each init container on its own (they run one after the other), so a hostPort
    // only conflicts within one init container.
    for (i, container) in init.iter().enumerate() {
        host_port_conflicts(std::iter::once((i, container)), &init_path, &mut errs);
    }

    for (i, ephemeral) in spec.ephemeral_containers.iter().flatten().enumerate() {
        let epath = format!("{path}.ephemeralContainers[{i}]");
        // Ephemeral containers are for debugging and must not carry pod services; upstream forbids
        // these fields (an empty list counts as unset here, which is the lenient reading).
        let set = [
            ("ports", ephemeral.ports.as_ref().is_some_and(|p| !p.is_empty())),
            ("livenessProbe", ephemeral.liveness_probe.is_some()),
            ("readinessProbe", ephemeral.readiness_probe.is_some()),
            ("startupProbe", ephemeral.startup_probe.is_some()),
            ("lifecycle", ephemeral.lifecycle.is_some()),
        ];
        for (field, _) in set.iter().filter(|(_, is_set)| *is_set) {
            errs.push(FieldError::forbidden(
                format!("{epath}.{field}"),
                "cannot be set for an Ephemeral Container",
            ));
        }
    }

    if spec.host_network == Some(true) {
        // Upstream checks regular containers only. A hostPort left at 0 is the one the apiserver
        // defaults to containerPort (or, for templates in newer releases, leaves unset): not an error.
        for (i, container) in spec.containers.iter().enumerate() {
            for (j, port) in container_ports(container).iter().enumerate() {
                let host_port = port.host_port.unwrap_or(0);
                if host_port != 0 && host_port != port.container_port {
                    errs.push(FieldError::invalid(
                        format!("{containers_path}[{i}].ports[{j}].containerPort"),
                        BadValue::Int(i64::from(port.container_port)),
                        "must match `hostPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }
    errs
}

/// Validates the ports of a Pod (paths under `spec.`). A Pod without a spec has no ports to check.
pub fn validate_pod(pod: &Pod, opts: &Options) -> Vec<FieldError> {
    pod.spec
        .as_ref()
        .map(|spec| validate_pod_spec_ports(spec, "spec", opts))
        .unwrap_or_default()
}

fn container_ports(container: &Container) -> &[ContainerPort] {
    container.ports.as_deref().unwrap_or_default()
}

/// One container: its ports, then the port references of its handlers.
fn validate_container<'a>(
    container: &'a Container,
    cpath: &str,
    ctx: &mut PodContext<'a>,
    errs: &mut Vec<FieldError>,
) {
    let mut own_names = HashSet::new();
    for (j, port) in container_ports(container).iter().enumerate() {
        let ppath = format!("{cpath}.ports[{j}]");
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let msgs = is_valid_port_name(name, ctx.opts);
            if !msgs.is_empty() {
                for msg in msgs {
                    errs.push(FieldError::invalid(
                        format!("{ppath}.name"),
                        BadValue::Str(name.to_owned()),
                        msg,
                    ));
                }
            } else if !own_names.insert(name) {
                // Upstream: duplicates within one container (only valid names are compared).
                errs.push(FieldError::duplicate(
                    format!("{ppath}.name"),
                    BadValue::Str(name.to_owned()),
                ));
            } else if let Some(first) = ctx.names.get(name) {
                // Portico: duplicates across containers.
                errs.push(FieldError::invalid(
                    format!("{ppath}.name"),
                    BadValue::Str(name.to_owned()),
                    format!(
                        "must be unique within the pod: already declared by container {} at {}",
                        go_quote(first.container),
                        first.port_path
                    ),
                ));
            } else {
                ctx.names.insert(
                    name,
                    FirstDeclaration {
                        container: &container.name,
                        port_path: ppath.clone(),
                    },
                );
            }
        }

        if port.container_port == 0 {
            errs.push(FieldError::required(format!("{ppath}.containerPort"), ""));
        } else {
            for msg in is_valid_port_num(i64::from(port.container_port)) {
                errs.push(FieldError::invalid(
                    format!("{ppath}.containerPort"),
                    BadValue::Int(i64::from(port.container_port)),
                    msg,
                ));
            }
        }

        let host_port = port.host_port.unwrap_or(0);
        if host_port != 0 {
            for msg in is_valid_port_num(i64::from(host_port)) {
                errs.push(FieldError::invalid(
                    format!("{ppath}.hostPort"),
                    BadValue::Int(i64::from(host_port)),
                    msg,
                ));
            }
        }

        if let Some(protocol) = &port.protocol {
            errs.extend(validate_protocol(protocol, &format!("{ppath}.protocol")));
        }
    }

    if let Some(Lifecycle {
        post_start, pre_stop, ..
    }) = &container.lifecycle
    {
        for (hook, handler) in [("postStart", post_start), ("preStop", pre_stop)] {
            if let Some(h) = handler {
                let hpath = format!("{cpath}.lifecycle.{hook}");
                check_handler(
                    h.http_get.as_ref(),
                    h.tcp_socket.as_ref(),
                    None,
                    &hpath,
                    container,
                    ctx,
                    errs,
                );
            }
        }
    }
    let probes = [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ];
    for (field, probe) in probes {
        if let Some(Probe {
            http_get,
            tcp_socket,
            grpc,
            ..
        }) = probe
        {
            let ppath = format!("{cpath}.{field}");
            let grpc_port = grpc.as_ref().map(|g| g.port);
            check_handler(
                http_get.as_ref(),
                tcp_socket.as_ref(),
                grpc_port,
                &ppath,
                container,
                ctx,
                errs,
            );
        }
    }
}

/// The port references of one probe or lifecycle handler. gRPC ports are numbers only.
fn check_handler(
    http_get: Option<&HTTPGetAction>,
    tcp_socket: Option<&TCPSocketAction>,
    grpc_port: Option<i32>,
    hpath: &str,
    container: &Container,
    ctx: &PodContext<'_>,
    errs: &mut Vec<FieldError>,
) {
    if let Some(action) = http_get {
        check_port_reference(
            &action.port,
            &format!("{hpath}.httpGet.port"),
            container,
            ctx,
            errs,
        );
    }
    if let Some(action) = tcp_socket {
        check_port_reference(
            &action.port,
            &format!("{hpath}.tcpSocket.port"),
            container,
            ctx,
            errs,
        );
    }
    if let Some(port) = grpc_port {
        for msg in is_valid_port_num(i64::from(port)) {
            errs.push(FieldError::invalid(
                format!("{hpath}.grpc.port"),
                BadValue::Int(i64::from(port)),
                msg,
            ));
        }
    }
}

/// Upstream's syntax check of a handler port, then, for a well-formed name, Portico's check that
/// the same container declares it (a malformed name already has its error; resolving it would only
/// add noise).
fn check_port_reference(
    port: &IntOrString,
    field: &str,
    container: &Container,
    ctx: &PodContext<'_>,
    errs: &mut Vec<FieldError>,
) {
    let syntax = validate_port_num_or_name(port, field, ctx.opts);
    if !syntax.is_empty() {
        errs.extend(syntax);
        return;
    }
    let IntOrString::String(name) = port else { return };
    if container_ports(container)
        .iter()
        .any(|p| p.name.as_deref() == Some(name.as_str()))
    {
        return;
    }
    let mut detail = format!(
        "no port named {} is declared by container {}",
        go_quote(name),
        go_quote(&container.name)
    );
    // Say where the name does live: the usual mistake is a probe in one container naming a port of
    // another (upstream admits it, the kubelet then fails with "port ... not found").
    let elsewhere: Vec<String> = all_containers(ctx.spec)
        .filter(|c| !std::ptr::eq(*c, container))
        .filter(|c| {
            container_ports(c)
                .iter()
                .any(|p| p.name.as_deref() == Some(name.as_str()))
        })
        .map(|c| go_quote(&c.name))
        .collect();
    if !elsewhere.is_empty() {
        let (noun, verb) = if elsewhere.len() == 1 {
            ("container", "declares")
        } else {
            ("containers", "declare")
        };
        detail.push_str(&format!(
            " ({noun} {} {verb} it, but named ports resolve only within their own container)",
            elsewhere.join(", ")
        ));
    }
    errs.push(FieldError::invalid(field, BadValue::Str(name.clone()), detail));
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

/// Upstream's hostPort conflict check: `(protocol, hostIP, hostPort)` unique among `containers`.
fn host_port_conflicts<'a>(
    containers: impl Iterator<Item = (usize, &'a Container)>,
    list_path: &str,
    errs: &mut Vec<FieldError>,
) {
    let mut seen = HashSet::new();
    for (i, container) in containers {
        for (j, port) in container_ports(container).iter().enumerate() {
            let host_port = port.host_port.unwrap_or(0);
            if host_port == 0 {
                continue;
            }
            let key = format!(
                "{}/{}/{}",
                effective_protocol(port.protocol.as_ref()),
                port.host_ip.as_deref().unwrap_or_default(),
                host_port
            );
            if !seen.insert(key.clone()) {
                errs.push(FieldError::duplicate(
                    format!("{list_path}[{i}].ports[{j}].hostPort"),
                    BadValue::Str(key),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        EphemeralContainer, ExecAction, GRPCAction, LifecycleHandler, SleepAction,
    };

    use super::*;

    fn cport(name: &str, port: i32) -> ContainerPort {
        ContainerPort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }
    }

    fn container(name: &str, ports: Vec<ContainerPort>) -> Container {
        Container {
            name: name.into(),
            ports: Some(ports),
            ..Container::default()
        }
    }

    fn pod(containers: Vec<Container>) -> PodSpec {
        PodSpec {
            containers,
            ..PodSpec::default()
        }
    }

    fn msgs(spec: &PodSpec) -> Vec<String> {
        validate_pod_spec_ports(spec, "spec", &Options::default())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn http_probe(port: IntOrString) -> Option<Probe> {
        Some(Probe {
            http_get: Some(HTTPGetAction {
                port,
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        })
    }

    const CHARSET: &str = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";
    const LETTER: &str = "must contain at least one letter or number (a-z, 0-9)";

    #[test]
    fn valid_pods() {
        assert!(msgs(&PodSpec::default()).is_empty());
        let mut app = container(
            "app",
            vec![cport("http", 8080), cport("metrics", 9090), cport("", 7070)],
        );
        app.readiness_probe = http_probe(IntOrString::String("http".into()));
        app.liveness_probe = http_probe(IntOrString::Int(8080));
        app.startup_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("metrics".into()),
                host: None,
            }),
            ..Probe::default()
        });
        let side = container("side", vec![cport("admin", 9000)]);
        assert!(msgs(&pod(vec![app, side])).is_empty());
    }

    #[test]
    fn container_port_names() {
        let spec = pod(vec![container(
            "app",
            vec![
                cport("HTTP", 80),
                cport("80", 81),
                cport("a--b", 82),
                cport("-a", 83),
                cport("abcdefghijklmnop", 84),
            ],
        )]);
        assert_eq!(
            msgs(&spec),
            [
                format!(r#"spec.containers[0].ports[0].name: Invalid value: "HTTP": {CHARSET}"#),
                format!(r#"spec.containers[0].ports[0].name: Invalid value: "HTTP": {LETTER}"#),
                format!(r#"spec.containers[0].ports[1].name: Invalid value: "80": {LETTER}"#),
                r#"spec.containers[0].ports[2].name: Invalid value: "a--b": must not contain consecutive hyphens"#
                    .to_owned(),
                r#"spec.containers[0].ports[3].name: Invalid value: "-a": must not begin or end with a hyphen"#
                    .to_owned(),
                r#"spec.containers[0].ports[4].name: Invalid value: "abcdefghijklmnop": must be no more than 15 characters"#
                    .to_owned(),
            ]
        );
        let opts = Options {
            letter_message: super::super::LetterMessage::LetterOnly,
        };
        let spec = pod(vec![container("app", vec![cport("80", 81)])]);
        assert_eq!(
            validate_pod_spec_ports(&spec, "spec", &opts)[0].to_string(),
            r#"spec.containers[0].ports[0].name: Invalid value: "80": must contain at least one letter (a-z)"#
        );
    }

    #[test]
    fn duplicate_names_within_a_container_are_upstream_duplicates() {
        let spec = pod(vec![container("app", vec![cport("http", 80), cport("http", 81)])]);
        assert_eq!(
            msgs(&spec),
            [r#"spec.containers[0].ports[1].name: Duplicate value: "http""#]
        );
        let errs = validate_pod_spec_ports(&spec, "spec", &Options::default());
        assert_eq!(errs[0].kind.reason(), "FieldValueDuplicate");
        // Two invalid names: four Invalid errors and no Duplicate, as upstream.
        let spec = pod(vec![container("app", vec![cport("HTTP", 80), cport("HTTP", 81)])]);
        assert_eq!(msgs(&spec).len(), 4);
        assert!(msgs(&spec).iter().all(|m| m.contains("Invalid value")));
    }

    #[test]
    fn duplicate_names_across_containers_are_refused() {
        let spec = PodSpec {
            containers: vec![
                container("app", vec![cport("http", 80)]),
                container("proxy", vec![cport("admin", 15000), cport("http", 8080)]),
            ],
            init_containers: Some(vec![container(
                "setup",
                vec![cport("http", 9999), cport("admin", 1)],
            )]),
            ..PodSpec::default()
        };
        let errs = validate_pod_spec_ports(&spec, "spec.template.spec", &Options::default());
        let rendered: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                r#"spec.template.spec.containers[1].ports[1].name: Invalid value: "http": must be unique within the pod: already declared by container "app" at spec.template.spec.containers[0].ports[0]"#,
                r#"spec.template.spec.initContainers[0].ports[0].name: Invalid value: "http": must be unique within the pod: already declared by container "app" at spec.template.spec.containers[0].ports[0]"#,
                r#"spec.template.spec.initContainers[0].ports[1].name: Invalid value: "admin": must be unique within the pod: already declared by container "proxy" at spec.template.spec.containers[1].ports[0]"#,
            ]
        );
        assert!(errs.iter().all(|e| e.kind.reason() == "FieldValueInvalid"));
    }

    #[test]
    fn container_port_numbers_and_protocols() {
        let mut p = cport("", 0);
        p.protocol = Some(String::new());
        let mut q = cport("", 65536);
        q.host_port = Some(70000);
        q.protocol = Some("HTTP".into());
        let mut r = cport("", -1);
        r.host_port = Some(0);
        r.protocol = None;
        let spec = pod(vec![container("app", vec![p, q, r])]);
        assert_eq!(
            msgs(&spec),
            [
                "spec.containers[0].ports[0].containerPort: Required value",
                "spec.containers[0].ports[0].protocol: Required value",
                "spec.containers[0].ports[1].containerPort: Invalid value: 65536: must be between 1 and 65535, inclusive",
                "spec.containers[0].ports[1].hostPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                r#"spec.containers[0].ports[1].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP""#,
                "spec.containers[0].ports[2].containerPort: Invalid value: -1: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn host_port_conflicts_like_upstream() {
        let hp = |port: i32, host: i32, proto: &str, ip: Option<&str>| ContainerPort {
            container_port: port,
            host_port: Some(host),
            protocol: Some(proto.into()),
            host_ip: ip.map(Into::into),
            ..ContainerPort::default()
        };
        let spec = PodSpec {
            containers: vec![
                container("a", vec![hp(80, 8080, "TCP", None)]),
                container(
                    "b",
                    vec![
                        hp(81, 8080, "TCP", None),
                        hp(82, 8080, "UDP", None),
                        hp(83, 8080, "TCP", Some("10.0.0.1")),
                    ],
                ),
            ],
            init_containers: Some(vec![
                // Same hostPort as a regular container, and as another init container: both fine.
                container("i0", vec![hp(80, 8080, "TCP", None)]),
                container("i1", vec![hp(80, 8080, "TCP", None), hp(81, 8080, "TCP", None)]),
            ]),
            ..PodSpec::default()
        };
        assert_eq!(
            msgs(&spec),
            [
                r#"spec.containers[1].ports[0].hostPort: Duplicate value: "TCP//8080""#,
                r#"spec.initContainers[1].ports[1].hostPort: Duplicate value: "TCP//8080""#,
            ]
        );
    }

    #[test]
    fn host_network_ports() {
        let mut mismatch = cport("", 80);
        mismatch.host_port = Some(8080);
        let mut unset = cport("", 81);
        unset.host_port = None;
        let mut same = cport("", 82);
        same.host_port = Some(82);
        let mut spec = pod(vec![container("app", vec![mismatch, unset, same])]);
        spec.init_containers = Some(vec![container(
            "init",
            vec![ContainerPort {
                container_port: 1,
                host_port: Some(2),
                ..ContainerPort::default()
            }],
        )]);
        assert!(msgs(&spec).is_empty());
        spec.host_network = Some(true);
        assert_eq!(
            msgs(&spec),
            [
                "spec.containers[0].ports[0].containerPort: Invalid value: 80: must match `hostPort` when `hostNetwork` is true"
            ]
        );
    }

    #[test]
    fn ephemeral_containers_may_not_declare_ports_or_probes() {
        let spec = PodSpec {
            ephemeral_containers: Some(vec![
                EphemeralContainer {
                    name: "debug".into(),
                    ports: Some(vec![]),
                    ..EphemeralContainer::default()
                },
                EphemeralContainer {
                    name: "bad".into(),
                    ports: Some(vec![cport("HTTP", 0)]),
                    readiness_probe: http_probe(IntOrString::String("nope".into())),
                    lifecycle: Some(Lifecycle::default()),
                    ..EphemeralContainer::default()
                },
            ]),
            ..PodSpec::default()
        };
        assert_eq!(
            msgs(&spec),
            [
                "spec.ephemeralContainers[1].ports: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[1].readinessProbe: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[1].lifecycle: Forbidden: cannot be set for an Ephemeral Container",
            ]
        );
    }

    #[test]
    fn probe_port_syntax() {
        let mut app = container("app", vec![cport("http", 80)]);
        app.liveness_probe = http_probe(IntOrString::String("HTTP_Port".into()));
        app.readiness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(0),
                host: None,
            }),
            ..Probe::default()
        });
        app.startup_probe = Some(Probe {
            grpc: Some(GRPCAction {
                port: 70000,
                service: None,
            }),
            ..Probe::default()
        });
        app.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    port: IntOrString::String("8080".into()),
                    ..Default::default()
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        assert_eq!(
            msgs(&pod(vec![app])),
            [
                format!(r#"spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: "8080": {LETTER}"#),
                format!(r#"spec.containers[0].livenessProbe.httpGet.port: Invalid value: "HTTP_Port": {CHARSET}"#),
                "spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive"
                    .to_owned(),
                "spec.containers[0].startupProbe.grpc.port: Invalid value: 70000: must be between 1 and 65535, inclusive"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn probe_named_ports_must_be_declared_by_the_same_container() {
        let mut app = container("app", vec![cport("http", 80)]);
        app.readiness_probe = http_probe(IntOrString::String("metrics".into()));
        app.liveness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("admin".into()),
                host: None,
            }),
            ..Probe::default()
        });
        app.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::String("grpc".into()),
                    host: None,
                }),
                ..LifecycleHandler::default()
            }),
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction::default()),
                sleep: Some(SleepAction { seconds: 5 }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        let sidecar = container("sidecar", vec![cport("admin", 15000)]);
        let mut init = container("mesh", vec![cport("grpc", 15010)]);
        init.restart_policy = Some("Always".into());
        init.startup_probe = http_probe(IntOrString::String("http".into()));
        let spec = PodSpec {
            containers: vec![app, sidecar],
            init_containers: Some(vec![init]),
            ..PodSpec::default()
        };
        let errs = validate_pod_spec_ports(&spec, "spec", &Options::default());
        let rendered: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                r#"spec.containers[0].lifecycle.postStart.tcpSocket.port: Invalid value: "grpc": no port named "grpc" is declared by container "app" (container "mesh" declares it, but named ports resolve only within their own container)"#,
                r#"spec.containers[0].livenessProbe.tcpSocket.port: Invalid value: "admin": no port named "admin" is declared by container "app" (container "sidecar" declares it, but named ports resolve only within their own container)"#,
                r#"spec.containers[0].readinessProbe.httpGet.port: Invalid value: "metrics": no port named "metrics" is declared by container "app""#,
                r#"spec.initContainers[0].startupProbe.httpGet.port: Invalid value: "http": no port named "http" is declared by container "mesh" (container "app" declares it, but named ports resolve only within their own container)"#,
            ]
        );
        assert!(errs.iter().all(|e| e.kind.reason() == "FieldValueInvalid"));
    }

    #[test]
    fn probe_messages_name_several_containers_and_quote_hostile_names() {
        let mut a = container("a\u{200b}", vec![]);
        a.readiness_probe = http_probe(IntOrString::String("web".into()));
        let b = container("b", vec![cport("web", 1)]);
        let mut c = container("c", vec![]);
        c.ports = None;
        let init = container("d", vec![cport("web", 2)]);
        let spec = PodSpec {
            containers: vec![a, b, c],
            init_containers: Some(vec![init]),
            ..PodSpec::default()
        };
        assert_eq!(
            msgs(&spec),
            [
                r#"spec.initContainers[0].ports[0].name: Invalid value: "web": must be unique within the pod: already declared by container "b" at spec.containers[1].ports[0]"#,
                r#"spec.containers[0].readinessProbe.httpGet.port: Invalid value: "web": no port named "web" is declared by container "a\u200b" (containers "b", "d" declare it, but named ports resolve only within their own container)"#,
            ]
            .iter()
            .rev()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn pods_without_spec() {
        assert!(validate_pod(&Pod::default(), &Options::default()).is_empty());
        let p = Pod {
            spec: Some(pod(vec![container("a", vec![cport("", 0)])])),
            ..Pod::default()
        };
        assert_eq!(
            validate_pod(&p, &Options::default())[0].to_string(),
            "spec.containers[0].ports[0].containerPort: Required value"
        );
    }
}
