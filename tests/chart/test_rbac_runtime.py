"""Portico run as the chart's ServiceAccount, against the test apiserver with RBAC on.

The chart is installed with its defaults plus the opt-in mirroring controller (VALUES); then
`portico run`, out of cluster, with the chart's own Deployment args (only the listen addresses,
the certificate directory and the managed-by label changed, and three timings shortened, see
PORTICO_TIMINGS) and a kubeconfig that impersonates the ServiceAccount. It must do all of its
self-managed setup (TLS Secret, caBundle, Lease), serve its webhook and run its controllers
without one refusal; and the same identity is refused what Portico never does. Every metric
the chart's PrometheusRule and Grafana dashboard query must be on its /metrics.

`portico dev` (the harness) runs its own Portico too: ours writes its slices with its own
`--managed-by` value, so the slices the test waits for can only be ours; and it allocates from
the ranges the harness uses (the RangeAllocations are shared, cluster-wide: with the chart's
default 10.96.0.0/12, whichever Portico came second would refuse every Service). The harness's
Portico does not mirror (mirroring is opt-in), so mirrored slices can only be ours and keep the
chart's default mirroring managed-by."""

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

from chartlib import (
    CHART_DIR,
    REPO,
    Kube,
    KubeError,
    exposition_names,
    missing_metrics,
    queried_metric_names,
    render,
)

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
# The chart's defaults, plus the opt-in EndpointSliceMirroring controller: its flags and RBAC
# rules are exercised too.
VALUES: dict[str, Any] = {"controllers": {"enabled": ["endpointslice", "endpoint", "endpointslicemirroring"]}}
MIRROR_MANAGED_BY = "endpointslicemirroring-controller.portico"  # the chart's default
MIRROR_SERVICE = "external"
MIRROR_IP = "10.244.77.8"
ALLOCATIONS = "/apis/portico.dev/v1alpha1/rangeallocations"
# `portico dev`'s service range (src/dev.rs DEV_SERVICE_RANGE), when no allocation says otherwise.
HARNESS_SERVICE_RANGE = os.environ.get("PORTICO_TEST_SERVICE_RANGE", "10.96.0.0/16")
# Shorter than the chart's, so that what the metrics test drives shows up within seconds: a claim
# never fulfilled lapses (a repair `leak`) and is reported, and a pod change reaches our Endpoints
# controller before the harness's (which waits its 250ms batch period), so ours writes.
CLAIM_TTL = 2
PORTICO_TIMINGS = {
    "allocation-claim-ttl": f"{CLAIM_TTL}s",
    "repair-interval": "1s",
    "endpoint-updates-batch-period": "0",
}


def _config(kubeconfig: Path) -> helm.Config:
    return helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE)


def _install(kubeconfig: Path) -> dict[str, Any]:
    with _config(kubeconfig) as cfg:
        return cfg.install(CHART_DIR, RELEASE, VALUES, create_namespace=True, wait="hookOnly", timeout=TIMEOUT)


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
    args = list(render(VALUES, release=RELEASE, namespace=NAMESPACE).args)
    assert f"--mirroring-managed-by={MIRROR_MANAGED_BY}" in args, args
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
        **PORTICO_TIMINGS,
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


@pytest.fixture(scope="module")
def hand_written(app: None, kube: Kube) -> None:
    """A Service without a selector and its hand-written Endpoints: what the mirroring controller
    mirrors. Created after Portico started, so the watch (not the start-up list) must bring it."""
    _create(
        kube,
        f"/api/v1/namespaces/{APP_NS}/services",
        {"metadata": {"name": MIRROR_SERVICE}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9000}]}},
    )
    _create(
        kube,
        f"/api/v1/namespaces/{APP_NS}/endpoints",
        {
            "metadata": {"name": MIRROR_SERVICE, "labels": {"team": "edge"}},
            "subsets": [{"addresses": [{"ip": MIRROR_IP}], "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}]}],
        },
    )


def _mirrored_slice(kube: Kube) -> dict[str, Any] | None:
    selector = f"kubernetes.io/service-name={MIRROR_SERVICE},endpointslice.kubernetes.io/managed-by={MIRROR_MANAGED_BY}"
    items = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{APP_NS}/endpointslices?labelSelector={selector}")["items"]
    for s in items:
        if any(MIRROR_IP in (e.get("addresses") or []) for e in s.get("endpoints") or []):
            return s
    return None


def test_mirroring_works_under_the_service_account(portico: Portico, hand_written: None, kube: Kube) -> None:
    """`endpointslicemirroring` enabled through the chart: the hand-written Endpoints of a
    selector-less Service get a mirrored EndpointSlice, written as the chart's ServiceAccount."""
    s = _wait("a mirrored EndpointSlice of the hand-written Endpoints", lambda: _mirrored_slice(kube), log=portico)
    labels = s["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == MIRROR_SERVICE
    assert labels["endpointslice.kubernetes.io/managed-by"] == MIRROR_MANAGED_BY
    assert labels.get("team") == "edge"  # the Endpoints' own labels are mirrored
    assert s["addressType"] == "IPv4"
    assert s["ports"] == [{"name": "http", "port": 9000, "protocol": "TCP"}]
    (owner,) = s["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Endpoints", MIRROR_SERVICE)
    # Nobody else mirrors here: exactly one slice for the Endpoints.
    others = kube.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{APP_NS}/endpointslices?labelSelector=kubernetes.io/service-name={MIRROR_SERVICE}"
    )["items"]
    assert [o["metadata"]["name"] for o in others] == [s["metadata"]["name"]]
    time.sleep(1)  # a last sync or Event would show a refusal now
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


def test_status_finds_the_chart_install_by_itself(portico: Portico, kubeconfig: Path) -> None:
    """`portico status` with no flag and no POD_NAMESPACE: it finds the release's namespace from
    the webhook configurations, the Lease from the Deployment's flags, and checks the caBundle
    against the serving certificate Portico stored (before, it said "leader: none")."""
    binary = Path(os.environ.get("PORTICO_BIN") or REPO / "target" / "debug" / "portico")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTICO_") and k not in ("KUBECONFIG", "POD_NAMESPACE")}
    env["KUBECONFIG"] = str(kubeconfig)

    def status(*args: str) -> str:
        out = subprocess.run([str(binary), "status", *args], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    lease = render(release=RELEASE, namespace=NAMESPACE).flags["leader-elect-resource-name"]
    report = json.loads(status("-o", "json"))
    install = report["install"]
    assert install["namespace"] == NAMESPACE, install
    assert install["deployment"], install
    assert (install["leaseNamespace"], install["leaseName"]) == (NAMESPACE, lease), install
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("caBundle", "certificateExpiry", "leader", "kubeControllerManager"):
        assert checks[name]["level"] == "ok", checks[name]
    assert checks["ranges"]["level"] in ("ok", "skipped"), checks["ranges"]
    assert report["leader"]["holder"] == POD_NAME, report["leader"]
    assert yaml.safe_load(status("-o", "yaml"))["install"] == install
    text = status()
    assert f"leader: {POD_NAME} (lease {NAMESPACE}/{lease}" in text, text


# --- every metric the chart's alerts and dashboard query is exported --------------------------

MONITORING = {"metrics": {"prometheusRule": {"enabled": True}}, "grafana": {"dashboard": {"enabled": True}}}
LEAK_ATTEMPTS = 25
SCRAPE_TIMEOUT = 30


def _scrape(portico: Portico) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{portico.metrics}/metrics", timeout=5) as r:
        return r.read().decode()


def _admit(portico: Portico, ca: str, path: str, request: dict[str, Any]) -> dict[str, Any]:
    """POSTs an AdmissionReview as the apiserver would (caBundle trusted, the Service's name
    verified) and returns its response."""
    tls = ssl.create_default_context(cadata=ca)
    request = {"uid": str(uuid.uuid4()), "userInfo": {"username": "admin"}, "dryRun": False, **request}
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    conn = __import__("http.client").client.HTTPSConnection("127.0.0.1", portico.webhook, context=tls, timeout=10)
    conn.sock = tls.wrap_socket(
        socket.create_connection(("127.0.0.1", portico.webhook), timeout=10),
        server_hostname=f"{FULLNAME}.{NAMESPACE}.svc",
    )
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200, out
    assert out["response"]["uid"] == request["uid"]
    return out["response"]


def _service_review(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}], **spec}
    return {
        "kind": {"group": "", "version": "v1", "kind": "Service"},
        "resource": {"group": "", "version": "v1", "resource": "services"},
        "operation": "CREATE",
        "namespace": APP_NS,
        "name": name,
        "object": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": APP_NS}, "spec": spec},
    }


def _ghost(portico: Portico, ca: str, name: str) -> dict[str, Any]:
    """The allocation of a NodePort Service that is never created: its clusterIP and nodePort."""
    response = _admit(portico, ca, "/mutate", _service_review(name, {"type": "NodePort"}))
    assert response["allowed"] is True, response
    patch = {op["path"]: op.get("value") for op in json.loads(base64.b64decode(response["patch"]))}
    assert patch.get("/spec/clusterIPs") and patch.get("/spec/ports/0/nodePort"), patch
    return {"clusterIP": patch["/spec/clusterIPs"][0], "nodePort": patch["/spec/ports/0/nodePort"]}


def test_every_metric_queried_is_exported(portico: Portico, app: None, kube: Kube) -> None:
    """Every metric name in the PromQL of the chart's PrometheusRule (all alerts) and Grafana
    dashboard (panels and variables) is on a running Portico's /metrics (a family's HELP/TYPE
    line, or a histogram's series). Label-vectored families appear only once used, so first
    what they count: syncs and writes, reviews, allocations and refusals, a lapsed claim, a
    RangeAllocation rebuilt."""
    where = queried_metric_names(render(MONITORING, release=RELEASE, namespace=NAMESPACE))
    assert len(where) >= 20, sorted(where)

    # The controllers synced the app. Our slices are ours alone (our managed-by), but the
    # harness's Portico writes the same Endpoints and wins the Service's first sync; a pod
    # change reaches ours first (PORTICO_TIMINGS), so ours updates the Endpoints.
    _wait("an EndpointSlice of ours with the pod's IP", lambda: _our_slice(kube), log=portico)
    for ready in ("False", "True"):
        kube.request(
            "PATCH",
            f"/api/v1/namespaces/{APP_NS}/pods/web-0/status",
            {"status": {"conditions": [{"type": "Ready", "status": ready}]}},
            content_type="application/strategic-merge-patch+json",
        )
        time.sleep(0.5)

    ca = base64.b64decode(kube.get(VWC)["webhooks"][0]["clientConfig"]["caBundle"]).decode()
    pod = {
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": APP_NS,
        "name": "metrics-p",
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "metrics-p", "namespace": APP_NS},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 80}]}]},
        },
    }
    assert _admit(portico, ca, "/validate", pod)["allowed"] is True

    # A RangeAllocation deleted behind Portico's back: its next write (the allocation below)
    # rebuilds it, or finds it rebuilt by the harness's Portico; a recovery either way.
    try:
        kube.request("DELETE", f"{ALLOCATIONS}/nodeports")
    except KubeError as e:
        if e.status != 404:
            raise

    # An allocation for a Service that never appears (its claims lapse: a repair `leak`); then
    # explicit requests for the values it holds, refused (allocation errors of both kinds).
    ghost = _ghost(portico, ca, "metrics-ghost")
    last_ghost = time.monotonic()
    taken_ip = _admit(
        portico, ca, "/mutate", _service_review("metrics-taken-ip", {"clusterIP": ghost["clusterIP"], "clusterIPs": [ghost["clusterIP"]]})
    )
    assert taken_ip["allowed"] is False, taken_ip
    port = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": ghost["nodePort"]}
    taken_port = _admit(portico, ca, "/mutate", _service_review("metrics-taken-port", {"type": "NodePort", "ports": [port]}))
    assert taken_port["allowed"] is False, taken_port

    # Portico counts a lapsed claim only when its own writer expires it; a write of the
    # RangeAllocation seen first (the harness's Portico shares them, and status writes) drops it
    # uncounted (reported to the maintainers). A write of ours just after the TTL expires it
    # first: each ghost is followed by the next, a bounded number of times, until both leak
    # series are there.
    leaks = {"portico_clusterip_repair_ip_errors_total", "portico_nodeport_repair_port_errors_total"}
    attempt = 0
    while attempt < LEAK_ATTEMPTS and not leaks <= exposition_names(_scrape(portico)):
        time.sleep(max(0.0, last_ghost + CLAIM_TTL + 0.05 - time.monotonic()))
        attempt += 1
        _ghost(portico, ca, f"metrics-ghost-{attempt}")
        last_ghost = time.monotonic()
    print(f"{attempt} more ghost(s) until both leak series were there")  # shown on failure

    deadline = time.monotonic() + SCRAPE_TIMEOUT
    while True:
        gone = missing_metrics(where, _scrape(portico))
        if not gone or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert gone == {}, (
        "queried by the chart but not exported by a running Portico (name: where it is queried):\n"
        + "\n".join(f"  {name}: {', '.join(places)}" for name, places in gone.items())
        + f"\nPortico's output:\n{portico.output()[-3000:]}"
    )


def test_sigterm_stops_portico_cleanly(portico: Portico) -> None:
    assert portico.stop() == 0, portico.output()[-4000:]
    assert "forbidden" not in portico.output().lower(), portico.output()[-4000:]
