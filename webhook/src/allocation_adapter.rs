//! The admission adapter of allocation: an AdmissionReview in, [`ServiceAllocator::decide`]
//! (crate `portico-allocation`) in the middle, a [`Verdict`] out. Everything about which values a
//! Service gets lives in that crate; this module only reads reviews and shapes answers.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::Operation as AdmissionOperation;
use kube::core::response::Status;
use portico_allocation::{Decision, Denial, Operation, ServiceAllocator};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::admission::Mutate;
use crate::review::{AdmissionRequest, RawObject, Verdict};
use crate::status;
use crate::validation::json::{Obj, Text};

/// A Service admission, decoded from a review.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// CREATE, UPDATE or DELETE.
    pub op: Operation,
    /// `request.object`, with `metadata.namespace` (and `name`) filled from the request when the
    /// object lacks them (the apiserver sends a CREATE's object without namespace).
    pub new: Option<Service>,
    /// `request.oldObject`.
    pub old: Option<Service>,
    /// `request.dryRun`.
    pub dry_run: bool,
}

/// Most ports of a Service that allocation plans for. One with more has more ports than there
/// are port numbers: duplicates the apiserver refuses, or an object etcd cannot store (its limit
/// of 1.5 MiB holds about 78,000 ports). It is admitted unchanged, and the apiserver answers.
pub const MAX_SERVICE_PORTS: usize = 65_535;

/// Longest name (and generateName) and namespace planned for, in bytes: a DNS subdomain and a
/// DNS label. A Service with a longer one is refused by the apiserver, so it is admitted
/// unchanged, and no claim ever holds such a name.
const MAX_NAME: usize = 253;
const MAX_NAMESPACE: usize = 63;

/// What allocation reads of a Service in a review; every other field is skipped without being
/// built (an 8 MB `status` or `externalIPs` costs a parse, not a copy).
#[derive(Deserialize, Default)]
#[serde(default, expecting = "Service")]
struct ServiceDoc<'a> {
    #[serde(borrow)]
    metadata: Option<Obj<MetaDoc<'a>>>,
    #[serde(borrow)]
    spec: Option<Obj<SpecDoc<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "ObjectMeta")]
struct MetaDoc<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(rename = "generateName", borrow)]
    generate_name: Option<Text<'a>>,
    #[serde(borrow)]
    namespace: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "ServiceSpec")]
struct SpecDoc<'a> {
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<FirstStrings>,
    #[serde(rename = "ipFamilies")]
    ip_families: Option<FirstStrings>,
    #[serde(rename = "ipFamilyPolicy")]
    ip_family_policy: Option<String>,
    #[serde(borrow)]
    ports: Option<&'a RawValue>,
    #[serde(rename = "healthCheckNodePort")]
    health_check_node_port: Option<i32>,
    #[serde(rename = "externalTrafficPolicy")]
    external_traffic_policy: Option<String>,
    #[serde(rename = "allocateLoadBalancerNodePorts")]
    allocate_load_balancer_node_ports: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default, expecting = "ServicePort")]
struct PortDoc {
    name: Option<String>,
    port: Option<i32>,
    protocol: Option<String>,
    #[serde(rename = "nodePort")]
    node_port: Option<i32>,
}

/// The first three strings of a list, the others type-checked and dropped: the planner passes
/// any `clusterIPs` or `ipFamilies` of more than two entries to the apiserver, which refuses it.
#[derive(Default)]
struct FirstStrings(Vec<String>);

impl<'de> Deserialize<'de> for FirstStrings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FirstStrings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FirstStrings, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Text<'de>>()? {
                    if out.len() < 3 {
                        out.push(s.0.into_owned());
                    }
                }
                Ok(FirstStrings(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Why a Service is left to the apiserver rather than decoded (see [`MAX_SERVICE_PORTS`]).
enum Decoded {
    Service(Box<Service>),
    LeftAlone(String),
}

/// Reads the Service allocation needs out of a raw object: only the fields the planner reads.
fn decode_service(raw: &RawObject<'_>, request: &AdmissionRequest<'_>) -> Result<Decoded, serde_json::Error> {
    let Obj(doc): Obj<ServiceDoc<'_>> = raw.decode()?;
    let meta = doc.metadata.map(|m| m.0).unwrap_or_default();
    let text = |t: Option<Text<'_>>| t.map(|t| t.0.into_owned());
    let mut name = text(meta.name);
    let generate_name = text(meta.generate_name);
    let mut namespace = text(meta.namespace);
    if namespace.as_deref().unwrap_or_default().is_empty() {
        namespace = request.namespace.clone();
    }
    if name.as_deref().unwrap_or_default().is_empty() && !request.name.is_empty() {
        name = Some(request.name.clone());
    }
    let long = |s: &Option<String>, max: usize| s.as_ref().is_some_and(|s| s.len() > max);
    if long(&name, MAX_NAME) || long(&generate_name, MAX_NAME) || long(&namespace, MAX_NAMESPACE) {
        return Ok(Decoded::LeftAlone(
            "a name or namespace too long to be valid".to_owned(),
        ));
    }
    let spec = match doc.spec {
        None => None,
        Some(Obj(spec)) => {
            let ports = match spec.ports {
                None => None,
                Some(raw) if crate::validation::json::is_null(raw) => None,
                Some(raw) => {
                    let count = crate::validation::json::count(raw)?;
                    if count > MAX_SERVICE_PORTS {
                        return Ok(Decoded::LeftAlone(format!("{count} ports")));
                    }
                    let mut ports = Vec::with_capacity(count);
                    crate::validation::json::for_each::<Obj<PortDoc>, _>(raw, |_, Obj(p)| {
                        ports.push(ServicePort {
                            name: p.name,
                            port: p.port.unwrap_or(0),
                            protocol: p.protocol,
                            node_port: p.node_port,
                            ..ServicePort::default()
                        });
                    })?;
                    Some(ports)
                }
            };
            Some(ServiceSpec {
                type_: spec.type_,
                cluster_ip: spec.cluster_ip,
                cluster_ips: spec.cluster_ips.map(|l| l.0),
                ip_families: spec.ip_families.map(|l| l.0),
                ip_family_policy: spec.ip_family_policy,
                ports,
                health_check_node_port: spec.health_check_node_port,
                external_traffic_policy: spec.external_traffic_policy,
                allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
                ..ServiceSpec::default()
            })
        }
    };
    Ok(Decoded::Service(Box::new(Service {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace,
            ..ObjectMeta::default()
        },
        spec,
        ..Service::default()
    })))
}

/// The Service admission in a review: `Ok(None)` for anything allocation does not handle
/// (other kinds, subresources, CONNECT, DELETE, Services the apiserver refuses anyway: see
/// [`MAX_SERVICE_PORTS`]); `Err` with a message (answer 400) when the review cannot be genuine or
/// its object is not a valid Service. The apiserver always sends `object` on CREATE and both
/// objects on UPDATE: a review without them is refused before it can touch any claim.
///
/// The Services returned carry only what allocation reads: `metadata.name`, `generateName` and
/// `namespace` (filled from the request when the object lacks them), and the clusterIP,
/// family, port and node-port fields of `spec`.
pub fn service_request(request: &AdmissionRequest<'_>) -> Result<Option<ServiceRequest>, String> {
    if !request.kind.group.is_empty() || request.kind.kind != "Service" || request.sub_resource.is_some() {
        return Ok(None);
    }
    let op = match request.operation {
        AdmissionOperation::Create => Operation::Create,
        AdmissionOperation::Update => Operation::Update,
        // Values come back when the watch sees the Service gone: nothing to do on DELETE.
        AdmissionOperation::Delete | AdmissionOperation::Connect => return Ok(None),
    };
    if request.object.is_none() {
        return Err(format!(
            "a {:?} review of a Service must carry request.object",
            request.operation
        ));
    }
    if op == Operation::Update && request.old_object.is_none() {
        return Err("an UPDATE review of a Service must carry request.oldObject".to_owned());
    }
    let decode = |field: &str, v: &Option<RawObject<'_>>| -> Result<Option<Decoded>, String> {
        let Some(v) = v else { return Ok(None) };
        decode_service(v, request).map(Some).map_err(|e| {
            format!(
                "request.{field} is not a valid Service: {}",
                crate::validation::json::message(&e)
            )
        })
    };
    let (new, old) = (
        decode("object", &request.object)?,
        decode("oldObject", &request.old_object)?,
    );
    let take = |d: Option<Decoded>| match d {
        None => Ok(None),
        Some(Decoded::Service(s)) => Ok(Some(*s)),
        Some(Decoded::LeftAlone(why)) => Err(why),
    };
    match (take(new), take(old)) {
        (Ok(new), Ok(old)) => Ok(Some(ServiceRequest {
            op,
            new,
            old,
            dry_run: request.dry_run,
        })),
        (Err(why), _) | (_, Err(why)) => {
            tracing::debug!(name = %request.object_name(), why, "left to the apiserver");
            Ok(None)
        }
    }
}

/// The `Status` of a refusal: 422 `Invalid` with one cause per field error, or 500
/// `InternalError`.
pub fn denial_status(denial: &Denial) -> Status {
    if let Some(message) = denial.internal() {
        return status::internal(message);
    }
    let errs: Vec<_> = denial
        .refusals
        .iter()
        .filter_map(|r| r.field_error().cloned())
        .collect();
    status::invalid("", "Service", &denial.name, &errs)
}

/// The answer for a decision.
pub fn verdict(decision: &Decision) -> Verdict {
    match decision {
        Decision::Allow { patch, .. } if patch.0.is_empty() => Verdict::allow(),
        Decision::Allow { patch, .. } => match serde_json::to_value(patch) {
            Ok(p) => Verdict::allow().with_patch(p),
            Err(e) => Verdict::deny(status::internal(format!("cannot encode the patch: {e}"))),
        },
        Decision::Deny(d) => Verdict::deny(denial_status(d)),
    }
}

/// Answers one review of the mutating endpoint with `allocator`. Anything but a CREATE or
/// UPDATE of a core/v1 Service (no subresource) is admitted unchanged; infrastructure failures
/// are refused with a 500.
pub async fn admit(allocator: &ServiceAllocator, request: &AdmissionRequest<'_>) -> Verdict {
    let req = match service_request(request) {
        Ok(Some(req)) => req,
        Ok(None) => return Verdict::allow(),
        Err(message) => return Verdict::deny(status::bad_request(message)),
    };
    match allocator
        .decide(req.op, req.new.as_ref(), req.old.as_ref(), req.dry_run)
        .await
    {
        Ok(decision) => verdict(&decision),
        Err(e) => {
            tracing::warn!(error = %e, name = %request.object_name(), "allocation failed");
            Verdict::deny(status::internal(format!(
                "portico could not allocate for this Service: {e}"
            )))
        }
    }
}

/// A [`ServiceAllocator`] behind `/mutate`.
impl Mutate for ServiceAllocator {
    fn mutate<'a>(&'a self, request: &'a AdmissionRequest<'_>) -> BoxFuture<'a, Verdict> {
        Box::pin(admit(self, request))
    }
}

#[cfg(test)]
mod tests;
