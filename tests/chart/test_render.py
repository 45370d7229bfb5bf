"""What the chart renders (real Helm engine, offline), checked object by object: security
context, probes, PDB, anti-affinity, RBAC rules exactly, webhook configurations, and the
arguments against `portico run`'s flag contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from chartlib import (
    CHART_DIR,
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
DASHBOARD_FILE = CHART_DIR / "files" / "dashboards" / "portico.json"

# `portico run`'s flags (the binary's contract); the chart passes no others by itself.
RUN_FLAGS = {
    "controllers",
    "concurrent-service-endpoint-syncs",
    "max-endpoints-per-slice",
    "endpoint-updates-batch-period",
    "managed-by",
    "adopt-from",
    "mirroring-concurrent-service-endpoint-syncs",
    "mirroring-max-endpoints-per-subset",
    "mirroring-endpointslice-updates-batch-period",
    "mirroring-managed-by",
    "mirroring-adopt-from",
    "kube-api-qps",
    "kube-api-burst",
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
    "metrics-secure",
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
# The EndpointSliceMirroring controller: reads Endpoints, writes slices as the EndpointSlice
# controller does (the same rule), owner-references the Endpoints with blockOwnerDeletion.
MIRRORING_CONTROLLER = (
    rules("", "endpoints", "get list watch")
    | rules("discovery.k8s.io", "endpointslices", "get list watch create update delete")
    | rules("", "endpoints/finalizers", "update")
)
MIRRORING_FLAGS = {
    "mirroring-concurrent-service-endpoint-syncs",
    "mirroring-max-endpoints-per-subset",
    "mirroring-endpointslice-updates-batch-period",
    "mirroring-managed-by",
    "mirroring-adopt-from",
}
ALL_CONTROLLERS = ["endpointslice", "endpoint", "endpointslicemirroring"]
ALLOCATION = rules("portico.dev", "rangeallocations", "get list watch create update") | rules(
    "portico.dev", "rangeallocations/status", "update"
) | rules(
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
        "networking.k8s.io/v1",
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
        "kube-api-qps": "20",
        "kube-api-burst": "30",
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


def test_mirroring_flags_only_when_enabled(default: Rendered) -> None:
    """The mirroring controller is opt-in: its flags are passed only when it is in
    controllers.enabled, and then carry the values (adoptFrom only when set)."""
    assert not set(default.flags) & MIRRORING_FLAGS
    assert "endpointslicemirroring" not in default.flags["controllers"].split(",")
    # Settings alone do not turn it on.
    tuned = render({"controllers": {"mirroring": {"concurrentServiceEndpointSyncs": 9, "adoptFrom": "x"}}})
    assert not set(tuned.flags) & MIRRORING_FLAGS

    on = render({"controllers": {"enabled": ALL_CONTROLLERS}}).flags
    assert on["controllers"] == "endpointslice,endpoint,endpointslicemirroring"
    assert {k: v for k, v in on.items() if k in MIRRORING_FLAGS} == {
        "mirroring-concurrent-service-endpoint-syncs": "5",
        "mirroring-max-endpoints-per-subset": "1000",
        "mirroring-endpointslice-updates-batch-period": "0",
        "mirroring-managed-by": "endpointslicemirroring-controller.portico",
    }
    # The other controllers' flags are unchanged by it.
    assert {k: v for k, v in on.items() if k not in MIRRORING_FLAGS | {"controllers"}} == {
        k: v for k, v in default.flags.items() if k != "controllers"
    }

    alone = render(
        {
            "controllers": {
                "enabled": ["endpointslicemirroring"],
                "mirroring": {
                    "concurrentServiceEndpointSyncs": 50,
                    "maxEndpointsPerSubset": 1,
                    "endpointSliceUpdatesBatchPeriod": "1m30s",
                    "managedBy": "mirror.example.com",
                    "adoptFrom": "endpointslicemirroring-controller.k8s.io",
                },
            }
        }
    ).flags
    assert alone["controllers"] == "endpointslicemirroring"
    assert alone["mirroring-concurrent-service-endpoint-syncs"] == "50"
    assert alone["mirroring-max-endpoints-per-subset"] == "1"
    assert alone["mirroring-endpointslice-updates-batch-period"] == "1m30s"
    assert alone["mirroring-managed-by"] == "mirror.example.com"
    assert alone["mirroring-adopt-from"] == "endpointslicemirroring-controller.k8s.io"

    ci_file = ci("mirroring-values.yaml").flags
    assert ci_file["controllers"] == "endpointslice,endpoint,endpointslicemirroring"
    assert ci_file["mirroring-concurrent-service-endpoint-syncs"] == "10"
    assert ci_file["mirroring-max-endpoints-per-subset"] == "500"
    assert ci_file["mirroring-endpointslice-updates-batch-period"] == "100ms"
    assert ci_file["mirroring-adopt-from"] == "endpointslicemirroring-controller.k8s.io"
    assert "adopt-from" not in ci_file  # the EndpointSlice controller's adoption is separate


def test_mirroring_managed_by_must_differ_from_the_slice_controllers() -> None:
    """With both running, one managed-by name would make each controller take the other's slices
    for its own: refused before anything renders."""
    refused = [
        {"mirroring": {"managedBy": "endpointslice-controller.portico"}},
        {"mirroring": {"adoptFrom": "endpointslice-controller.k8s.io"}},
        {"managedBy": "mine", "mirroring": {"managedBy": "mine"}},
        {"adoptFrom": "theirs", "mirroring": {"adoptFrom": "theirs"}},
        {"adoptFrom": "theirs", "mirroring": {"managedBy": "theirs"}},
    ]
    for values in refused:
        for enabled in (ALL_CONTROLLERS, ["endpointslicemirroring"]):
            with pytest.raises(helm.HelmRenderError, match="an EndpointSlice controller's manager name"):
                render({"controllers": {"enabled": enabled, **values}})
    # Harmless while mirroring is off; distinct names are fine.
    render({"controllers": {"mirroring": {"managedBy": "endpointslice-controller.portico"}}})
    render({"controllers": {"enabled": ALL_CONTROLLERS, "adoptFrom": "endpointslice-controller.k8s.io",
                            "mirroring": {"adoptFrom": "endpointslicemirroring-controller.k8s.io"}}})


def test_mirroring_notes() -> None:
    assert "endpointslicemirroring" not in render().files["portico/templates/NOTES.txt"]
    notes = render({"controllers": {"enabled": ALL_CONTROLLERS}}).files["portico/templates/NOTES.txt"]
    assert "Controllers: endpointslice, endpoint, endpointslicemirroring." in notes
    assert "-endpointslicemirroring" in notes and "controllers.mirroring.adoptFrom" in notes


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

    mirroring = ci("mirroring-values.yaml")  # all three controllers
    assert rbac_rules(mirroring.one("ClusterRole")) == (
        SERVICES_PODS | EVENTS | ENDPOINTSLICE_CONTROLLER | ENDPOINT_CONTROLLER | MIRRORING_CONTROLLER | ALLOCATION
        | self_managed_certs(FULLNAME)
    )

    neither = render({"webhook": {"enabled": False}, "leaderElection": {"enabled": False}})
    assert neither.maybe("Role") is None and neither.maybe("RoleBinding") is None

    none = render({"rbac": {"create": False}})
    assert not none.kinds() & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_mirroring_rbac_only_when_enabled(default: Rendered) -> None:
    """The mirroring controller's rules come with it and with nothing else; they never widen
    another controller's rule, and a rule both need is rendered once."""
    assert ("", "endpoints/finalizers", "update", None) not in rbac_rules(default.one("ClusterRole"))
    tuned = render({"controllers": {"mirroring": {"concurrentServiceEndpointSyncs": 9}}})
    assert rbac_rules(tuned.one("ClusterRole")) == rbac_rules(default.one("ClusterRole"))

    base = SERVICES_PODS | EVENTS | ALLOCATION | self_managed_certs(FULLNAME)
    cases = {
        ("endpointslicemirroring",): MIRRORING_CONTROLLER,
        ("endpointslice", "endpointslicemirroring"): ENDPOINTSLICE_CONTROLLER | MIRRORING_CONTROLLER,
        ("endpoint", "endpointslicemirroring"): ENDPOINT_CONTROLLER | MIRRORING_CONTROLLER,
        tuple(ALL_CONTROLLERS): ENDPOINTSLICE_CONTROLLER | ENDPOINT_CONTROLLER | MIRRORING_CONTROLLER,
    }
    for enabled, controllers in cases.items():
        role = render({"controllers": {"enabled": list(enabled)}}).one("ClusterRole")
        assert rbac_rules(role) == base | controllers, enabled
        # One rule per resource: the shared ones are not repeated.
        resources = [(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]]
        assert len(resources) == len(set(resources)), (enabled, resources)
    # Alone, it may only read Endpoints (the Endpoints controller's writes stay off).
    alone = rbac_rules(render({"controllers": {"enabled": ["endpointslicemirroring"]}}).one("ClusterRole"))
    assert not alone & rules("", "endpoints", "create update delete")
    assert not alone & (rules("", "nodes", "get list watch") | rules("", "services/finalizers", "update"))


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


def _webhook(out: Rendered, kind: str, name: str | None = None) -> dict[str, Any]:
    """The configuration's webhook `name`; by default its first (ports.portico.dev in the
    validating one, which also holds endpoints.portico.dev; the mutating one has one)."""
    config = out.one(kind)
    assert config["apiVersion"] == "admissionregistration.k8s.io/v1"
    names = [h["name"] for h in config["webhooks"]]
    assert names == (["ports.portico.dev", ENDPOINTS_WEBHOOK] if kind.startswith("Validating") else ["allocation.portico.dev"])
    return next(h for h in config["webhooks"] if h["name"] == (name or names[0]))


ENDPOINTS_WEBHOOK = "endpoints.portico.dev"
UNMANAGED = [
    {"key": "endpoints.kubernetes.io/managed-by", "operator": "DoesNotExist"},
    {"key": "endpointslice.kubernetes.io/managed-by", "operator": "DoesNotExist"},
]


def test_endpoints_webhook(default: Rendered) -> None:
    """Hand-written Endpoints and EndpointSlices go to /validate; controllers' (a managed-by label)
    and kube-apiserver's own default/kubernetes never do, and an outage admits (Ignore)."""
    ports = _webhook(default, "ValidatingWebhookConfiguration")
    hook = _webhook(default, "ValidatingWebhookConfiguration", ENDPOINTS_WEBHOOK)
    assert hook["clientConfig"] == ports["clientConfig"]
    assert hook["namespaceSelector"] == ports["namespaceSelector"]
    assert (hook["sideEffects"], hook["failurePolicy"], hook["matchPolicy"], hook["timeoutSeconds"]) == ("None", "Ignore", "Equivalent", 5)
    assert hook["rules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["endpoints"], "scope": "Namespaced"},
        {"apiGroups": ["discovery.k8s.io"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["endpointslices"], "scope": "Namespaced"},
    ]
    assert hook["objectSelector"] == {"matchExpressions": UNMANAGED}
    assert hook["matchConditions"] == [
        {"name": "not-the-apiservers-own-endpoints", "expression": "!(request.namespace == 'default' && request.name == 'kubernetes')"}
    ]
    # The user's objectSelector is ANDed in; the port webhook's failurePolicy is not followed.
    selector = {"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "portico.dev/skip", "operator": "DoesNotExist"}]}
    out = render({"webhook": {"objectSelector": selector, "validating": {"failurePolicy": "Fail"}}})
    hook = _webhook(out, "ValidatingWebhookConfiguration", ENDPOINTS_WEBHOOK)
    assert hook["objectSelector"] == {"matchLabels": {"team": "a"}, "matchExpressions": selector["matchExpressions"] + UNMANAGED}
    assert hook["failurePolicy"] == "Ignore"
    off = render({"webhook": {"validating": {"matchConditions": {"enabled": False}}}})
    assert "matchConditions" not in _webhook(off, "ValidatingWebhookConfiguration", ENDPOINTS_WEBHOOK)


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


def test_pod_monitor() -> None:
    assert render().maybe("PodMonitor") is None
    relabel = [{"action": "replace", "targetLabel": "team", "replacement": "net"}]
    drop = [{"action": "drop", "sourceLabels": ["__name__"], "regex": "workqueue_adds_total"}]
    out = render(
        {
            "metrics": {
                "podMonitor": {
                    "enabled": True,
                    "interval": "20s",
                    "scrapeTimeout": "5s",
                    "labels": {"release": "kube-prometheus-stack"},
                    "relabelings": relabel,
                    "metricRelabelings": drop,
                }
            }
        }
    )
    assert out.maybe("ServiceMonitor") is None
    pm = out.one("PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_labels = out.deployment["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep == {
        "port": "metrics",
        "path": "/metrics",
        "scheme": "http",
        "interval": "20s",
        "scrapeTimeout": "5s",
        "honorLabels": True,
        "relabelings": relabel,
        "metricRelabelings": drop,
    }
    assert "metrics" in [p["name"] for p in out.container["ports"]]  # the port it names


def test_service_monitor_and_pod_monitor_exclude_each_other() -> None:
    both = {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}
    with pytest.raises(helm.HelmRenderError, match="metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true"):
        render(both)


def test_metrics_https() -> None:
    default = render()
    assert "metrics-secure" not in default.flags
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "scheme" not in default.container[probe]["httpGet"]
    assert ci("ha-values.yaml").one("ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "http"

    trusted = {
        "scheme": "https",
        "tlsConfig": {
            "ca": {"secret": {"name": "portico-webhook-tls", "key": "ca.crt"}},
            "serverName": f"portico.{NAMESPACE}.svc",
        },
    }
    for monitor, kind, key in (("serviceMonitor", "ServiceMonitor", "endpoints"), ("podMonitor", "PodMonitor", "podMetricsEndpoints")):
        out = render({"metrics": {"https": {"enabled": True}, monitor: {"enabled": True}}})
        assert out.flags["metrics-secure"] == "true"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert out.container[probe]["httpGet"]["scheme"] == "HTTPS"
            assert out.container[probe]["httpGet"]["port"] == "metrics"
        (ep,) = out.one(kind)["spec"][key]
        assert {k: ep[k] for k in ("scheme", "tlsConfig")} == trusted
        # The name checked is one the serving certificate carries (Portico's own: the Service's
        # DNS name; cert-manager's: its dnsNames), of the Service the webhook flags name.
        assert ep["tlsConfig"]["serverName"] == f"{out.flags['webhook-service-name']}.{NAMESPACE}.svc"
        skip = render({"metrics": {"https": {"enabled": True, "insecureSkipVerify": True}, monitor: {"enabled": True}}})
        (ep,) = skip.one(kind)["spec"][key]
        assert ep["scheme"] == "https" and ep["tlsConfig"] == {"insecureSkipVerify": True}

    # cert-manager: the CA is its ca.crt in the Secret it writes, under the name it is given.
    cm = render(
        {
            "certManager": {"enabled": True},
            "webhook": {"tls": {"secretName": "portico-serving-cert"}},
            "metrics": {"https": {"enabled": True}, "serviceMonitor": {"enabled": True}},
        }
    )
    (ep,) = cm.one("ServiceMonitor")["spec"]["endpoints"]
    assert ep["tlsConfig"]["ca"] == {"secret": {"name": "portico-serving-cert", "key": "ca.crt"}}
    serving = next(c for c in cm.all("Certificate") if c["metadata"]["name"] == "portico-webhook")
    assert ep["tlsConfig"]["serverName"] in serving["spec"]["dnsNames"]

    with pytest.raises(helm.HelmRenderError, match="metrics.https.enabled needs webhook.enabled"):
        render({"webhook": {"enabled": False}, "metrics": {"https": {"enabled": True}}})


ALERTS = {
    "PorticoNoLeader",
    "PorticoSyncErrors",
    "PorticoWorkQueueGrowing",
    "PorticoWebhookErrors",
    "PorticoWebhookSlow",
    "PorticoCertificateExpiring",
    "PorticoAllocationBandAlmostFull",
    "PorticoRepairFindings",
    "PorticoAllocationStateRecovered",
}


def _rules(out: Rendered) -> dict[str, dict[str, Any]]:
    (group,) = out.one("PrometheusRule")["spec"]["groups"]
    assert group["name"] == "portico"
    return {r.get("alert") or r["record"]: r for r in group["rules"]}


def test_prometheus_rule() -> None:
    assert render().maybe("PrometheusRule") is None
    out = render({"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}})
    pr = out.one("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["metadata"]["namespace"] == NAMESPACE
    assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = _rules(out)
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["for"], name
        # Prometheus' own templating survives Helm's.
        assert "{{ $labels." in rule["annotations"]["description"] or name == "PorticoNoLeader" or "{{ $value" in rule["annotations"]["description"]
    # The README's expressions, with the chart's defaults.
    assert rules["PorticoNoLeader"]["expr"] == (
        f'max by (namespace) (leader_election_master_status{{namespace="{NAMESPACE}",name="portico"}}) == 0'
    )
    assert rules["PorticoNoLeader"]["for"] == "1m" and rules["PorticoNoLeader"]["labels"]["severity"] == "critical"
    assert 'endpoint_slice_controller_syncs{namespace="portico-system",result="error"}[5m]' in rules["PorticoSyncErrors"]["expr"]
    assert 'portico_endpoints_controller_syncs_total{namespace="portico-system",result="error"}' in rules["PorticoSyncErrors"]["expr"]
    assert rules["PorticoSyncErrors"]["for"] == "15m"
    assert "workqueue_depth" in rules["PorticoWorkQueueGrowing"]["expr"] and "> 10)" in rules["PorticoWorkQueueGrowing"]["expr"]
    assert rules["PorticoWebhookErrors"]["expr"].rstrip().endswith("> 0.05")
    assert "histogram_quantile(0.99," in rules["PorticoWebhookSlow"]["expr"]
    assert rules["PorticoWebhookSlow"]["expr"].rstrip().endswith("> 1")
    assert rules["PorticoCertificateExpiring"]["expr"].rstrip().endswith("- time()\n< 7 * 86400")
    assert 'state="free"' in rules["PorticoAllocationBandAlmostFull"]["expr"]
    assert rules["PorticoAllocationBandAlmostFull"]["expr"].rstrip().endswith("< 0.1")
    assert 'type!="leak"' in rules["PorticoRepairFindings"]["expr"]
    assert "portico_allocator_state_recoveries_total" in rules["PorticoAllocationStateRecovered"]["expr"]
    assert rules["PorticoAllocationStateRecovered"]["for"] == "0s"


def test_prometheus_rule_knobs() -> None:
    extra = {"record": "portico:webhook_requests:rate5m", "expr": "sum(rate(portico_webhook_requests_total[5m]))"}
    out = render(
        {
            "leaderElection": {"leaseName": "portico-lease"},
            "metrics": {
                "prometheusRule": {
                    "enabled": True,
                    "alerts": {
                        "noLeader": {"for": "5m", "severity": "page"},
                        "webhookLatency": {"p99Seconds": 0.25},
                        "certificateExpiry": {"days": 14},
                        "bandAlmostFull": {"freeRatio": 0.2},
                        "queueGrowing": {"minDepth": 500},
                        "webhookErrors": {"enabled": False},
                    },
                    "additionalRules": [extra],
                }
            },
        },
        namespace="edge",
    )
    rules = _rules(out)
    assert set(rules) == ALERTS - {"PorticoWebhookErrors"} | {"portico:webhook_requests:rate5m"}
    assert rules["portico:webhook_requests:rate5m"] == extra
    assert rules["PorticoNoLeader"]["for"] == "5m" and rules["PorticoNoLeader"]["labels"]["severity"] == "page"
    assert 'name="portico-lease"' in rules["PorticoNoLeader"]["expr"]
    assert rules["PorticoWebhookSlow"]["expr"].rstrip().endswith("> 0.25")
    assert rules["PorticoCertificateExpiring"]["expr"].rstrip().endswith("< 14 * 86400")
    assert rules["PorticoAllocationBandAlmostFull"]["expr"].rstrip().endswith("< 0.2")
    assert "> 500)" in rules["PorticoWorkQueueGrowing"]["expr"]
    assert all('namespace="edge"' in r["expr"] for n, r in rules.items() if n.startswith("Portico"))


def test_prometheus_rule_follows_what_runs() -> None:
    """No alert on series a configuration does not export."""
    on = {"prometheusRule": {"enabled": True}}
    webhook_off = _rules(render({"webhook": {"enabled": False}, "metrics": on}))
    assert set(webhook_off) == {"PorticoNoLeader", "PorticoSyncErrors", "PorticoWorkQueueGrowing"}
    validate_only = _rules(render({"allocation": {"enabled": False}, "metrics": on}))
    assert set(validate_only) == ALERTS - {"PorticoAllocationBandAlmostFull", "PorticoRepairFindings", "PorticoAllocationStateRecovered"}
    no_election = _rules(render({"leaderElection": {"enabled": False}, "metrics": on}))
    assert set(no_election) == ALERTS - {"PorticoNoLeader"}
    webhook_only = _rules(render({"controllers": {"enabled": []}, "metrics": on}))
    assert "PorticoSyncErrors" not in webhook_only and "PorticoWorkQueueGrowing" not in webhook_only
    slices_only = _rules(render({"controllers": {"enabled": ["endpointslice"]}, "metrics": on}))
    expr = slices_only["PorticoSyncErrors"]["expr"]
    assert "endpoint_slice_controller_syncs" in expr and "portico_endpoints_controller" not in expr and " or" not in expr
    cm = _rules(render({"certManager": {"enabled": True}, "metrics": on}))
    assert "cert-manager renews it 360h ahead" in cm["PorticoCertificateExpiring"]["annotations"]["description"]


def test_grafana_dashboard() -> None:
    assert render().maybe("ConfigMap") is None
    out = render(
        {
            "grafana": {
                "dashboard": {
                    "enabled": True,
                    "labels": {"team": "net"},
                    "annotations": {"grafana_folder": "Portico"},
                }
            }
        }
    )
    cm = out.one("ConfigMap")
    assert cm["metadata"]["name"] == "portico-dashboard"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "net"
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Portico"}
    assert list(cm["data"]) == ["portico.json"]
    shipped = json.loads(DASHBOARD_FILE.read_text())
    assert json.loads(cm["data"]["portico.json"]) == shipped
    # The sidecar's label value, and the namespace it watches, are the user's to choose.
    moved = render({"grafana": {"dashboard": {"enabled": True, "namespace": "monitoring", "labels": {"grafana_dashboard": "portico"}}}})
    meta = moved.one("ConfigMap")["metadata"]
    assert meta["namespace"] == "monitoring" and meta["labels"]["grafana_dashboard"] == "portico"
    assert "annotations" not in meta


def test_dashboard_file() -> None:
    """A dashboard Grafana imports as it is: unique uid and panel ids, a Prometheus data source
    variable on every query, panels inside the 24-column grid, the promised panels there."""
    d = json.loads(DASHBOARD_FILE.read_text())
    assert d["uid"] == "portico" and d["title"] == "Portico"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        titles.add(p["title"])
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert 'namespace="$namespace"' in t["expr"].replace(" ", ""), p["title"]
    assert {
        "Replicas leading",
        "Serving certificate expires in",
        "Syncs per second",
        "Sync errors per second",
        "Sync latency",
        "Queue depth",
        "Reviews per second",
        "Review latency",
        "Error ratio",
        "Values used and free",
        "Repair findings (1h)",
        "RangeAllocation recoveries (1h)",
    } <= titles


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
    assert version["subresources"] == {"status": {}}  # `kubectl wait --for=condition=Exhausted`
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Exhausted"] == '.status.conditions[?(@.type=="Exhausted")].status'
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert set(conditions["items"]["required"]) >= {"type", "status", "reason", "message", "lastTransitionTime"}
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"] == ["range"]


def test_install_crds_off() -> None:
    assert render({"installCRDs": False}).maybe("CustomResourceDefinition") is None


def test_parse_flags_rejects_malformed_args() -> None:
    with pytest.raises(AssertionError):
        parse_flags(["run", "--webhook", "true"])
    with pytest.raises(AssertionError):
        parse_flags(["run", "--a=1", "--a=2"])


# --- placement: priority class, zone spread ----------------------------------------------------


def test_priority_class(default: Rendered) -> None:
    # Portico replaces control-plane controllers and can block Service writes.
    assert default.pod_spec["priorityClassName"] == "system-cluster-critical"
    assert "priorityClassName" not in render({"priorityClassName": ""}).pod_spec
    assert render({"priorityClassName": "platform-high"}).pod_spec["priorityClassName"] == "platform-high"


def test_zone_spread(default: Rendered) -> None:
    selector = default.deployment["spec"]["selector"]["matchLabels"]

    def zone(when: str) -> list[dict[str, Any]]:
        return [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": when,
                "labelSelector": {"matchLabels": selector},
            }
        ]

    assert default.pod_spec["topologySpreadConstraints"] == zone("ScheduleAnyway")
    assert render({"zoneSpread": "hard"}).pod_spec["topologySpreadConstraints"] == zone("DoNotSchedule")
    assert "topologySpreadConstraints" not in render({"zoneSpread": "none"}).pod_spec
    # A list of the user's replaces the preset, as `affinity` replaces `podAntiAffinity`.
    own = [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "x"}}}]
    assert render({"topologySpreadConstraints": own, "zoneSpread": "hard"}).pod_spec["topologySpreadConstraints"] == own
    assert ci("ha-values.yaml").pod_spec["topologySpreadConstraints"][0]["labelSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "portico"}
    }


# --- hostNetwork ------------------------------------------------------------------------------


def test_host_network() -> None:
    default = render()
    assert "hostNetwork" not in default.pod_spec and "dnsPolicy" not in default.pod_spec
    out = render({"hostNetwork": {"enabled": True}})
    assert out.pod_spec["hostNetwork"] is True
    assert out.pod_spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert out.flags["webhook-bind-address"] == "0.0.0.0:10270"
    assert out.flags["metrics-bind-address"] == "0.0.0.0:10271"
    ports = {p["name"]: p["containerPort"] for p in out.container["ports"]}
    assert ports == {"webhook": 10270, "metrics": 10271}
    assert not any("hostPort" in p for p in out.container["ports"])  # defaulted to containerPort
    # The Service and the probes name the ports, so they follow the container's.
    for p in out.one("Service")["spec"]["ports"]:
        assert p["targetPort"] in ports
    assert {(p["name"], p["port"]) for p in out.one("Service")["spec"]["ports"]} == {("webhook", 443), ("metrics", 8080)}
    assert out.container["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert out.container["readinessProbe"]["httpGet"]["port"] == "metrics"
    # Own ports, and webhook.port/metrics.port no longer matter.
    custom = render(
        {"hostNetwork": {"enabled": True, "webhookPort": 11443, "metricsPort": 11080}, "webhook": {"port": 1}, "metrics": {"port": 2}}
    )
    assert custom.flags["webhook-bind-address"].endswith(":11443")
    assert custom.flags["metrics-bind-address"].endswith(":11080")
    off = render({"hostNetwork": {"enabled": True}, "webhook": {"enabled": False}})
    assert [p["name"] for p in off.container["ports"]] == ["metrics"]


# --- NetworkPolicy ----------------------------------------------------------------------------


def test_network_policy() -> None:
    assert render().maybe("NetworkPolicy") is None
    out = render({"networkPolicy": {"enabled": True}})
    np = out.one("NetworkPolicy")
    assert np["apiVersion"] == "networking.k8s.io/v1"
    spec = np["spec"]
    assert spec["podSelector"] == {"matchLabels": out.deployment["spec"]["selector"]["matchLabels"]}
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec
    # Empty peer lists: rules without `from` (any source), only on Portico's two ports.
    assert spec["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 9443}]},
        {"ports": [{"protocol": "TCP", "port": 8080}]},
    ]

    cp = [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    prom = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    dns = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]
    full = render(
        {
            "networkPolicy": {
                "enabled": True,
                "webhookFrom": cp,
                "metricsFrom": prom,
                "egress": {"enabled": True, "apiServerPorts": [6443], "apiServerTo": cp, "dnsTo": dns},
            },
            "webhook": {"port": 10443},
            "metrics": {"port": 9090},
        }
    ).one("NetworkPolicy")["spec"]
    assert full["policyTypes"] == ["Ingress", "Egress"]
    assert full["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 10443}], "from": cp},
        {"ports": [{"protocol": "TCP", "port": 9090}], "from": prom},
    ]
    assert full["egress"] == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}], "to": dns},
        {"ports": [{"protocol": "TCP", "port": 6443}], "to": cp},
    ]
    default_egress = render({"networkPolicy": {"enabled": True, "egress": {"enabled": True}}}).one("NetworkPolicy")
    assert default_egress["spec"]["egress"][1] == {"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]}
    # No webhook, no webhook port to open.
    metrics_only = render({"networkPolicy": {"enabled": True}, "webhook": {"enabled": False}}).one("NetworkPolicy")
    assert metrics_only["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]


def test_ci_network_values() -> None:
    out = ci("network-values.yaml")
    spec = out.one("NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert all("from" in rule for rule in spec["ingress"])
    assert "to" not in spec["egress"][0] and spec["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    assert out.pod_spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert "priorityClassName" not in out.pod_spec
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert _webhook(out, kind)["objectSelector"]["matchExpressions"][0]["key"] == "portico.dev/skip"
    host = ci("hostnetwork-values.yaml")
    assert host.pod_spec["hostNetwork"] is True and host.maybe("NetworkPolicy") is None
    assert "matchConditions" not in _webhook(host, "ValidatingWebhookConfiguration")


def test_network_policy_is_skipped_on_the_host_network() -> None:
    """NetworkPolicy does not apply to host-network pods: none is rendered, and NOTES says so."""
    out = render({"networkPolicy": {"enabled": True}, "hostNetwork": {"enabled": True}})
    assert out.maybe("NetworkPolicy") is None
    notes = out.files["portico/templates/NOTES.txt"]
    assert "WARNING: networkPolicy.enabled is ignored" in notes and "10270" in notes
    assert "WARNING" not in render().files["portico/templates/NOTES.txt"]


# --- which requests reach the webhooks --------------------------------------------------------

POD_KINDS_CONDITIONS = ["pods-portico-can-refuse", "templates-portico-can-refuse", "cronjob-templates-portico-can-refuse"]


def test_match_conditions(default: Rendered) -> None:
    hook = _webhook(default, "ValidatingWebhookConfiguration")
    # Helm renders offline for a current Kubernetes (>= 1.30); older clusters get none (install test).
    conditions = hook["matchConditions"]
    assert [c["name"] for c in conditions] == POD_KINDS_CONDITIONS
    for c in conditions:
        expr = c["expression"]
        # "not (this kind and skippable)": any other kind, Services included, is always sent.
        assert expr.startswith(("!((request.kind.group == ", "!(((request.kind.group == ")), expr[:80]
        assert "Service" not in expr
    assert "'Pod'" in conditions[0]["expression"] and "object.spec == oldObject.spec" in conditions[0]["expression"]
    assert "object.spec.template.spec == oldObject.spec.template.spec" in conditions[1]["expression"]
    assert "'CronJob'" in conditions[2]["expression"]
    # Only the validating webhook: allocation must see every Service write.
    assert "matchConditions" not in _webhook(default, "MutatingWebhookConfiguration")
    off = render({"webhook": {"validating": {"matchConditions": {"enabled": False}}}})
    assert "matchConditions" not in _webhook(off, "ValidatingWebhookConfiguration")


def test_object_selector(default: Rendered) -> None:
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert "objectSelector" not in _webhook(default, kind)  # the apiserver's default: {}
    selector = {"matchExpressions": [{"key": "portico.dev/skip", "operator": "DoesNotExist"}]}
    out = render({"webhook": {"objectSelector": selector}})
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert _webhook(out, kind)["objectSelector"] == selector


FAILURE_POLICIES = [
    {"validating": v, "mutating": m, "allocation": a, "certManager": c}
    for v in ("Fail", "Ignore")
    for m in ("Fail", "Ignore")
    for a in (True, False)
    for c in (True, False)
]


@pytest.mark.parametrize(
    "combo", FAILURE_POLICIES, ids=lambda c: "validating={validating},mutating={mutating},allocation={allocation},certManager={certManager}".format(**c)
)
def test_delete_is_never_behind_a_failing_webhook(combo: dict[str, Any]) -> None:
    """An outage must never block a delete: no webhook that fails closed matches DELETE (nor
    `*`), whatever the failure policies. (None matches DELETE today at all.)"""
    out = render(
        {
            "webhook": {"validating": {"failurePolicy": combo["validating"]}, "mutating": {"failurePolicy": combo["mutating"]}},
            "allocation": {"enabled": combo["allocation"]},
            "certManager": {"enabled": combo["certManager"]},
        }
    )
    hooks = [h for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration") for c in out.all(kind) for h in c["webhooks"]]
    assert len(hooks) == (3 if combo["allocation"] else 2)
    for hook in hooks:
        assert hook.get("failurePolicy") in ("Fail", "Ignore"), hook["name"]  # never the implicit Fail
        operations = {op for rule in hook["rules"] for op in rule["operations"]}
        if hook["failurePolicy"] == "Fail":
            assert not operations & {"DELETE", "*"}, (hook["name"], operations)
        assert operations <= {"CREATE", "UPDATE"}, (hook["name"], operations)


@pytest.mark.parametrize("case", ci_values_files(), ids=lambda c: c.name)
def test_delete_is_never_behind_a_failing_webhook_in_ci_values(case: Path) -> None:
    out = render(load_values(case))
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        for config in out.all(kind):
            for hook in config["webhooks"]:
                ops = {op for rule in hook["rules"] for op in rule["operations"]}
                assert not (hook["failurePolicy"] == "Fail" and ops & {"DELETE", "*"}), (case.name, hook["name"])


def test_liveness_waits_for_start_up() -> None:
    """A startup probe on /healthz, so liveness does not kill a pod whose caches are still
    syncing (or whose HTTPS endpoints wait for the webhook certificate)."""
    probe = render().container["startupProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert probe["periodSeconds"] * probe["failureThreshold"] == 300
    tuned = render({"startupProbe": {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 90}})
    assert tuned.container["startupProbe"]["failureThreshold"] == 90

