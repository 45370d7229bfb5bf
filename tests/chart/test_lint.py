"""`helm lint --strict` through the real Helm engine, for the defaults and every ci/ values file,
against the oldest and a current Kubernetes version."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest

from chartlib import CHART_DIR, NAMESPACE, ci_values_files, load_values, render

KUBE_VERSIONS = ["v1.24.0", "v1.33.0"]
# Informational findings that are fine: the chart has no icon to point at.
ALLOWED_INFO = {"icon is recommended"}

CASES = [None, *ci_values_files()]


def _id(case: Path | None) -> str:
    return "defaults" if case is None else case.name


def test_the_engine_is_helm_4() -> None:
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()


def test_ci_values_files_exist() -> None:
    names = {p.name for p in ci_values_files()}
    for expected in (
        "default-values.yaml",
        "certmanager-values.yaml",
        "ha-values.yaml",
        "dualstack-ignore-values.yaml",
        "adopt-values.yaml",
        "webhook-disabled-values.yaml",
        "monitoring-values.yaml",
        "network-values.yaml",
        "hostnetwork-values.yaml",
        "mirroring-values.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_lint_strict_is_clean(case: Path | None, kube_version: str) -> None:
    values = None if case is None else load_values(case)
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=kube_version)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    findings = [m for m in report["messages"] if m["severity"] >= 2 or m["error"] not in ALLOWED_INFO]
    assert findings == []


def test_lint_reports_values_the_schema_rejects() -> None:
    report = helm.lint(CHART_DIR, {"replicaCount": "two"}, strict=True)
    assert report["errors"], report
    assert any("/replicaCount" in e for e in report["errors"]), report["errors"]


def test_packaged_chart_renders_the_same(tmp_path: Path) -> None:
    """`helm package` keeps everything the templates read (files/crds/ in particular)."""
    archive = helm.package(CHART_DIR, destination=tmp_path)
    assert Path(archive).name == "portico-0.1.0.tgz"
    with helm.Chart.load(archive) as packaged:
        files = packaged.render(None, name="portico", namespace=NAMESPACE, is_install=True)
    assert files == render().files
