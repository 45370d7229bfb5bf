"""What the chart renders (real Helm engine, offline), checked object by object: security
context, probes, PDB, anti-affinity, RBAC rules exactly, webhook configurations, and the
arguments against `portico run`'s flag contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from chartlib import (
    CRD_FILE,
    NAMESPACE,
    RELEASE,
    Rendered,
    chart_metadata,
    ci_values_files,
    load_values,
    parse_flags,
    rbac_rules,
    render,
)

FULLNAME = "portico"  # release "portico" + chart "portico"

# `portico run`'s flags (the binary's contract); the chart passes no others by itself.
RUN_FLAGS = {
    "controllers",
    "concurrent-service-endpoint-syncs",
    "max-endpoints-per-slice",
    "endpoint-updates-batch-period",
    "managed-by",
    "adopt-from",
    "webhook",
    "webhook-bind-address",
    "webhook-configuration-name",
    "tls-cert-file",
    "tls-private-key-file",
    "tls-secret-name",
    "webhook-service-name",
    "allocation",
    "service-cluster-ip-range",
    "refuse-outside-service-cluster-ip-range",
    "service-node-port-range",
    "allocation-claim-ttl",
    "repair-interval",
    "metrics-bind-address",
    "leader-elect",
    "leader-elect-lease-duration",
    "leader-elect-renew-deadline",
    "leader-elect-retry-period",
    "leader-elect-resource-name",
    "leader-elect-resource-namespace",
    "log-format",
    "log-level",
}

Rule = tuple[str, str, str, "str | None"]


def rules(group: str, resource: str, verbs: str, name: str | None = None) -> set[Rule]:
    return {(group, resource, v, name) for v in verbs.split()}


# Exactly what Portico does through the API, component by component.
SERVICES_PODS = rules("", "services", "get list watch") | rules("", "pods", "get list watch")
EVENTS = rules("events.k8s.io", "events", "create patch")
ENDPOINTSLICE_CONTROLLER = (
    rules("", "nodes", "get list watch")
    | rules("discovery.k8s.io", "endpointslices", "get list watch create update delete")
    | rules("", "services/finalizers", "update")
)
ENDPOINT_CONTROLLER = rules("", "endpoints", "get list watch create update delete")
ALLOCATION = rules("portico.dev", "rangeallocations", "get list watch create update") | rules(
    "networking.k8s.io", "servicecidrs", "list watch"
) | rules("networking.k8s.io", "ipaddresses", "list watch")


def self_managed_certs(config: str) -> set[Rule]:
    return rules("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get patch", config) | rules(
        "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get patch", config
    )


def lease(name: str) -> set[Rule]:
    return rules("coordination.k8s.io", "leases", "create") | rules("coordination.k8s.io", "leases", "get update", name)


def tls_secret(name: str) -> set[Rule]:
    return rules("", "secrets", "create") | rules("", "secrets", "get update", name)


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


def ci(name: str, **kw: Any) -> Rendered:
    return render(load_values(Path(__file__).parents[2] / "charts/portico/ci" / name), **kw)


# --- every values file renders sane objects ---------------------------------------------------


@pytest.mark.parametrize("case", [None, *ci_values_files()], ids=lambda c: "defaults" if c is None else c.name)
def test_renders_well_formed_objects(case: Path | None) -> None:
    out = render(None if case is None else load_values(case), release="rel", namespace="team-ns")
    assert out.docs
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "CustomResourceDefinition",
    }
    seen = set()
    for doc in out.docs:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        meta = doc["metadata"]
        key = (doc["kind"], meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        assert len(meta["name"]) <= 63 or doc["kind"] == "CustomResourceDefinition"
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in meta, key
        else:
            assert meta["namespace"] == "team-ns", key
        labels = meta.get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == "rel", key
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", key
    # Only stable APIs that kube-apiserver 1.24 serves (plus the optional add-ons' CRDs).
    allowed = {
        "v1",
        "apps/v1",
        "policy/v1",
        "rbac.authorization.k8s.io/v1",
        "admissionregistration.k8s.io/v1",
        "apiextensions.k8s.io/v1",
        "cert-manager.io/v1",
        "monitoring.coreos.com/v1",
    }
    assert {d["apiVersion"] for d in out.docs} <= allowed


def test_default_objects(default: Rendered) -> None:
    assert sorted((d["kind"], d["metadata"]["name"]) for d in default.docs) == sorted(
        [
            ("ClusterRole", FULLNAME),
            ("ClusterRoleBinding", FULLNAME),
            ("CustomResourceDefinition", "rangeallocations.portico.dev"),
            ("Deployment", FULLNAME),
            ("MutatingWebhookConfiguration", FULLNAME),
            ("PodDisruptionBudget", FULLNAME),
            ("Role", FULLNAME),
            ("RoleBinding", FULLNAME),
            ("Service", FULLNAME),
            ("ServiceAccount", FULLNAME),
            ("ValidatingWebhookConfiguration", FULLNAME),
        ]
    )


def test_notes_render(default: Rendered) -> None:
    notes = default.files["portico/templates/NOTES.txt"]
    assert "kubectl delete validatingwebhookconfiguration,mutatingwebhookconfiguration portico" in notes


# --- the Deployment --------------------------------------------------------------------------


def test_image_defaults_to_app_version(default: Rendered) -> None:
    app_version = chart_metadata()["appVersion"]
    assert default.container["image"] == f"ghcr.io/portico-dev/portico:{app_version}"
    assert default.container["imagePullPolicy"] == "IfNotPresent"
    assert render({"image": {"tag": "v9"}}).container["image"] == "ghcr.io/portico-dev/portico:v9"
    digest = "sha256:" + "ab" * 32
    assert render({"image": {"digest": digest}}).container["image"] == f"ghcr.io/portico-dev/portico@{digest}"


def test_security_context(default: Rendered) -> None:
    pod = default.pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 65532 and pod["runAsGroup"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    c = default.container["securityContext"]
    assert c["allowPrivilegeEscalation"] is False
    assert c["readOnlyRootFilesystem"] is True
    assert c["runAsNonRoot"] is True
    assert c["privileged"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert default.pod_spec["serviceAccountName"] == FULLNAME
    # The only writable place: a small in-memory /tmp (self-managed certificate files).
    assert default.container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert default.pod_spec["volumes"] == [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]
    assert default.pod_spec["automountServiceAccountToken"] is True


def test_probes_resources_and_ports(default: Rendered) -> None:
    c = default.container
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["periodSeconds"] > 0 and c["readinessProbe"]["failureThreshold"] > 0
    assert c["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert c["resources"]["limits"] == {"memory": "256Mi"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"webhook": 9443, "metrics": 8080}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_pre_stop_delay(default: Rendered) -> None:
    # The default render uses Helm's current Kubernetes version, which has the sleep action; on
    # clusters older than 1.30 it is left out (see the install test).
    assert default.container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert default.pod_spec["terminationGracePeriodSeconds"] == 30
    assert "lifecycle" not in render({"preStopSleepSeconds": 0}).container


def test_replicas_rollout_and_pdb(default: Rendered) -> None:
    spec = default.deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pdb = default.one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    pod_labels = default.deployment["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector == spec["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    # A PDB on one replica would block drains.
    assert render({"replicaCount": 1}).maybe("PodDisruptionBudget") is None
    assert render({"podDisruptionBudget": {"enabled": False}}).maybe("PodDisruptionBudget") is None
    ha = ci("ha-values.yaml")
    assert ha.deployment["spec"]["replicas"] == 3
    assert ha.one("PodDisruptionBudget")["spec"]["minAvailable"] == 2


def test_anti_affinity(default: Rendered) -> None:
    selector = default.deployment["spec"]["selector"]["matchLabels"]
    soft = default.pod_spec["affinity"]["podAntiAffinity"]
    assert list(soft) == ["preferredDuringSchedulingIgnoredDuringExecution"]
    term = soft["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term == {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}
    hard = ci("ha-values.yaml").pod_spec
    req = hard["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert req == [{"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}]
    assert hard["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert hard["priorityClassName"] == "system-cluster-critical"
    assert "affinity" not in render({"podAntiAffinity": "none"}).pod_spec
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    assert render({"affinity": custom}).pod_spec["affinity"] == custom


# --- arguments: the flag contract -------------------------------------------------------------


def test_default_args_follow_the_flag_contract(default: Rendered) -> None:
    assert default.container["args"][0] == "run"
    assert "command" not in default.container  # the image's entrypoint is portico
    assert default.flags == {
        "controllers": "endpointslice,endpoint",
        "concurrent-service-endpoint-syncs": "5",
        "max-endpoints-per-slice": "100",
        "endpoint-updates-batch-period": "250ms",
        "managed-by": "endpointslice-controller.portico",
        "webhook": "true",
        "webhook-bind-address": "0.0.0.0:9443",
        "tls-secret-name": "portico-webhook-tls",
        "webhook-service-name": "portico",
        "webhook-configuration-name": "portico",
        "allocation": "true",
        "service-node-port-range": "30000-32767",
        "allocation-claim-ttl": "30s",
        "repair-interval": "60s",
        "metrics-bind-address": "0.0.0.0:8080",
        "leader-elect": "true",
        "leader-elect-lease-duration": "15s",
        "leader-elect-renew-deadline": "10s",
        "leader-elect-retry-period": "2s",
        "leader-elect-resource-name": "portico",
        "leader-elect-resource-namespace": NAMESPACE,
        "log-format": "text",
        "log-level": "info",
    }


@pytest.mark.parametrize("case", [None, *ci_values_files()], ids=lambda c: "defaults" if c is None else c.name)
def test_only_contract_flags(case: Path | None) -> None:
    out = render(None if case is None else load_values(case))
    assert set(out.flags) <= RUN_FLAGS, set(out.flags) - RUN_FLAGS


def test_non_default_args() -> None:
    dual = ci("dualstack-ignore-values.yaml").flags
    assert dual["service-cluster-ip-range"] == "10.96.0.0/12,fd00::/108"
    assert dual["repair-interval"] == "2m"
    assert dual["webhook-bind-address"] == "[::]:9443"
    assert dual["metrics-bind-address"] == "[::]:8080"

    adopt = ci("adopt-values.yaml")
    f = adopt.flags
    assert f["adopt-from"] == "endpointslice-controller.k8s.io"
    assert f["controllers"] == "endpointslice"
    assert f["log-format"] == "json" and f["log-level"] == "portico=debug,kube=info"
    assert f["concurrent-service-endpoint-syncs"] == "10" and f["max-endpoints-per-slice"] == "500"
    assert f["endpoint-updates-batch-period"] == "0"
    assert f["leader-elect"] == "false"
    assert not any(k.startswith("leader-elect-") for k in f)
    assert {"name": "RUST_BACKTRACE", "value": "1"} in adopt.container["env"]

    cm = ci("certmanager-values.yaml").flags
    assert cm["tls-cert-file"] == "/certs/tls.crt" and cm["tls-private-key-file"] == "/certs/tls.key"
    for absent in ("tls-secret-name", "webhook-configuration-name", "webhook-service-name"):
        assert absent not in cm

    off = ci("webhook-disabled-values.yaml")
    assert off.flags["webhook"] == "false"
    assert not any(k.startswith(("webhook-", "tls-")) for k in off.flags)
    assert [p["name"] for p in off.container["ports"]] == ["metrics"]

    assert render({"controllers": {"enabled": []}}).flags["controllers"] == ""
    narrowed = render({"allocation": {"serviceClusterIPRanges": ["10.96.0.0/20"], "refuseOutsideRange": True, "claimTTL": "10s"}})
    assert narrowed.flags["service-cluster-ip-range"] == "10.96.0.0/20"
    assert narrowed.flags["refuse-outside-service-cluster-ip-range"] == "true"
    assert narrowed.flags["allocation-claim-ttl"] == "10s"
    validate_only = render({"allocation": {"enabled": False}})
    assert not any(k.startswith(("allocation", "service-", "repair-", "refuse-")) for k in validate_only.flags)
    assert validate_only.maybe("MutatingWebhookConfiguration") is None
    assert not rbac_rules(validate_only.one("ClusterRole")) & ALLOCATION
    extra = render({"extraArgs": ["--log-level=debug"]}).args
    assert extra[-1] == "--log-level=debug"


def test_names_agree_across_objects(default: Rendered) -> None:
    """The names in the flags are the names of the objects and of the RBAC resourceNames."""
    f = default.flags
    svc = default.one("Service")
    assert f["webhook-service-name"] == svc["metadata"]["name"]
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert default.one(kind)["metadata"]["name"] == f["webhook-configuration-name"]
    cluster = rbac_rules(default.one("ClusterRole"))
    assert ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", f["webhook-configuration-name"]) in cluster
    role = rbac_rules(default.one("Role"))
    assert ("", "secrets", "get", f["tls-secret-name"]) in role
    assert ("coordination.k8s.io", "leases", "update", f["leader-elect-resource-name"]) in role
    assert f["leader-elect-resource-namespace"] == default.one("Role")["metadata"]["namespace"]


# --- RBAC ------------------------------------------------------------------------------------


def _no_wildcards(doc: dict[str, Any]) -> None:
    for rule in doc["rules"]:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            for item in rule.get(key) or []:
                assert "*" not in item, (doc["kind"], rule)
        assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("case", [None, *ci_values_files()], ids=lambda c: "defaults" if c is None else c.name)
def test_rbac_has_no_wildcards(case: Path | None) -> None:
    out = render(None if case is None else load_values(case))
    for kind in ("ClusterRole", "Role"):
        for doc in out.all(kind):
            _no_wildcards(doc)


def test_default_rbac_is_exactly_what_portico_uses(default: Rendered) -> None:
    assert rbac_rules(default.one("ClusterRole")) == (
        SERVICES_PODS | EVENTS | ENDPOINTSLICE_CONTROLLER | ENDPOINT_CONTROLLER | ALLOCATION | self_managed_certs(FULLNAME)
    )
    assert rbac_rules(default.one("Role")) == lease(FULLNAME) | tls_secret("portico-webhook-tls")


def test_rbac_follows_the_configuration() -> None:
    cm = ci("certmanager-values.yaml")
    assert rbac_rules(cm.one("ClusterRole")) == (
        SERVICES_PODS | EVENTS | ENDPOINTSLICE_CONTROLLER | ENDPOINT_CONTROLLER | ALLOCATION
    )
    assert rbac_rules(cm.one("Role")) == lease(FULLNAME)

    adopt = ci("adopt-values.yaml")  # endpointslice only, no leader election
    assert rbac_rules(adopt.one("ClusterRole")) == (
        SERVICES_PODS | EVENTS | ENDPOINTSLICE_CONTROLLER | ALLOCATION | self_managed_certs(FULLNAME)
    )
    assert rbac_rules(adopt.one("Role")) == tls_secret("portico-webhook-tls")

    only_endpoints = render({"controllers": {"enabled": ["endpoint"]}})
    assert rbac_rules(only_endpoints.one("ClusterRole")) == (
        SERVICES_PODS | EVENTS | ENDPOINT_CONTROLLER | ALLOCATION | self_managed_certs(FULLNAME)
    )

    off = ci("webhook-disabled-values.yaml")
    assert rbac_rules(off.one("ClusterRole")) == SERVICES_PODS | EVENTS | ENDPOINTSLICE_CONTROLLER | ENDPOINT_CONTROLLER
    assert rbac_rules(off.one("Role")) == lease(FULLNAME)

    neither = render({"webhook": {"enabled": False}, "leaderElection": {"enabled": False}})
    assert neither.maybe("Role") is None and neither.maybe("RoleBinding") is None

    none = render({"rbac": {"create": False}})
    assert not none.kinds() & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_bindings_point_at_the_service_account() -> None:
    out = ci("webhook-disabled-values.yaml")  # custom ServiceAccount name
    sa = out.one("ServiceAccount")
    assert sa["metadata"]["name"] == "portico-controllers"
    assert sa["metadata"]["annotations"] == {"example.com/owner": "platform"}
    assert out.pod_spec["serviceAccountName"] == "portico-controllers"
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        b = out.one(kind)
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": FULLNAME}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "portico-controllers", "namespace": NAMESPACE}]
    external = render({"serviceAccount": {"create": False, "name": "byo"}})
    assert external.maybe("ServiceAccount") is None
    assert external.pod_spec["serviceAccountName"] == "byo"


# --- Service and webhook configurations -------------------------------------------------------


def test_service(default: Rendered) -> None:
    svc = default.one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == default.deployment["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"webhook": (443, "webhook"), "metrics": (8080, "metrics")}


def _webhook(out: Rendered, kind: str) -> dict[str, Any]:
    config = out.one(kind)
    assert config["apiVersion"] == "admissionregistration.k8s.io/v1"
    (hook,) = config["webhooks"]
    return hook


def _excluded(hook: dict[str, Any]) -> list[str]:
    (expr, *_) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
    return expr["values"]


def test_validating_webhook(default: Rendered) -> None:
    hook = _webhook(default, "ValidatingWebhookConfiguration")
    assert hook["name"] == "ports.portico.dev"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 5
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["clientConfig"] == {
        "service": {"name": "portico", "namespace": NAMESPACE, "path": "/validate", "port": 443}
    }
    assert _excluded(hook) == ["kube-system", "kube-node-lease", NAMESPACE]
    got = {
        (g, v, r, tuple(rule["operations"]), rule["scope"])
        for rule in hook["rules"]
        for g in rule["apiGroups"]
        for v in rule["apiVersions"]
        for r in rule["resources"]
    }
    want = {
        (g, "v1", r, ("CREATE", "UPDATE"), "Namespaced")
        for g, r in [
            ("", "pods"),
            ("", "services"),
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("apps", "replicasets"),
            ("batch", "jobs"),
            ("batch", "cronjobs"),
        ]
    }
    assert got == want


def test_mutating_webhook(default: Rendered) -> None:
    hook = _webhook(default, "MutatingWebhookConfiguration")
    assert hook["name"] == "allocation.portico.dev"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["clientConfig"] == {
        "service": {"name": "portico", "namespace": NAMESPACE, "path": "/mutate", "port": 443}
    }
    assert _excluded(hook) == ["kube-system", "kube-node-lease", NAMESPACE]
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],  # never DELETE: an outage must not block deletes
            "resources": ["services"],
            "scope": "Namespaced",
        }
    ]


def test_ca_bundle_is_never_rendered() -> None:
    """Portico (self-managed) or cert-manager's injector owns caBundle; a rendered value would
    be reset by every upgrade."""
    for case in [None, *ci_values_files()]:
        out = render(None if case is None else load_values(case))
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            for config in out.all(kind):
                for hook in config["webhooks"]:
                    assert "caBundle" not in hook["clientConfig"]


def test_webhook_knobs() -> None:
    out = ci("dualstack-ignore-values.yaml", namespace="edge")
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        hook = _webhook(out, kind)
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == 3
        assert _excluded(hook) == ["kube-system", "kube-node-lease", "edge", "monitoring"]
        assert hook["namespaceSelector"]["matchExpressions"][1] == {
            "key": "portico.dev/webhook",
            "operator": "NotIn",
            "values": ["disabled"],
        }
    strict = ci("adopt-values.yaml")
    assert _webhook(strict, "ValidatingWebhookConfiguration")["failurePolicy"] == "Fail"
    assert _webhook(strict, "MutatingWebhookConfiguration")["failurePolicy"] == "Fail"
    # The release namespace is not listed twice when it is kube-system.
    assert _excluded(_webhook(render(namespace="kube-system"), "MutatingWebhookConfiguration")) == [
        "kube-system",
        "kube-node-lease",
    ]
    named = render({"webhook": {"configurationName": "portico-admission"}})
    assert named.one("ValidatingWebhookConfiguration")["metadata"]["name"] == "portico-admission"
    assert named.flags["webhook-configuration-name"] == "portico-admission"
    off = ci("webhook-disabled-values.yaml")
    assert not off.kinds() & {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "Certificate"}
    assert [p["name"] for p in off.one("Service")["spec"]["ports"]] == ["metrics"]


def test_cert_manager_mode() -> None:
    out = ci("certmanager-values.yaml")
    certs = {c["metadata"]["name"]: c for c in out.all("Certificate")}
    issuers = {i["metadata"]["name"]: i for i in out.all("Issuer")}
    assert set(issuers) == {"portico-selfsigned", "portico-ca"}
    assert issuers["portico-selfsigned"]["spec"] == {"selfSigned": {}}
    assert issuers["portico-ca"]["spec"] == {"ca": {"secretName": "portico-ca"}}
    assert certs["portico-ca"]["spec"]["isCA"] is True
    serving = certs["portico-webhook"]["spec"]
    assert serving["issuerRef"] == {"kind": "Issuer", "name": "portico-ca"}
    assert serving["secretName"] == "portico-webhook-tls"
    assert "portico.portico-system.svc" in serving["dnsNames"]
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        ann = out.one(kind)["metadata"]["annotations"]
        assert ann == {"cert-manager.io/inject-ca-from": "portico-system/portico-webhook"}
    # The certificate's Secret is mounted where the flags look.
    (volume,) = [v for v in out.pod_spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == serving["secretName"]
    (mount,) = [m for m in out.container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/certs", "readOnly": True}

    own = ci("certmanager-issuer-values.yaml")
    assert own.maybe("Issuer") is None
    cert = own.one("Certificate")["spec"]
    assert cert["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}
    assert cert["secretName"] == "portico-serving-cert" and cert["duration"] == "720h"
    assert [v["secret"]["secretName"] for v in own.pod_spec["volumes"] if "secret" in v] == ["portico-serving-cert"]

    default = render()
    assert not default.kinds() & {"Certificate", "Issuer"}
    assert not [v for v in default.pod_spec["volumes"] if "secret" in v]
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert "annotations" not in default.one(kind)["metadata"]


def test_service_monitor() -> None:
    assert render().maybe("ServiceMonitor") is None
    out = ci("ha-values.yaml")
    sm = out.one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= out.one("Service")["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["interval"] == "15s"


# --- the CRD ---------------------------------------------------------------------------------


def test_crd_is_the_file_plus_chart_metadata(default: Rendered) -> None:
    crd = default.one("CustomResourceDefinition")
    docs = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    assert len(docs) == 1
    source = docs[0]
    meta = crd["metadata"]
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert {k: v for k, v in crd.items() if k != "metadata"} == {k: v for k, v in source.items() if k != "metadata"}
    assert {k: v for k, v in meta.items() if k not in ("labels", "annotations")} == source["metadata"]


def test_crd_file_describes_range_allocations() -> None:
    (crd,) = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "rangeallocations.portico.dev"
    spec = crd["spec"]
    assert spec["group"] == "portico.dev" and spec["scope"] == "Cluster"
    assert spec["names"]["plural"] == "rangeallocations" and spec["names"]["kind"] == "RangeAllocation"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert "subresources" not in version  # no status subresource, on purpose (crd.rs)
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"] == ["range"]


def test_install_crds_off() -> None:
    assert render({"installCRDs": False}).maybe("CustomResourceDefinition") is None


def test_parse_flags_rejects_malformed_args() -> None:
    with pytest.raises(AssertionError):
        parse_flags(["run", "--webhook", "true"])
    with pytest.raises(AssertionError):
        parse_flags(["run", "--a=1", "--a=2"])
