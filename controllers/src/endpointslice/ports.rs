//! Port resolution per pod and the port-mapping key that groups pods into slices.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointPort;

use crate::pod_predicates::{DEFAULT_PROTOCOL, find_port};

/// The ports of `svc` as resolved on `pod`, in canonical order (see [`PortKey`]).
///
/// Every Service port whose `targetPort` resolves is included with `name` (always set, may be
/// empty), the resolved `port`, `protocol` (always set) and `appProtocol`. A named port the pod
/// does not have is left out for this pod only, so such a pod lands in another slice group.
pub(crate) fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let mut ports: Vec<EndpointPort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            let port = find_port(pod, sp)?;
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(
                    sp.protocol
                        .clone()
                        .unwrap_or_else(|| DEFAULT_PROTOCOL.to_string()),
                ),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    ports.sort_by_cached_key(norm);
    ports
}

/// Which slice group a set of ports belongs to: the ports normalised (unset name is `""`,
/// unset protocol is `TCP`) and sorted, so the order of `ports` in a slice and `null` versus
/// `[]` never split a group. Slices are only ever filled with endpoints of the same key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortKey(Vec<NormPort>);

type NormPort = (String, Option<i32>, String, Option<String>);

fn norm(p: &EndpointPort) -> NormPort {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| DEFAULT_PROTOCOL.to_string()),
        p.app_protocol.clone(),
    )
}

pub(crate) fn port_key(ports: Option<&[EndpointPort]>) -> PortKey {
    let mut key: Vec<NormPort> = ports.unwrap_or_default().iter().map(norm).collect();
    key.sort();
    PortKey(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    #[test]
    fn resolution_and_grouping() {
        let mut with_app = named("web", 80, "http");
        with_app.app_protocol = Some("kubernetes.io/h2c".into());
        let s = svc("web")
            .ports(vec![with_app, num("metrics", 9000, 9100)])
            .build();
        let has = pod("a").container_port("http", 8080, "TCP").build();
        let lacks = pod("b").build();
        let udp = pod("c").container_port("http", 8080, "UDP").build();

        let got = endpoint_ports(&s, &has);
        assert_eq!(got.len(), 2);
        // canonical order: by name
        assert_eq!(got[0].name.as_deref(), Some("metrics"));
        assert_eq!(got[1].name.as_deref(), Some("web"));
        assert_eq!(got[1].port, Some(8080));
        assert_eq!(got[1].protocol.as_deref(), Some("TCP"));
        assert_eq!(got[1].app_protocol.as_deref(), Some("kubernetes.io/h2c"));

        let missing = endpoint_ports(&s, &lacks);
        assert_eq!(missing.len(), 1, "named port missing on this pod only");
        assert_eq!(endpoint_ports(&s, &udp), missing, "protocol must match");
        assert_ne!(port_key(Some(&got)), port_key(Some(&missing)));
    }

    #[test]
    fn key_normalisation() {
        let a = EndpointPort {
            name: None,
            port: Some(80),
            protocol: None,
            app_protocol: None,
        };
        let b = EndpointPort {
            name: Some(String::new()),
            port: Some(80),
            protocol: Some("TCP".into()),
            app_protocol: None,
        };
        let c = EndpointPort {
            name: Some("x".into()),
            port: Some(81),
            protocol: None,
            app_protocol: None,
        };
        assert_eq!(port_key(Some(std::slice::from_ref(&a))), port_key(Some(&[b])));
        assert_eq!(port_key(None), port_key(Some(&[])));
        assert_eq!(port_key(Some(&[a.clone(), c.clone()])), port_key(Some(&[c, a])));
        let headless = svc("h").headless().ports(vec![]).build();
        assert!(endpoint_ports(&headless, &pod("p").build()).is_empty());
    }
}
