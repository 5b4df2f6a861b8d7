"""The Helm chart renders, lints and produces valid, restricted, self-consistent manifests.

Every check runs over the named value sets of chartkit.VALUE_SETS (defaults and the
non-default configurations). Built-in kinds are validated with kubernetes-validate
against Kubernetes 1.30 in strict mode; the Prometheus Operator kinds (ServiceMonitor,
PodMonitor) are not known to it, so their basic shape is checked with the minimal JSON
schema PROMETHEUS_OPERATOR_SCHEMA below (written for these tests, not the upstream CRD).
"""

from __future__ import annotations

from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
from chartkit import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Rendered,
    container,
    env_of,
    pod_spec,
    render,
    selects,
)

SET_NAMES = sorted(VALUE_SETS)

_DURATION = {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}
_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
    },
}
PROMETHEUS_OPERATOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"enum": ["ServiceMonitor", "PodMonitor"]},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object",
            "required": ["selector"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "minProperties": 1}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        },
    },
}


def _rendered(set_name: str) -> Rendered:
    return render(VALUE_SETS[set_name])


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_chart_lints_without_errors_in_strict_mode(set_name: str) -> None:
    report = helm_python.lint(str(CHART_DIR), VALUE_SETS[set_name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_manifest_validates_against_kubernetes_1_30_or_the_monitoring_schema(set_name: str) -> None:
    rendered = _rendered(set_name)
    assert rendered.manifests
    for manifest in rendered.manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(manifest, PROMETHEUS_OPERATOR_SCHEMA)
        else:
            kubernetes_validate.validate(manifest, "1.30", strict=True)


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_namespaced_object_names_its_namespace(set_name: str) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for manifest in _rendered(set_name).manifests:
        if manifest["kind"] in cluster_scoped:
            assert "namespace" not in manifest["metadata"]
        else:
            assert manifest["metadata"].get("namespace"), manifest["metadata"]["name"]


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_workload_runs_with_the_restricted_security_context(set_name: str) -> None:
    workloads = _rendered(set_name).workloads()
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == 65532
        assert pod["fsGroup"] == 65532
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
        assert all("hostPath" not in volume for volume in spec.get("volumes", []))
        for item in spec["containers"] + spec.get("initContainers", []):
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context.get("privileged", False) is False
            tmp = [m for m in item["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, f"{item['name']} has a read-only root and no writable /tmp"
            volume = next(v for v in spec["volumes"] if v["name"] == tmp[0]["name"])
            assert "emptyDir" in volume


def test_security_context_user_can_be_left_to_the_platform() -> None:
    rendered = render({"securityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}})
    pod = pod_spec(rendered.operator())["securityContext"]
    assert pod == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_no_pod_gets_service_link_variables_that_collide_with_apx_settings(set_name: str) -> None:
    # A Service named apx-webhook would inject APX_WEBHOOK_PORT=tcp://... into every pod of
    # the namespace, which the operator would parse as its webhook port.
    for workload in _rendered(set_name).workloads():
        assert pod_spec(workload)["enableServiceLinks"] is False


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_service_selects_pods_that_expose_its_target_ports(set_name: str) -> None:
    rendered = _rendered(set_name)
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        pods = [
            w for w in rendered.workloads() if selects(selector, w["spec"]["template"]["metadata"]["labels"])
        ]
        assert pods, f"Service {service['metadata']['name']} selects no pod"
        for pod in pods:
            ports = {p["name"]: p["containerPort"] for c in pod_spec(pod)["containers"] for p in c["ports"]}
            for port in service["spec"]["ports"]:
                target = port["targetPort"]
                assert target in ports or target in ports.values(), (service["metadata"]["name"], target)


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_deployment_selector_matches_its_pod_template(set_name: str) -> None:
    for workload in _rendered(set_name).workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"]["matchLabels"], labels)


def test_operator_is_two_replicas_with_leader_election_or_one_recreated_without() -> None:
    operator = render().operator()
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"
    single = render({"operator": {"replicaCount": 1, "leaderElection": {"enabled": False}}}).operator()
    assert single["spec"]["replicas"] == 1
    assert single["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_probes_kopf_liveness_endpoint() -> None:
    operator_container = container(render().operator())
    ports = {p["name"]: p["containerPort"] for p in operator_container["ports"]}
    assert ports["liveness"] == 8080
    assert ports["metrics"] == 9090
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator_container[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert operator_container["command"] == ["apx-operator"]
    assert operator_container["resources"]["requests"]
    assert operator_container["resources"]["limits"]["memory"]


def test_operator_uses_its_service_account_and_placement_values() -> None:
    values = {
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "apx", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["control"]}]}
                    ]
                }
            }
        },
        "podAnnotations": {"example.com/team": "platform"},
        "image": {"repository": "registry.internal/apx", "tag": "1.2.3", "pullPolicy": "Always"},
    }
    rendered = render(values)
    operator = rendered.operator()
    spec = pod_spec(operator)
    assert spec["serviceAccountName"] == rendered.names("ServiceAccount")[0] == f"{RELEASE}-operator"
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert operator["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "platform"
    assert container(operator)["image"] == "registry.internal/apx:1.2.3"
    assert container(operator)["imagePullPolicy"] == "Always"


def test_image_tag_defaults_to_the_chart_app_version() -> None:
    assert container(render().operator())["image"].endswith(":0.1.0")


def test_notes_render_with_the_operator_name_scope_and_crd_upgrade_step() -> None:
    notes = render().notes
    assert f"Deployment {RELEASE}-operator" in notes
    assert "watching: all namespaces" in notes
    assert "`helm upgrade` upgrades them" in notes  # CRDs are templates (crds.enabled)
    namespaced = render(VALUE_SETS["namespaced-rbac-two-namespaces"]).notes
    assert "watching: team-a, team-b" in namespaced
    assert "RBAC:     namespaced" in namespaced
    dataplane = render(VALUE_SETS["dataplane-on"]).notes
    assert f"apx-ratelimit.{NAMESPACE}.svc:8081" in dataplane
    assert f"apx-gateway.{NAMESPACE}.svc:8080" in dataplane


def test_defaults_render_only_the_operator_and_its_access() -> None:
    rendered = render()
    kinds = sorted({m["kind"] for m in rendered.manifests})
    assert kinds == [
        "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "PodDisruptionBudget",
        "Role", "RoleBinding", "Service", "ServiceAccount",
    ]  # fmt: skip
    assert rendered.names("Deployment") == [f"{RELEASE}-operator"]
    assert rendered.names("Service") == [f"{RELEASE}-operator-metrics"]


def test_monitoring_objects_select_the_metrics_endpoints() -> None:
    rendered = render(VALUE_SETS["cluster-everything"])
    monitor = rendered.get("ServiceMonitor", f"{RELEASE}-operator")
    service = rendered.get("Service", f"{RELEASE}-operator-metrics")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    pod_monitor = rendered.get("PodMonitor", RELEASE)
    selected = [
        w
        for w in rendered.workloads()
        if selects(
            pod_monitor["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]
        )
    ]
    assert sorted(w["metadata"]["name"] for w in selected) == ["apx-gateway", "apx-operator", "apx-ratelimit"]
    for workload in selected:
        assert "metrics" in {p["name"] for p in container(workload)["ports"]}


def test_monitoring_labels_are_added_for_prometheus_selection() -> None:
    rendered = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prom"}}}})
    assert rendered.of_kind("ServiceMonitor")[0]["metadata"]["labels"]["release"] == "kube-prom"
    assert rendered.of_kind("PodMonitor") == []


def test_pod_disruption_budget_keeps_a_standby_or_allows_evicting_a_single_operator_pod() -> None:
    rendered = render(VALUE_SETS["pdb-on"])
    budget = rendered.get("PodDisruptionBudget", f"{RELEASE}-operator")
    assert budget["spec"] == {"minAvailable": 1, "selector": budget["spec"]["selector"]}
    assert selects(
        budget["spec"]["selector"]["matchLabels"],
        rendered.operator()["spec"]["template"]["metadata"]["labels"],
    )
    single = render({"operator": {"replicaCount": 1, "leaderElection": {"enabled": False}}})
    only = single.get("PodDisruptionBudget", f"{RELEASE}-operator")
    assert only["spec"] == {"maxUnavailable": 1, "selector": only["spec"]["selector"]}
    assert render({"podDisruptionBudget": {"enabled": False}}).of_kind("PodDisruptionBudget") == []


def test_network_policy_admits_only_operator_ports_and_egress_to_its_dependencies() -> None:
    rendered = render(VALUE_SETS["network-policy-on"])
    policy = rendered.get("NetworkPolicy", f"{RELEASE}-operator")["spec"]
    assert selects(
        policy["podSelector"]["matchLabels"], rendered.operator()["spec"]["template"]["metadata"]["labels"]
    )
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    container_ports = {p["name"] for p in container(rendered.operator())["ports"]}
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics", "liveness", "webhook", "xds"} == container_ports
    metrics_rule = next(r for r in policy["ingress"] if {"port": "metrics", "protocol": "TCP"} in r["ports"])
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]

    egress = {(p["port"], p["protocol"]): rule.get("to") for rule in policy["egress"] for p in rule["ports"]}
    assert egress[(6443, "TCP")] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert egress[(6379, "TCP")] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert egress[(443, "TCP")] is None and egress[(8085, "TCP")] is None
    assert (53, "UDP") in egress and (53, "TCP") in egress
    assert (4318, "TCP") in egress
    assert len(egress) == 7
    assert render().of_kind("NetworkPolicy") == []


def test_dataplane_services_are_off_by_default_and_named_as_envoy_expects() -> None:
    assert render().names("Deployment") == [f"{RELEASE}-operator"]
    rendered = render(VALUE_SETS["dataplane-on"])
    assert rendered.names("Deployment") == ["apx-gateway", "apx-operator", "apx-ratelimit"]
    ratelimit_service = rendered.get("Service", "apx-ratelimit")
    assert {p["name"]: p["port"] for p in ratelimit_service["spec"]["ports"]} == {
        "grpc": 8081,
        "metrics": 9090,
    }
    gateway_service = rendered.get("Service", "apx-gateway")
    assert {p["name"]: p["port"] for p in gateway_service["spec"]["ports"]} == {"http": 8080, "metrics": 9090}


def test_ratelimit_service_is_probed_over_grpc_health_and_gateway_over_http() -> None:
    rendered = render(VALUE_SETS["dataplane-on"])
    ratelimit = container(rendered.get("Deployment", "apx-ratelimit"))
    for probe in ("livenessProbe", "readinessProbe"):
        assert ratelimit[probe]["grpc"] == {"port": 8081}
    gateway = container(rendered.get("Deployment", "apx-gateway"))
    for probe in ("livenessProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    for workload in (rendered.get("Deployment", "apx-ratelimit"), rendered.get("Deployment", "apx-gateway")):
        assert pod_spec(workload)["automountServiceAccountToken"] is False
        env = env_of(container(workload))
        assert env["APX_REDIS_URL"] == "redis://redis.apx-system.svc:6379/0"
        assert env["APX_PUBSUB_PROJECT"] == "apx-local"
        assert env["APX_METRICS_PORT"] == "9090"


def test_redis_url_comes_from_the_secret_in_every_pod_when_configured() -> None:
    rendered = render(VALUE_SETS["redis-url-from-secret"])
    for workload in rendered.workloads():
        assert env_of(container(workload))["APX_REDIS_URL"] == {
            "secretKeyRef": {"name": "apx-redis", "key": "url"}
        }
    assert "redis://" not in "".join(rendered.templates.values())


def test_pubsub_emulator_host_reaches_every_pod_only_when_set() -> None:
    for workload in render(VALUE_SETS["cluster-everything"]).workloads():
        assert env_of(container(workload))["PUBSUB_EMULATOR_HOST"] == "pubsub-emulator.apx-system.svc:8085"
    for workload in render(VALUE_SETS["dataplane-on"]).workloads():
        assert "PUBSUB_EMULATOR_HOST" not in env_of(container(workload))
