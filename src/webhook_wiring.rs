//! The webhook side of `portico run`: certificates, allocation, the HTTPS server, and (out of
//! cluster) registration of the webhook configurations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use portico_allocation::{
    AllocationConfig, AllocationMetrics, Repair, RepairConfig, ServiceAllocator, install_crds,
};
use portico_webhook::bootstrap::{CertBootstrap, service_sans};
use portico_webhook::validation::Options;
use portico_webhook::{
    FailurePolicy, Handlers, Namespaces, Registration, Server, Validator, WebhookConfig, WebhookEndpoint,
};
use tokio_util::sync::CancellationToken;

/// Webhook and allocation flags of `portico run` (range flags named like the apiserver's).
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Serve the admission webhook.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "PORTICO_WEBHOOK")]
    pub webhook: bool,
    /// Where the webhook listens (HTTPS). Default: `0.0.0.0:9443`, or with `--webhook-url`
    /// naming a port, that port on every interface.
    #[arg(long, env = "PORTICO_WEBHOOK_BIND_ADDRESS")]
    pub webhook_bind_address: Option<SocketAddr>,
    /// Out of cluster: the URL the apiserver reaches this webhook at (`https://127.0.0.1:9443`).
    /// Portico then listens on its port (unless `--webhook-bind-address` says otherwise, which
    /// must then be reachable through it), makes its own CA and certificate and registers its
    /// Validating and Mutating webhook configurations pointing there, so a plain apiserver is
    /// wired with one command.
    #[arg(long, env = "PORTICO_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Serving certificate (PEM), e.g. from a cert-manager Secret; reloaded when it changes.
    #[arg(long, requires = "tls_private_key_file", env = "PORTICO_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert_file", env = "PORTICO_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: Option<PathBuf>,
    /// In-cluster, self-managed certificates: the Secret (in Portico's own namespace,
    /// `POD_NAMESPACE`) that holds a self-signed CA and the serving certificate. Portico creates
    /// and rotates it, serves with it, and patches `caBundle` of the webhook configurations.
    #[arg(long, conflicts_with = "tls_cert_file", env = "PORTICO_TLS_SECRET_NAME")]
    pub tls_secret_name: Option<String>,
    /// The Service in front of the webhook: the serving certificate's DNS names are derived
    /// from it (`<name>.<namespace>.svc`, ...).
    #[arg(long, default_value = "portico-webhook", env = "PORTICO_WEBHOOK_SERVICE_NAME")]
    pub webhook_service_name: String,
    /// Directory for certificate files Portico writes itself (self-managed or out-of-cluster).
    #[arg(long, env = "PORTICO_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Require a TLS client certificate signed by this CA (PEM) on the webhook: the apiserver
    /// presents one when its admission configuration gives it a kubeconfig for Portico (see
    /// the README, "Only the apiserver gets in"). Re-read like the serving certificate: new
    /// connections are verified against the file's current CA set.
    #[arg(long, env = "PORTICO_WEBHOOK_CLIENT_CA_FILE")]
    pub webhook_client_ca_file: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on reviews, the token read from this file (the
    /// apiserver sends one the same way). Probes and metrics stay open. Re-read like the serving
    /// certificate: a new token replaces the previous one at once.
    #[arg(long, env = "PORTICO_WEBHOOK_CLIENT_TOKEN_FILE")]
    pub webhook_client_token_file: Option<PathBuf>,
    /// Reviews judged at once; more wait within their time budget, then get 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..),
          env = "PORTICO_WEBHOOK_MAX_CONCURRENT_REVIEWS")]
    pub webhook_max_concurrent_reviews: u16,
    /// Open connections to the webhook; more are closed at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..),
          env = "PORTICO_WEBHOOK_MAX_CONNECTIONS")]
    pub webhook_max_connections: u32,
    /// Time allowed for a review's body to arrive once its headers are in (408 after).
    #[arg(long, default_value = "10s", value_parser = crate::run::parse_duration,
          env = "PORTICO_WEBHOOK_BODY_READ_TIMEOUT")]
    pub webhook_body_read_timeout: Duration,
    /// Name of the Validating and Mutating webhook configurations.
    #[arg(long, default_value = "portico", env = "PORTICO_WEBHOOK_CONFIGURATION_NAME")]
    pub webhook_configuration_name: String,
    /// failurePolicy of the configurations Portico registers itself (`--webhook-url`).
    #[arg(long, default_value = "Fail", value_parser = ["Fail", "Ignore"], env = "PORTICO_WEBHOOK_FAILURE_POLICY")]
    pub webhook_failure_policy: String,
    /// Namespaces whose objects the self-registered configurations never send to Portico.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,kube-node-lease",
        env = "PORTICO_WEBHOOK_EXCLUDE_NAMESPACES"
    )]
    pub webhook_exclude_namespaces: Vec<String>,
    /// Instead, send only these namespaces' objects (self-registered configurations only).
    #[arg(long, value_delimiter = ',', env = "PORTICO_WEBHOOK_NAMESPACES")]
    pub webhook_namespaces: Vec<String>,
    /// Allocate clusterIPs and nodePorts in the mutating webhook. On Kubernetes 1.33+ the
    /// clusterIP ranges are the apiserver's ready ServiceCIDRs, followed at run time; before,
    /// `--service-cluster-ip-range` is required. Implied by `--service-cluster-ip-range`.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "PORTICO_ALLOCATION")]
    pub allocation: bool,
    /// Service CIDRs (one, or two of different families). On 1.33+ they narrow where new
    /// clusterIPs come from and must lie inside the apiserver's ServiceCIDRs (checked at start);
    /// explicit clusterIPs the apiserver accepts stay accepted unless
    /// `--refuse-outside-service-cluster-ip-range`. Before 1.33 they are the ranges, inside the
    /// apiserver's own `--service-cluster-ip-range`.
    #[arg(long, env = "PORTICO_SERVICE_CLUSTER_IP_RANGE")]
    pub service_cluster_ip_range: Option<String>,
    /// Also refuse explicit clusterIPs outside `--service-cluster-ip-range` that the apiserver
    /// would accept (422, "the provided network does not match the current range").
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "PORTICO_REFUSE_OUTSIDE_SERVICE_CLUSTER_IP_RANGE")]
    pub refuse_outside_service_cluster_ip_range: bool,
    /// Node ports Portico allocates from: the apiserver's `--service-node-port-range` (which no
    /// API shows), or a range inside it.
    #[arg(long, default_value = "30000-32767", env = "PORTICO_SERVICE_NODE_PORT_RANGE")]
    pub service_node_port_range: String,
    /// How long a value handed out in an admission stays claimed for a Service that has not
    /// appeared yet (a refused or abandoned request frees it after this).
    #[arg(long, default_value = "30s", value_parser = crate::run::parse_duration, env = "PORTICO_ALLOCATION_CLAIM_TTL")]
    pub allocation_claim_ttl: Duration,
    /// How often the repair loop reports what the holdings show (duplicates, values outside
    /// every range, lapsed claims).
    #[arg(long, default_value = "60s", value_parser = crate::run::parse_duration, env = "PORTICO_REPAIR_INTERVAL")]
    pub repair_interval: Duration,
    /// Report Services whose clusterIP or nodePort lies outside every range (Events and
    /// metrics).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "PORTICO_REPAIR_REPORT_OUT_OF_RANGE")]
    pub repair_report_out_of_range: bool,
    /// Install (server-side apply) the RangeAllocation CRD at start-up. The chart installs it
    /// itself; `portico dev` and out-of-cluster runs turn this on.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "PORTICO_INSTALL_CRDS")]
    pub install_crds: bool,
}

/// The webhook's listen address when neither flag names one.
const DEFAULT_WEBHOOK_BIND_ADDRESS: &str = "0.0.0.0:9443";

impl WebhookArgs {
    /// Where the webhook listens. A `--webhook-url` that names a port decides it when
    /// `--webhook-bind-address` is not given; when both are given and the URL (an IP address
    /// or `localhost`) cannot reach the listener, start-up fails naming the flag to change,
    /// rather than registering a webhook the apiserver gets "connection refused" from.
    pub fn bind_address(&self) -> anyhow::Result<SocketAddr> {
        let url = self.webhook_url.as_deref().map(url_authority).transpose()?;
        let bind = match (self.webhook_bind_address, &url) {
            (Some(bind), _) => bind,
            // A DNS name may be a proxy or load balancer in front: its port says nothing of
            // where Portico listens.
            (None, Some((host, Some(port)))) if host.is_local() => {
                let any = if host.is_ipv6() {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                };
                return Ok(SocketAddr::new(any, *port));
            }
            (None, _) => return Ok(DEFAULT_WEBHOOK_BIND_ADDRESS.parse()?),
        };
        let (Some(url_str), Some((host, port))) = (&self.webhook_url, url) else {
            return Ok(bind);
        };
        if let Some(port) = port
            && host.is_local()
            && port != bind.port()
        {
            anyhow::bail!(
                "--webhook-url {url_str} points at port {port} but --webhook-bind-address {bind} \
                 listens on port {}: the apiserver would get \"connection refused\" and, with \
                 failurePolicy Fail, refuse every Service write. Leave out \
                 --webhook-bind-address (Portico then listens on the URL's port) or make the two \
                 ports agree",
                bind.port()
            );
        }
        if bind.ip().is_loopback() && host.is_remote_ip() {
            anyhow::bail!(
                "--webhook-bind-address {bind} listens on loopback only, which --webhook-url \
                 {url_str} cannot reach: bind to {} or to that address instead",
                if bind.is_ipv6() { "[::]" } else { "0.0.0.0" }
            );
        }
        Ok(bind)
    }
}

/// The host of a webhook URL, as far as reachability goes.
#[derive(Debug, Clone, PartialEq)]
enum UrlHost {
    Ip(std::net::IpAddr),
    Localhost,
    Name,
}

impl UrlHost {
    fn is_local(&self) -> bool {
        matches!(self, UrlHost::Localhost | UrlHost::Ip(_))
    }

    fn is_remote_ip(&self) -> bool {
        matches!(self, UrlHost::Ip(ip) if !ip.is_loopback())
    }

    fn is_ipv6(&self) -> bool {
        matches!(self, UrlHost::Ip(std::net::IpAddr::V6(_)))
    }
}

/// The host of an `https://` URL as a certificate names it (`https://[::1]:9443` → `::1`).
fn url_host(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("https://").unwrap_or_default();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    url_authority(url)?;
    Ok(host.to_owned())
}

/// Host and port of an `https://` URL (`https://[::1]:9443/x` → `::1`, 9443).
fn url_authority(url: &str) -> anyhow::Result<(UrlHost, Option<u16>)> {
    let bad = || anyhow::anyhow!("--webhook-url {url:?} is not an https:// URL with a host");
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("--webhook-url {url:?}: invalid port {p:?}"))
        })
        .transpose()?;
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => UrlHost::Ip(ip),
        Err(_) if host.eq_ignore_ascii_case("localhost") => UrlHost::Localhost,
        Err(_) => UrlHost::Name,
    };
    Ok((host, port))
}

/// A started webhook: the server future plus what else it needs running.
pub struct Running {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The allocation repair loop and its interval, when allocating; the leader runs it.
    pub repair: Option<(Repair, Duration)>,
    /// The serving certificate and key files (kept current), for other HTTPS listeners.
    pub cert_files: (PathBuf, PathBuf),
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Waits for the server and its helpers to stop (after `shutdown` is cancelled).
    pub async fn join(mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            r.context("webhook task panicked")??;
        }
        Ok(())
    }
}

/// Starts the webhook (and allocation, with `--allocation` or `--service-cluster-ip-range`). `pods` is a pod cache to read
/// from for the targetPort warning; without one the webhook watches pods itself. Returns once it is serving and,
/// out of cluster, registered.
pub async fn start(
    client: kube::Client,
    args: &WebhookArgs,
    pods: Option<Arc<dyn portico_webhook::PodIndex>>,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let bind = args.bind_address()?;
    let mut tasks = tokio::task::JoinSet::new();
    let cert_dir = args
        .webhook_cert_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("portico-webhook-{}", std::process::id())));
    // Certificates: given as files, kept in a Secret by Portico, or made here for an
    // out-of-cluster URL.
    let (cert_file, key_file, ca_pem) = match (
        &args.tls_cert_file,
        &args.tls_private_key_file,
        &args.tls_secret_name,
        &args.webhook_url,
    ) {
        (Some(c), Some(k), _, _) => (c.clone(), k.clone(), None),
        (_, _, Some(secret), _) => {
            let ns = std::env::var("POD_NAMESPACE")
                .context("--tls-secret-name needs POD_NAMESPACE, the namespace Portico runs in")?;
            let sans = service_sans(&args.webhook_service_name, &ns);
            let mut boot = CertBootstrap::new(&ns, secret, sans, &cert_dir);
            boot.validating_webhook = Some(args.webhook_configuration_name.clone());
            boot.mutating_webhook = Some(args.webhook_configuration_name.clone());
            boot.sync(&client)
                .await
                .with_context(|| format!("certificates in Secret {ns}/{secret}"))?;
            let (cert, key) = (boot.cert_file(), boot.key_file());
            let (client, stop) = (client.clone(), shutdown.clone());
            tasks.spawn(async move {
                boot.run(client, stop.cancelled_owned()).await;
                Ok(())
            });
            (cert, key, None)
        }
        (_, _, _, Some(url)) => {
            let host = url_host(url)?;
            let certs = portico_webhook::write_dev_certs(&cert_dir, &[host.as_str()])
                .with_context(|| format!("writing webhook certificates to {}", cert_dir.display()))?;
            (certs.cert_file, certs.key_file, Some(certs.ca_pem))
        }
        _ => anyhow::bail!(
            "the webhook needs a certificate: pass --tls-cert-file and --tls-private-key-file, \
                 --tls-secret-name (self-managed, in a cluster) or --webhook-url (out of cluster), \
                 or turn it off with --webhook=false"
        ),
    };

    if args.install_crds {
        install_crds(client.clone())
            .await
            .context("installing the RangeAllocation CRD")?;
    }
    let pods: Arc<dyn portico_webhook::PodIndex> = match pods {
        Some(pods) => pods,
        None => {
            let (pods, pod_watch) = portico_webhook::pod_store(Api::<Pod>::all(client.clone()));
            let stop = shutdown.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = pod_watch => {}
                    () = stop.cancelled() => {}
                }
                Ok(())
            });
            Arc::new(pods)
        }
    };
    // The clusterIP rule for hand-written Endpoints/EndpointSlices: a watch trimmed to clusterIPs.
    let (service_ips, ip_watch) =
        portico_webhook::service_ip_index(Api::all(client.clone()), shutdown.clone().cancelled_owned());
    tasks.spawn(async move {
        ip_watch.await;
        Ok(())
    });
    let validator = Validator::new(Options::default())
        .with_pods(pods)
        .with_service_ips(service_ips);
    let mut handlers = Handlers::new(validator);
    let allocating = args.allocation || args.service_cluster_ip_range.is_some();
    let mut repair_loop = None;
    if allocating {
        let ranges = args.service_cluster_ip_range.as_deref().unwrap_or_default();
        let mut config = AllocationConfig::parse(ranges, &args.service_node_port_range)
            .context("--service-cluster-ip-range / --service-node-port-range")?;
        config.refuse_outside_range = args.refuse_outside_service_cluster_ip_range;
        config.claim_ttl = args.allocation_claim_ttl;
        let metrics = AllocationMetrics::new(registry).context("registering allocation metrics")?;
        let allocator = Arc::new(
            ServiceAllocator::start(client.clone(), config, Some(metrics))
                .await
                .context("starting the allocators")?,
        );
        handlers = handlers.with_mutator(allocator.clone());
        let repair = Repair::new(
            allocator,
            client.clone(),
            RepairConfig {
                instance: std::env::var("POD_NAME").ok(),
                report_out_of_range: args.repair_report_out_of_range,
                ..Default::default()
            },
        );
        repair_loop = Some((repair, args.repair_interval));
    }

    let cert_files = (cert_file.clone(), key_file.clone());
    let mut config = WebhookConfig::new(bind, cert_file, key_file);
    config.client_ca_file.clone_from(&args.webhook_client_ca_file);
    config
        .client_token_file
        .clone_from(&args.webhook_client_token_file);
    config.max_concurrent_reviews = usize::from(args.webhook_max_concurrent_reviews);
    config.max_connections = args.webhook_max_connections as usize;
    config.body_read_timeout = args.webhook_body_read_timeout;
    let server = Server::bind(config, handlers, registry)
        .await
        .with_context(|| format!("binding the webhook on {bind}"))?;
    let addr = server.local_addr();
    let stop = shutdown.clone();
    tasks.spawn(async move { server.run(stop.cancelled_owned()).await.context("webhook server") });

    if let (Some(url), Some(ca)) = (&args.webhook_url, ca_pem) {
        let url = with_port(url, addr.port());
        let mut reg = Registration::with_endpoint(WebhookEndpoint::Url(url), ca);
        reg.name = args.webhook_configuration_name.clone();
        reg.failure_policy = if args.webhook_failure_policy == "Ignore" {
            FailurePolicy::Ignore
        } else {
            FailurePolicy::Fail
        };
        reg.namespaces = if args.webhook_namespaces.is_empty() {
            Namespaces::AllExcept(args.webhook_exclude_namespaces.clone())
        } else {
            Namespaces::Only(args.webhook_namespaces.clone())
        };
        portico_webhook::register(&client, &reg)
            .await
            .context("registering the validating webhook")?;
        if allocating {
            portico_webhook::register_mutating(&client, &reg)
                .await
                .context("registering the mutating webhook")?;
        }
        // A configuration left behind by a stopped out-of-cluster run would make the apiserver
        // fail (failurePolicy Fail) or skip (Ignore) every matching request: take it down too.
        let (client, name, stop) = (client.clone(), reg.name.clone(), shutdown.clone());
        tasks.spawn(async move {
            stop.cancelled().await;
            portico_webhook::unregister(&client, &name).await?;
            portico_webhook::unregister_mutating(&client, &name).await?;
            tracing::info!(%name, "webhook configurations removed");
            Ok(())
        });
        // The apiserver picks configurations up asynchronously; give it a moment so the first
        // requests after start-up already go through the webhook.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tracing::info!(%addr, allocating, "webhook serving");
    Ok(Running {
        addr,
        repair: repair_loop,
        cert_files,
        tasks,
    })
}

/// `https://host[/path]` gets the port the server is bound to (so `portico dev` and tests can
/// listen on port 0); a URL that names a port is used as it is.
fn with_port(url: &str, port: u16) -> String {
    let Some(rest) = url.strip_prefix("https://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        && !authority.ends_with(']');
    let path = if path == "/" { "" } else { path };
    if has_port {
        url.to_owned()
    } else {
        format!("https://{authority}:{port}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> WebhookArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            web: WebhookArgs,
        }
        let argv = std::iter::once("t").chain(flags.iter().copied());
        T::try_parse_from(argv).expect("flags parse").web
    }

    #[test]
    fn the_webhook_listens_where_its_url_points() {
        let bind = |flags: &[&str]| args(flags).bind_address().map(|a| a.to_string());
        assert_eq!(bind(&[]).unwrap(), "0.0.0.0:9443");
        // The footgun: the URL named a port and Portico listened on 9443 anyway.
        assert_eq!(
            bind(&["--webhook-url", "https://127.0.0.1:40123"]).unwrap(),
            "0.0.0.0:40123"
        );
        assert_eq!(
            bind(&["--webhook-url", "https://[::1]:40123/x"]).unwrap(),
            "[::]:40123"
        );
        assert_eq!(
            bind(&["--webhook-url", "https://127.0.0.1"]).unwrap(),
            "0.0.0.0:9443"
        );
        let both = [
            "--webhook-url",
            "https://127.0.0.1:40123",
            "--webhook-bind-address",
        ];
        assert_eq!(
            bind(&[&both[..], &["127.0.0.1:40123"]].concat()).unwrap(),
            "127.0.0.1:40123"
        );
        // Without a port in the URL, the bound one is appended at registration (port 0 works).
        let url_only = [
            "--webhook-url",
            "https://127.0.0.1",
            "--webhook-bind-address",
            "127.0.0.1:0",
        ];
        assert_eq!(bind(&url_only).unwrap(), "127.0.0.1:0");
        // A DNS name may sit in front of a proxy: its port is the user's business.
        let lb = [
            "--webhook-url",
            "https://webhook.example:443",
            "--webhook-bind-address",
            "0.0.0.0:9443",
        ];
        assert_eq!(bind(&lb).unwrap(), "0.0.0.0:9443");
        assert_eq!(bind(&lb[..2]).unwrap(), "0.0.0.0:9443", "not port 443");
    }

    #[test]
    fn a_url_that_cannot_reach_the_listener_is_refused_naming_the_flag() {
        let err = |flags: &[&str]| args(flags).bind_address().unwrap_err().to_string();
        let e = err(&[
            "--webhook-url",
            "https://127.0.0.1:40123",
            "--webhook-bind-address",
            "0.0.0.0:9443",
        ]);
        assert!(
            e.contains("port 40123") && e.contains("--webhook-bind-address 0.0.0.0:9443"),
            "{e}"
        );
        assert!(e.contains("Leave out --webhook-bind-address"), "{e}");
        let e = err(&[
            "--webhook-url",
            "https://localhost:1",
            "--webhook-bind-address",
            "127.0.0.1:0",
        ]);
        assert!(e.contains("port 1 "), "{e}");
        let e = err(&[
            "--webhook-url",
            "https://10.0.0.5:9443",
            "--webhook-bind-address",
            "127.0.0.1:9443",
        ]);
        assert!(e.contains("loopback only") && e.contains("0.0.0.0"), "{e}");
        let e = err(&["--webhook-url", "https://127.0.0.1:99999"]);
        assert!(e.contains("invalid port"), "{e}");
        let e = err(&["--webhook-url", "http://127.0.0.1:9443"]);
        assert!(e.contains("not an https:// URL"), "{e}");
    }

    #[test]
    fn a_url_without_port_gets_the_bound_one() {
        assert_eq!(with_port("https://127.0.0.1", 9443), "https://127.0.0.1:9443");
        assert_eq!(with_port("https://127.0.0.1/", 9443), "https://127.0.0.1:9443");
        assert_eq!(
            with_port("https://127.0.0.1:8443", 9443),
            "https://127.0.0.1:8443"
        );
        assert_eq!(with_port("https://[::1]", 9443), "https://[::1]:9443");
        assert_eq!(with_port("https://127.0.0.1/x", 9443), "https://127.0.0.1:9443/x");
        assert_eq!(url_host("https://[::1]:9443/x").unwrap(), "::1");
        assert_eq!(url_host("https://127.0.0.1:9443").unwrap(), "127.0.0.1");
        assert_eq!(url_host("https://localhost").unwrap(), "localhost");
        assert_eq!(with_port("https://[::1]:8443", 9443), "https://[::1]:8443");
    }
}
