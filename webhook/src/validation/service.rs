//! Service port rules: all of them are upstream's (`ValidateService`), with upstream's messages and
//! order; none is Portico's own. They matter for objects that did not go through the apiserver's
//! validation, and keep the warning rules of [`super::target_port`] on well-formed input.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_allocators::field::{BadValue, FieldError, go_quote};
use serde::Deserialize;

use super::Options;
use super::names::{is_dns1123_label, is_qualified_name, is_valid_port_num, validate_port_num_or_name};
use super::workload::DecodeError;

/// The protocols a Service or container port may use, as upstream lists them.
pub const SUPPORTED_PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

/// The kubelet's port, which a LoadBalancer Service may not expose.
pub const KUBELET_PORT: i32 = 10250;

/// A port's protocol as the apiserver sees it: absent means defaulted to `TCP`.
pub(crate) fn effective_protocol(protocol: Option<&String>) -> &str {
    protocol.map_or("TCP", String::as_str)
}

/// Validates the ports of a Service spec, field paths under `spec.`.
///
/// Order as upstream executes it: `spec.ports` required, the LoadBalancer kubelet-port check, each
/// port (name, port, protocol, targetPort, appProtocol), `nodePort` forbidden for ClusterIP, then
/// duplicate `(protocol, nodePort)` and duplicate `(protocol, port)`. The nodePort range is not
/// checked here: it is the allocator's business, and a flag of the apiserver.
pub fn validate_service_ports(spec: &ServiceSpec, opts: &Options) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ports: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();
    // Absent type is defaulted to ClusterIP by the apiserver.
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");

    if ports.is_empty() && !is_headless(spec) && service_type != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }

    if service_type == "LoadBalancer" {
        for (i, port) in ports.iter().enumerate() {
            if port.port == KUBELET_PORT {
                errs.push(FieldError::invalid(
                    format!("spec.ports[{i}]"),
                    BadValue::Int(i64::from(port.port)),
                    format!("may not expose port {KUBELET_PORT} externally since it is used by kubelet"),
                ));
            }
        }
    }

    let require_name = ports.len() > 1;
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        validate_port(
            port,
            &format!("spec.ports[{i}]"),
            require_name,
            &mut names,
            opts,
            &mut errs,
        );
    }

    if service_type == "ClusterIP" {
        for (i, port) in ports.iter().enumerate() {
            if port.node_port.unwrap_or(0) != 0 {
                errs.push(FieldError::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }

    // TCP and UDP may share a nodePort (or a port): the key includes the protocol.
    let mut node_ports = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let node_port = port.node_port.unwrap_or(0);
        if node_port != 0 && !node_ports.insert((effective_protocol(port.protocol.as_ref()), node_port)) {
            errs.push(FieldError::duplicate(
                format!("spec.ports[{i}].nodePort"),
                BadValue::Int(i64::from(node_port)),
            ));
        }
    }

    let mut seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        if !seen.insert((effective_protocol(port.protocol.as_ref()), port.port)) {
            errs.push(FieldError::duplicate(
                format!("spec.ports[{i}]"),
                go_service_port(port),
            ));
        }
    }
    errs
}

/// One port's own rules, in upstream's order.
fn validate_port<'a>(
    port: &'a ServicePort,
    path: &str,
    require_name: bool,
    names: &mut HashSet<&'a str>,
    opts: &Options,
    errs: &mut Vec<FieldError>,
) {
    let name = port.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        if require_name {
            errs.push(FieldError::required(format!("{path}.name"), ""));
        }
    } else {
        for msg in is_dns1123_label(name) {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                BadValue::Str(name.to_owned()),
                msg,
            ));
        }
        // Upstream checks duplicates even when the name was invalid: two `HTTP` ports give two
        // Invalid errors and a Duplicate.
        if !names.insert(name) {
            errs.push(FieldError::duplicate(
                format!("{path}.name"),
                BadValue::Str(name.to_owned()),
            ));
        }
    }

    for msg in is_valid_port_num(i64::from(port.port)) {
        errs.push(FieldError::invalid(
            format!("{path}.port"),
            BadValue::Int(i64::from(port.port)),
            msg,
        ));
    }

    if let Some(protocol) = &port.protocol {
        errs.extend(validate_protocol(protocol, &format!("{path}.protocol")));
    }

    // Absent targetPort is defaulted to `port`, whose errors are already reported.
    if let Some(target) = &port.target_port {
        errs.extend(validate_port_num_or_name(
            target,
            &format!("{path}.targetPort"),
            opts,
        ));
    }

    if let Some(app_protocol) = &port.app_protocol {
        for msg in is_qualified_name(app_protocol) {
            errs.push(FieldError::invalid(
                format!("{path}.appProtocol"),
                BadValue::Str(app_protocol.clone()),
                msg,
            ));
        }
    }
}

/// An explicit protocol: `""` is `Required value`, anything but TCP/UDP/SCTP (case-sensitive) is
/// unsupported. Shared with container ports.
pub(crate) fn validate_protocol(protocol: &str, field: &str) -> Option<FieldError> {
    if protocol.is_empty() {
        Some(FieldError::required(field, ""))
    } else if !SUPPORTED_PROTOCOLS.contains(&protocol) {
        Some(FieldError::not_supported(
            field,
            BadValue::Str(protocol.to_owned()),
            &SUPPORTED_PROTOCOLS,
        ))
    } else {
        None
    }
}

/// Whether the Service is headless (`clusterIP: None`), which may have no ports.
fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .map(String::as_str)
            == Some("None")
}

/// Renders a port the way upstream's duplicate-port error prints it (Go `%#v` of the internal
/// `core.ServicePort`), so the message matches the one users already search for.
///
/// One unavoidable difference: for a set `appProtocol` Go prints a heap address
/// (`(*string)(0xc000…)`), which no one can reproduce; Portico prints the pointed-to string instead.
fn go_service_port(port: &ServicePort) -> BadValue {
    let app_protocol = match &port.app_protocol {
        None => "(*string)(nil)".to_owned(),
        Some(p) => format!("(*string)({})", go_quote(p)),
    };
    let (kind, int_val, str_val) = match &port.target_port {
        None => (0, 0, ""),
        Some(IntOrString::Int(n)) => (0, *n, ""),
        Some(IntOrString::String(s)) => (1, 0, s.as_str()),
    };
    BadValue::Raw(format!(
        "core.ServicePort{{Name:{}, Protocol:{}, AppProtocol:{app_protocol}, Port:{}, \
         TargetPort:intstr.IntOrString{{Type:{kind}, IntVal:{int_val}, StrVal:{}}}, NodePort:{}}}",
        go_quote(port.name.as_deref().unwrap_or_default()),
        go_quote(effective_protocol(port.protocol.as_ref())),
        port.port,
        go_quote(str_val),
        port.node_port.unwrap_or(0),
    ))
}

/// Validates the ports of a Service. A Service without a spec is treated as an empty spec (and so
/// gets `spec.ports: Required value`).
pub fn validate_service(service: &Service, opts: &Options) -> Vec<FieldError> {
    match &service.spec {
        Some(spec) => validate_service_ports(spec, opts),
        None => validate_service_ports(&ServiceSpec::default(), opts),
    }
}

/// Validates the ports of a Service given as JSON (an AdmissionReview's `object`). Only `spec` is
/// decoded; a value that does not decode (wrong JSON types, numbers beyond 32 bits) is a
/// [`DecodeError`], which the apiserver itself would have refused before calling the webhook.
pub fn validate_service_value(
    object: &serde_json::Value,
    opts: &Options,
) -> Result<Vec<FieldError>, DecodeError> {
    let spec = match object.get("spec") {
        None | Some(serde_json::Value::Null) => ServiceSpec::default(),
        Some(v) => ServiceSpec::deserialize(v).map_err(|source| DecodeError {
            path: "spec".to_owned(),
            source,
        })?,
    };
    Ok(validate_service_ports(&spec, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, port: i32, protocol: &str) -> ServicePort {
        ServicePort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port,
            protocol: Some(protocol.to_owned()),
            ..ServicePort::default()
        }
    }

    fn spec(ports: Vec<ServicePort>) -> ServiceSpec {
        ServiceSpec {
            ports: Some(ports),
            ..ServiceSpec::default()
        }
    }

    fn msgs(spec: &ServiceSpec) -> Vec<String> {
        validate_service_ports(spec, &Options::default())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

    #[test]
    fn valid_services() {
        assert!(msgs(&spec(vec![port("", 80, "TCP")])).is_empty());
        assert!(msgs(&spec(vec![port("http", 80, "TCP"), port("80", 443, "TCP")])).is_empty());
        // DNS: same port, different protocols.
        assert!(msgs(&spec(vec![port("dns", 53, "UDP"), port("dns-tcp", 53, "TCP")])).is_empty());
        // Names that are fine for Services although not for containers.
        assert!(msgs(&spec(vec![port("a--b", 1, "TCP"), port("xn--x", 2, "SCTP")])).is_empty());
        let mut p = port("h2", 8080, "TCP");
        p.target_port = Some(IntOrString::String("http".into()));
        p.app_protocol = Some("kubernetes.io/h2c".into());
        assert!(msgs(&spec(vec![p])).is_empty());
    }

    #[test]
    fn reference_five_errors_example() {
        // The executed Service "s27" of reference §1.2.
        let mut p0 = port("Bad_Name", 0, "HTTP");
        p0.target_port = Some(IntOrString::String("-x-".into()));
        let s = spec(vec![p0, port("", 81, "TCP")]);
        let errs = validate_service_ports(&s, &Options::default());
        assert_eq!(
            portico_allocators::field::invalid_message("Service", "s27", &errs),
            format!(
                "Service \"s27\" is invalid: [spec.ports[0].name: Invalid value: \"Bad_Name\": {LABEL}, \
                 spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, \
                 spec.ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\", \
                 spec.ports[0].targetPort: Invalid value: \"-x-\": must not begin or end with a hyphen, \
                 spec.ports[1].name: Required value]"
            )
        );
        let reasons: Vec<&str> = errs.iter().map(|e| e.kind.reason()).collect();
        assert_eq!(
            reasons,
            [
                "FieldValueInvalid",
                "FieldValueInvalid",
                "FieldValueNotSupported",
                "FieldValueInvalid",
                "FieldValueRequired"
            ]
        );
    }

    #[test]
    fn every_unnamed_port_is_required_when_several() {
        assert_eq!(
            msgs(&spec(vec![port("", 80, "TCP"), port("", 81, "TCP")])),
            [
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value"
            ]
        );
    }

    #[test]
    fn duplicate_names_even_when_invalid() {
        assert_eq!(
            msgs(&spec(vec![port("http", 80, "TCP"), port("http", 81, "TCP")])),
            [r#"spec.ports[1].name: Duplicate value: "http""#]
        );
        assert_eq!(
            msgs(&spec(vec![port("HTTP", 80, "TCP"), port("HTTP", 81, "TCP")])),
            [
                format!(r#"spec.ports[0].name: Invalid value: "HTTP": {LABEL}"#),
                format!(r#"spec.ports[1].name: Invalid value: "HTTP": {LABEL}"#),
                r#"spec.ports[1].name: Duplicate value: "HTTP""#.to_owned(),
            ]
        );
        assert_eq!(
            msgs(&spec(vec![port(&"a".repeat(64), 80, "TCP")])),
            [format!(
                r#"spec.ports[0].name: Invalid value: "{}": must be no more than 63 characters"#,
                "a".repeat(64)
            )]
        );
    }

    #[test]
    fn port_and_protocol() {
        assert_eq!(
            msgs(&spec(vec![port("", 70000, "TCP")])),
            ["spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&spec(vec![port("", -1, "TCP")])),
            ["spec.ports[0].port: Invalid value: -1: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&spec(vec![port("", 80, "")])),
            ["spec.ports[0].protocol: Required value"]
        );
        assert_eq!(
            msgs(&spec(vec![port("", 80, "tcp")])),
            [r#"spec.ports[0].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP""#]
        );
        // Absent protocol is the apiserver's default, TCP.
        let mut p = port("", 80, "TCP");
        p.protocol = None;
        assert!(msgs(&spec(vec![p])).is_empty());
    }

    #[test]
    fn target_ports() {
        let with_target = |t: IntOrString| {
            let mut p = port("", 80, "TCP");
            p.target_port = Some(t);
            spec(vec![p])
        };
        assert_eq!(
            msgs(&with_target(IntOrString::Int(0))),
            ["spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&with_target(IntOrString::Int(65536))),
            ["spec.ports[0].targetPort: Invalid value: 65536: must be between 1 and 65535, inclusive"]
        );
        assert_eq!(
            msgs(&with_target(IntOrString::String("8080".into()))),
            [
                r#"spec.ports[0].targetPort: Invalid value: "8080": must contain at least one letter or number (a-z, 0-9)"#
            ]
        );
        assert_eq!(
            msgs(&with_target(IntOrString::String("Metrics_Port_Long".into()))),
            [
                r#"spec.ports[0].targetPort: Invalid value: "Metrics_Port_Long": must be no more than 15 characters"#,
                r#"spec.ports[0].targetPort: Invalid value: "Metrics_Port_Long": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
            ]
        );
        // A Service port *name* may be "a--b", a targetPort may not.
        assert_eq!(
            msgs(&with_target(IntOrString::String("a--b".into()))),
            [r#"spec.ports[0].targetPort: Invalid value: "a--b": must not contain consecutive hyphens"#]
        );
    }

    #[test]
    fn app_protocol() {
        let with_app = |a: &str| {
            let mut p = port("", 80, "TCP");
            p.app_protocol = Some(a.to_owned());
            spec(vec![p])
        };
        assert!(msgs(&with_app("HTTP")).is_empty());
        assert_eq!(
            msgs(&with_app("a b")),
            [
                r#"spec.ports[0].appProtocol: Invalid value: "a b": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#
            ]
        );
        assert_eq!(
            msgs(&with_app("/x")),
            [r#"spec.ports[0].appProtocol: Invalid value: "/x": prefix part must be non-empty"#]
        );
    }

    #[test]
    fn ports_required_unless_headless_or_external_name() {
        assert_eq!(msgs(&ServiceSpec::default()), ["spec.ports: Required value"]);
        assert_eq!(msgs(&spec(vec![])), ["spec.ports: Required value"]);
        let headless = ServiceSpec {
            cluster_ip: Some("None".into()),
            ..ServiceSpec::default()
        };
        assert!(msgs(&headless).is_empty());
        let headless = ServiceSpec {
            cluster_ips: Some(vec!["None".into()]),
            ..ServiceSpec::default()
        };
        assert!(msgs(&headless).is_empty());
        let external = ServiceSpec {
            type_: Some("ExternalName".into()),
            ..ServiceSpec::default()
        };
        assert!(msgs(&external).is_empty());
        assert_eq!(
            validate_service(&Service::default(), &Options::default())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["spec.ports: Required value"]
        );
    }

    #[test]
    fn kubelet_port_on_load_balancers_comes_first() {
        let mut s = spec(vec![port("", 10250, "TCP"), port("", 0, "TCP")]);
        s.type_ = Some("LoadBalancer".into());
        assert_eq!(
            msgs(&s),
            [
                "spec.ports[0]: Invalid value: 10250: may not expose port 10250 externally since it is used by kubelet",
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value",
                "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ]
        );
        s.type_ = Some("NodePort".into());
        assert_eq!(msgs(&s).len(), 3);
    }

    #[test]
    fn node_ports() {
        let mut a = port("a", 80, "TCP");
        a.node_port = Some(30001);
        let mut b = port("b", 81, "TCP");
        b.node_port = Some(30001);
        let mut c = port("c", 82, "UDP");
        c.node_port = Some(30001);
        let s = spec(vec![a, b, c]);
        assert_eq!(
            msgs(&s),
            [
                "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.ports[1].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.ports[2].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.ports[1].nodePort: Duplicate value: 30001",
            ]
        );
        let mut s = s;
        s.type_ = Some("NodePort".into());
        assert_eq!(msgs(&s), ["spec.ports[1].nodePort: Duplicate value: 30001"]);
        // nodePort 0 is "unset" and never a duplicate.
        let mut z = port("z", 83, "TCP");
        z.node_port = Some(0);
        s.ports.as_mut().unwrap().extend([
            z.clone(),
            ServicePort {
                name: Some("y".into()),
                port: 84,
                ..z
            },
        ]);
        assert_eq!(msgs(&s), ["spec.ports[1].nodePort: Duplicate value: 30001"]);
    }

    #[test]
    fn duplicate_port_prints_go_struct() {
        assert_eq!(
            msgs(&spec(vec![port("", 80, "TCP"), port("", 80, "TCP")])),
            [
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value",
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#,
            ]
        );
        // Reference §1.3 combined example.
        assert_eq!(
            msgs(&spec(vec![
                port("web", 80, "TCP"),
                port("web", 80, "TCP"),
                port("", 80, "UDP")
            ])),
            [
                r#"spec.ports[1].name: Duplicate value: "web""#,
                "spec.ports[2].name: Required value",
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"web", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#,
            ]
        );
        let mut a = port("a", 80, "TCP");
        a.protocol = None;
        let mut b = port("b", 80, "TCP");
        b.target_port = Some(IntOrString::String("ht\"tp".into()));
        b.app_protocol = Some("h2c".into());
        b.node_port = Some(30080);
        let mut s = spec(vec![a, b]);
        s.type_ = Some("NodePort".into());
        assert_eq!(
            msgs(&s),
            [
                r#"spec.ports[1].targetPort: Invalid value: "ht\"tp": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"b", Protocol:"TCP", AppProtocol:(*string)("h2c"), Port:80, TargetPort:intstr.IntOrString{Type:1, IntVal:0, StrVal:"ht\"tp"}, NodePort:30080}"#,
            ]
        );
        let mut c = port("c", 80, "TCP");
        c.target_port = Some(IntOrString::Int(8080));
        let s = spec(vec![port("d", 80, "TCP"), c]);
        assert_eq!(
            msgs(&s),
            [
                r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"c", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:8080, StrVal:""}, NodePort:0}"#
            ]
        );
    }

    #[test]
    fn from_json() {
        let opts = Options::default();
        let v = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"name": "HTTP", "port": 80}]}});
        let errs = validate_service_value(&v, &opts).unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.ports[0].name");
        assert_eq!(
            validate_service_value(&serde_json::json!({}), &opts).unwrap()[0].to_string(),
            "spec.ports: Required value"
        );
        for bad in [
            serde_json::json!({"spec": {"ports": [{"port": 4294967296_u64}]}}),
            serde_json::json!({"spec": {"ports": [{"port": 80, "targetPort": 1e3}]}}),
            serde_json::json!({"spec": {"ports": "80"}}),
            serde_json::json!({"spec": 7}),
        ] {
            let err = validate_service_value(&bad, &opts).unwrap_err();
            assert!(err.to_string().starts_with("cannot decode spec: "), "{err}");
        }
    }
}
