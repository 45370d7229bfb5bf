"""Portico run as the chart's ServiceAccount, against the test apiserver with RBAC on.

The chart is installed with its defaults; then `portico run`, out of cluster, with the chart's
own Deployment args (only the listen addresses, the certificate directory and the managed-by
label changed) and a kubeconfig that impersonates the ServiceAccount. It must do all of its
self-managed setup (TLS Secret, caBundle, Lease), serve its webhook and run its controllers
without one refusal; and the same identity is refused what Portico never does.

`portico dev` (the harness) runs its own Portico too: ours writes its slices with its own
`--managed-by` value, so the slices the test waits for can only be ours; and it allocates from
the ranges the harness uses (the RangeAllocations are shared, cluster-wide: with the chart's
default 10.96.0.0/12, whichever Portico came second would refuse every Service)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import pytest
import yaml

from chartlib import CHART_DIR, REPO, Kube, KubeError, render

RELEASE = "rbac-test"
NAMESPACE = "portico-rbac-test"
FULLNAME = "rbac-test-portico"
APP_NS = "portico-rbac-app"
POD_NAME = "rbac-test"
MANAGED_BY = "endpointslice-controller.portico-rbac-test"
TLS = f"{FULLNAME}-webhook-tls"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rangeallocations.portico.dev"
VWC = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{FULLNAME}"
MWC = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{FULLNAME}"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"]
TIMEOUT = 120
READY_TIMEOUT = 60
POD_IP = "10.244.77.7"
ALLOCATIONS = "/apis/portico.dev/v1alpha1/rangeallocations"
# `portico dev`'s service range (src/dev.rs DEV_SERVICE_RANGE), when no allocation says otherwise.
HARNESS_SERVICE_RANGE = os.environ.get("PORTICO_TEST_SERVICE_RANGE", "10.96.0.0/16")


def _config(kubeconfig: Path) -> helm.Config:
    return helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE)


def _install(kubeconfig: Path) -> dict[str, Any]:
    with _config(kubeconfig) as cfg:
        return cfg.install(CHART_DIR, RELEASE, None, create_namespace=True, wait="hookOnly", timeout=TIMEOUT)


def _uninstall(kubeconfig: Path) -> None:
    with _config(kubeconfig) as cfg:
        cfg.uninstall(RELEASE, ignore_not_found=True, wait="hookOnly", timeout=TIMEOUT)


def _delete_namespace(kube: Kube, name: str) -> None:
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{name}")
    except KubeError as e:
        if e.status != 404:
            raise


def _adopt_crd(kube: Kube) -> None:
    """As test_install.py: Helm's adoption labels on a CRD created outside this release."""
    if kube.get_opt(CRD_PATH) is None:
        return
    kube.request(
        "PATCH",
        CRD_PATH,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE},
            }
        },
        content_type="application/merge-patch+json",
    )


def _ignore_failures(kube: Kube) -> None:
    """Nothing serves the chart's webhook Service here (no pods, no kube-proxy): failurePolicy
    Ignore, so the rest of the apiserver (and the other tests) is not blocked by it."""
    for path in (VWC, MWC):
        hooks = kube.get(path)["webhooks"]
        patch = [{"op": "replace", "path": f"/webhooks/{i}/failurePolicy", "value": "Ignore"} for i in range(len(hooks))]
        kube.request("PATCH", path, patch, content_type="application/json-patch+json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, probe, timeout: float = 60, log: "Portico | None" = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            extra = f"\nPortico's output:\n{log.output()[-4000:]}" if log else ""
            pytest.fail(f"timed out waiting for {what}{extra}", pytrace=False)
        time.sleep(0.3)


@pytest.fixture(scope="module")
def installed(kubeconfig: Path, kube: Kube) -> Iterator[None]:
    _uninstall(kubeconfig)  # a leftover from an interrupted run
    _adopt_crd(kube)
    try:
        try:
            out = _install(kubeconfig)
        except helm.errors.HelmReleaseError as e:
            # `portico dev` installs the CRD itself, possibly only after the check above.
            if "cannot be imported" not in str(e):
                raise
            _adopt_crd(kube)
            out = _install(kubeconfig)
        _ignore_failures(kube)
        assert out["status"] == "deployed"
        yield
    finally:
        _uninstall(kubeconfig)
        _delete_namespace(kube, NAMESPACE)  # also the TLS Secret and Lease Portico made


def _impersonating_kubeconfig(kubeconfig: Path, out: Path) -> Path:
    config = yaml.safe_load(kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]
    user = next(u for u in config["users"] if u["name"] == context["user"])["user"]
    # Relative file paths would now resolve against the copy's directory.
    for key in ("certificate-authority",):
        if key in cluster and not Path(cluster[key]).is_absolute():
            cluster[key] = str(kubeconfig.parent / cluster[key])
    for key in ("client-certificate", "client-key", "tokenFile"):
        if key in user and not Path(user[key]).is_absolute():
            user[key] = str(kubeconfig.parent / user[key])
    user["as"] = SA_USER
    user["as-groups"] = list(SA_GROUPS)
    out.write_text(yaml.safe_dump(config))
    return out


@dataclass
class Portico:
    proc: subprocess.Popen
    log_path: Path
    metrics: int
    webhook: int
    kubeconfig: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return -9
        return self.proc.returncode


def _readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200 and r.read().decode().strip() == "ok"
    except OSError:
        return False


@pytest.fixture(scope="module")
def portico(installed: None, kubeconfig: Path, kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portico]:
    tmp = tmp_path_factory.mktemp("rbac-runtime")
    sa_kubeconfig = _impersonating_kubeconfig(kubeconfig, tmp / "kubeconfig")
    args = list(render(release=RELEASE, namespace=NAMESPACE).args)
    if args and args[0] == "run":
        args = args[1:]
    metrics, webhook = _free_port(), _free_port()
    ranges = {}
    for flag, name, default in (
        ("service-cluster-ip-range", "clusterip-ipv4", HARNESS_SERVICE_RANGE),
        ("service-node-port-range", "nodeports", None),
    ):
        existing = kube.get_opt(f"{ALLOCATIONS}/{name}")
        value = existing["spec"]["range"] if existing else default
        if value:
            ranges[flag] = value
    overrides = {
        **ranges,
        "metrics-bind-address": f"127.0.0.1:{metrics}",
        "webhook-bind-address": f"127.0.0.1:{webhook}",
        "webhook-cert-dir": str(tmp / "certs"),
        "leader-elect-resource-namespace": NAMESPACE,
        "managed-by": MANAGED_BY,  # see the module docstring
    }
    args = [a for a in args if a[2:].split("=", 1)[0] not in overrides]
    args += [f"--{k}={v}" for k, v in overrides.items()]
    binary = Path(os.environ.get("PORTICO_BIN") or REPO / "target" / "debug" / "portico")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTICO_") and k != "KUBECONFIG"}
    env.update(KUBECONFIG=str(sa_kubeconfig), POD_NAMESPACE=NAMESPACE, POD_NAME=POD_NAME)
    log_path = tmp / "portico.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(binary), "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
    p = Portico(proc, log_path, metrics, webhook, sa_kubeconfig)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _readyz(metrics):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"portico not ready (exit code {proc.poll()}); its output:\n{p.output()[-6000:]}",
                    pytrace=False,
                )
            time.sleep(0.3)
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def as_sa(portico: Portico) -> Kube:
    return Kube(portico.kubeconfig)


def test_self_managed_setup_under_the_service_account(portico: Portico, kube: Kube) -> None:
    secret = kube.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{TLS}")
    assert secret["data"].get("tls.crt") and secret["data"].get("tls.key")
    for path in (VWC, MWC):
        for hook in kube.get(path)["webhooks"]:
            assert hook["clientConfig"].get("caBundle"), f"{path}: caBundle not patched"
            assert hook["failurePolicy"] == "Ignore"  # our patch survived Portico's
    lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{FULLNAME}")
    assert lease["spec"]["holderIdentity"] == POD_NAME


def test_webhook_serves_with_the_patched_ca(portico: Portico, kube: Kube) -> None:
    """What the apiserver would do: trust caBundle, verify the Service's DNS name, POST a review."""
    ca = base64.b64decode(kube.get(VWC)["webhooks"][0]["clientConfig"]["caBundle"]).decode()
    tls = ssl.create_default_context(cadata=ca)
    uid = str(uuid.uuid4())
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": APP_NS,
            "name": "p",
            "userInfo": {"username": "admin"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": APP_NS},
                "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 80}]}]},
            },
        },
    }
    conn = __import__("http.client").client.HTTPSConnection(
        "127.0.0.1", portico.webhook, context=tls, timeout=10
    )
    # The certificate names the Service, not 127.0.0.1: connect there, verify that name.
    conn.sock = tls.wrap_socket(
        socket.create_connection(("127.0.0.1", portico.webhook), timeout=10),
        server_hostname=f"{FULLNAME}.{NAMESPACE}.svc",
    )
    conn.request("POST", "/validate", json.dumps(review), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, body
    assert body["response"]["uid"] == uid
    assert body["response"]["allowed"] is True


def _create(kube: Kube, path: str, obj: dict[str, Any]) -> None:
    try:
        kube.request("POST", path, obj)
    except KubeError as e:
        if e.status != 409:
            raise


@pytest.fixture(scope="module")
def app(portico: Portico, kube: Kube) -> Iterator[None]:
    _create(kube, "/api/v1/namespaces", {"metadata": {"name": APP_NS}})
    # No controller-manager here to make the namespace's `default` ServiceAccount pods need.
    _create(kube, f"/api/v1/namespaces/{APP_NS}/serviceaccounts", {"metadata": {"name": "default"}})
    node = "rbac-test-node"
    created_node = kube.get_opt(f"/api/v1/nodes/{node}") is None
    _create(kube, "/api/v1/nodes", {"metadata": {"name": node, "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
    try:
        _create(
            kube,
            f"/api/v1/namespaces/{APP_NS}/services",
            {
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            },
        )
        _create(
            kube,
            f"/api/v1/namespaces/{APP_NS}/pods",
            {
                "metadata": {"name": "web-0", "labels": {"app": "web"}},
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": "web", "image": "web", "ports": [{"name": "http", "containerPort": 8080}]}],
                },
            },
        )
        kube.request(
            "PATCH",
            f"/api/v1/namespaces/{APP_NS}/pods/web-0/status",
            {
                "status": {
                    "phase": "Running",
                    "podIP": POD_IP,
                    "podIPs": [{"ip": POD_IP}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
            content_type="application/merge-patch+json",
        )
        yield
    finally:
        _delete_namespace(kube, APP_NS)
        if created_node:
            try:
                kube.request("DELETE", f"/api/v1/nodes/{node}")
            except KubeError:
                pass


def _our_slice(kube: Kube) -> dict[str, Any] | None:
    selector = f"kubernetes.io/service-name=web,endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
    items = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{APP_NS}/endpointslices?labelSelector={selector}")["items"]
    for s in items:
        if any(POD_IP in (e.get("addresses") or []) for e in s.get("endpoints") or []):
            return s
    return None


def _endpoints(kube: Kube) -> dict[str, Any] | None:
    ep = kube.get_opt(f"/api/v1/namespaces/{APP_NS}/endpoints/web")
    ips = [a["ip"] for sub in (ep or {}).get("subsets") or [] for a in sub.get("addresses") or []]
    return ep if POD_IP in ips else None


def test_controllers_work_under_the_service_account(portico: Portico, app: None, kube: Kube) -> None:
    s = _wait("an EndpointSlice of ours with the pod's IP", lambda: _our_slice(kube), log=portico)
    assert s["ports"][0]["port"] == 8080
    _wait("Endpoints with the pod's IP", lambda: _endpoints(kube), log=portico)
    time.sleep(1)  # a last reconcile or status write would show a refusal now
    assert "forbidden" not in portico.output().lower(), portico.output()[-4000:]


def test_the_service_account_is_refused_what_portico_never_does(portico: Portico, app: None, as_sa: Kube, kube: Kube) -> None:
    s = _wait("an EndpointSlice of ours", lambda: _our_slice(kube), log=portico)
    # Reads it can do (the identity works at all) ...
    assert as_sa.get(f"/apis/discovery.k8s.io/v1/namespaces/{APP_NS}/endpointslices/{s['metadata']['name']}")
    refused = []
    attempts = [
        # Slices are replaced (update), never patched.
        (
            "PATCH",
            f"/apis/discovery.k8s.io/v1/namespaces/{APP_NS}/endpointslices/{s['metadata']['name']}",
            {"metadata": {"labels": {"x": "y"}}},
            "application/merge-patch+json",
        ),
        # Only its own Secret: not Helm's release record next to it.
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/sh.helm.release.v1.{RELEASE}.v1", None, "application/json"),
        # No ConfigMaps at all.
        ("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", {"metadata": {"name": "rbac-test"}}, "application/json"),
        # It never writes Services.
        ("DELETE", f"/api/v1/namespaces/{APP_NS}/services/web", None, "application/json"),
    ]
    for method, path, body, ctype in attempts:
        try:
            as_sa.request(method, path, body, content_type=ctype)
            refused.append((method, path, "ALLOWED"))
        except KubeError as e:
            refused.append((method, path, e.status))
    assert [r for r in refused if r[2] != 403] == [], refused
    assert kube.get_opt(f"/api/v1/namespaces/{APP_NS}/services/web") is not None


def test_sigterm_stops_portico_cleanly(portico: Portico) -> None:
    assert portico.stop() == 0, portico.output()[-4000:]
    assert "forbidden" not in portico.output().lower(), portico.output()[-4000:]
