//! `portico status`: what a person wants to know at a glance. Each range with used/free per
//! band and pending claims, what the repair loop reported recently, and who leads.

use std::collections::BTreeMap;

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use portico_webhook::allocation::RangeAllocation;
use portico_webhook::allocation::repair::EVENT_CONTROLLER;

/// Flags of `portico status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lease of the leader election.
    #[arg(long, default_value = "portico")]
    pub leader_elect_resource_name: String,
    /// Namespace of the Lease (default: `POD_NAMESPACE`, else kube-system).
    #[arg(long)]
    pub leader_elect_resource_namespace: Option<String>,
    /// Manager name on Portico's EndpointSlices.
    #[arg(long, default_value = portico_controllers::endpointslice::DEFAULT_MANAGED_BY)]
    pub managed_by: String,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("building a Kubernetes client (KUBECONFIG or in-cluster)")?;
    print!("{}", render(&client, &args).await?);
    Ok(())
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

/// The report, as text.
pub async fn render(client: &kube::Client, args: &StatusArgs) -> anyhow::Result<String> {
    let mut out = String::new();
    let ranges = match Api::<RangeAllocation>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(e).context("listing RangeAllocations"),
    };
    out.push_str("RANGES\n");
    if ranges.is_empty() {
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
            ]
            .map(String::from)
            .to_vec(),
        ];
        for ra in &ranges {
            let st = ra.status.clone().unwrap_or_default();
            rows.push(vec![
                ra.metadata.name.clone().unwrap_or_default(),
                ra.spec.range.clone(),
                st.size.to_string(),
                st.used.to_string(),
                st.free.to_string(),
                format!("{}/{}", st.static_used, st.static_free),
                format!("{}/{}", st.dynamic_used, st.dynamic_free),
                st.pending.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
    }

    // The repair loop reports leaks, duplicates and out-of-range values as Events.
    let events = Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing Events")?;
    let mut findings: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for ev in events
        .items
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(EVENT_CONTROLLER))
    {
        let reason = ev.reason.clone().unwrap_or_default();
        let entry = findings.entry(reason).or_default();
        entry.0 += ev.series.as_ref().map_or(1, |s| s.count.max(1) as usize);
        entry.1 = ev.note.clone().unwrap_or_default();
    }
    out.push_str("\nREPAIR FINDINGS (Events of the repair loop)\n");
    if findings.is_empty() {
        out.push_str("  none: no leaks, duplicates or out-of-range values reported\n");
    } else {
        let mut rows = vec![vec![
            "REASON".to_owned(),
            "COUNT".to_owned(),
            "LAST MESSAGE".to_owned(),
        ]];
        for (reason, (count, note)) in findings {
            rows.push(vec![reason, count.to_string(), note]);
        }
        out.push_str(&table(&rows));
    }

    out.push_str("\nCONTROLLERS\n");
    let ns = args
        .leader_elect_resource_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "kube-system".into());
    match Api::<Lease>::namespaced(client.clone(), &ns)
        .get_opt(&args.leader_elect_resource_name)
        .await?
    {
        Some(lease) => {
            let spec = lease.spec.unwrap_or_default();
            let holder = spec
                .holder_identity
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "(none)".into());
            let renewed = spec
                .renew_time
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| "never".into());
            out.push_str(&format!(
                "  leader: {holder} (lease {ns}/{}, renewed {renewed}, {} transitions)\n",
                args.leader_elect_resource_name,
                spec.lease_transitions.unwrap_or(0)
            ));
        }
        None => out.push_str(&format!(
            "  leader: none (no lease {ns}/{})\n",
            args.leader_elect_resource_name
        )),
    }
    let lp = ListParams::default().labels(&format!(
        "endpointslice.kubernetes.io/managed-by={}",
        args.managed_by
    ));
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&lp)
        .await
        .context("listing EndpointSlices")?;
    let endpoints: usize = slices.items.iter().map(|s| s.endpoints.len()).sum();
    let services: std::collections::BTreeSet<_> = slices
        .items
        .iter()
        .filter_map(|s| {
            let name = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
            Some((s.metadata.namespace.clone().unwrap_or_default(), name.clone()))
        })
        .collect();
    out.push_str(&format!(
        "  endpointslices managed ({}): {} slices, {} endpoints, {} services\n",
        args.managed_by,
        slices.items.len(),
        endpoints,
        services.len()
    ));
    Ok(out)
}
