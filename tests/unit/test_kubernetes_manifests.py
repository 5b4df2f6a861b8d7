"""The Kubernetes renderer: worker Deployments and pools, Services, snapshot and policy ConfigMaps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from apx.controllers import names
from apx.controllers.ir import IR
from apx.controllers.policy_artifacts import compile_policy
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.renderers.kubernetes import (
    ManifestConflict,
    deployments_for_route,
    render_kubernetes,
    worker_pools,
)
from apx.controllers.renderers.kubernetes.policy_artifacts import ArtifactMismatch
from apx.controllers.renderers.pubsub_plan import route_topics
from apx.controllers.translate import translate
from apx.operator.cli import _OutputDumper

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "kubernetes"
SNAPSHOT = {"version": "test", "resources": {}}


def _ir(case: str) -> IR:
    documents = [d for d in yaml.safe_load_all((GOLDEN / case / "input.yaml").read_text()) if d]
    result = translate(documents)
    assert not result.stalled, [s.message for s in result.stalled]
    return result.ir


def _manifests(case: str) -> list[dict[str, Any]]:
    return render_kubernetes(_ir(case), SNAPSHOT).to_json()


def _find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name)


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("case", ["async-canary-worker", "dedicated-pool", "policy-artifacts"])
def test_every_manifest_validates_against_kubernetes_1_30_strictly(case: str) -> None:
    for manifest in _manifests(case):
        kubernetes_validate.validate(manifest, "1.30", strict=True)


@pytest.mark.parametrize("case", ["async-canary-worker", "dedicated-pool", "policy-artifacts"])
def test_manifests_are_sorted_by_namespace_kind_name(case: str) -> None:
    manifests = _manifests(case)
    keys = [(m["metadata"]["namespace"], m["kind"], m["metadata"]["name"]) for m in manifests]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_stable_and_canary_workers_get_their_own_image_replicas_and_upstream() -> None:
    manifests = _manifests("async-canary-worker")
    stable = _find(manifests, "Deployment", "apx-worker-resize-stable")
    canary = _find(manifests, "Deployment", "apx-worker-resize-canary")
    assert stable["spec"]["replicas"] == 6
    assert canary["spec"]["replicas"] == 2
    stable_container = stable["spec"]["template"]["spec"]["containers"][0]
    canary_container = canary["spec"]["template"]["spec"]["containers"][0]
    assert stable_container["image"].endswith(":3.2.0")
    assert canary_container["image"].endswith(":3.3.0-rc.1")
    assert stable_container["command"] == ["apx-worker"]
    assert _env(stable)["APX_UPSTREAM_URL"] == "http://resizer.images.svc.cluster.local:8080"
    assert _env(canary)["APX_UPSTREAM_URL"] == "https://resizer-next.internal.example.com:8443/v2"
    assert (_env(canary)["APX_TRACK"], _env(stable)["APX_TRACK"]) == ("canary", "stable")


def test_worker_env_names_subscriptions_route_timeout_and_redis_from_a_secret() -> None:
    ir = _ir("async-canary-worker")
    env = _env(_find(render_kubernetes(ir, SNAPSHOT).to_json(), "Deployment", "apx-worker-resize-canary"))
    expected = sorted(p.subscription for p in route_topics(ir.routes[0]) if p.track == "canary")
    assert env["APX_SUBSCRIPTIONS"].split(",") == expected
    assert (env["APX_ROUTE"], env["APX_PRODUCT"]) == ("images/resize", "images/thumbnails")
    assert env["APX_TIMEOUT_MS"] == "45000"
    assert env["APX_MAX_OUTSTANDING_MESSAGES"] == "25"
    assert env["APX_REDIS_URL"] == {"secretKeyRef": {"name": names.dataplane_secret(), "key": "redis-url"}}
    assert env["PUBSUB_EMULATOR_HOST"]["configMapKeyRef"]["optional"] is True


def test_worker_labels_selector_owner_and_resources() -> None:
    deployment = _find(_manifests("async-canary-worker"), "Deployment", "apx-worker-resize-canary")
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "apx-worker"
    assert labels["app.kubernetes.io/managed-by"] == "apx"
    assert (labels["apx.dev/route"], labels["apx.dev/product"], labels["apx.dev/track"]) == (
        "resize",
        "thumbnails",
        "canary",
    )
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "name": "resize",
            "uid": "0b4f6a52-3f0e-4a41-9c39-5d6c2f3e8a11",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }


def test_worker_pods_run_restricted() -> None:
    deployment = _find(_manifests("async-canary-worker"), "Deployment", "apx-worker-resize-stable")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container["runAsUser"] == 65532
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    probes = pod["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert probes["readinessProbe"]["httpGet"]["port"] == "metrics"


def test_each_worker_has_a_headless_metrics_service_selecting_exactly_its_pods() -> None:
    manifests = _manifests("dedicated-pool")
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    assert sorted(services) == sorted(d["metadata"]["name"] for d in deployments)
    selectors = []
    for deployment in deployments:
        service = services[deployment["metadata"]["name"]]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"][0]["name"] == "metrics"
        assert service["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]
        selectors.append(service["spec"]["selector"])
    # No selector matches another Deployment's pods.
    for deployment in deployments:
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert sum(1 for s in selectors if s.items() <= pod_labels.items()) == 1


def test_dedicated_plans_with_tenants_get_a_pool_consuming_only_their_tenants_topics() -> None:
    ir = _ir("dedicated-pool")
    route = ir.routes[0]
    pools = {(p.track.name, p.pool): p for p in worker_pools(route)}
    assert set(pools) == {("stable", None), ("stable", "enterprise")}  # sovereign has no tenants
    dedicated = pools[("stable", "enterprise")]
    assert dedicated.name == names.worker_deployment("payouts", "stable", "enterprise")
    assert {t.tenant for t in dedicated.topics} == {"acme", "globex"}
    assert {(t.tenant, t.region) for t in dedicated.topics} == {
        ("acme", "us-central1"),
        ("globex", "us-central1"),
        ("globex", "europe-west1"),
    }
    shared = pools[("stable", None)]
    assert {t.tenant for t in shared.topics} == {None, "hooli"}
    env = _env(_find(render_kubernetes(ir, SNAPSHOT).to_json(), "Deployment", dedicated.name))
    assert env["APX_POOL"] == "enterprise"
    assert env["APX_SUBSCRIPTIONS"].split(",") == list(dedicated.subscriptions)


def test_every_topic_of_a_route_is_consumed_by_exactly_one_deployment() -> None:
    for case in ("dedicated-pool", "async-canary-worker"):
        route = _ir(case).routes[0]
        consumed = [s for pool in worker_pools(route) for s in pool.subscriptions]
        assert sorted(consumed) == sorted(p.subscription for p in route_topics(route))


def test_deployments_for_route_lists_every_worker_deployment() -> None:
    assert deployments_for_route(_ir("dedicated-pool").routes[0]) == [
        "apx-worker-payouts-enterprise-stable",
        "apx-worker-payouts-stable",
    ]
    assert deployments_for_route(_ir("policy-artifacts").routes[0]) == []  # sync route


def test_envoy_snapshot_configmaps_live_in_the_operator_namespace_without_owner() -> None:
    ir = _ir("policy-artifacts")
    envoy = render_envoy(ir)
    manifests = render_kubernetes(ir, envoy.snapshot_document(), operator_namespace="apx-ops").to_json()
    index = _find(manifests, "ConfigMap", names.envoy_snapshot_configmap())
    part = _find(manifests, "ConfigMap", names.envoy_snapshot_part_configmap(0))
    for configmap in (index, part):
        assert configmap["metadata"]["namespace"] == "apx-ops"
        assert "ownerReferences" not in configmap["metadata"]
    assert index["data"]["version"] == envoy.version
    assert index["data"]["parts"] == names.envoy_snapshot_part_configmap(0)
    assert json.loads(part["data"]["rds.json"])["versionInfo"] == envoy.version


def test_policy_artifacts_are_immutable_configmaps_for_n_and_n_minus_1() -> None:
    ir = _ir("policy-artifacts")
    manifests = render_kubernetes(ir, SNAPSHOT).to_json()
    for policy in ir.policies:
        name = names.policy_artifact_configmap(policy.bundle.name, policy.version, policy.digest)
        configmap = _find(manifests, "ConfigMap", name)
        assert configmap["immutable"] is True
        assert configmap["metadata"]["namespace"] == policy.bundle.namespace
        assert configmap["metadata"]["annotations"]["apx.dev/policy-artifact"] == policy.artifact
        assert configmap["data"]["policy.json"] == compile_policy(policy.bundle.name, policy.spec).content
        labels = configmap["metadata"]["labels"]
        assert labels["apx.dev/policy-bundle"] == policy.bundle.name
        assert labels["apx.dev/policy-version"] == names.k8s_label_value(policy.version)
    versions = sorted(p.version for p in ir.policies if p.bundle.name == "accounts-policy")
    assert versions == ["1.4.0", "2.0.0+build.7"]


def test_artifacts_are_owned_by_their_bundle_only_when_its_deletion_policy_is_delete() -> None:
    manifests = _manifests("policy-artifacts")
    owned = [
        m for m in manifests if m["metadata"]["labels"].get("apx.dev/policy-bundle") == "accounts-policy"
    ]
    assert len(owned) == 2
    for configmap in owned:
        assert configmap["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "apx.dev/v1alpha1",
                "kind": "PolicyBundle",
                "name": "accounts-policy",
                "uid": "5a3c1d2e-8f4b-4c6d-9e7f-112233445566",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    (retained,) = [
        m for m in manifests if m["metadata"]["labels"].get("apx.dev/policy-bundle") == "audit-policy"
    ]
    assert "ownerReferences" not in retained["metadata"]
    assert retained["metadata"]["annotations"]["apx.dev/deletion-policy"] == "Retain"


def test_artifact_whose_content_does_not_match_its_digest_is_refused() -> None:
    ir = _ir("policy-artifacts")
    tampered = dataclasses.replace(ir.policies[0], digest="sha256:" + "0" * 64)
    with pytest.raises(ArtifactMismatch):
        render_kubernetes(dataclasses.replace(ir, policies=(tampered,)), SNAPSHOT)


def test_two_objects_with_the_same_name_are_refused_not_overwritten() -> None:
    ir = _ir("async-canary-worker")
    route = ir.routes[0]
    twin = dataclasses.replace(route, ref=dataclasses.replace(route.ref, uid="another-uid"))
    with pytest.raises(ManifestConflict, match="apx-worker-resize"):
        render_kubernetes(dataclasses.replace(ir, routes=(route, twin)), SNAPSHOT)


def test_sync_routes_render_no_workers() -> None:
    kinds = {m["kind"] for m in _manifests("policy-artifacts")}
    assert kinds == {"ConfigMap"}


def test_what_every_worker_deployment_has_in_common_is_one_object_and_yaml_writes_it_out() -> None:
    # Thousands of async Routes keep thousands of worker manifests between passes: the parts
    # they all share (security contexts, probes, volumes, the installation's env) are one
    # object each, which is what keeps them small. The manifests are read-only.
    deployments = [m for m in _manifests("dedicated-pool") if m["kind"] == "Deployment"]
    assert len(deployments) >= 2
    pods = [d["spec"]["template"]["spec"] for d in deployments]
    containers = [p["containers"][0] for p in pods]
    for shared in (
        [c["securityContext"] for c in containers],
        [c["livenessProbe"] for c in containers],
        [c["volumeMounts"] for c in containers],
        [p["securityContext"] for p in pods],
        [p["volumes"] for p in pods],
        [d["spec"]["strategy"] for d in deployments],
        [c["env"][-1] for c in containers],  # APX_REDIS_URL, from the installation's Secret
    ):
        assert len({id(part) for part in shared}) == 1
    # Each manifest still has its own containers and env list: what differs stays apart.
    assert len({id(c["env"]) for c in containers}) == len(containers)
    # ``apx translate -o yaml`` writes shared parts out in full, never as anchors and aliases.
    written = yaml.dump_all(deployments, Dumper=_OutputDumper)
    assert "&id" not in written and "*id" not in written
    assert list(yaml.safe_load_all(written)) == deployments
