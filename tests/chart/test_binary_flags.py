"""The chart and the binary agree: every flag the Deployment passes is one `portico run` knows,
for the default values and every ci/ values file."""

from __future__ import annotations

import re
import subprocess

import pytest

from chartlib import ci_values_files, load_values, render
from conftest import _portico_binary


@pytest.fixture(scope="module")
def run_help() -> str:
    binary = _portico_binary()
    if binary is None:
        pytest.skip("no built portico binary (cargo build) to check the chart's flags against")
    out = subprocess.run([str(binary), "run", "--help"], capture_output=True, text=True, check=True)
    return out.stdout


@pytest.mark.parametrize("values_file", [None, *ci_values_files()], ids=lambda p: p.name if p else "default")
def test_every_chart_flag_is_known_to_portico_run(run_help, values_file):
    known = set(re.findall(r"--[a-z0-9-]+", run_help))
    rendered = render(load_values(values_file) if values_file else {})
    container = rendered.deployment["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container.get("args", []) if a.startswith("--")]
    assert args, "the chart passes flags"
    unknown = sorted({a.split("=", 1)[0] for a in args} - known)
    assert not unknown, f"flags the binary does not know: {unknown}"


def test_chart_crd_is_what_portico_crds_prints():
    import yaml

    from chartlib import CRD_FILE

    binary = _portico_binary()
    if binary is None:
        pytest.skip("no built portico binary (cargo build) to compare the CRD with")
    printed = subprocess.run([str(binary), "crds"], capture_output=True, text=True, check=True).stdout
    shipped = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    assert [d for d in yaml.safe_load_all(printed) if d] == shipped
