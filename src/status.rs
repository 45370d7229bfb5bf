//! `portico status`: what a person wants to know at a glance. Each range with used/free per
//! band and pending claims, what the last repair pass found, and who leads.

use std::collections::BTreeMap;

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use portico_allocation::repair::EVENT_CONTROLLER;
use portico_allocation::{RangeAllocation, RepairSummary};

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

    out.push_str(&recovery_section(&ranges));
    out.push_str("\nLAST REPAIR PASS (per range, as the leader's repair loop recorded it)\n");
    out.push_str(&repair_section(&ranges));

    // Duplicates and unknown values are also Events on the Services concerned.
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
    out.push_str("\nREPAIR EVENTS (on Services, recent)\n");
    if findings.is_empty() {
        out.push_str("  none\n");
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

#[cfg(test)]
mod tests {
    use super::*;
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
