//! `portico status`: what an operator asks first. It finds the install by itself (the webhook
//! configurations Portico registers, then the Deployment behind them for its flags), shows each
//! range with used/free per band, what the last repair pass found and who leads, and checks:
//! the webhook's `caBundle` against the serving certificate, that certificate's expiry, the
//! clusterIP ranges against the cluster's ServiceCIDRs, and whether kube-controller-manager's
//! `endpoint`/`endpointslice` controllers still write. `-o json|yaml` gives the same report to
//! machines.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Event, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use portico_allocation::repair::EVENT_CONTROLLER;
use portico_allocation::{RangeAllocation, RepairSummary};
use serde::Serialize;

/// Name of the validating webhook Portico registers (chart and `--webhook-url` alike).
const VALIDATING_WEBHOOK: &str = "ports.portico.dev";

/// kube-controller-manager's manager name in `managedFields`, and its slices' label value.
const KCM_MANAGER: &str = "kube-controller-manager";
const KCM_SLICE_MANAGER: &str = "endpointslice-controller.k8s.io";

/// How recent a write by kube-controller-manager counts as "still writing".
const RECENT_MINUTES: i64 = 10;

/// A serving certificate this close to expiry is a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// Flags of `portico status`. Each is found from the install when not given.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lease of the leader election (default: from the install, else `portico`).
    #[arg(long)]
    pub leader_elect_resource_name: Option<String>,
    /// Namespace of the Lease (default: the install's namespace, else `POD_NAMESPACE`, else
    /// kube-system).
    #[arg(long)]
    pub leader_elect_resource_namespace: Option<String>,
    /// Manager name on Portico's EndpointSlices (default: from the install).
    #[arg(long)]
    pub managed_by: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = crate::cli::Output::Text)]
    pub output: crate::cli::Output,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("building a Kubernetes client (KUBECONFIG or in-cluster)")?;
    let report = Report::gather(&client, &args).await?;
    print!("{}", crate::cli::render(&report, args.output, Report::text)?);
    Ok(())
}

/// Where Portico is installed, as found.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Install {
    /// The webhook configurations' name (none found: `None`).
    pub webhook_configuration: Option<String>,
    /// Namespace of the webhook Service, i.e. of the install.
    pub namespace: Option<String>,
    /// The webhook Service (chart) or URL (`--webhook-url`).
    pub webhook: Option<String>,
    /// The Deployment whose flags were read.
    pub deployment: Option<String>,
    pub lease_namespace: String,
    pub lease_name: String,
    pub managed_by: String,
    /// The Secret holding the serving certificate, if known.
    pub tls_secret: Option<String>,
}

/// One range's counters.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Range {
    pub name: String,
    pub range: String,
    pub size: u64,
    pub used: u64,
    pub free: u64,
    pub static_used: u64,
    pub static_free: u64,
    pub dynamic_used: u64,
    pub dynamic_free: u64,
    pub pending: u64,
    pub exhausted: Option<String>,
}

/// The leader as its Lease says.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    pub holder: Option<String>,
    pub lease: String,
    pub acquired: Option<String>,
    pub renewed: Option<String>,
    /// Seconds since `acquired`.
    pub leading_for_seconds: Option<i64>,
    /// Seconds since `renewed`.
    pub renewed_seconds_ago: Option<i64>,
    pub lease_duration_seconds: Option<i32>,
    pub transitions: i32,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
    Skipped,
}

/// One check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub message: String,
}

impl Check {
    fn new(name: &'static str, level: Level, message: impl Into<String>) -> Self {
        Check {
            name,
            level,
            message: message.into(),
        }
    }
}

/// Repair Events by reason.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    pub reason: String,
    pub count: u64,
    pub last_message: String,
}

/// Portico's slices.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slices {
    pub managed_by: String,
    pub slices: usize,
    pub endpoints: usize,
    pub services: usize,
}

/// Everything `portico status` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub install: Install,
    pub checks: Vec<Check>,
    pub leader: Option<Leader>,
    pub ranges: Vec<Range>,
    #[serde(skip)]
    range_objects: Vec<RangeAllocation>,
    pub last_repairs: BTreeMap<String, RepairSummary>,
    pub repair_events: Vec<EventSummary>,
    pub endpoint_slices: Slices,
}

fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One row per range with the counts of its last repair pass, then the values behind them.
fn repair_section(ranges: &[RangeAllocation]) -> String {
    let passes: Vec<(String, RepairSummary)> = ranges
        .iter()
        .filter_map(|ra| {
            let summary = ra.status.as_ref()?.last_repair.clone()?;
            Some((ra.metadata.name.clone().unwrap_or_default(), summary))
        })
        .collect();
    if passes.is_empty() {
        return "  none yet (the leader runs one at start and every --repair-interval)\n".to_owned();
    }
    let mut rows = vec![
        ["NAME", "AT", "LEAKED", "DUPLICATES", "OUT OF RANGE"]
            .map(String::from)
            .to_vec(),
    ];
    let mut details = String::new();
    for (name, p) in &passes {
        let findings = [
            ("leaked (claim lapsed)", &p.leaked),
            ("duplicate", &p.duplicates),
            ("out of range", &p.out_of_range),
        ];
        let mut row = vec![name.clone(), p.time.clone()];
        row.extend(findings.iter().map(|(_, f)| f.count.to_string()));
        rows.push(row);
        for (what, f) in findings {
            if f.examples.is_empty() {
                continue;
            }
            let more = f.count.saturating_sub(f.examples.len() as u64);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            details.push_str(&format!("  {name} {what}: {}{more}\n", f.examples.join(", ")));
        }
    }
    table(&rows) + &details
}

/// RangeAllocation objects that had to be rebuilt (deleted or corrupted), if any.
fn recovery_section(ranges: &[RangeAllocation]) -> String {
    let lines: Vec<String> = ranges
        .iter()
        .filter_map(|ra| {
            let r = ra.status.as_ref()?.last_recovery.as_ref()?;
            Some(format!(
                "  {} at {}: {}\n",
                ra.metadata.name.as_deref().unwrap_or_default(),
                r.time,
                r.reason
            ))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\nRECOVERED (rebuilt from a replica's claims; what is used comes from the watches)\n{}",
        lines.concat()
    )
}

/// Reads an argument of `portico run` from a container's args (`--flag=value` or `--flag value`).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&long).and_then(|r| r.strip_prefix('=')) {
            Some(v)
        } else if a == &long {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

/// The install, from the webhook configuration and the Deployment found, then the flags.
fn install_of(
    config: Option<&ValidatingWebhookConfiguration>,
    deployment: Option<&Deployment>,
    args: &StatusArgs,
) -> Install {
    let webhook = config
        .and_then(|c| c.webhooks.as_ref()?.iter().find(|w| w.name == VALIDATING_WEBHOOK))
        .map(|w| &w.client_config);
    let service = webhook.and_then(|c| c.service.as_ref());
    let namespace = service.map(|s| s.namespace.clone());
    let container_args: Vec<String> = deployment
        .and_then(|d| {
            d.spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .args
                .clone()
        })
        .unwrap_or_default();
    let from_deployment = |name: &str| flag(&container_args, name).map(str::to_owned);
    // cert-manager mode mounts the Secret instead of naming it in a flag.
    let mounted_secret = deployment.and_then(|d| {
        let spec = d.spec.as_ref()?.template.spec.as_ref()?;
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == "webhook-tls")?
            .secret
            .as_ref()?
            .secret_name
            .clone()
    });
    let lease_namespace = args
        .leader_elect_resource_namespace
        .clone()
        .or_else(|| from_deployment("leader-elect-resource-namespace"))
        .or_else(|| namespace.clone())
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "kube-system".into());
    Install {
        webhook_configuration: config.and_then(|c| c.metadata.name.clone()),
        webhook: webhook.map(|c| match (&c.service, &c.url) {
            (Some(s), _) => format!("service {}/{}", s.namespace, s.name),
            (None, Some(url)) => url.clone(),
            (None, None) => "(none)".into(),
        }),
        deployment: deployment.and_then(|d| d.metadata.name.clone()),
        lease_namespace,
        lease_name: args
            .leader_elect_resource_name
            .clone()
            .or_else(|| from_deployment("leader-elect-resource-name"))
            .unwrap_or_else(|| "portico".into()),
        managed_by: args
            .managed_by
            .clone()
            .or_else(|| from_deployment("managed-by"))
            .unwrap_or_else(|| portico_controllers::endpointslice::DEFAULT_MANAGED_BY.into()),
        tls_secret: from_deployment("tls-secret-name").or(mounted_secret),
        namespace,
    }
}

/// Is the serving certificate (PEM, leaf first) signed by a CA of `ca_bundle` (PEM)? And how
/// long until it expires? Pure, for tests.
pub fn certificate_checks(ca_bundle: &[u8], serving_pem: &[u8], now: Timestamp) -> Vec<Check> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut checks = Vec::new();
    let Some(Ok(leaf_der)) = CertificateDer::pem_slice_iter(serving_pem).next() else {
        return vec![Check::new(
            "certificate",
            Level::Error,
            "the serving certificate is not PEM",
        )];
    };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(leaf_der.as_ref()) else {
        return vec![Check::new(
            "certificate",
            Level::Error,
            "the serving certificate does not parse",
        )];
    };
    let cas: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(ca_bundle)
        .filter_map(Result::ok)
        .collect();
    let signed = cas.iter().any(|der| {
        x509_parser::parse_x509_certificate(der.as_ref())
            .is_ok_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
    });
    checks.push(if cas.is_empty() {
        Check::new("caBundle", Level::Error, "the webhook configuration has no caBundle: the apiserver cannot verify Portico")
    } else if signed {
        Check::new("caBundle", Level::Ok, format!("the serving certificate is signed by a CA of the caBundle ({} CA)", cas.len()))
    } else {
        Check::new(
            "caBundle",
            Level::Error,
            "no CA of the caBundle signed the serving certificate: the apiserver's calls fail TLS (x509: unknown authority)",
        )
    });
    let left = leaf.validity().not_after.timestamp() - now.as_second();
    let days = left.div_euclid(86_400);
    checks.push(if left <= 0 {
        Check::new(
            "certificateExpiry",
            Level::Error,
            format!("the serving certificate expired {} days ago", -days),
        )
    } else if days < EXPIRY_WARNING_DAYS {
        Check::new(
            "certificateExpiry",
            Level::Warning,
            format!("the serving certificate expires in {days} days"),
        )
    } else {
        Check::new(
            "certificateExpiry",
            Level::Ok,
            format!("the serving certificate expires in {days} days"),
        )
    });
    checks
}

/// Every clusterIP range of Portico's RangeAllocations lies inside a ServiceCIDR. Pure.
pub fn range_check(ranges: &[RangeAllocation], service_cidrs: Option<&[String]>) -> Check {
    let Some(cidrs) = service_cidrs else {
        return Check::new(
            "ranges",
            Level::Skipped,
            "the apiserver has no ServiceCIDR API (before Kubernetes 1.33)",
        );
    };
    let nets: Vec<ipnet::IpNet> = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
    let mut outside = Vec::new();
    let mut checked = 0;
    // A clusterIP range is CIDRs (`30000-32767` is not); read from the spec, since the status
    // of an object just created may not be written yet.
    let is_cidrs = |r: &&RangeAllocation| r.spec.range.contains('/');
    for ra in ranges.iter().filter(is_cidrs) {
        for part in ra.spec.range.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            checked += 1;
            match part.parse::<ipnet::IpNet>() {
                Ok(net) if nets.iter().any(|n| n.contains(&net)) => {}
                _ => outside.push(format!(
                    "{part} ({})",
                    ra.metadata.name.as_deref().unwrap_or_default()
                )),
            }
        }
    }
    if !outside.is_empty() {
        Check::new(
            "ranges",
            Level::Error,
            format!(
                "outside every ServiceCIDR ({}): {}; the apiserver refuses clusterIPs from there",
                cidrs.join(", "),
                outside.join(", ")
            ),
        )
    } else if checked == 0 {
        Check::new(
            "ranges",
            Level::Skipped,
            "no clusterIP RangeAllocation (allocation off?)",
        )
    } else {
        Check::new(
            "ranges",
            Level::Ok,
            format!(
                "every clusterIP range lies inside the ServiceCIDRs ({})",
                cidrs.join(", ")
            ),
        )
    }
}

/// Whether kube-controller-manager wrote an object recently, from its `managedFields`.
fn written_by_kcm_since(fields: Option<&Vec<ManagedFieldsEntry>>, since: Timestamp) -> bool {
    fields
        .into_iter()
        .flatten()
        .any(|f| f.manager.as_deref() == Some(KCM_MANAGER) && f.time.as_ref().is_some_and(|t| t.0 >= since))
}

/// kube-controller-manager's endpoint controllers still writing, from recent `managedFields`. Pure.
pub fn kcm_check(slices: &[EndpointSlice], endpoints: &[Endpoints], now: Timestamp) -> Check {
    let since = now - SignedDuration::from_mins(RECENT_MINUTES);
    let slices = slices
        .iter()
        .filter(|s| written_by_kcm_since(s.metadata.managed_fields.as_ref(), since))
        .count();
    let endpoints = endpoints
        .iter()
        .filter(|e| written_by_kcm_since(e.metadata.managed_fields.as_ref(), since))
        .count();
    if slices + endpoints == 0 {
        Check::new(
            "kubeControllerManager",
            Level::Ok,
            format!(
                "no EndpointSlice or Endpoints written by kube-controller-manager in the last {RECENT_MINUTES}m"
            ),
        )
    } else {
        Check::new(
            "kubeControllerManager",
            Level::Warning,
            format!(
                "kube-controller-manager still writes: {slices} EndpointSlices and {endpoints} Endpoints in the last \
                 {RECENT_MINUTES}m; two writers fight, turn its controllers off (--controllers=*,-endpoint,-endpointslice)"
            ),
        )
    }
}

/// The leader from its Lease, and the check that someone leads. Pure.
pub fn leader_of(lease: Option<&Lease>, install: &Install, now: Timestamp) -> (Option<Leader>, Check) {
    let name = format!("{}/{}", install.lease_namespace, install.lease_name);
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return (
            None,
            Check::new(
                "leader",
                Level::Warning,
                format!("no Lease {name} (leader election off, or not started)"),
            ),
        );
    };
    let secs = |t: &Timestamp| now.as_second() - t.as_second();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let leader = Leader {
        holder: holder.clone(),
        lease: name.clone(),
        acquired: spec.acquire_time.as_ref().map(|t| t.0.to_string()),
        renewed: spec.renew_time.as_ref().map(|t| t.0.to_string()),
        leading_for_seconds: spec.acquire_time.as_ref().map(|t| secs(&t.0)),
        renewed_seconds_ago: spec.renew_time.as_ref().map(|t| secs(&t.0)),
        lease_duration_seconds: spec.lease_duration_seconds,
        transitions: spec.lease_transitions.unwrap_or(0),
    };
    let expired = match (leader.renewed_seconds_ago, spec.lease_duration_seconds) {
        (Some(ago), Some(d)) => ago > i64::from(d),
        _ => true,
    };
    let check = match (&holder, expired) {
        (Some(h), false) => Check::new(
            "leader",
            Level::Ok,
            format!(
                "{h} leads ({})",
                leader.leading_for_seconds.map_or("since ?".into(), age)
            ),
        ),
        (Some(h), true) => Check::new(
            "leader",
            Level::Error,
            format!("the Lease {name} of {h} has expired: no replica runs the controllers"),
        ),
        (None, _) => Check::new(
            "leader",
            Level::Error,
            format!("no replica holds the Lease {name}"),
        ),
    };
    (Some(leader), check)
}

/// `3h04m05s` style.
fn age(secs: i64) -> String {
    let secs = secs.max(0);
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("for {s}s"),
        (0, m, s) => format!("for {m}m{s:02}s"),
        (h, m, s) => format!("for {h}h{m:02}m{s:02}s"),
    }
}

/// Lists, treating an unknown resource (404) as `None`.
async fn list_opt<K>(api: Api<K>, lp: &ListParams) -> anyhow::Result<Option<Vec<K>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(lp).await {
        Ok(list) => Ok(Some(list.items)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Report {
    /// Reads the install and the cluster.
    pub async fn gather(client: &kube::Client, args: &StatusArgs) -> anyhow::Result<Report> {
        let now = Timestamp::now();
        let all = ListParams::default();
        let configs = Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .list(&all)
            .await
            .context("listing ValidatingWebhookConfigurations")?
            .items;
        // An in-cluster install (a Service behind the webhook) before an out-of-cluster run
        // (`--webhook-url`) when both are registered.
        let ours = |c: &&ValidatingWebhookConfiguration, in_cluster: bool| {
            c.webhooks
                .iter()
                .flatten()
                .any(|w| w.name == VALIDATING_WEBHOOK && w.client_config.service.is_some() == in_cluster)
        };
        let config = configs
            .iter()
            .find(|c| ours(c, true))
            .or_else(|| configs.iter().find(|c| ours(c, false)));
        let service = config
            .and_then(|c| c.webhooks.as_ref()?.iter().find(|w| w.name == VALIDATING_WEBHOOK))
            .and_then(|w| w.client_config.service.clone());
        // The Deployment behind the webhook Service: the one whose pods its selector picks
        // (whatever the release's names), else the chart's name label.
        let deployment = match &service {
            Some(svc) => {
                let selector =
                    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &svc.namespace)
                        .get_opt(&svc.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|s| s.spec?.selector)
                        .unwrap_or_default();
                let deployments = Api::<Deployment>::namespaced(client.clone(), &svc.namespace)
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                let picks = |d: &&Deployment| {
                    let labels = d
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.metadata.as_ref()?.labels.clone())
                        .unwrap_or_default();
                    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                };
                let named = |d: &&Deployment| {
                    d.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("app.kubernetes.io/name"))
                        == Some(&"portico".to_owned())
                };
                deployments
                    .iter()
                    .find(picks)
                    .or_else(|| deployments.iter().find(named))
                    .cloned()
            }
            None => None,
        };
        let install = install_of(config, deployment.as_ref(), args);
        let mut checks = Vec::new();
        if config.is_none() {
            checks.push(Check::new(
                "install",
                Level::Warning,
                "no webhook configuration with the ports.portico.dev webhook: Portico's webhook is not registered",
            ));
        }

        // caBundle and certificate.
        match (config, &install.tls_secret, &install.namespace) {
            (Some(config), Some(secret), Some(ns)) => {
                let ca_bundle = config
                    .webhooks
                    .iter()
                    .flatten()
                    .find(|w| w.name == VALIDATING_WEBHOOK)
                    .and_then(|w| w.client_config.ca_bundle.clone())
                    .map(|b| b.0)
                    .unwrap_or_default();
                match Api::<Secret>::namespaced(client.clone(), ns)
                    .get_opt(secret)
                    .await
                {
                    Ok(Some(s)) => match s.data.as_ref().and_then(|d| d.get("tls.crt")) {
                        Some(crt) => checks.extend(certificate_checks(&ca_bundle, &crt.0, now)),
                        None => checks.push(Check::new(
                            "caBundle",
                            Level::Error,
                            format!("Secret {ns}/{secret} has no tls.crt"),
                        )),
                    },
                    Ok(None) => checks.push(Check::new(
                        "caBundle",
                        Level::Error,
                        format!("no Secret {ns}/{secret}"),
                    )),
                    Err(e) => checks.push(Check::new(
                        "caBundle",
                        Level::Skipped,
                        format!("cannot read Secret {ns}/{secret}: {e}"),
                    )),
                }
                if let Some(mutating) = Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .get_opt(config.metadata.name.as_deref().unwrap_or_default())
                    .await
                    .ok()
                    .flatten()
                {
                    let same = mutating
                        .webhooks
                        .iter()
                        .flatten()
                        .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca_bundle));
                    if !same {
                        checks.push(Check::new(
                            "caBundle",
                            Level::Error,
                            "the mutating configuration's caBundle differs from the validating one's",
                        ));
                    }
                }
            }
            _ => checks.push(Check::new(
                "caBundle",
                Level::Skipped,
                "no serving-certificate Secret known (out-of-cluster run, or --tls-cert-file)",
            )),
        }

        let range_objects = list_opt(Api::<RangeAllocation>::all(client.clone()), &all)
            .await
            .context("listing RangeAllocations")?
            .unwrap_or_default();
        let cidrs = list_opt(Api::<ServiceCIDR>::all(client.clone()), &all)
            .await
            .context("listing ServiceCIDRs")?
            .map(|l| {
                l.iter()
                    .flat_map(|c| c.spec.iter().flat_map(|s| s.cidrs.iter().flatten().cloned()))
                    .collect::<Vec<_>>()
            });
        checks.push(range_check(&range_objects, cidrs.as_deref()));

        let kcm_slices = Api::<EndpointSlice>::all(client.clone())
            .list(&ListParams::default().labels(&format!(
                "endpointslice.kubernetes.io/managed-by={KCM_SLICE_MANAGER}"
            )))
            .await
            .context("listing EndpointSlices")?
            .items;
        let endpoints = Api::<Endpoints>::all(client.clone())
            .list(&all)
            .await
            .context("listing Endpoints")?
            .items;
        checks.push(kcm_check(&kcm_slices, &endpoints, now));

        let lease = Api::<Lease>::namespaced(client.clone(), &install.lease_namespace)
            .get_opt(&install.lease_name)
            .await
            .context("reading the Lease")?;
        let (leader, leader_check) = leader_of(lease.as_ref(), &install, now);
        checks.push(leader_check);

        // Repair findings are Events on the Services concerned; only Portico's are listed.
        let events = Api::<Event>::all(client.clone())
            .list(&ListParams::default().fields(&format!("reportingComponent={EVENT_CONTROLLER}")))
            .await
            .context("listing Events")?;
        let mut by_reason: BTreeMap<String, EventSummary> = BTreeMap::new();
        for ev in &events.items {
            let reason = ev.reason.clone().unwrap_or_default();
            let entry = by_reason.entry(reason.clone()).or_insert(EventSummary {
                reason,
                count: 0,
                last_message: String::new(),
            });
            entry.count += ev
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(ev.count)
                .map_or(1, |c| c.max(1) as u64);
            entry.last_message = ev.message.clone().unwrap_or_default();
        }

        let slices = Api::<EndpointSlice>::all(client.clone())
            .list(&ListParams::default().labels(&format!(
                "endpointslice.kubernetes.io/managed-by={}",
                install.managed_by
            )))
            .await
            .context("listing EndpointSlices")?;
        let services: BTreeSet<_> = slices
            .items
            .iter()
            .filter_map(|s| {
                let name = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
                Some((s.metadata.namespace.clone().unwrap_or_default(), name.clone()))
            })
            .collect();
        let endpoint_slices = Slices {
            managed_by: install.managed_by.clone(),
            slices: slices.items.len(),
            endpoints: slices.items.iter().map(|s| s.endpoints.len()).sum(),
            services: services.len(),
        };

        Ok(Report {
            ranges: range_objects.iter().map(range_row).collect(),
            last_repairs: range_objects
                .iter()
                .filter_map(|ra| {
                    Some((
                        ra.metadata.name.clone()?,
                        ra.status.as_ref()?.last_repair.clone()?,
                    ))
                })
                .collect(),
            range_objects,
            install,
            checks,
            leader,
            repair_events: by_reason.into_values().collect(),
            endpoint_slices,
        })
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::from("INSTALL\n");
        let i = &self.install;
        out.push_str(&format!(
            "  webhook configuration: {}\n  webhook: {}\n  deployment: {}\n  lease: {}/{}\n",
            i.webhook_configuration.as_deref().unwrap_or("(none found)"),
            i.webhook.as_deref().unwrap_or("(none)"),
            match (&i.namespace, &i.deployment) {
                (Some(ns), Some(d)) => format!("{ns}/{d}"),
                _ => "(none found)".into(),
            },
            i.lease_namespace,
            i.lease_name
        ));
        out.push_str("\nCHECKS\n");
        let mut rows = vec![["CHECK", "RESULT", "DETAIL"].map(String::from).to_vec()];
        for c in &self.checks {
            let level = serde_json::to_value(c.level)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            rows.push(vec![c.name.to_owned(), level, c.message.clone()]);
        }
        out.push_str(&table(&rows));

        out.push_str("\nRANGES\n");
        if self.ranges.is_empty() {
            out.push_str("  (none: allocation is off, or the RangeAllocation CRD is not installed)\n");
        } else {
            let mut rows = vec![
                [
                    "NAME",
                    "RANGE",
                    "SIZE",
                    "USED",
                    "FREE",
                    "STATIC USED/FREE",
                    "DYNAMIC USED/FREE",
                    "PENDING",
                    "EXHAUSTED",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for r in &self.ranges {
                rows.push(vec![
                    r.name.clone(),
                    r.range.clone(),
                    r.size.to_string(),
                    r.used.to_string(),
                    r.free.to_string(),
                    format!("{}/{}", r.static_used, r.static_free),
                    format!("{}/{}", r.dynamic_used, r.dynamic_free),
                    r.pending.to_string(),
                    r.exhausted.clone().unwrap_or_else(|| "?".into()),
                ]);
            }
            out.push_str(&table(&rows));
        }
        out.push_str(&recovery_section(&self.range_objects));
        out.push_str("\nLAST REPAIR PASS (per range, as the leader's repair loop recorded it)\n");
        out.push_str(&repair_section(&self.range_objects));
        out.push_str("\nREPAIR EVENTS (on Services, recent)\n");
        if self.repair_events.is_empty() {
            out.push_str("  none\n");
        } else {
            let mut rows = vec![["REASON", "COUNT", "LAST MESSAGE"].map(String::from).to_vec()];
            for e in &self.repair_events {
                rows.push(vec![
                    e.reason.clone(),
                    e.count.to_string(),
                    e.last_message.clone(),
                ]);
            }
            out.push_str(&table(&rows));
        }
        out.push_str("\nCONTROLLERS\n");
        match &self.leader {
            Some(l) => out.push_str(&format!(
                "  leader: {} (lease {}, {}, renewed {}s ago, {} transitions)\n",
                l.holder.as_deref().unwrap_or("(none)"),
                l.lease,
                l.leading_for_seconds.map_or("since ?".into(), age),
                l.renewed_seconds_ago.map_or("?".into(), |s| s.to_string()),
                l.transitions
            )),
            None => out.push_str(&format!(
                "  leader: none (no lease {}/{})\n",
                i.lease_namespace, i.lease_name
            )),
        }
        let s = &self.endpoint_slices;
        out.push_str(&format!(
            "  endpointslices managed ({}): {} slices, {} endpoints, {} services\n",
            s.managed_by, s.slices, s.endpoints, s.services
        ));
        out
    }
}

fn range_row(ra: &RangeAllocation) -> Range {
    let st = ra.status.clone().unwrap_or_default();
    Range {
        name: ra.metadata.name.clone().unwrap_or_default(),
        range: ra.spec.range.clone(),
        size: st.size,
        used: st.used,
        free: st.free,
        static_used: st.static_used,
        static_free: st.static_free,
        dynamic_used: st.dynamic_used,
        dynamic_free: st.dynamic_free,
        pending: st.pending,
        exhausted: st.condition("Exhausted").map(|c| c.status.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_is_checked_against_the_ca_bundle_and_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let certs = portico_webhook::write_dev_certs(&dir.path().join("a"), &["portico.svc"]).unwrap();
        let other = portico_webhook::write_dev_certs(&dir.path().join("b"), &["portico.svc"]).unwrap();
        let serving = std::fs::read(&certs.cert_file).unwrap();
        let now = Timestamp::now();
        let checks = certificate_checks(certs.ca_pem.as_bytes(), &serving, now);
        assert_eq!(checks[0].level, Level::Ok, "{checks:?}");
        assert_eq!(checks[1].level, Level::Ok, "{checks:?}");
        // A rotated CA the configuration was not patched with: the apiserver's calls fail TLS.
        let checks = certificate_checks(other.ca_pem.as_bytes(), &serving, now);
        assert_eq!(checks[0].level, Level::Error);
        assert!(checks[0].message.contains("unknown authority"), "{checks:?}");
        // Both CAs in the bundle (a rotation in progress) verify.
        let both = format!("{}{}", other.ca_pem, certs.ca_pem);
        assert_eq!(
            certificate_checks(both.as_bytes(), &serving, now)[0].level,
            Level::Ok
        );
        assert_eq!(certificate_checks(b"", &serving, now)[0].level, Level::Error);
        // Expiry, seen from three days before and one day after it.
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&serving)
            .map(|d: rustls_pki_types::CertificateDer<'static>| d.to_vec());
        let (_, leaf) = x509_parser::parse_x509_certificate(der.as_ref().unwrap()).unwrap();
        let expiry = leaf.validity().not_after.timestamp();
        let at = |secs: i64| Timestamp::from_second(secs).unwrap();
        let soon = certificate_checks(certs.ca_pem.as_bytes(), &serving, at(expiry - 3 * 86_400 - 60));
        assert_eq!(
            (soon[1].level, soon[1].message.as_str()),
            (Level::Warning, "the serving certificate expires in 3 days")
        );
        let later = certificate_checks(certs.ca_pem.as_bytes(), &serving, at(expiry + 86_400));
        assert_eq!(
            (later[1].level, later[1].message.as_str()),
            (Level::Error, "the serving certificate expired 1 days ago")
        );
        assert_eq!(certificate_checks(b"", b"junk", now)[0].level, Level::Error);
    }

    fn cluster_range(name: &str, range: &str) -> RangeAllocation {
        let mut ra = RangeAllocation::new(
            name,
            portico_allocation::RangeAllocationSpec {
                range: range.into(),
                ..Default::default()
            },
        );
        ra.status = Some(RangeAllocationStatus {
            kind: "ClusterIP".into(),
            ..Default::default()
        });
        ra
    }

    #[test]
    fn ranges_must_lie_inside_a_service_cidr() {
        let ranges = [
            cluster_range("clusterip-ipv4", "10.96.0.0/16,10.100.0.0/24"),
            range("nodeports", None),
        ];
        assert_eq!(range_check(&ranges, None).level, Level::Skipped);
        let cidrs = ["10.96.0.0/12".to_owned()];
        let c = range_check(&ranges, Some(&cidrs));
        assert_eq!(c.level, Level::Ok, "{c:?}");
        let cidrs = ["10.96.0.0/16".to_owned()];
        let c = range_check(&ranges, Some(&cidrs));
        assert_eq!(c.level, Level::Error);
        assert!(c.message.contains("10.100.0.0/24 (clusterip-ipv4)"), "{c:?}");
    }

    fn slice_written_by(manager: &str, at: Timestamp) -> EndpointSlice {
        EndpointSlice {
            metadata: kube::api::ObjectMeta {
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some(manager.into()),
                    time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at)),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        }
    }

    #[test]
    fn a_recent_write_by_kube_controller_manager_is_a_warning() {
        let now = Timestamp::now();
        let old = now - SignedDuration::from_hours(2);
        let quiet = [
            slice_written_by(KCM_MANAGER, old),
            slice_written_by("portico", now),
        ];
        assert_eq!(kcm_check(&quiet, &[], now).level, Level::Ok);
        let busy = [slice_written_by(KCM_MANAGER, now - SignedDuration::from_mins(1))];
        let c = kcm_check(&busy, &[], now);
        assert_eq!(c.level, Level::Warning);
        assert!(c.message.contains("1 EndpointSlices and 0 Endpoints"), "{c:?}");
    }

    #[test]
    fn the_install_is_read_from_the_webhook_configuration_and_its_deployment() {
        let config: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "portico"},
            "webhooks": [{"name": "ports.portico.dev", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                          "clientConfig": {"service": {"namespace": "portico-system", "name": "portico-webhook"}}}]
        }))
        .unwrap();
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "portico", "namespace": "portico-system"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "portico", "args": [
                "run", "--leader-elect-resource-name=portico-lease", "--leader-elect-resource-namespace=portico-system",
                "--managed-by", "mine", "--tls-secret-name=portico-webhook-tls"]}]}}}
        }))
        .unwrap();
        let args = StatusArgs {
            leader_elect_resource_name: None,
            leader_elect_resource_namespace: None,
            managed_by: None,
            output: crate::cli::Output::Text,
        };
        let i = install_of(Some(&config), Some(&deployment), &args);
        assert_eq!(i.namespace.as_deref(), Some("portico-system"));
        assert_eq!(
            (i.lease_namespace.as_str(), i.lease_name.as_str()),
            ("portico-system", "portico-lease")
        );
        assert_eq!(i.managed_by, "mine");
        assert_eq!(i.tls_secret.as_deref(), Some("portico-webhook-tls"));
        assert_eq!(
            i.webhook.as_deref(),
            Some("service portico-system/portico-webhook")
        );
        // Flags win; without a Deployment the Lease is looked for in the install's namespace.
        let args = StatusArgs {
            leader_elect_resource_name: Some("other".into()),
            ..args
        };
        let i = install_of(Some(&config), None, &args);
        assert_eq!(
            (i.lease_namespace.as_str(), i.lease_name.as_str()),
            ("portico-system", "other")
        );
    }

    #[test]
    fn the_leader_is_checked_for_an_expired_lease() {
        use k8s_openapi::api::coordination::v1::LeaseSpec;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now = Timestamp::now();
        let install = Install {
            lease_namespace: "ns".into(),
            lease_name: "portico".into(),
            ..Default::default()
        };
        let lease = |renewed_ago: i64| Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("portico-0".into()),
                acquire_time: Some(MicroTime(now - SignedDuration::from_secs(3725))),
                renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_ago))),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (leader, check) = leader_of(Some(&lease(2)), &install, now);
        assert_eq!(check.level, Level::Ok);
        assert_eq!(check.message, "portico-0 leads (for 1h02m05s)");
        assert_eq!(leader.unwrap().leading_for_seconds, Some(3725));
        assert_eq!(leader_of(Some(&lease(60)), &install, now).1.level, Level::Error);
        assert_eq!(leader_of(None, &install, now).1.level, Level::Warning);
    }
    use portico_allocation::{RangeAllocationSpec, RangeAllocationStatus, RepairFinding};

    fn range(name: &str, last_repair: Option<RepairSummary>) -> RangeAllocation {
        let mut ra = RangeAllocation::new(name, RangeAllocationSpec::default());
        ra.status = Some(RangeAllocationStatus {
            last_repair,
            ..Default::default()
        });
        ra
    }

    #[test]
    fn repair_section_lists_counts_and_values() {
        assert!(repair_section(&[range("nodeports", None)]).contains("none yet"));
        let pass = RepairSummary {
            time: "2026-11-22T01:00:00Z".into(),
            leaked: RepairFinding::of(["10.96.0.9 default/ghost".to_owned()]),
            duplicates: RepairFinding::of((0..12).map(|i| format!("10.96.0.{i} default/s{i}"))),
            ..Default::default()
        };
        let text = repair_section(&[range("clusterip-ipv4", Some(pass)), range("nodeports", None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "AT", "LEAKED", "DUPLICATES", "OUT", "OF", "RANGE"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["clusterip-ipv4", "2026-11-22T01:00:00Z", "1", "12", "0"]
        );
        assert_eq!(
            lines[2],
            "  clusterip-ipv4 leaked (claim lapsed): 10.96.0.9 default/ghost"
        );
        assert!(
            lines[3].starts_with("  clusterip-ipv4 duplicate: 10.96.0.0 default/s0, "),
            "{text}"
        );
        assert!(lines[3].ends_with(" and 2 more"), "{text}");
        assert_eq!(lines.len(), 4, "{text}");
    }

    #[test]
    fn a_recovered_object_is_shown() {
        let mut ra = range("nodeports", None);
        assert!(recovery_section(std::slice::from_ref(&ra)).is_empty());
        if let Some(st) = ra.status.as_mut() {
            st.last_recovery = Some(portico_allocation::Recovery {
                time: "2026-12-05T01:00:00Z".into(),
                reason: "the object was deleted".into(),
            });
        }
        assert_eq!(
            recovery_section(&[ra]).lines().nth(2),
            Some("  nodeports at 2026-12-05T01:00:00Z: the object was deleted")
        );
    }
}
