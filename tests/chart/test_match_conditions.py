"""The validating webhook's matchConditions, evaluated by a real kube-apiserver (1.30+) in front
of a real Portico.

The chart's rendered ValidatingWebhookConfiguration is created as it is (rules, matchConditions),
except for three things: its clientConfig is a URL to a Portico started here out of cluster
(`portico run --webhook-url`, which makes a CA for 127.0.0.1), its failurePolicy is `Fail` (so a
condition that fails to evaluate shows as a refusal), and its namespaceSelector selects only this
test's namespace. Portico's own self-registered configurations select a namespace that does not
exist, so the only reviews it counts (`portico_webhook_requests_total{webhook="validate"}`) are
the ones the chart's conditions let through. Each write is then checked three ways:

* what it was expected to do (called or skipped; refused by Portico or admitted);
* soundness: whenever the apiserver skipped Portico, Portico itself, asked directly with the
  object the apiserver admitted, answers "allowed" without a warning;
* no condition ever failed to evaluate (a `Fail` policy would have refused the write).

Writes are dry runs (nothing is stored) except the objects the UPDATE cases start from.
`portico dev`'s own Portico may validate the same writes: it counts in its own process, not
in the one started here."""

from __future__ import annotations

import base64
import copy
import json
import os
import random
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

import pytest

from chartlib import REPO, Kube, KubeError, kube_version_at_least, render

# A namespace of its own per run: without kube-controller-manager (the test harness) a deleted
# namespace stays Terminating, and a second run against the same apiserver must not meet it.
NS = f"portico-mc-{uuid.uuid4().hex[:8]}"
CONFIG = "portico-mc-test"
SELF_CONFIG = "portico-mc-test-self"
NOWHERE = "portico-mc-test-nowhere"  # Portico's own configurations select only this namespace
VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
READY_TIMEOUT = 60
PORTICO_DENIAL = 'admission webhook "ports.portico.dev" denied the request'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _delete(kube: Kube, path: str) -> None:
    try:
        kube.request("DELETE", path)
    except KubeError as e:
        if e.status != 404:
            raise


@dataclass
class Portico:
    proc: subprocess.Popen
    log_path: Path
    webhook_port: int
    metrics_port: int
    ca_pem: str

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def validate_reviews(self) -> int:
        """Reviews `/validate` answered so far (every kind, operation, result, dry run)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("portico_webhook_requests_total{") and 'webhook="validate"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def review(self, kind: dict[str, str], resource: str, operation: str, obj: Any, old: Any = None) -> dict[str, Any]:
        """Portico's own answer to a review, asked directly (as the apiserver would ask it)."""
        uid = str(uuid.uuid4())
        request = {
            "uid": uid,
            "kind": kind,
            "resource": {"group": kind["group"], "version": kind["version"], "resource": resource},
            "operation": operation,
            "namespace": NS,
            "name": obj["metadata"].get("name", ""),
            "userInfo": {"username": "admin"},
            "object": obj,
            "dryRun": True,
        }
        if old is not None:
            request["oldObject"] = old
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
        tls = ssl.create_default_context(cadata=self.ca_pem)
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.webhook_port}/validate",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls))
        with opener.open(req, timeout=10) as r:
            answer = json.loads(r.read())["response"]
        assert answer["uid"] == uid
        return answer


def _wait_ready(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"portico not ready (exit code {proc.poll()}); its output:\n{log.read_text()[-6000:]}", pytrace=False)
        time.sleep(0.3)


@pytest.fixture(scope="module")
def portico(kubeconfig: Path, kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portico]:
    if not kube_version_at_least(kube.version(), 1, 30):
        pytest.skip("matchConditions are rendered for Kubernetes 1.30 and later only")
    tmp = tmp_path_factory.mktemp("match-conditions")
    binary = Path(os.environ.get("PORTICO_BIN") or REPO / "target" / "debug" / "portico")
    webhook_port, metrics_port = _free_port(), _free_port()
    args = [
        "run",
        "--controllers=",
        "--leader-elect=false",
        f"--webhook-url=https://127.0.0.1:{webhook_port}",
        f"--webhook-bind-address=127.0.0.1:{webhook_port}",
        f"--webhook-cert-dir={tmp / 'certs'}",
        f"--webhook-configuration-name={SELF_CONFIG}",
        f"--webhook-namespaces={NOWHERE}",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTICO_") and k != "KUBECONFIG"}
    env.update(KUBECONFIG=str(kubeconfig), POD_NAMESPACE=NS, POD_NAME="match-conditions-test")
    log_path = tmp / "portico.log"
    for path in (f"{VWC}/{CONFIG}", f"{VWC}/{SELF_CONFIG}"):  # leftovers of an interrupted run
        _delete(kube, path)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(binary), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
    p = None
    try:
        _wait_ready(metrics_port, proc, log_path)
        # The CA Portico made for 127.0.0.1, from the configuration it registered.
        deadline = time.monotonic() + 30
        while (own := kube.get_opt(f"{VWC}/{SELF_CONFIG}")) is None:
            assert time.monotonic() < deadline, f"{SELF_CONFIG} not registered:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.3)
        ca_b64 = own["webhooks"][0]["clientConfig"]["caBundle"]
        p = Portico(proc, log_path, webhook_port, metrics_port, base64.b64decode(ca_b64).decode())

        try:
            kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
        except KubeError as e:
            if e.status != 409:
                raise
        try:  # no controller-manager here to make the `default` ServiceAccount pods need
            kube.request("POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "default"}})
        except KubeError as e:
            if e.status != 409:
                raise

        config = copy.deepcopy(render().one("ValidatingWebhookConfiguration"))
        config["metadata"] = {"name": CONFIG}
        # The port webhook only (endpoints.portico.dev, the configuration's other, is not tested here).
        (hook,) = [h for h in config["webhooks"] if h["name"] == "ports.portico.dev"]
        config["webhooks"] = [hook]
        assert [c["name"] for c in hook["matchConditions"]], "the chart rendered no matchConditions"
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{webhook_port}/validate", "caBundle": ca_b64}
        hook["failurePolicy"] = "Fail"
        hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": NS}}
        # Created as rendered: the apiserver compiles every CEL expression here.
        kube.request("POST", VWC, config)

        # The apiserver picks configurations up asynchronously: wait until a write the
        # conditions let through reaches this Portico.
        deadline = time.monotonic() + 30
        while True:
            before = p.validate_reviews()
            _create(kube, "pods", _pod(_container(probe={"httpGet": {"port": "http"}})))
            if p.validate_reviews() > before:
                break
            assert time.monotonic() < deadline, "the chart's configuration never took effect"
            time.sleep(0.3)
        yield p
    finally:
        _delete(kube, f"{VWC}/{CONFIG}")
        if p is not None:
            p.stop()
        elif proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        _delete(kube, f"{VWC}/{SELF_CONFIG}")  # removed by Portico on SIGTERM; in case it was not
        _delete(kube, f"/api/v1/namespaces/{NS}")


# --- objects ----------------------------------------------------------------------------------

GROUPS = {
    "pods": ("", "v1", "Pod"),
    "services": ("", "v1", "Service"),
    "deployments": ("apps", "v1", "Deployment"),
    "daemonsets": ("apps", "v1", "DaemonSet"),
    "statefulsets": ("apps", "v1", "StatefulSet"),
    "replicasets": ("apps", "v1", "ReplicaSet"),
    "jobs": ("batch", "v1", "Job"),
    "cronjobs": ("batch", "v1", "CronJob"),
}


def _path(resource: str, name: str | None = None) -> str:
    group, version, _ = GROUPS[resource]
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    return f"{base}/namespaces/{NS}/{resource}" + (f"/{name}" if name else "")


def _container(name: str = "app", ports: list[dict[str, Any]] | None = None, probe: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "registry.invalid/app:1", **extra}
    if ports is not None:
        c["ports"] = ports
    if probe is not None:
        c["readinessProbe"] = probe
    return c


def _spec(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers), **extra}
    if init:
        spec["initContainers"] = init
    return spec


def _pod(*containers: dict[str, Any], name: str | None = None, init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta = {"name": name} if name else {"generateName": "mc-"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _spec(*containers, init=init)}


def _template(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "mc"}}, "spec": spec}


def _workload(resource: str, spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    group, version, kind = GROUPS[resource]
    meta = {"name": name} if name else {"generateName": "mc-"}
    obj: dict[str, Any] = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": meta}
    selector = {"matchLabels": {"app": "mc"}}
    if resource in ("deployments", "daemonsets", "replicasets"):
        obj["spec"] = {"selector": selector, "template": _template(spec)}
    elif resource == "statefulsets":
        obj["spec"] = {"selector": selector, "serviceName": "mc", "template": _template(spec)}
    elif resource == "jobs":
        obj["spec"] = {"template": _template({**spec, "restartPolicy": "Never"})}
    elif resource == "cronjobs":
        obj["spec"] = {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": _template({**spec, "restartPolicy": "Never"})}}}
    return obj


def _create(kube: Kube, resource: str, obj: dict[str, Any], dry_run: bool = True) -> tuple[int, Any]:
    query = "?dryRun=All" if dry_run else ""
    try:
        return 201, kube.request("POST", _path(resource) + query, obj)
    except KubeError as e:
        return e.status, e.body


def _patch(kube: Kube, resource: str, name: str, patch: dict[str, Any]) -> tuple[int, Any]:
    try:
        return 200, kube.request(
            "PATCH", _path(resource, name) + "?dryRun=All", patch, content_type="application/strategic-merge-patch+json"
        )
    except KubeError as e:
        return e.status, e.body


@dataclass
class Outcome:
    called: bool
    status: int
    body: Any

    @property
    def message(self) -> str:
        if isinstance(self.body, str):
            try:
                return str(json.loads(self.body).get("message", self.body))
            except ValueError:
                return self.body
        return ""

    @property
    def refused_by_portico(self) -> bool:
        return self.status >= 400 and self.message.startswith(PORTICO_DENIAL)


def _write(portico: Portico, kube: Kube, resource: str, obj: dict[str, Any], *, old: dict[str, Any] | None = None, patch: dict[str, Any] | None = None) -> Outcome:
    """One dry-run write, whether it reached Portico, and, when it did not, Portico's own answer
    to the object the apiserver admitted (soundness)."""
    before = portico.validate_reviews()
    if patch is None:
        status, body = _create(kube, resource, obj)
    else:
        assert old is not None
        status, body = _patch(kube, resource, old["metadata"]["name"], patch)
    called = portico.validate_reviews() > before
    out = Outcome(called, status, body)
    text = str(body)
    assert "match condition" not in text.lower() and "matchcondition" not in text.lower(), (
        f"a matchCondition failed to evaluate: {text[:1000]}"
    )
    if called:
        return out
    # Skipped. The object to ask Portico about: the one the apiserver admitted, or, when another
    # webhook refused the write (the harness's own Portico validates this namespace too), the one
    # sent. A write kube-apiserver's own validation refused never reached any webhook.
    if status < 400:
        judged: Any = body
    elif out.message.startswith("admission webhook") and patch is None:
        judged = obj
    else:
        return out
    group, version, kind = GROUPS[resource]
    answer = portico.review(
        {"group": group, "version": version, "kind": kind},
        resource,
        "CREATE" if patch is None else "UPDATE",
        judged,
        old,
    )
    assert answer["allowed"] is True and not answer.get("warnings"), (
        f"UNSOUND: the apiserver skipped Portico, which would have answered {answer} for {json.dumps(judged)[:2000]}"
    )
    return out


# --- the cases --------------------------------------------------------------------------------

NAMED_UNDECLARED = {"httpGet": {"port": "http", "path": "/ready"}}
NUMERIC_PROBES = {
    "livenessProbe": {"httpGet": {"port": 8080, "path": "/healthz"}},
    "readinessProbe": {"tcpSocket": {"port": 9000}},
    "startupProbe": {"grpc": {"port": 9090}},
    "lifecycle": {"preStop": {"httpGet": {"port": 8080, "path": "/stop"}}, "postStart": {"sleep": {"seconds": 1}}},
}

# (id, resource, object, reaches Portico, refused by Portico)
CREATE_CASES: list[tuple[str, str, dict[str, Any], bool, bool]] = [
    ("pod-no-ports", "pods", _pod(_container()), False, False),
    ("pod-empty-ports", "pods", _pod(_container(ports=[])), False, False),
    ("pod-exec-probe", "pods", _pod(_container(probe={"exec": {"command": ["true"]}})), False, False),
    ("pod-numeric-probes-and-hooks", "pods", _pod(_container(**NUMERIC_PROBES)), False, False),
    ("pod-named-probe-undeclared", "pods", _pod(_container(probe=NAMED_UNDECLARED)), True, True),
    (
        "pod-named-prestop-undeclared",
        "pods",
        _pod(_container(lifecycle={"preStop": {"tcpSocket": {"port": "admin"}}})),
        True,
        True,
    ),
    (
        "pod-named-probe-in-init-container",
        "pods",
        _pod(_container(), init=[_container("init", probe=None, startupProbe={"httpGet": {"port": "warm"}}, restartPolicy="Always")]),
        True,
        True,
    ),
    (
        "pod-declared-named-probe",
        "pods",
        _pod(_container(ports=[{"name": "http", "containerPort": 8080}], probe={"httpGet": {"port": "http"}})),
        True,
        False,
    ),
    ("pod-unnamed-port", "pods", _pod(_container(ports=[{"containerPort": 80}])), True, False),
    (
        "pod-port-name-in-two-containers",
        "pods",
        _pod(
            _container("a", ports=[{"name": "http", "containerPort": 8080}]),
            _container("b", ports=[{"name": "http", "containerPort": 8081}]),
        ),
        True,
        True,
    ),
    ("pod-init-container-port", "pods", _pod(_container(), init=[_container("init", ports=[{"containerPort": 70}])]), True, False),
    ("deployment-no-ports", "deployments", _workload("deployments", _spec(_container(**NUMERIC_PROBES))), False, False),
    ("deployment-named-probe-undeclared", "deployments", _workload("deployments", _spec(_container(probe=NAMED_UNDECLARED))), True, True),
    ("daemonset-no-ports", "daemonsets", _workload("daemonsets", _spec(_container())), False, False),
    ("statefulset-ports", "statefulsets", _workload("statefulsets", _spec(_container(ports=[{"name": "db", "containerPort": 5432}]))), True, False),
    ("replicaset-no-ports", "replicasets", _workload("replicasets", _spec(_container())), False, False),
    ("job-named-probe-undeclared", "jobs", _workload("jobs", _spec(_container(probe=NAMED_UNDECLARED))), True, True),
    ("job-no-ports", "jobs", _workload("jobs", _spec(_container())), False, False),
    ("cronjob-no-ports", "cronjobs", _workload("cronjobs", _spec(_container())), False, False),
    ("cronjob-named-probe-undeclared", "cronjobs", _workload("cronjobs", _spec(_container(probe=NAMED_UNDECLARED))), True, True),
    (
        "service-always",
        "services",
        {"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "mc-"}, "spec": {"selector": {"app": "mc"}, "ports": [{"port": 80}]}},
        True,
        False,
    ),
]


@pytest.mark.parametrize("case", CREATE_CASES, ids=[c[0] for c in CREATE_CASES])
def test_create(portico: Portico, kube: Kube, case: tuple[str, str, dict[str, Any], bool, bool]) -> None:
    _, resource, obj, reaches, refused = case
    out = _write(portico, kube, resource, obj)
    assert out.called == reaches, f"called={out.called}: {str(out.body)[:1000]}"
    assert out.refused_by_portico == refused, f"HTTP {out.status}: {str(out.body)[:1000]}"
    if not refused:
        assert out.status == 201, str(out.body)[:1000]


def test_updates(portico: Portico, kube: Kube) -> None:
    """UPDATEs that keep the pod spec (template) are skipped; others are judged, and Portico
    refuses the violations an update introduces."""
    pod = _pod(_container(ports=[{"name": "http", "containerPort": 8080}], probe={"httpGet": {"port": "http"}}), name="mc-web")
    status, stored = _create(kube, "pods", pod, dry_run=False)
    assert status == 201, stored
    relabel = _write(portico, kube, "pods", pod, old=stored, patch={"metadata": {"labels": {"tier": "web"}}})
    assert relabel.status == 200 and not relabel.called
    image = _write(
        portico, kube, "pods", pod, old=stored,
        patch={"spec": {"containers": [{"name": "app", "image": "registry.invalid/app:2"}]}},
    )
    assert image.status == 200 and image.called  # the spec changed and has ports: judged

    plain = _pod(_container(), name="mc-plain")
    status, stored_plain = _create(kube, "pods", plain, dry_run=False)
    assert status == 201, stored_plain
    assert not _write(portico, kube, "pods", plain, old=stored_plain, patch={"metadata": {"annotations": {"a": "b"}}}).called

    deploy = _workload("deployments", _spec(_container(ports=[{"name": "http", "containerPort": 8080}])), name="mc-app")
    status, stored_deploy = _create(kube, "deployments", deploy, dry_run=False)
    assert status == 201, stored_deploy
    scale = _write(portico, kube, "deployments", deploy, old=stored_deploy, patch={"spec": {"replicas": 3}})
    assert scale.status == 200 and not scale.called
    bad = {"spec": {"template": {"spec": {"containers": [{"name": "app", "readinessProbe": {"httpGet": {"port": "metrics"}}}]}}}}
    broken = _write(portico, kube, "deployments", deploy, old=stored_deploy, patch=bad)
    assert broken.called and broken.refused_by_portico, str(broken.body)[:1000]


def _random_spec(rng: random.Random) -> dict[str, Any]:
    """A pod spec drawn from the features Portico's rules look at."""

    def port_ref() -> Any:
        return rng.choice([8080, 1, 65535, "http", "metrics", "web-ui"])

    def handler(grpc: bool) -> dict[str, Any]:
        kinds = ["httpGet", "tcpSocket", "exec"] + (["grpc"] if grpc else ["sleep"])
        kind = rng.choice(kinds)
        if kind == "httpGet":
            return {"httpGet": {"port": port_ref(), "path": "/"}}
        if kind == "tcpSocket":
            return {"tcpSocket": {"port": port_ref()}}
        if kind == "grpc":
            return {"grpc": {"port": rng.choice([9090, 1, 65535])}}
        if kind == "sleep":
            return {"sleep": {"seconds": 1}}
        return {"exec": {"command": ["true"]}}

    def container(name: str) -> dict[str, Any]:
        c: dict[str, Any] = {"name": name, "image": "registry.invalid/app:1"}
        roll = rng.random()
        if roll < 0.3:
            names = rng.sample(["http", "metrics", "admin"], rng.randint(1, 2))
            c["ports"] = [{"name": n, "containerPort": 8000 + i} for i, n in enumerate(names)]
        elif roll < 0.4:
            c["ports"] = [{"containerPort": 80}]
        elif roll < 0.5:
            c["ports"] = []
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if rng.random() < 0.4:
                c[probe] = handler(True)
        if rng.random() < 0.3:
            c["lifecycle"] = {rng.choice(["preStop", "postStart"]): handler(False)}
        return c

    spec: dict[str, Any] = {"containers": [container(f"c{i}") for i in range(rng.randint(1, 2))]}
    if rng.random() < 0.3:
        init = container("init")
        init.pop("lifecycle", None)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            init.pop(probe, None)  # probes only on restartable (sidecar) init containers
        spec["initContainers"] = [init]
    return spec


def test_random_pods_are_skipped_only_when_portico_admits_them(portico: Portico, kube: Kube) -> None:
    """Soundness over a seeded sample of pods and workloads: every write the apiserver accepted
    without calling Portico is one Portico admits without a warning (checked in _write)."""
    rng = random.Random(20261205)
    seen = {"skipped": 0, "called": 0, "refused": 0}
    for i in range(48):
        resource = rng.choice(["pods", "pods", "deployments", "cronjobs"])
        spec = _random_spec(rng)
        obj = _pod(*spec["containers"], init=spec.get("initContainers")) if resource == "pods" else _workload(resource, spec)
        out = _write(portico, kube, resource, obj)
        if out.status >= 400 and not out.called:
            continue  # kube-apiserver's own validation refused it before any webhook
        seen["called" if out.called else "skipped"] += 1
        seen["refused"] += out.refused_by_portico
        if out.refused_by_portico:
            assert out.called
    # The sample exercises both sides of the conditions.
    assert seen["skipped"] >= 5 and seen["called"] >= 5 and seen["refused"] >= 3, seen
