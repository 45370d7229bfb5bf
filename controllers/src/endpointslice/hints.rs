//! Endpoint hints from `spec.trafficDistribution`, and their removal otherwise.
//!
//! The per-endpoint heuristic of `trafficDistribution` (a ready endpoint is hinted for its own
//! zone, and for `PreferSameNode` also its own node). The annotation
//! `service.kubernetes.io/topology-mode: Auto` takes precedence and selects the
//! CPU-proportional allocation of [`super::topology`].

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, EndpointSlice, ForNode, ForZone};

use crate::keys::{ANNOTATION_TOPOLOGY_AWARE_HINTS, ANNOTATION_TOPOLOGY_MODE};

/// What hints the endpoints of a Service should carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HintMode {
    /// No hints at all (existing ones are removed).
    Remove,
    /// Ready endpoints hinted for their own zone (`PreferClose`, `PreferSameZone`).
    SameZone,
    /// Ready endpoints hinted for their own zone and node (`PreferSameNode`).
    SameNode,
    /// Upstream's CPU-proportional topology-aware hints (`topology-mode: Auto`), see
    /// [`super::topology`].
    Auto,
}

fn topology_annotation_enabled(svc: &Service) -> bool {
    let annotations = svc.metadata.annotations.as_ref();
    // The deprecated annotation wins whenever it is present, even with another value.
    let value = annotations
        .and_then(|a| a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS))
        .or_else(|| annotations.and_then(|a| a.get(ANNOTATION_TOPOLOGY_MODE)));
    matches!(value.map(String::as_str), Some("Auto" | "auto"))
}

/// Whether the Service asks for topology-aware hints (`topology-mode: Auto`, or the deprecated
/// `topology-aware-hints: Auto`): the `topology="Auto"` label of the changes metric.
pub fn topology_auto(svc: &Service) -> bool {
    topology_annotation_enabled(svc)
}

pub(crate) fn hint_mode(svc: &Service) -> HintMode {
    if topology_annotation_enabled(svc) {
        return HintMode::Auto;
    }
    match svc.spec.as_ref().and_then(|s| s.traffic_distribution.as_deref()) {
        Some("PreferClose" | "PreferSameZone") => HintMode::SameZone,
        Some("PreferSameNode") => HintMode::SameNode,
        _ => HintMode::Remove,
    }
}

fn is_ready(ep: &Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready) == Some(true)
}

/// The hints a ready endpoint should carry under `mode`.
fn wanted(ep: &Endpoint, mode: HintMode) -> Option<EndpointHints> {
    let zone = ep
        .zone
        .as_ref()
        .filter(|_| matches!(mode, HintMode::SameZone | HintMode::SameNode));
    let node = ep.node_name.as_ref().filter(|_| mode == HintMode::SameNode);
    if zone.is_none() && node.is_none() {
        return None;
    }
    Some(EndpointHints {
        for_zones: zone.map(|z| vec![ForZone { name: z.clone() }]),
        for_nodes: node.map(|n| vec![ForNode { name: n.clone() }]),
    })
}

/// Whether an otherwise unchanged slice must be rewritten for its hints: under `Remove`, any
/// hint at all; otherwise a ready endpoint whose hint is missing or wrong. Not-ready
/// endpoints' hints are left alone (consumers ignore them).
pub(crate) fn needs_update(slice: &EndpointSlice, mode: HintMode) -> bool {
    slice.endpoints.iter().any(|ep| match mode {
        HintMode::Remove | HintMode::Auto => ep.hints.is_some(),
        _ => is_ready(ep) && ep.hints != wanted(ep, mode),
    })
}

/// Sets the hints of a slice that is being written anyway.
pub(crate) fn apply(slice: &mut EndpointSlice, mode: HintMode) {
    for ep in &mut slice.endpoints {
        match mode {
            HintMode::Remove | HintMode::Auto => ep.hints = None,
            _ if is_ready(ep) => ep.hints = wanted(ep, mode),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::*;

    #[test]
    fn modes() {
        let cases: Vec<(&str, Service, HintMode)> = vec![
            ("none", svc("s").build(), HintMode::Remove),
            (
                "prefer close",
                svc("s").traffic_distribution("PreferClose").build(),
                HintMode::SameZone,
            ),
            (
                "same zone",
                svc("s").traffic_distribution("PreferSameZone").build(),
                HintMode::SameZone,
            ),
            (
                "same node",
                svc("s").traffic_distribution("PreferSameNode").build(),
                HintMode::SameNode,
            ),
            (
                "unknown",
                svc("s").traffic_distribution("Bogus").build(),
                HintMode::Remove,
            ),
            (
                "topology-mode Auto overrides",
                svc("s")
                    .traffic_distribution("PreferClose")
                    .annotations(&[(ANNOTATION_TOPOLOGY_MODE, "Auto")])
                    .build(),
                HintMode::Auto,
            ),
            (
                "deprecated annotation wins even when disabled",
                svc("s")
                    .traffic_distribution("PreferClose")
                    .annotations(&[
                        (ANNOTATION_TOPOLOGY_AWARE_HINTS, "Disabled"),
                        (ANNOTATION_TOPOLOGY_MODE, "auto"),
                    ])
                    .build(),
                HintMode::SameZone,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(hint_mode(&s), want, "{name}");
        }
    }

    #[test]
    fn hints_for_ready_endpoints_only() {
        let s = svc("s").build();
        let mut sl = slice("a", &s, "m").build();
        let mut ready = ep("p1", "10.0.0.1", true);
        ready.zone = Some("z1".into());
        let mut not_ready = ep("p2", "10.0.0.2", false);
        not_ready.zone = Some("z1".into());
        let no_zone = ep("p3", "10.0.0.3", true);
        sl.endpoints = vec![ready, not_ready, no_zone];
        assert!(needs_update(&sl, HintMode::SameZone));
        apply(&mut sl, HintMode::SameZone);
        assert!(!needs_update(&sl, HintMode::SameZone));
        assert_eq!(
            sl.endpoints[0]
                .hints
                .as_ref()
                .unwrap()
                .for_zones
                .as_ref()
                .unwrap()[0]
                .name,
            "z1"
        );
        assert_eq!(sl.endpoints[1].hints, None);
        assert_eq!(sl.endpoints[2].hints, None, "ready without zone: no hint");
        assert!(needs_update(&sl, HintMode::SameNode));
        apply(&mut sl, HintMode::SameNode);
        assert_eq!(
            sl.endpoints[2]
                .hints
                .as_ref()
                .unwrap()
                .for_nodes
                .as_ref()
                .unwrap()[0]
                .name,
            "node-1"
        );
        assert!(needs_update(&sl, HintMode::Remove));
        apply(&mut sl, HintMode::Remove);
        assert!(sl.endpoints.iter().all(|e| e.hints.is_none()));
    }
}
