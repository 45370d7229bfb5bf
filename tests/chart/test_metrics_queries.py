"""The metric names in the chart's PrometheusRule and Grafana dashboard, offline: how they are
read from PromQL, that a typo'd one is caught, and that every query selects one namespace.

That each of them is exported by a running Portico is checked against its /metrics by
test_rbac_runtime.py (test_every_metric_queried_is_exported), with these helpers (chartlib)."""

from __future__ import annotations

import json
import re

import pytest

from chartlib import (
    dashboard_expressions,
    exposition_names,
    missing_metrics,
    promql_metric_names,
    queried_metric_names,
    render,
    rule_expressions,
)

MONITORING = {"metrics": {"prometheusRule": {"enabled": True}}, "grafana": {"dashboard": {"enabled": True}}}

SAMPLE_SCRAPE = """\
# HELP portico_webhook_request_duration_seconds Time from a review's body being received to its answer being ready.
# TYPE portico_webhook_request_duration_seconds histogram
portico_webhook_request_duration_seconds_bucket{webhook="validate",le="0.001"} 1
portico_webhook_request_duration_seconds_sum{webhook="validate"} 0.0003
portico_webhook_request_duration_seconds_count{webhook="validate"} 1
# HELP portico_is_leader Whether this replica is the elected leader (1) or not (0)
# TYPE portico_is_leader gauge
portico_is_leader 1
"""


def test_promql_names_are_found_and_nothing_else() -> None:
    cases = {
        'max by (namespace) (leader_election_master_status{namespace="ns",name="portico"}) == 0': {"leader_election_master_status"},
        'histogram_quantile(0.99, sum by (webhook, le) (rate(a_seconds_bucket{x="portico_nope"}[$__rate_interval])))': {"a_seconds_bucket"},
        'sum without (state) (b{state="free"}) / on (kind) group_left (band) c offset 15m > 0.1': {"b", "c"},
        '(d unless d offset 15m) or label_replace(sum(rate(e[5m])), "kind", "f_total", "", "") > bool 1': {"d", "e"},
        "min(g) - time() < 7 * 86400 and topk(3, h) > 1e3": {"g", "h"},
        'label_values({__name__=~"i_total|j"}, namespace)': {"i_total", "j"},
        "label_values(k, pod)": {"k"},
    }
    for expr, want in cases.items():
        assert promql_metric_names(expr) == want, expr
    with pytest.raises(AssertionError, match="without a metric name"):
        promql_metric_names('sum(rate({job="portico"}[5m]))')


def test_exported_names_include_histogram_series() -> None:
    names = exposition_names(SAMPLE_SCRAPE)
    assert {
        "portico_is_leader",
        "portico_webhook_request_duration_seconds",
        "portico_webhook_request_duration_seconds_bucket",
        "portico_webhook_request_duration_seconds_count",
    } <= names


def test_every_query_names_a_metric() -> None:
    where = queried_metric_names(render(MONITORING))
    assert len(where) >= 20, sorted(where)
    assert "rule PorticoNoLeader" in where["leader_election_master_status"]
    assert "dashboard: variable namespace" in where["portico_is_leader"]


def test_a_typo_in_a_rule_or_the_dashboard_is_caught() -> None:
    """What the runtime test compares, on a fixed scrape: a real name passes, a typo'd one (in a
    rule added through additionalRules, as an edit of the chart's would) is reported where it is
    used."""
    values = json.loads(json.dumps(MONITORING))
    values["metrics"]["prometheusRule"]["additionalRules"] = [
        {"alert": "Typo", "expr": 'portico_is_leder{namespace="portico-system"} == 0'},
        {"alert": "Fine", "expr": "histogram_quantile(0.9, rate(portico_webhook_request_duration_seconds_bucket[5m])) > 1"},
    ]
    gone = missing_metrics(queried_metric_names(render(values)), SAMPLE_SCRAPE)
    assert gone["portico_is_leder"] == ["rule Typo"]
    assert "portico_is_leader" not in gone  # a gauge's sample
    assert "portico_webhook_request_duration_seconds_bucket" not in gone  # a histogram's series


def test_rendered_queries_select_one_namespace() -> None:
    """workqueue_depth, endpoint_slice_controller_* and leader_election_master_status are also
    kube-controller-manager's names: every selector of the rule names the release namespace, and
    every panel query the dashboard's `$namespace`."""
    out = render(MONITORING, namespace="edge")
    (configmap,) = out.all("ConfigMap")
    dashboard = json.loads(configmap["data"]["portico.json"])
    panels = {k: v for k, v in dashboard_expressions(dashboard).items() if not k.startswith("variable ")}
    for exprs, matcher in ((rule_expressions(out), 'namespace="edge"'), (panels, 'namespace="$namespace"')):
        for place, expr in exprs.items():
            for name in promql_metric_names(expr):
                selectors = re.findall(rf"\b{re.escape(name)}(\{{[^}}]*\}}|)", expr)
                assert selectors, (place, name)
                for sel in selectors:
                    assert matcher in sel.replace(" ", ""), f"{place}: {name}{sel} does not select {matcher}"
