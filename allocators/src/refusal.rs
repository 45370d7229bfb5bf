//! What the apiserver answers when an allocation fails (`pkg/registry/core/service/storage`).

use std::net::IpAddr;

use crate::allocator_error::AllocError;
use crate::field::{BadValue, FieldError, invalid_message};
use crate::ip::parse_service_ip;

/// The allocation that failed, with the Service fields the apiserver quotes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// An explicitly requested clusterIP: `cluster_ips` is the whole `spec.clusterIPs` list and
    /// `ip` the entry being allocated.
    ClusterIp {
        /// `spec.clusterIPs` as sent.
        cluster_ips: &'a [String],
        /// The entry that failed.
        ip: &'a str,
    },
    /// A clusterIP picked by `allocate_next`.
    NextClusterIp,
    /// An explicitly requested `spec.ports[index].nodePort`.
    NodePort {
        /// Index into `spec.ports`.
        index: usize,
        /// The requested node port.
        node_port: i32,
    },
    /// A node port picked by `allocate_next`.
    NextNodePort,
    /// An explicitly requested `spec.healthCheckNodePort`.
    HealthCheckNodePort {
        /// The requested port.
        node_port: i32,
    },
    /// A health-check node port picked by `allocate_next`.
    NextHealthCheckNodePort,
}

/// The apiserver's answer: `422 Invalid` with one field error, or `500 InternalError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 422, reason `Invalid`, one cause.
    Invalid(FieldError),
    /// HTTP 500, reason `InternalError`; the text after `Internal error occurred: `.
    Internal(String),
}

impl Refusal {
    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Refusal::Invalid(_) => 422,
            Refusal::Internal(_) => 500,
        }
    }

    /// `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "Invalid",
            Refusal::Internal(_) => "InternalError",
        }
    }

    /// The field error of a 422 (the status's single cause).
    pub fn field_error(&self) -> Option<&FieldError> {
        match self {
            Refusal::Invalid(e) => Some(e),
            Refusal::Internal(_) => None,
        }
    }

    /// `Status.message` for the Service called `service_name`.
    pub fn message(&self, service_name: &str) -> String {
        match self {
            Refusal::Invalid(e) => invalid_message("Service", service_name, std::slice::from_ref(e)),
            Refusal::Internal(msg) => format!("Internal error occurred: {msg}"),
        }
    }
}

impl AllocError {
    /// How the apiserver reports this error for `request` (v1.24 formatting).
    ///
    /// Explicit clusterIPs and nodePorts give 422 on `spec.clusterIPs` (unindexed, the whole list
    /// as value) or `spec.ports[i].nodePort`; dynamic allocations and every health-check port
    /// failure give 500, as upstream. An unparseable clusterIP is a 500 too: upstream's
    /// validation normally rejects it earlier with a 422 on `spec.clusterIPs[i]`.
    pub fn refusal(&self, request: Request<'_>) -> Refusal {
        match request {
            Request::ClusterIp { .. } if matches!(self, AllocError::InvalidIp { .. }) => {
                Refusal::Internal(self.to_string())
            }
            Request::ClusterIp { cluster_ips, ip } => {
                // Upstream prints the parsed address (`%v` of a net.IP), i.e. canonical form.
                let shown = parse_service_ip(ip).map_or_else(|_| ip.to_owned(), |a: IpAddr| a.to_string());
                Refusal::Invalid(FieldError::invalid(
                    "spec.clusterIPs",
                    BadValue::string_list(cluster_ips),
                    format!("failed to allocate IP {shown}: {self}"),
                ))
            }
            Request::NextClusterIp => Refusal::Internal(format!("failed to allocate a serviceIP: {self}")),
            Request::NodePort { index, node_port } => Refusal::Invalid(FieldError::invalid(
                format!("spec.ports[{index}].nodePort"),
                BadValue::Int(i64::from(node_port)),
                self.to_string(),
            )),
            Request::NextNodePort => Refusal::Internal(format!("failed to allocate a nodePort: {self}")),
            Request::HealthCheckNodePort { node_port } => Refusal::Internal(format!(
                "failed to allocate requested HealthCheck NodePort {node_port}: {self}"
            )),
            Request::NextHealthCheckNodePort => {
                Refusal::Internal(format!("failed to allocate a HealthCheck NodePort 0: {self}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IpAllocator, IpRange, PortAllocator, PortRange};

    fn ip_alloc(cidr: &str) -> IpAllocator {
        IpAllocator::new(cidr.parse::<IpRange>().expect("test range"))
    }

    #[test]
    fn requested_cluster_ip_taken_is_422_on_unindexed_cluster_ips() {
        let mut a = ip_alloc("10.0.0.0/24");
        a.allocate("10.0.0.5".parse().expect("ip")).expect("free");
        let err = a.allocate("10.0.0.5".parse().expect("ip")).unwrap_err();
        let ips = vec!["10.0.0.5".to_owned()];
        let r = err.refusal(Request::ClusterIp {
            cluster_ips: &ips,
            ip: "10.0.0.5",
        });
        assert_eq!((r.code(), r.reason()), (422, "Invalid"));
        let fe = r.field_error().expect("422 has a cause");
        assert_eq!(fe.field, "spec.clusterIPs");
        assert_eq!(fe.kind.reason(), "FieldValueInvalid");
        assert_eq!(
            r.message("foo"),
            r#"Service "foo" is invalid: spec.clusterIPs: Invalid value: ["10.0.0.5"]: failed to allocate IP 10.0.0.5: provided IP is already allocated"#
        );
    }

    #[test]
    fn requested_cluster_ip_out_of_range_quotes_the_whole_list() {
        let mut a = ip_alloc("10.0.0.0/24");
        let err = a.allocate("1.1.1.1".parse().expect("ip")).unwrap_err();
        let ips = vec!["1.1.1.1".to_owned(), "fd00::1".to_owned()];
        let r = err.refusal(Request::ClusterIp {
            cluster_ips: &ips,
            ip: "1.1.1.1",
        });
        assert_eq!(
            r.message("foo"),
            r#"Service "foo" is invalid: spec.clusterIPs: Invalid value: ["1.1.1.1","fd00::1"]: failed to allocate IP 1.1.1.1: the provided IP (1.1.1.1) is not in the valid range. The range of valid IPs is 10.0.0.0/24"#
        );
    }

    #[test]
    fn cluster_ip_is_printed_in_canonical_form() {
        let err = AllocError::IpAllocated;
        let ips = vec!["010.0.0.5".to_owned()];
        let r = err.refusal(Request::ClusterIp {
            cluster_ips: &ips,
            ip: "010.0.0.5",
        });
        assert_eq!(
            r.field_error().map(ToString::to_string).as_deref(),
            Some(
                r#"spec.clusterIPs: Invalid value: ["010.0.0.5"]: failed to allocate IP 10.0.0.5: provided IP is already allocated"#
            )
        );
    }

    #[test]
    fn unparseable_cluster_ip_is_500() {
        let err = parse_service_ip("10.0.0.x").unwrap_err();
        let ips = vec!["10.0.0.x".to_owned()];
        let r = err.refusal(Request::ClusterIp {
            cluster_ips: &ips,
            ip: "10.0.0.x",
        });
        assert_eq!(
            (r.code(), r.reason(), r.field_error()),
            (500, "InternalError", None)
        );
        assert_eq!(
            r.message("foo"),
            r#"Internal error occurred: failed to parse service IP "10.0.0.x""#
        );
    }

    #[test]
    fn dynamic_cluster_ip_full_is_500() {
        let mut a = ip_alloc("10.0.0.0/30");
        a.allocate_next().expect("free");
        a.allocate_next().expect("free");
        let r = a.allocate_next().unwrap_err().refusal(Request::NextClusterIp);
        assert_eq!(r.code(), 500);
        assert_eq!(
            r.message("foo"),
            "Internal error occurred: failed to allocate a serviceIP: range is full"
        );
    }

    #[test]
    fn node_port_refusals() {
        let mut a = PortAllocator::new(PortRange::default());
        a.allocate(30080).expect("free");
        let r = a.allocate(30080).unwrap_err().refusal(Request::NodePort {
            index: 0,
            node_port: 30080,
        });
        assert_eq!(r.code(), 422);
        assert_eq!(
            r.message("foo"),
            r#"Service "foo" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"#
        );
        let r = a.allocate(80).unwrap_err().refusal(Request::NodePort {
            index: 2,
            node_port: 80,
        });
        assert_eq!(
            r.message("foo"),
            r#"Service "foo" is invalid: spec.ports[2].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"#
        );
        let r = AllocError::Full.refusal(Request::NextNodePort);
        assert_eq!(
            (r.code(), r.message("foo").as_str()),
            (
                500,
                "Internal error occurred: failed to allocate a nodePort: range is full"
            )
        );
    }

    #[test]
    fn health_check_node_port_refusals_are_500() {
        let mut a = PortAllocator::new(PortRange::default());
        a.allocate(30001).expect("free");
        let r = a
            .allocate(30001)
            .unwrap_err()
            .refusal(Request::HealthCheckNodePort { node_port: 30001 });
        assert_eq!(r.code(), 500);
        assert_eq!(
            r.message("foo"),
            "Internal error occurred: failed to allocate requested HealthCheck NodePort 30001: provided port is already allocated"
        );
        let r = a
            .allocate(1)
            .unwrap_err()
            .refusal(Request::HealthCheckNodePort { node_port: 1 });
        assert_eq!(
            r.message("foo"),
            "Internal error occurred: failed to allocate requested HealthCheck NodePort 1: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
        let r = AllocError::Full.refusal(Request::NextHealthCheckNodePort);
        assert_eq!(
            (r.code(), r.message("foo").as_str()),
            (
                500,
                "Internal error occurred: failed to allocate a HealthCheck NodePort 0: range is full"
            )
        );
    }
}
