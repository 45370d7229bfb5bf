"""The chart installed by the real Helm engine (Helm 4's SDK, server-side apply) into a real
kube-apiserver with RBAC on (see conftest.py for where the apiserver comes from).

Checks: the release deploys with the defaults and with every ci/ values file; what the
apiserver stored is what the chart renders; the ServiceAccount's permissions, asked of the
apiserver's own authorizer (SubjectAccessReview), are exactly Portico's needs, and neighbouring
actions are refused; an upgrade keeps the caBundle Portico patched in; uninstall removes the
cluster-scoped objects and keeps the CRD.

No controller-manager or scheduler runs there, so no pods start: running Portico as the chart's
ServiceAccount is the Rust integration suite's part."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import pytest

from chartlib import (
    CHART_DIR,
    Kube,
    KubeError,
    ci_values_files,
    kube_version_at_least,
    load_values,
    rbac_rules,
    render,
)

RELEASE = "chart-test"
NAMESPACE = "portico-chart-test"
FULLNAME = "chart-test-portico"
CRD = "rangeallocations.portico.dev"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}"
VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
TIMEOUT = 120

# A namespaceSelector expression no namespace matches: the webhooks of the extra releases
# (nothing serves them) must not get in the way of anything else using this apiserver.
MATCH_NOTHING = [{"key": "portico.dev/chart-test-never", "operator": "Exists"}]


def _config(kubeconfig: Path, namespace: str) -> helm.Config:
    return helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)


def _install(kubeconfig: Path, release: str, namespace: str, values: dict[str, Any] | None) -> dict[str, Any]:
    with _config(kubeconfig, namespace) as cfg:
        return cfg.install(
            CHART_DIR, release, values, create_namespace=True, wait="hookOnly", timeout=TIMEOUT
        )


def _uninstall(kubeconfig: Path, release: str, namespace: str) -> dict[str, Any]:
    with _config(kubeconfig, namespace) as cfg:
        return cfg.uninstall(release, ignore_not_found=True, wait="hookOnly", timeout=TIMEOUT)


def _wait_gone(kube: Kube, path: str) -> None:
    deadline = time.monotonic() + 30
    while kube.get_opt(path) is not None:
        assert time.monotonic() < deadline, f"{path} still there"
        time.sleep(0.2)


def _adopt_crd(kube: Kube, release: str, namespace: str) -> None:
    """Let the release take over a CRD created outside Helm (e.g. `portico dev` installs it):
    Helm's documented adoption labels and annotations, what an operator would set when moving
    from `portico crds | kubectl apply` to the chart."""
    if kube.get_opt(CRD_PATH) is None:
        return
    kube.request(
        "PATCH",
        CRD_PATH,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": release,
                    "meta.helm.sh/release-namespace": namespace,
                },
            }
        },
        content_type="application/merge-patch+json",
    )


def _established(kube: Kube) -> bool:
    crd = kube.get_opt(CRD_PATH)
    conditions = (crd or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


# --- stub CRDs for the optional add-ons (cert-manager, prometheus-operator) -------------------


def _stub_crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    """A minimal CRD accepting any spec: enough for the apiserver to store the chart's
    Certificate, Issuer and ServiceMonitor objects. Written for these tests, not the add-ons'."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"portico.dev/chart-test-stub": "true"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


STUBS = [
    ("cert-manager.io", "Certificate", "certificates"),
    ("cert-manager.io", "Issuer", "issuers"),
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ("monitoring.coreos.com", "PodMonitor", "podmonitors"),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
]


@pytest.fixture(scope="module")
def addon_crds(kube: Kube) -> Iterator[None]:
    created = []
    for group, kind, plural in STUBS:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{group}"
        if kube.get_opt(path) is None:
            kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", _stub_crd(group, kind, plural))
            created.append(path)
    deadline = time.monotonic() + 30
    for group, _, plural in STUBS:
        while kube.get_opt(f"/apis/{group}/v1/{plural}") is None:
            assert time.monotonic() < deadline, f"{plural}.{group} not served"
            time.sleep(0.2)
    yield
    for path in created:
        try:
            kube.request("DELETE", path)
        except KubeError:
            pass


# --- the default install ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(kubeconfig: Path, kube: Kube) -> Iterator[dict[str, Any]]:
    _uninstall(kubeconfig, RELEASE, NAMESPACE)  # a leftover from an interrupted run
    _adopt_crd(kube, RELEASE, NAMESPACE)
    release = _install(kubeconfig, RELEASE, NAMESPACE, None)
    yield release
    _uninstall(kubeconfig, RELEASE, NAMESPACE)


def test_default_install_deploys(installed: dict[str, Any], kube: Kube) -> None:
    assert installed["status"] == "deployed" and installed["revision"] == 1
    assert installed["chart_name"] == "portico"
    ns = f"/api/v1/namespaces/{NAMESPACE}"
    assert kube.get_opt(f"{ns}/serviceaccounts/{FULLNAME}") is not None
    assert kube.get_opt(f"{ns}/services/{FULLNAME}") is not None
    assert kube.get_opt(f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/{FULLNAME}") is not None
    assert kube.get_opt(f"{VWC}/{FULLNAME}") is not None
    assert kube.get_opt(f"{MWC}/{FULLNAME}") is not None


def test_stored_objects_are_the_rendered_ones(installed: dict[str, Any], kube: Kube) -> None:
    want = render(release=RELEASE, namespace=NAMESPACE)
    deploy = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{FULLNAME}")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == want.args
    assert container["securityContext"] == want.container["securityContext"]
    # Helm used the apiserver's version: the kubelet sleep action only from Kubernetes 1.30 on.
    if kube_version_at_least(kube.version(), 1, 30):
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    else:
        assert "lifecycle" not in container
    role = kube.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{FULLNAME}")
    assert rbac_rules(role) == rbac_rules(want.one("ClusterRole"))
    nsrole = kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles/{FULLNAME}")
    assert rbac_rules(nsrole) == rbac_rules(want.one("Role"))
    for path, kind in ((VWC, "ValidatingWebhookConfiguration"), (MWC, "MutatingWebhookConfiguration")):
        stored = kube.get(f"{path}/{FULLNAME}")["webhooks"][0]
        rendered = want.one(kind)["webhooks"][0]
        for key in ("name", "failurePolicy", "sideEffects", "timeoutSeconds", "namespaceSelector", "rules"):
            assert stored[key] == rendered[key], key
        assert stored["clientConfig"]["service"] == rendered["clientConfig"]["service"]
        assert not stored["clientConfig"].get("caBundle")
        # The apiserver compiled the CEL (it refuses a configuration whose expressions do not):
        # the validating webhook's matchConditions from Kubernetes 1.30 on, none before.
        if kind == "ValidatingWebhookConfiguration" and kube_version_at_least(kube.version(), 1, 30):
            assert [c["name"] for c in stored["matchConditions"]] == [c["name"] for c in rendered["matchConditions"]]
            assert stored["matchConditions"] == rendered["matchConditions"]
        else:
            assert not stored.get("matchConditions"), kind


def test_priority_class_resolves(installed: dict[str, Any], kube: Kube) -> None:
    """The pods' priorityClassName (system-cluster-critical by default) is one the apiserver's
    Priority admission plugin resolves: a dry-run Pod from the stored Deployment's template is
    admitted, with the class's priority filled in. (Only Pods are resolved, and no controller
    creates them here.)"""
    deploy = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{FULLNAME}")
    template = deploy["spec"]["template"]
    assert template["spec"]["priorityClassName"] == "system-cluster-critical"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": f"{FULLNAME}-", "labels": template["metadata"]["labels"]}, "spec": template["spec"]}
    out = kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All", pod)
    klass = kube.get("/apis/scheduling.k8s.io/v1/priorityclasses/system-cluster-critical")
    assert out["spec"]["priorityClassName"] == "system-cluster-critical"
    assert out["spec"]["priority"] == klass["value"] == 2000000000


def test_crd_is_installed_and_kept_by_policy(installed: dict[str, Any], kube: Kube) -> None:
    deadline = time.monotonic() + 30
    while not _established(kube):
        assert time.monotonic() < deadline, "CRD not Established"
        time.sleep(0.2)
    crd = kube.get(CRD_PATH)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert kube.get_opt("/apis/portico.dev/v1alpha1/rangeallocations") is not None


SA_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"]
APP_NS = "default"  # any namespace with Services: the controllers work cluster-wide
TLS = f"{FULLNAME}-webhook-tls"

# (verb, group, resource, namespace, name, subresource)
Check = tuple[str, str, str, str, str, str]


def _checks(verbs: str, group: str, resource: str, namespace: str = "", name: str = "", sub: str = "") -> list[Check]:
    return [(v, group, resource, namespace, name, sub) for v in verbs.split()]


ALLOWED: list[Check] = [
    *_checks("get list watch", "", "services"),
    *_checks("get list watch", "", "services", APP_NS),
    *_checks("get list watch", "", "pods"),
    *_checks("get list watch", "", "nodes"),
    *_checks("get list watch create update delete", "discovery.k8s.io", "endpointslices", APP_NS),
    *_checks("get list watch create update delete", "", "endpoints", APP_NS),
    *_checks("update", "", "services", APP_NS, "web", "finalizers"),
    *_checks("create patch", "events.k8s.io", "events", APP_NS),
    *_checks("get create update", "portico.dev", "rangeallocations", "", "clusterip-ipv4"),
    *_checks("create list watch", "portico.dev", "rangeallocations"),
    *_checks("list watch", "networking.k8s.io", "servicecidrs"),
    *_checks("list watch", "networking.k8s.io", "ipaddresses"),
    *_checks("get patch", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", FULLNAME),
    *_checks("get patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", FULLNAME),
    *_checks("create", "coordination.k8s.io", "leases", NAMESPACE),
    *_checks("get update", "coordination.k8s.io", "leases", NAMESPACE, FULLNAME),
    *_checks("create", "", "secrets", NAMESPACE),
    *_checks("get update", "", "secrets", NAMESPACE, TLS),
]

FORBIDDEN: list[Check] = [
    # Portico never writes Services or Pods (allocation answers admission reviews instead).
    *_checks("create update patch delete", "", "services", APP_NS, "web"),
    *_checks("update", "", "services", APP_NS, "web", "status"),
    *_checks("create update delete", "", "pods", APP_NS),
    *_checks("create", "", "pods", APP_NS, "web-0", "exec"),
    *_checks("update patch delete", "", "nodes", "", "node-a"),
    # The mirroring controller's rule: not granted while it is off (it is opt-in).
    *_checks("update", "", "endpoints", APP_NS, "web", "finalizers"),
    # Slices and Endpoints are replaced, never patched, and never deleted in bulk.
    *_checks("patch deletecollection", "discovery.k8s.io", "endpointslices", APP_NS),
    *_checks("patch deletecollection", "", "endpoints", APP_NS),
    # Events only through events.k8s.io, and never rewritten or read back.
    *_checks("create", "", "events", APP_NS),
    *_checks("update delete list", "events.k8s.io", "events", APP_NS),
    *_checks("delete patch", "portico.dev", "rangeallocations", "", "clusterip-ipv4"),
    *_checks("deletecollection", "portico.dev", "rangeallocations"),
    # Only the chart's own webhook configurations, and only to set caBundle.
    *_checks("get patch update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "someone-else"),
    *_checks("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "someone-else"),
    *_checks("list create", "admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    *_checks("update delete", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", FULLNAME),
    *_checks("update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", FULLNAME),
    # Its own Lease and Secret in its own namespace only.
    *_checks("get update delete", "coordination.k8s.io", "leases", NAMESPACE, "kube-scheduler"),
    *_checks("get", "coordination.k8s.io", "leases", "kube-system", FULLNAME),
    *_checks("create", "coordination.k8s.io", "leases", APP_NS),
    *_checks("list watch", "coordination.k8s.io", "leases", NAMESPACE),
    *_checks("get update", "", "secrets", NAMESPACE, f"sh.helm.release.v1.{RELEASE}.v1"),
    *_checks("list watch", "", "secrets", NAMESPACE),
    *_checks("get", "", "secrets", "kube-system", TLS),
    *_checks("create", "", "secrets", APP_NS),
    *_checks("delete", "", "secrets", NAMESPACE, TLS),
    # Nothing else.
    *_checks("create update patch", "apiextensions.k8s.io", "customresourcedefinitions", "", CRD),
    *_checks("get list", "", "configmaps", NAMESPACE),
    *_checks("create", "", "serviceaccounts", NAMESPACE, FULLNAME, "token"),
    *_checks("escalate bind", "rbac.authorization.k8s.io", "clusterroles", "", FULLNAME),
    *_checks("update", "apps", "deployments", NAMESPACE, FULLNAME),
    # The apiserver's allocation truth is read, never written (no reservations).
    *_checks("get create update delete", "networking.k8s.io", "ipaddresses", "", "10.96.0.10"),
    *_checks("create delete", "networking.k8s.io", "servicecidrs", "", "kubernetes"),
]


def _can(kube: Kube, check: Check) -> bool:
    verb, group, resource, namespace, name, sub = check
    return kube.can(SA_USER, SA_GROUPS, verb, resource, group=group, namespace=namespace, name=name, subresource=sub)


def test_service_account_may_do_what_portico_does(installed: dict[str, Any], kube: Kube) -> None:
    denied = [c for c in ALLOWED if not _can(kube, c)]
    assert denied == [], "RBAC refuses what Portico needs"


def test_service_account_may_do_nothing_more(installed: dict[str, Any], kube: Kube) -> None:
    allowed = [c for c in FORBIDDEN if _can(kube, c)]
    assert allowed == [], "RBAC grants more than Portico needs"


def test_upgrade_keeps_the_ca_bundle_portico_patched_in(installed: dict[str, Any], kubeconfig: Path, kube: Kube) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n").decode()
    for path in (VWC, MWC):
        kube.request(
            "PATCH",
            f"{path}/{FULLNAME}",
            [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": ca}],
            content_type="application/json-patch+json",
        )
    with _config(kubeconfig, NAMESPACE) as cfg:
        out = cfg.upgrade(CHART_DIR, RELEASE, {"replicaCount": 3, "webhook": {"timeoutSeconds": 7}}, wait="hookOnly", timeout=TIMEOUT)
    assert out["status"] == "deployed" and out["revision"] == 2
    for path in (VWC, MWC):
        hook = kube.get(f"{path}/{FULLNAME}")["webhooks"][0]
        assert hook["timeoutSeconds"] == 7  # the upgrade applied
        assert hook["clientConfig"]["caBundle"] == ca  # and left caBundle alone
    deploy = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{FULLNAME}")
    assert deploy["spec"]["replicas"] == 3


def test_uninstall_removes_everything_but_the_crd(installed: dict[str, Any], kubeconfig: Path, kube: Kube) -> None:
    out = _uninstall(kubeconfig, RELEASE, NAMESPACE)
    assert CRD in out["info"]  # "kept due to the resource policy"
    for path in (
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{FULLNAME}",
        f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{FULLNAME}",
        f"{VWC}/{FULLNAME}",
        f"{MWC}/{FULLNAME}",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{FULLNAME}",
    ):
        _wait_gone(kube, path)
    assert kube.get_opt(CRD_PATH) is not None


# --- every ci/ values file installs too ------------------------------------------------------


@pytest.mark.parametrize("case", ci_values_files(), ids=lambda c: c.name)
def test_ci_values_install(case: Path, kubeconfig: Path, kube: Kube, addon_crds: None) -> None:
    stem = case.name.removesuffix("-values.yaml")
    release, namespace = f"ci-{stem}"[:40], f"portico-ci-{stem}"[:63]
    values = load_values(case)
    # The CRD belongs to the default release's test (or to `portico dev`); the webhooks match
    # nothing here.
    values["installCRDs"] = False
    values.setdefault("webhook", {})["namespaceSelectorExpressions"] = MATCH_NOTHING
    _uninstall(kubeconfig, release, namespace)
    try:
        out = _install(kubeconfig, release, namespace, values)
        assert out["status"] == "deployed"
        want = render(values, release=release, namespace=namespace)
        name = want.deployment["metadata"]["name"]
        deploy = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        assert deploy["spec"]["template"]["spec"]["containers"][0]["args"] == want.args
        for doc in want.docs:
            kind, meta = doc["kind"], doc["metadata"]
            if kind == "ClusterRole":
                stored = kube.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{meta['name']}")
                assert rbac_rules(stored) == rbac_rules(doc)
            if kind in ("Certificate", "Issuer"):
                plural = kind.lower() + "s"
                assert kube.get_opt(f"/apis/cert-manager.io/v1/namespaces/{namespace}/{plural}/{meta['name']}")
            if kind == "NetworkPolicy":
                stored = kube.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{meta['name']}")
                assert stored["spec"] == doc["spec"]
            if kind == "Deployment":
                stored_pod = deploy["spec"]["template"]["spec"]
                for key in ("hostNetwork", "dnsPolicy", "topologySpreadConstraints", "priorityClassName"):
                    if key in doc["spec"]["template"]["spec"]:
                        assert stored_pod[key] == doc["spec"]["template"]["spec"][key], key
            if kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
                plural = kind.lower() + "s"
                stored = kube.get_opt(f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/{plural}/{meta['name']}")
                assert stored and stored["spec"] == doc["spec"], kind
            if kind == "ConfigMap" and meta["name"].endswith("-dashboard"):
                stored = kube.get(f"/api/v1/namespaces/{meta.get('namespace', namespace)}/configmaps/{meta['name']}")
                assert stored["data"] == doc["data"] and stored["metadata"]["labels"]["grafana_dashboard"] == "1"
    finally:
        _uninstall(kubeconfig, release, namespace)
