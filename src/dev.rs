//! `portico dev`: a local control plane with Portico on it and a small sample applied.

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use portico_testenv::fixtures::{self, TestPod};
use portico_testenv::{ControlPlane, ControlPlaneConfig};

/// Flags of `portico dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// `--service-cluster-ip-range` of the local apiserver.
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cluster_ip_range: String,
    /// `--service-node-port-range` of the local apiserver.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Namespace for the sample.
    #[arg(long, default_value = "portico-demo")]
    pub namespace: String,
    /// Skip applying the sample.
    #[arg(long)]
    pub no_sample: bool,
    /// Apply the sample, print the outcome and exit instead of running until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let config = ControlPlaneConfig {
        service_cluster_ip_range: args.service_cluster_ip_range.clone(),
        service_node_port_range: args.service_node_port_range.clone(),
        ..Default::default()
    };
    println!("starting etcd and kube-apiserver ...");
    let cp = ControlPlane::start(config)
        .await
        .context("starting the local control plane")?;
    let client = cp.client().await?;
    let version = client.apiserver_version().await?;
    println!(
        "control plane up: kube-apiserver {} at {}",
        version.git_version,
        cp.server()
    );
    println!("kubeconfig: {}", cp.kubeconfig_path().display());
    println!("  export KUBECONFIG={}", cp.kubeconfig_path().display());

    if !args.no_sample {
        apply_sample(&client, &args.namespace)
            .await
            .context("applying the sample")?;
        report(&client, &args.namespace).await?;
    }
    if args.once {
        return Ok(());
    }
    println!("running; Ctrl-C stops Portico and the control plane");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    Ok(())
}

const SAMPLE_NODES: [(&str, &str); 3] = [("node-a", "zone-a"), ("node-b", "zone-b"), ("node-c", "zone-c")];

async fn apply_sample(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    fixtures::namespace(client, ns).await?;
    for (node, zone) in SAMPLE_NODES {
        fixtures::node(client, node, Some(zone)).await?;
    }
    for i in 0..3u8 {
        let (node, _) = SAMPLE_NODES[usize::from(i)];
        TestPod::new(&format!("web-{i}"))
            .label("app", "web")
            .node(node)
            .port("http", 8080, "TCP")
            .ip(&format!("10.244.{i}.10"))
            .ready(i != 2)
            .create(client, ns)
            .await?;
    }
    let services = Api::<Service>::namespaced(client.clone(), ns);
    for (name, type_, headless) in [
        ("web", "ClusterIP", false),
        ("web-nodeport", "NodePort", false),
        ("web-headless", "ClusterIP", true),
    ] {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: headless.then(|| "None".to_owned()),
                selector: Some([("app".to_owned(), "web".to_owned())].into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        services
            .create(&PostParams::default(), &svc)
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    println!("sample applied in namespace {ns}: 3 pods (2 Ready), Services web, web-nodeport, web-headless");
    Ok(())
}

async fn report(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let services = Api::<Service>::namespaced(client.clone(), ns);
    for svc in services.list(&Default::default()).await? {
        let name = svc.metadata.name.unwrap_or_default();
        let spec = svc.spec.unwrap_or_default();
        let node_ports: Vec<String> = spec
            .ports
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.node_port.map(|n| n.to_string()))
            .collect();
        println!(
            "  service {name}: type {} clusterIP {}{}",
            spec.type_.unwrap_or_default(),
            spec.cluster_ip.unwrap_or_default(),
            if node_ports.is_empty() {
                String::new()
            } else {
                format!(" nodePorts {}", node_ports.join(","))
            }
        );
    }
    Ok(())
}
