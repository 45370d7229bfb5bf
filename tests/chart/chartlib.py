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
