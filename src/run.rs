//! `portico run`: the controllers (and, once wired, the webhook) against a cluster.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use portico_controller_runtime::client_limit::{RateLimitLayer, RequestMetrics};
use portico_controller_runtime::leader::{self, LeaderConfig};
use portico_controller_runtime::{self as runtime, Metrics, RuntimeConfig};
use portico_controllers::endpointslice;
use portico_controllers::mirroring::{self, MirrorConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `portico run`; names follow kube-controller-manager's where one exists.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Controllers to run: `endpointslice`, `endpoint`, `endpointslicemirroring`
    /// (comma-separated). Mirroring is opt-in: in a cluster whose kube-controller-manager still
    /// mirrors, a second mirror would double every hand-written endpoint.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "endpointslice,endpoint",
        env = "PORTICO_CONTROLLERS"
    )]
    pub controllers: Vec<String>,
    /// Workers per controller.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50),
          env = "PORTICO_CONCURRENT_SERVICE_ENDPOINT_SYNCS")]
    pub concurrent_service_endpoint_syncs: u16,
    /// Most endpoints in one EndpointSlice.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000),
          env = "PORTICO_MAX_ENDPOINTS_PER_SLICE")]
    pub max_endpoints_per_slice: u16,
    /// Delay from a pod change to its sync, so a burst of changes costs one sync. Upstream's
    /// default is 0; Portico's 250ms cuts EndpointSlice writes by two thirds under churn
    /// (benches/controller_workload.rs) and still converges well within a second.
    #[arg(long, default_value = "250ms", value_parser = parse_duration, env = "PORTICO_ENDPOINT_UPDATES_BATCH_PERIOD")]
    pub endpoint_updates_batch_period: Duration,
    /// Value of `endpointslice.kubernetes.io/managed-by` on the slices Portico writes.
    #[arg(long, default_value = endpointslice::DEFAULT_MANAGED_BY, env = "PORTICO_MANAGED_BY")]
    pub managed_by: String,
    /// Take over another manager's slices in place (e.g. `endpointslice-controller.k8s.io`
    /// when replacing kube-controller-manager's controller, which must be stopped first).
    #[arg(long, env = "PORTICO_ADOPT_FROM")]
    pub adopt_from: Option<String>,
    /// Workers of the mirroring controller.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50),
          env = "PORTICO_MIRRORING_CONCURRENT_SERVICE_ENDPOINT_SYNCS")]
    pub mirroring_concurrent_service_endpoint_syncs: u16,
    /// Most addresses mirrored from one Endpoints subset.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000),
          env = "PORTICO_MIRRORING_MAX_ENDPOINTS_PER_SUBSET")]
    pub mirroring_max_endpoints_per_subset: u16,
    /// Delay from an EndpointSlice change to the mirroring sync it triggers.
    #[arg(long, default_value = "0", value_parser = parse_duration,
          env = "PORTICO_MIRRORING_ENDPOINTSLICE_UPDATES_BATCH_PERIOD")]
    pub mirroring_endpointslice_updates_batch_period: Duration,
    /// Value of `endpointslice.kubernetes.io/managed-by` on the slices Portico mirrors.
    #[arg(long, default_value = mirroring::DEFAULT_MIRRORING_MANAGED_BY, env = "PORTICO_MIRRORING_MANAGED_BY")]
    pub mirroring_managed_by: String,
    /// Take over another mirroring manager's slices in place (e.g.
    /// `endpointslicemirroring-controller.k8s.io`, once kube-controller-manager's mirroring
    /// controller is stopped).
    #[arg(long, env = "PORTICO_MIRRORING_ADOPT_FROM")]
    pub mirroring_adopt_from: Option<String>,
    /// Manage one namespace only (default: all).
    #[arg(long, env = "PORTICO_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address for /metrics, /healthz and /readyz (plain HTTP unless `--metrics-secure`).
    #[arg(long, default_value = "0.0.0.0:8080", env = "PORTICO_METRICS_BIND_ADDRESS")]
    pub metrics_bind_address: std::net::SocketAddr,
    /// Serve /metrics, /healthz and /readyz over HTTPS with the webhook's serving certificate
    /// (needs the webhook).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "PORTICO_METRICS_SECURE")]
    pub metrics_secure: bool,
    /// Run the controllers and the repair loop only while holding a coordination.k8s.io Lease,
    /// so several replicas can serve the webhook while one writes.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "PORTICO_LEADER_ELECT")]
    pub leader_elect: bool,
    /// How long a lease lasts without renewal before another replica may take it.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "PORTICO_LEADER_ELECT_LEASE_DURATION")]
    pub leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops leading.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "PORTICO_LEADER_ELECT_RENEW_DEADLINE")]
    pub leader_elect_renew_deadline: Duration,
    /// How often candidates try to acquire, and the leader renews.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "PORTICO_LEADER_ELECT_RETRY_PERIOD")]
    pub leader_elect_retry_period: Duration,
    /// Name of the Lease.
    #[arg(long, default_value = "portico", env = "PORTICO_LEADER_ELECT_RESOURCE_NAME")]
    pub leader_elect_resource_name: String,
    /// Namespace of the Lease (default: `POD_NAMESPACE`, else kube-system).
    #[arg(long, env = "PORTICO_LEADER_ELECT_RESOURCE_NAMESPACE")]
    pub leader_elect_resource_namespace: Option<String>,
    /// Requests per second the controllers send the apiserver, on average (0: no limit). The
    /// webhook, allocation and leader election use a client of their own, not limited: a lease
    /// renewal or an admission never waits behind controller traffic.
    #[arg(long, default_value_t = 20.0, env = "PORTICO_KUBE_API_QPS")]
    pub kube_api_qps: f64,
    /// Requests the controllers may send at once above `--kube-api-qps`.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..),
          env = "PORTICO_KUBE_API_BURST")]
    pub kube_api_burst: u32,
    #[command(flatten)]
    pub webhook: crate::webhook_wiring::WebhookArgs,
}

impl RunArgs {
    /// The controller runtime's settings; fails on an unknown controller name.
    pub fn runtime_config(&self) -> anyhow::Result<RuntimeConfig> {
        let mut cfg = RuntimeConfig {
            endpointslice: false,
            endpoints: false,
            workers: usize::from(self.concurrent_service_endpoint_syncs),
            batch_period: self.endpoint_updates_batch_period,
            slices: endpointslice::Config {
                max_endpoints_per_slice: usize::from(self.max_endpoints_per_slice),
                managed_by: self.managed_by.clone(),
                adopt_from: self.adopt_from.clone(),
                ..Default::default()
            },
            endpointslicemirroring: false,
            mirroring: MirrorConfig {
                max_endpoints_per_subset: usize::from(self.mirroring_max_endpoints_per_subset),
                managed_by: self.mirroring_managed_by.clone(),
                adopt_from: self.mirroring_adopt_from.clone(),
            },
            mirroring_workers: usize::from(self.mirroring_concurrent_service_endpoint_syncs),
            mirroring_batch_period: self.mirroring_endpointslice_updates_batch_period,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| "portico".into()),
            namespace: self.namespace.clone(),
            ..Default::default()
        };
        for c in &self.controllers {
            match c.trim() {
                "endpointslice" => cfg.endpointslice = true,
                "endpoint" => cfg.endpoints = true,
                "endpointslicemirroring" => cfg.endpointslicemirroring = true,
                "" => {}
                other => anyhow::bail!(
                    "--controllers: unknown controller {other:?} (known: endpointslice, endpoint, endpointslicemirroring)"
                ),
            }
        }
        cfg.slices.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        if cfg.endpointslicemirroring {
            cfg.mirroring
                .validate()
                .map_err(|e| anyhow::anyhow!("--mirroring-*: {e}"))?;
            // The mirror deletes its slices of every Service with a selector: a name of the
            // EndpointSlice controller's (the one configured here, whether it runs in this
            // process or not) would have it delete that controller's slices.
            let slices = [Some(&cfg.slices.managed_by), cfg.slices.adopt_from.as_ref()];
            let mirror = [Some(&cfg.mirroring.managed_by), cfg.mirroring.adopt_from.as_ref()];
            if let Some(name) = slices.iter().flatten().find(|n| mirror.contains(&Some(**n))) {
                anyhow::bail!(
                    "--managed-by/--adopt-from and --mirroring-managed-by/--mirroring-adopt-from share {name:?}: \
                     the EndpointSlice and mirroring controllers need manager names of their own"
                );
            }
        }
        Ok(cfg)
    }
}

/// Parses Go-style durations as kube-controller-manager's flags take them: `0`, `500ms`,
/// `1s`, `1m30s`, `1.5h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration {s:?} (examples: 0, 500ms, 1s, 1m30s)");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = args.runtime_config()?;
    let config = kube::Config::infer()
        .await
        .context("reading the Kubernetes client configuration (KUBECONFIG or in-cluster)")?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::signals::terminated().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    let portico = start(config, &args, cfg, shutdown.clone()).await?;
    tracing::info!(metrics = %portico.metrics_addr, webhook = ?portico.webhook_addr, "portico running");
    portico.join().await
}

/// Everything `portico run` starts, running.
pub struct Portico {
    pub metrics_addr: std::net::SocketAddr,
    pub webhook_addr: Option<std::net::SocketAddr>,
    leading: tokio::task::JoinHandle<anyhow::Result<()>>,
    webhook: Option<crate::webhook_wiring::Running>,
    observe: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Stops the observability endpoints: last, so probes see the drain (`/readyz` 503).
    observe_stop: CancellationToken,
}

impl Portico {
    /// Waits until everything has stopped (after the shutdown token is cancelled).
    pub async fn join(self) -> anyhow::Result<()> {
        let led = self.leading.await.context("leader task panicked");
        let webhook = match self.webhook {
            Some(w) => w.join().await,
            None => Ok(()),
        };
        self.observe_stop.cancel();
        self.observe.await.context("metrics server panicked")??;
        led??;
        webhook
    }
}

/// Starts the observability endpoints, the webhook (if enabled) and the controllers (if any).
pub async fn start(
    config: kube::Config,
    args: &RunArgs,
    cfg: RuntimeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Portico> {
    let client = kube::Client::try_from(config.clone()).context("building a Kubernetes client")?;
    if args.metrics_secure && !args.webhook.webhook {
        anyhow::bail!("--metrics-secure serves with the webhook's certificate: it needs --webhook");
    }
    let registry = prometheus::Registry::new();
    let ready = crate::observe::Readiness::default();
    let live = crate::observe::Liveness::default();
    ready.drop_on(shutdown.clone());
    let observe_stop = CancellationToken::new();
    let serve_observe = |tls| {
        let listen = crate::observe::Listen {
            addr: args.metrics_bind_address,
            tls,
        };
        crate::observe::serve(
            listen,
            registry.clone(),
            ready.clone(),
            live.clone(),
            observe_stop.clone(),
        )
    };
    // Plain HTTP starts first, so probes answer while caches sync; HTTPS needs the webhook's
    // certificate, which exists once the webhook has started.
    let observe = if args.metrics_secure {
        None
    } else {
        Some(serve_observe(None).await?)
    };
    // Every replica keeps the controllers' caches warm, so a takeover starts syncing at once.
    let controllers = if cfg.endpointslice || cfg.endpoints || cfg.endpointslicemirroring {
        let metrics = Metrics::register(&registry)?;
        let host = config
            .cluster_url
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        let requests = RequestMetrics::register(&registry, host)?;
        let limit = RateLimitLayer::new(args.kube_api_qps, args.kube_api_burst, Some(requests));
        let limited = kube::client::ClientBuilder::try_from(config.clone())
            .context("building the controllers' client")?
            .with_layer(&limit)
            .build();
        Some(
            runtime::Controllers::start(limited, cfg, metrics, shutdown.clone())
                .await
                .context("starting the controllers' caches")?,
        )
    } else {
        None
    };
    if let Some(c) = &controllers {
        let beats = c.heartbeats();
        live.add(std::sync::Arc::new(move || beats.stuck()));
    }
    // The webhook's targetPort warning reads pods too: share the controllers' cache when it
    // covers every namespace, rather than watching all pods a second time.
    let pods = controllers.as_ref().filter(|_| args.namespace.is_none()).map(
        |c| -> std::sync::Arc<dyn portico_webhook::PodIndex> { std::sync::Arc::new(c.pods_by_namespace()) },
    );
    let mut webhook = if args.webhook.webhook {
        Some(
            crate::webhook_wiring::start(client.clone(), &args.webhook, pods, &registry, shutdown.clone())
                .await?,
        )
    } else {
        None
    };
    let webhook_addr = webhook.as_ref().map(|w| w.addr);
    let (metrics_addr, observe) = match observe {
        Some(plain) => plain,
        None => serve_observe(webhook.as_ref().map(|w| w.cert_files.clone())).await?,
    };
    let repair = webhook.as_mut().and_then(|w| w.repair.take());

    // What only one replica may do: write EndpointSlices and Endpoints, and repair allocations.
    let lead = move |token: CancellationToken| async move {
        let controllers = async {
            if let Some(c) = &controllers {
                c.lead(token.clone()).await;
            }
        };
        let repair = async {
            if let Some((repair, interval)) = repair {
                repair.run(interval, token.cancelled()).await;
            }
        };
        tokio::join!(controllers, repair);
    };
    let leading = if args.leader_elect {
        let identity =
            std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}_{}", hostname(), std::process::id()));
        let namespace = args
            .leader_elect_resource_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "kube-system".into());
        let lcfg = LeaderConfig {
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
            ..LeaderConfig::new(namespace, &args.leader_elect_resource_name, identity)
        };
        lcfg.validate()
            .map_err(|e| anyhow::anyhow!("--leader-elect-*: {e}"))?;
        let gauge = leader::leader_gauge(&registry, &args.leader_elect_resource_name)?;
        let (client, stop) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            match leader::run_elected(client, lcfg, gauge, stop.clone(), lead).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    // client-go's convention: a replica that lost its lease exits and restarts
                    // as a clean candidate.
                    stop.cancel();
                    Err(anyhow::anyhow!("leader election: {e}"))
                }
            }
        })
    } else {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            lead(stop).await;
            Ok(())
        })
    };

    // The controllers' caches have synced and the webhook serves: nothing else to wait for
    // (a follower's readiness does not depend on leading).
    if !shutdown.is_cancelled() {
        ready.set(true);
    }
    Ok(Portico {
        metrics_addr,
        webhook_addr,
        leading,
        webhook,
        observe,
        observe_stop,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "portico".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1x").is_err());
    }

    #[test]
    fn unknown_controllers_are_refused_by_name() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            run: RunArgs,
        }
        let t = T::parse_from(["t", "--controllers", "endpointslice,nodeipam"]);
        let err = t.run.runtime_config().unwrap_err().to_string();
        assert!(err.contains("--controllers") && err.contains("nodeipam"), "{err}");
        let t = T::parse_from(["t", "--controllers", "endpoint"]);
        let cfg = t.run.runtime_config().unwrap();
        assert!(cfg.endpoints && !cfg.endpointslice && !cfg.endpointslicemirroring);
        let t = T::parse_from(["t", "--controllers", "endpointslice,endpointslicemirroring"]);
        let cfg = t.run.runtime_config().unwrap();
        assert!(cfg.endpointslice && cfg.endpointslicemirroring && !cfg.endpoints);
        let t = T::parse_from([
            "t",
            "--controllers=endpointslice,endpointslicemirroring",
            "--mirroring-adopt-from=endpointslice-controller.portico",
        ]);
        let err = t.run.runtime_config().unwrap_err().to_string();
        assert!(err.contains("manager name"), "{err}");
        let t = T::parse_from([
            "t",
            "--controllers=endpointslicemirroring",
            "--managed-by=mine",
            "--mirroring-managed-by=mine",
        ]);
        let err = t.run.runtime_config().unwrap_err().to_string();
        assert!(err.contains("manager names of their own"), "{err}");
        // Mirroring off: its settings are not its business.
        let t = T::parse_from(["t", "--mirroring-managed-by=endpointslice-controller.portico"]);
        assert!(t.run.runtime_config().is_ok());
        let t = T::parse_from([
            "t",
            "--controllers=endpointslicemirroring",
            "--mirroring-managed-by",
            "Not A Label",
        ]);
        let err = t.run.runtime_config().unwrap_err().to_string();
        assert!(err.contains("--mirroring-"), "{err}");
    }
}
