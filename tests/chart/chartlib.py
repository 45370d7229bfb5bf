"""Helpers for the chart tests: rendering through the real Helm engine (helm-python-sdk, which
embeds Helm 4's Go SDK as a shared library; no helm binary, no network) and a small Kubernetes
REST client for the install tests."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "portico"
CI_DIR = CHART_DIR / "ci"
CRD_FILE = CHART_DIR / "files" / "crds" / "rangeallocations.yaml"

RELEASE = "portico"
NAMESPACE = "portico-system"


def ci_values_files() -> list[Path]:
    return sorted(CI_DIR.glob("*.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def chart_metadata() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def values_schema() -> dict[str, Any]:
    return json.loads((CHART_DIR / "values.schema.json").read_text())


@dataclass
class Rendered:
    """The manifests of one render, parsed."""

    files: dict[str, str]
    docs: list[dict[str, Any]]
    namespace: str
    release: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        assert len(found) <= 1, f"expected at most one {kind}, found {len(found)}"
        return found[0] if found else None

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def args(self) -> list[str]:
        return self.container["args"]

    @property
    def flags(self) -> dict[str, str]:
        return parse_flags(self.args)


def parse_flags(args: list[str]) -> dict[str, str]:
    """`run --a=1 --b=x` as {"a": "1", "b": "x"}; every flag must be `--name=value`, once."""
    assert args[0] == "run", args
    flags: dict[str, str] = {}
    for arg in args[1:]:
        assert arg.startswith("--") and "=" in arg, f"not --flag=value: {arg!r}"
        name, value = arg[2:].split("=", 1)
        assert name not in flags, f"--{name} given twice"
        flags[name] = value
    return flags


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """`helm template` through the real engine (the chart's schema is enforced here too)."""
    with helm.Chart.load(CHART_DIR) as chart:
        files = chart.render(values, name=release, namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                docs.append(doc)
    return Rendered(files=files, docs=docs, namespace=namespace, release=release)


def rbac_rules(role: dict[str, Any]) -> set[tuple[str, str, str, str | None]]:
    """A Role's or ClusterRole's rules flattened to (apiGroup, resource, verb, resourceName)."""
    out: set[tuple[str, str, str, str | None]] = set()
    for rule in role.get("rules") or []:
        names = rule.get("resourceNames") or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in names:
                        out.add((group, resource, verb, name))
    return out


# --- a small Kubernetes REST client for the install tests ------------------------------------


class KubeError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def _retry_after(body: str) -> float:
    """`details.retryAfterSeconds` of a Status body, 1 s when it has none."""
    try:
        return float(json.loads(body)["details"]["retryAfterSeconds"])
    except (ValueError, KeyError, TypeError):
        return 1.0


class Kube:
    """Just enough of a client: JSON requests with the kubeconfig's current context (bearer
    token or client certificate; CA file or data)."""

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        config = yaml.safe_load(kubeconfig.read_text())
        context_name = config["current-context"]
        context = _named(config["contexts"], context_name)["context"]
        cluster = _named(config["clusters"], context["cluster"])["cluster"]
        user = _named(config["users"], context["user"])["user"]
        self.server = cluster["server"].rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="portico-chart-test-")
        tls = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        elif "certificate-authority" in cluster:
            tls.load_verify_locations(cafile=self._path(cluster["certificate-authority"]))
        elif "certificate-authority-data" in cluster:
            tls.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        cert = self._file(user, "client-certificate")
        key = self._file(user, "client-key")
        if cert and key:
            tls.load_cert_chain(cert, key)
        self._headers = {"Accept": "application/json"}
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(self._path(user["tokenFile"])).read_text().strip()
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls))
        # Impersonation as kubeconfig states it (`as`, `as-groups`), as kube-rs and client-go do.
        self._tls = tls
        self.impersonate_user: str | None = user.get("as")
        self.impersonate_groups: list[str] = list(user.get("as-groups") or [])

    def _path(self, p: str) -> str:
        path = Path(p)
        return str(path if path.is_absolute() else self.kubeconfig.parent / path)

    def _file(self, user: dict[str, Any], key: str) -> str | None:
        if key in user:
            return self._path(user[key])
        if f"{key}-data" in user:
            out = Path(self._tmp.name) / key
            out.write_bytes(base64.b64decode(user[f"{key}-data"]))
            return str(out)
        return None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call. A 429 is retried after the delay the apiserver asks for, as client-go
        does (up to 10 times): from 1.31 a resource whose watch cache is still filling, such as
        a CRD just created, answers "storage is (re)initializing" for a moment."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(10):
            try:
                return self._request_once(method, path, data, content_type)
            except KubeError as e:
                if e.status != 429 or attempt == 9:
                    raise
                time.sleep(_retry_after(e.body))
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, data: bytes | None, content_type: str) -> Any:
        if self.impersonate_user:
            return self._request_impersonating(method, path, data, content_type)
        req = urllib.request.Request(self.server + path, data=data, method=method)
        for k, v in self._headers.items():
            req.add_header(k, v)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with self._opener.open(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise KubeError(e.code, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def _request_impersonating(self, method: str, path: str, data: bytes | None, content_type: str) -> Any:
        """http.client, because Impersonate-Group is one header per group (urllib keeps one)."""
        url = urllib.parse.urlsplit(self.server)
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=self._tls, timeout=30)
        try:
            conn.putrequest(method, path)
            for k, v in self._headers.items():
                conn.putheader(k, v)
            conn.putheader("Impersonate-User", self.impersonate_user or "")
            for group in self.impersonate_groups:
                conn.putheader("Impersonate-Group", group)
            if data is not None:
                conn.putheader("Content-Type", content_type)
            conn.putheader("Content-Length", str(len(data or b"")))
            conn.endheaders(data)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise KubeError(resp.status, raw.decode(errors="replace"))
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_opt(self, path: str) -> Any:
        try:
            return self.get(path)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def version(self) -> dict[str, Any]:
        return self.get("/version")

    def can(
        self,
        user: str,
        groups: list[str],
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str = "",
        name: str = "",
        subresource: str = "",
    ) -> bool:
        """What the apiserver's authorizer (RBAC) says, via a SubjectAccessReview."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": groups,
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                    "namespace": namespace,
                    "name": name,
                },
            },
        }
        out = self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        return bool(out["status"].get("allowed"))


def _named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for item in items:
        if item["name"] == name:
            return item
    raise KeyError(name)


def kube_version_at_least(version: dict[str, Any], major: int, minor: int) -> bool:
    """From /version's gitVersion (`v1.24.0-portico`); major/minor may be empty in custom builds."""
    m = re.match(r"v?(\d+)\.(\d+)", version["gitVersion"])
    assert m, version
    return (int(m.group(1)), int(m.group(2))) >= (major, minor)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


# --- metric names in PromQL and in a /metrics scrape ------------------------------------------

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|=)\s*("(?:[^"\\]|\\.)*")')
_PROMQL_TOKEN = re.compile(r"\$\{?\w+\}?|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[A-Za-z]*|[A-Za-z_:][A-Za-z0-9_:]*|\S")
# Words that are PromQL syntax, not series: binary operators and modifiers, and the aggregation
# operators (which may be followed by `by (...)` rather than by their parenthesis).
_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "inf", "nan", "atan2",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
}
# Grafana's templating function: only its first argument is a series selector.
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana `label_values(selector, label)`) reads:
    bare names of vector selectors, and `__name__` matchers (`=`, or `=~` with a plain
    alternation). Strings, label matchers, ranges, grouping clauses, functions and keywords are
    not names. A selector without a name raises, so nothing escapes the check unseen."""
    m = _LABEL_VALUES.match(expr)
    if m:
        expr = m.group("selector")
    names: set[str] = set()
    for nm in _NAME_MATCHER.finditer(expr):
        value = json.loads(nm.group(2))
        alternatives = [value] if nm.group(1) == "=" else value.split("|")
        for alt in alternatives:
            assert _IDENT.fullmatch(alt), f"__name__ matcher {value!r} in {expr!r}: only plain alternations are checked"
            names.add(alt)
    text = _PROMQL_STRING.sub('""', expr)
    text = re.sub(r"#[^\n]*", "", text)
    for braces in re.finditer(r"\{[^{}]*\}", text):
        before = text[: braces.start()].rstrip()
        if not (before and re.match(r"[A-Za-z0-9_:]", before[-1])) and "__name__" not in braces.group(0):
            raise AssertionError(f"a selector without a metric name in {expr!r}")
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r" \1 ", text)
    tokens = _PROMQL_TOKEN.findall(text)
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if not _IDENT.fullmatch(tok) or tok in _PROMQL_WORDS or nxt == "(":
            continue
        names.add(tok)
    return names


def exposition_names(text: str) -> set[str]:
    """What a Prometheus text exposition shows: every family named by a HELP or TYPE line, every
    sample's name, and for histograms and summaries their `_bucket`/`_sum`/`_count` series."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split()
            names.add(parts[2])
            if line.startswith("# TYPE ") and len(parts) > 3 and parts[3] in ("histogram", "summary"):
                names.update(parts[2] + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            m = _IDENT.match(line)
            if m:
                names.add(m.group(0))
    return names


def rule_expressions(rendered: Rendered) -> dict[str, str]:
    """`alert or record name: expr` of every rule of the rendered PrometheusRule."""
    out: dict[str, str] = {}
    for group in rendered.one("PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            out[rule.get("alert") or rule["record"]] = rule["expr"]
    return out


def dashboard_expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every query of a Grafana dashboard: the panels' targets (`expr`), by panel title and refId,
    and the templating variables' queries."""
    out: dict[str, str] = {}

    def panels(items: list[dict[str, Any]]) -> None:
        for p in items:
            for t in p.get("targets") or []:
                if t.get("expr"):
                    out[f"{p['title']} / {t.get('refId', '?')}"] = t["expr"]
            panels(p.get("panels") or [])

    panels(dashboard.get("panels") or [])
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if query:
            out[f"variable {var['name']}"] = query
    return out


def queried_metric_names(rendered: Rendered) -> dict[str, set[str]]:
    """Every metric name the rendered PrometheusRule and Grafana dashboard ConfigMap query, with
    where ("rule X", "dashboard: panel / refId", "dashboard: variable v"). Every query must name
    at least one metric, so a query the extraction cannot read fails instead of passing."""
    exprs = {f"rule {k}": v for k, v in rule_expressions(rendered).items()}
    (configmap,) = [d for d in rendered.all("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    dashboard = json.loads(configmap["data"]["portico.json"])
    exprs.update({f"dashboard: {k}": v for k, v in dashboard_expressions(dashboard).items()})
    where: dict[str, set[str]] = {}
    for place, expr in exprs.items():
        names = promql_metric_names(expr)
        assert names, f"{place}: no metric name found in {expr!r}"
        for name in names:
            where.setdefault(name, set()).add(place)
    return where


def missing_metrics(where: dict[str, set[str]], scrape: str) -> dict[str, list[str]]:
    """The names of `where` that a /metrics scrape does not show, with where they are queried."""
    exported = exposition_names(scrape)
    return {name: sorted(places) for name, places in sorted(where.items()) if name not in exported}
