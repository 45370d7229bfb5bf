"""values.schema.json: every shipped values file satisfies it, and Helm itself (install,
template, lint all validate) refuses values it rejects."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest

from chartlib import CHART_DIR, ci_values_files, default_values, load_values, render, values_schema

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("replicas-as-text", {"replicaCount": "two"}, "/replicaCount"),
    ("zero-replicas", {"replicaCount": 0}, "/replicaCount"),
    ("failure-policy", {"webhook": {"validating": {"failurePolicy": "Maybe"}}}, "/webhook/validating/failurePolicy"),
    ("timeout-over-30", {"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    ("unknown-controller", {"controllers": {"enabled": ["kube-proxy"]}}, "/controllers/enabled"),
    ("mirroring-misspelt", {"controllers": {"enabled": ["endpointslice", "endpointmirroring"]}}, "/controllers/enabled"),
    ("mirroring-twice", {"controllers": {"enabled": ["endpointslicemirroring", "endpointslicemirroring"]}}, "/controllers/enabled"),
    ("mirroring-workers-zero", {"controllers": {"mirroring": {"concurrentServiceEndpointSyncs": 0}}}, "/controllers/mirroring/concurrentServiceEndpointSyncs"),
    ("mirroring-workers-over-50", {"controllers": {"mirroring": {"concurrentServiceEndpointSyncs": 51}}}, "/controllers/mirroring/concurrentServiceEndpointSyncs"),
    ("mirroring-subset-zero", {"controllers": {"mirroring": {"maxEndpointsPerSubset": 0}}}, "/controllers/mirroring/maxEndpointsPerSubset"),
    ("mirroring-subset-over-1000", {"controllers": {"mirroring": {"maxEndpointsPerSubset": 1001}}}, "/controllers/mirroring/maxEndpointsPerSubset"),
    ("mirroring-subset-text", {"controllers": {"mirroring": {"maxEndpointsPerSubset": "1000"}}}, "/controllers/mirroring/maxEndpointsPerSubset"),
    ("mirroring-batch-bare-number", {"controllers": {"mirroring": {"endpointSliceUpdatesBatchPeriod": "5"}}}, "/controllers/mirroring/endpointSliceUpdatesBatchPeriod"),
    ("mirroring-batch-words", {"controllers": {"mirroring": {"endpointSliceUpdatesBatchPeriod": "1 second"}}}, "/controllers/mirroring/endpointSliceUpdatesBatchPeriod"),
    ("mirroring-managed-by-empty", {"controllers": {"mirroring": {"managedBy": ""}}}, "/controllers/mirroring/managedBy"),
    ("mirroring-adopt-from-too-long", {"controllers": {"mirroring": {"adoptFrom": "x" * 64}}}, "/controllers/mirroring/adoptFrom"),
    ("mirroring-typo", {"controllers": {"mirroring": {"maxEndpointsPerSlice": 100}}}, "maxEndpointsPerSlice"),
    ("three-ranges", {"allocation": {"serviceClusterIPRanges": ["10.0.0.0/16", "fd00::/108", "10.1.0.0/16"]}}, "/allocation/serviceClusterIPRanges"),
    ("not-a-cidr", {"allocation": {"serviceClusterIPRanges": ["10.96.0.0"]}}, "/allocation/serviceClusterIPRanges"),
    ("bad-duration", {"leaderElection": {"leaseDuration": "15 seconds"}}, "/leaderElection/leaseDuration"),
    ("log-format", {"logging": {"format": "xml"}}, "/logging/format"),
    ("typo-top-level", {"replicas": 2}, "replicas"),
    ("typo-nested", {"webhook": {"failurePolicy": "Fail"}}, "failurePolicy"),
    ("anti-affinity", {"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
    ("issuer-without-name", {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}, "/certManager/issuerRef"),
    ("port-range", {"metrics": {"port": 70000}}, "/metrics/port"),
    ("digest", {"image": {"digest": "latest"}}, "/image/digest"),
    ("https-not-boolean", {"metrics": {"https": {"enabled": "yes"}}}, "/metrics/https/enabled"),
    ("pod-monitor-interval", {"metrics": {"podMonitor": {"interval": "thirty seconds"}}}, "/metrics/podMonitor/interval"),
    ("pod-monitor-typo", {"metrics": {"podMonitor": {"endpoints": []}}}, "endpoints"),
    ("alert-ratio-over-1", {"metrics": {"prometheusRule": {"alerts": {"webhookErrors": {"ratio": 5}}}}}, "/metrics/prometheusRule/alerts/webhookErrors/ratio"),
    ("alert-for", {"metrics": {"prometheusRule": {"alerts": {"noLeader": {"for": "1 minute"}}}}}, "/metrics/prometheusRule/alerts/noLeader/for"),
    ("unknown-alert", {"metrics": {"prometheusRule": {"alerts": {"diskFull": {"enabled": True}}}}}, "diskFull"),
    ("rule-without-expr", {"metrics": {"prometheusRule": {"additionalRules": [{"alert": "X"}]}}}, "/metrics/prometheusRule/additionalRules/0"),
    ("dashboard-namespace", {"grafana": {"dashboard": {"namespace": "Monitoring"}}}, "/grafana/dashboard/namespace"),
    ("dashboard-label-number", {"grafana": {"dashboard": {"labels": {"grafana_dashboard": 1}}}}, "/grafana/dashboard/labels/grafana_dashboard"),
]


def _merged(overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults coalesced with overrides, as Helm does before validating."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(default_values(), overrides)


def test_schema_is_valid_draft_7() -> None:
    jsonschema.Draft7Validator.check_schema(values_schema())


@pytest.mark.parametrize("case", [None, *ci_values_files()], ids=lambda c: "values.yaml" if c is None else c.name)
def test_shipped_values_satisfy_the_schema(case: Path | None) -> None:
    values = default_values() if case is None else _merged(load_values(case))
    jsonschema.Draft7Validator(values_schema()).validate(values)
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(None if case is None else load_values(case))


def test_every_default_key_is_described() -> None:
    """No value without a schema entry (additionalProperties is false on every fixed object)."""

    def walk(values: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        props = schema.get("properties")
        if props is None:
            return
        assert schema.get("additionalProperties") is False, path
        for key, value in values.items():
            assert key in props, f"{path}/{key} is not in values.schema.json"
            if isinstance(value, dict):
                walk(value, props[key], f"{path}/{key}")

    walk(default_values(), values_schema(), "")


@pytest.mark.parametrize("name,values,where", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_helm_rejects_bad_values(name: str, values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
    assert where in str(err.value), str(err.value)
    # Rendering (helm template / install) refuses them too, before any template runs.
    with pytest.raises(helm.HelmValuesError):
        render(values)
    # And the schema says the same outside Helm.
    assert not jsonschema.Draft7Validator(values_schema()).is_valid(_merged(values))


def test_good_overrides_are_accepted() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(
            {
                "replicaCount": 5,
                "allocation": {"serviceClusterIPRanges": ["fd00:10:96::/108"], "repairInterval": "1m30s"},
                "controllers": {"enabled": [], "endpointUpdatesBatchPeriod": "0"},
                "certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "Issuer", "group": "cert-manager.io"}},
                "podDisruptionBudget": {"minAvailable": "50%"},
                "global": {"imageRegistry": "mirror.example"},
            }
        )
        chart.validate_schema(
            {
                "controllers": {
                    "enabled": ["endpointslice", "endpoint", "endpointslicemirroring"],
                    "mirroring": {
                        "concurrentServiceEndpointSyncs": 50,
                        "maxEndpointsPerSubset": 1,
                        "endpointSliceUpdatesBatchPeriod": "0s",
                        "managedBy": "mirror.example.com",
                        "adoptFrom": "endpointslicemirroring-controller.k8s.io",
                    },
                }
            }
        )
        for period in ("0", "500ms", "1m30s", "1.5s"):
            chart.validate_schema({"controllers": {"mirroring": {"endpointSliceUpdatesBatchPeriod": period}}})


def test_every_value_is_documented_in_the_chart_readme() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    values = default_values()
    sections = ("image", "controllers", "allocation", "webhook", "certManager", "leaderElection",
                "logging", "metrics", "serviceAccount", "rbac", "podDisruptionBudget")
    missing = [k for k in values if f"`{k}" not in readme]
    for section in sections:
        for key in values[section]:
            if key not in readme:
                missing.append(f"{section}.{key}")
    assert missing == []
