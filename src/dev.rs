//! `portico dev`: a local control plane with Portico on it and a small sample applied.

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use portico_allocation::RangeAllocation;
use portico_testenv::fixtures::{self, TestPod};
use portico_testenv::{ControlPlane, ControlPlaneConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `portico dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Namespace for the sample.
    #[arg(long, default_value = "portico-demo")]
    pub sample_namespace: String,
    /// Skip applying the sample.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub no_sample: bool,
    /// Apply the sample, print the outcome and exit instead of running until Ctrl-C.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub once: bool,
    #[command(flatten)]
    pub run: crate::run::RunArgs,
}

/// The local apiserver's service range when `--service-cluster-ip-range` is not given. Portico
/// reads the ranges from the apiserver's ServiceCIDRs, as in any 1.33+ cluster.
const DEV_SERVICE_RANGE: &str = "10.96.0.0/16";

pub async fn run(mut args: DevArgs) -> anyhow::Result<()> {
    let web = &mut args.run.webhook;
    web.allocation = true;
    let range = web
        .service_cluster_ip_range
        .clone()
        .unwrap_or_else(|| DEV_SERVICE_RANGE.to_owned());
    let config = ControlPlaneConfig {
        service_cluster_ip_range: range,
        service_node_port_range: web.service_node_port_range.clone(),
        ..Default::default()
    };
    // Out of cluster: Portico serves on a free loopback port, makes its own certificate and
    // registers its webhook configurations; the CRD is installed from the binary.
    if web.webhook_url.is_none() {
        web.webhook_url = Some("https://127.0.0.1".to_owned());
        web.webhook_bind_address.get_or_insert("127.0.0.1:0".parse()?);
    }
    web.install_crds = true;
    args.run.metrics_bind_address = "127.0.0.1:0".parse()?;

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

    let shutdown = CancellationToken::new();
    let cfg = args.run.runtime_config()?;
    let portico = crate::run::start(cp.kube_config().await?, &args.run, cfg, shutdown.clone()).await?;
    println!(
        "portico running: controllers {}; webhook {}; metrics http://{}/metrics",
        args.run.controllers.join(","),
        portico
            .webhook_addr
            .map_or("off".to_owned(), |a| format!("https://{a}")),
        portico.metrics_addr
    );
    // Printed only now, once the CRD is Established and the webhooks are registered: whoever
    // waits for this line (scripts, the chart tests) gets a control plane that is whole.
    println!("kubeconfig: {}", cp.kubeconfig_path().display());
    println!("  export KUBECONFIG={}", cp.kubeconfig_path().display());

    if !args.no_sample {
        let ns = &args.sample_namespace;
        apply_sample(&client, ns).await.context("applying the sample")?;
        wait_for_slices(&client, ns).await?;
        report(&client, ns).await?;
    }
    if !args.once {
        println!("running; Ctrl-C stops Portico and the control plane");
        crate::signals::terminated().await;
        println!("stopping");
    }
    shutdown.cancel();
    portico.join().await
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
        let mut svc = fixtures::http_service(name, "web", IntOrString::String("http".into()));
        if let Some(spec) = svc.spec.as_mut() {
            spec.type_ = Some(type_.into());
            spec.cluster_ip = headless.then(|| "None".to_owned());
        }
        services
            .create(&PostParams::default(), &svc)
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    println!("sample applied in namespace {ns}: 3 pods (2 Ready), Services web, web-nodeport, web-headless");
    Ok(())
}

const SAMPLE_SERVICES: [&str; 3] = ["web", "web-nodeport", "web-headless"];

/// Waits until every sample Service has its slices (the controllers work asynchronously).
async fn wait_for_slices(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list = slices.list(&Default::default()).await?;
        let ready = SAMPLE_SERVICES.iter().all(|svc| {
            list.items.iter().any(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == Some(*svc)
                    && s.endpoints.len() == 3
            })
        });
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the sample's EndpointSlices did not appear within 30s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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
    for slice in Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?
    {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        let eps: Vec<String> = slice
            .endpoints
            .iter()
            .map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                let state = if ready { "" } else { " (not ready)" };
                format!(
                    "{}{state} in {}",
                    e.addresses.join("/"),
                    e.zone.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let ports: Vec<String> = slice
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| {
                format!(
                    "{}={}",
                    p.name.as_deref().unwrap_or(""),
                    p.port.unwrap_or_default()
                )
            })
            .collect();
        println!(
            "  endpointslice {} for {} (managed-by {}): ports [{}], endpoints [{}]",
            slice.metadata.name.unwrap_or_default(),
            labels
                .get("kubernetes.io/service-name")
                .map_or("?", String::as_str),
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map_or("?", String::as_str),
            ports.join(", "),
            eps.join(", ")
        );
    }
    // The counters are the status subresource, written at most every 5 s: wait for them to
    // show the sample's values rather than print a stale zero.
    let ranges = Api::<RangeAllocation>::all(client.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut list = ranges.list(&Default::default()).await?;
    while tokio::time::Instant::now() < deadline
        && list
            .items
            .iter()
            .any(|ra| ra.status.as_ref().is_none_or(|st| st.used == 0))
    {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        list = ranges.list(&Default::default()).await?;
    }
    for ra in list {
        let st = ra.status.unwrap_or_default();
        println!(
            "  portico range {} ({}): {} used of {} (dynamic band {} used, static band {} used)",
            ra.metadata.name.unwrap_or_default(),
            ra.spec.range,
            st.used,
            st.size,
            st.dynamic_used,
            st.static_used
        );
    }
    for ep in Api::<Endpoints>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?
    {
        let subsets = ep.subsets.unwrap_or_default();
        let ready: usize = subsets
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum();
        let not_ready: usize = subsets
            .iter()
            .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
            .sum();
        println!(
            "  endpoints {}: {ready} ready, {not_ready} not-ready address(es)",
            ep.metadata.name.unwrap_or_default()
        );
    }
    Ok(())
}
