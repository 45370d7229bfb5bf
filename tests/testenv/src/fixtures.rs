//! What a bare apiserver lacks and tests need: namespaces with their `default` ServiceAccount,
//! Nodes with zone labels, and Pods whose status a kubelet would have written.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, Pod, PodSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;

/// The zone label the EndpointSlice controller reads.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

async fn create_or_keep<K>(api: &Api<K>, obj: &K) -> kube::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the namespace and its `default` ServiceAccount (no controller-manager makes one
/// here, and pods cannot be created without it).
pub async fn namespace(client: &kube::Client, name: &str) -> kube::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    create_or_keep(&Api::<Namespace>::all(client.clone()), &ns).await?;
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    create_or_keep(&Api::<ServiceAccount>::namespaced(client.clone(), name), &sa).await
}

/// Creates a Node, with the zone label when given.
/// A ClusterIP Service `name` selecting `app=<app>`, with one port `http` (80) to
/// `target_port`.
pub fn http_service(name: &str, app: &str, target_port: IntOrString) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), app.to_owned())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(target_port),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn node(client: &kube::Client, name: &str, zone: Option<&str>) -> kube::Result<()> {
    let labels = zone.map(|z| BTreeMap::from([(ZONE_LABEL.to_owned(), z.to_owned())]));
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels,
            ..Default::default()
        },
        ..Default::default()
    };
    create_or_keep(&Api::<Node>::all(client.clone()), &node).await
}

/// A pod as a test wants it, written the way a scheduler and a kubelet would have.
#[derive(Debug, Clone, Default)]
pub struct TestPod {
    name: String,
    labels: BTreeMap<String, String>,
    node: Option<String>,
    ports: Vec<ContainerPort>,
    ips: Vec<String>,
    ready: bool,
    phase: String,
    hostname: Option<String>,
    subdomain: Option<String>,
}

impl TestPod {
    /// A Running, not-yet-Ready pod with no IP.
    pub fn new(name: &str) -> Self {
        TestPod {
            name: name.into(),
            phase: "Running".into(),
            ..Default::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// Sets `spec.nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Declares a container port (name may be empty).
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.ports.push(ContainerPort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            container_port: port,
            protocol: Some(protocol.into()),
            ..Default::default()
        });
        self
    }

    /// Adds a pod IP (the first is `status.podIP`).
    pub fn ip(mut self, ip: &str) -> Self {
        self.ips.push(ip.into());
        self
    }

    /// Sets the Ready condition.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// Sets `status.phase`.
    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = phase.into();
        self
    }

    /// Sets `spec.hostname` and `spec.subdomain`.
    pub fn hostname(mut self, hostname: &str, subdomain: &str) -> Self {
        self.hostname = Some(hostname.into());
        self.subdomain = Some(subdomain.into());
        self
    }

    /// The pod object, without status.
    pub fn to_pod(&self) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels.clone()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: self.node.clone(),
                hostname: self.hostname.clone(),
                subdomain: self.subdomain.clone(),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry.invalid/portico/pause:1".into()),
                    ports: (!self.ports.is_empty()).then(|| self.ports.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Creates the pod and writes its status through the status subresource.
    pub async fn create(&self, client: &kube::Client, ns: &str) -> kube::Result<Pod> {
        let api = Api::<Pod>::namespaced(client.clone(), ns);
        api.create(&PostParams::default(), &self.to_pod()).await?;
        set_status(client, ns, &self.name, &self.phase, &self.ips, self.ready).await
    }
}

/// Writes a pod's phase, IPs and Ready condition, as a kubelet would.
pub async fn set_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    phase: &str,
    ips: &[String],
    ready: bool,
) -> kube::Result<Pod> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let ready = if ready { "True" } else { "False" };
    let mut status = json!({
        "phase": phase,
        "conditions": [{"type": "Ready", "status": ready}],
    });
    if let Some(first) = ips.first() {
        status["podIP"] = json!(first);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
}

/// One sample of the apiserver's `apiserver_request_total` (labels absent there are empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCount {
    /// `resource`, e.g. `endpointslices`.
    pub resource: String,
    /// `subresource`, e.g. `status`.
    pub subresource: String,
    /// `verb`: `POST`, `PUT`, `PATCH`, `DELETE`, `GET`, ...
    pub verb: String,
    /// The HTTP status `code` answered.
    pub code: String,
    /// How many such requests so far.
    pub count: u64,
}

/// Every `apiserver_request_total` sample of the apiserver's `/metrics`: how the benches and
/// tests count the API requests a controller made.
pub async fn apiserver_requests(client: &kube::Client) -> kube::Result<Vec<RequestCount>> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(parse_request_counts(&client.request_text(req).await?))
}

fn parse_request_counts(text: &str) -> Vec<RequestCount> {
    text.lines()
        .filter_map(|l| l.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let label = |name: &str| {
                let key = format!("{name}=\"");
                // Labels are `k="v"` joined by commas; match a whole key, not a suffix of one.
                let start = labels
                    .match_indices(&key)
                    .find(|(i, _)| *i == 0 || labels.as_bytes()[i - 1] == b',')?
                    .0
                    + key.len();
                Some(labels[start..].split('"').next()?.to_owned())
            };
            Some(RequestCount {
                resource: label("resource").unwrap_or_default(),
                subresource: label("subresource").unwrap_or_default(),
                verb: label("verb").unwrap_or_default(),
                code: label("code").unwrap_or_default(),
                count: value.trim().parse::<f64>().ok()? as u64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_counts_read_whole_label_names() {
        let text = "# HELP apiserver_request_total x\n\
            apiserver_request_total{code=\"404\",component=\"apiserver\",resource=\"endpoints\",scope=\"resource\",subresource=\"\",verb=\"DELETE\",version=\"v1\"} 2\n\
            apiserver_request_total{code=\"200\",resource=\"pods\",subresource=\"status\",verb=\"PATCH\"} 7\n\
            apiserver_requested_deprecated_apis{resource=\"endpoints\"} 1\n";
        let got = super::parse_request_counts(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got[0].resource.as_str(),
                got[0].subresource.as_str(),
                got[0].verb.as_str(),
                got[0].code.as_str(),
                got[0].count
            ),
            ("endpoints", "", "DELETE", "404", 2)
        );
        assert_eq!(
            (
                got[1].resource.as_str(),
                got[1].subresource.as_str(),
                got[1].count
            ),
            ("pods", "status", 7)
        );
    }
}
