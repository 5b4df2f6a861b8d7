"""The status fields the operator writes are declared in the generated CRDs, with their exact shapes.

A status schema that preserves unknown fields keeps undeclared keys, but
``kubectl explain`` does not show them and a server whose status schema is
exact would prune them. These tests pin the declarations of ``workers`` and
``canaryPolicyArtifact`` (Route), ``inUseBy`` (Product, PolicyBundle) and
``servedVersions[].pinnedBy`` (PolicyBundle), and check that every status the
pure pipeline and the operator's worker summary produce validates against the
status schemas with unknown fields *refused*: nothing the operator writes
relies on ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from apx.controllers import crdgen
from apx.controllers.pipeline import compile_resources
from apx.controllers.status import ResourceStatus
from apx.operator.reconciler import SUMMARY_KEYS
from apx.operator.workers import WorkerAvailability

ROOT = Path(__file__).resolve().parents[2]
Node = dict[str, Any]
ROUTE_KEYS = {"type": "array", "items": {"type": "string"}}


@pytest.fixture(scope="module")
def crds() -> dict[str, Node]:
    return crdgen.build_all()


def status_schema(crds: dict[str, Node], kind: str) -> Node:
    schema: Node = crds[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


def without_description(node: Node) -> Node:
    return {k: v for k, v in node.items() if k != "description"}


def exact(schema: Node) -> Node:
    """``schema`` with unknown fields refused wherever it declares properties (what a strict status gets).

    Free-form objects without declared properties (kopf's own storage, the
    compiled spec kept in ``servedVersions``) stay open: they are free-form on purpose.
    """
    result = copy.deepcopy(schema)
    stack = [result]
    while stack:
        node = stack.pop()
        if "properties" in node:
            node.pop("x-kubernetes-preserve-unknown-fields", None)
            node["additionalProperties"] = False
            stack.extend(node["properties"].values())
        if isinstance(node.get("items"), dict):
            stack.append(node["items"])
    return result


def merge_patched(value: Any) -> Any:
    """What a merge-patch of ``value`` stores on an object without those keys: nulls mean "absent"."""
    if isinstance(value, dict):
        return {k: merge_patched(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [merge_patched(v) for v in value]
    return value


def test_route_status_declares_workers_per_track_with_available_and_desired(crds: dict[str, Node]) -> None:
    workers = status_schema(crds, "Route")["properties"]["workers"]
    assert workers["type"] == "object"
    assert "Ready only when every worker Deployment has an available replica" in workers["description"]
    assert set(workers["properties"]) == {"stable", "canary"}
    for track in ("stable", "canary"):
        replicas = workers["properties"][track]
        assert replicas["type"] == "object" and replicas["description"]
        # Exact: neither the map of tracks nor a track keeps keys it does not declare.
        assert "x-kubernetes-preserve-unknown-fields" not in replicas
        assert {name: without_description(p) for name, p in replicas["properties"].items()} == {
            "available": {"type": "integer", "minimum": 0},
            "desired": {"type": "integer", "minimum": 0},
        }
        assert "absent while no controller has observed" in replicas["properties"]["available"]["description"]
    assert "x-kubernetes-preserve-unknown-fields" not in workers


def test_route_status_declares_the_canary_policy_artifact(crds: dict[str, Node]) -> None:
    artifact = status_schema(crds, "Route")["properties"]["canaryPolicyArtifact"]
    assert artifact["type"] == "string" and "canary track" in artifact["description"]


@pytest.mark.parametrize("kind", ["Product", "PolicyBundle"])
def test_objects_routes_depend_on_declare_in_use_by_as_route_keys(crds: dict[str, Node], kind: str) -> None:
    in_use_by = status_schema(crds, kind)["properties"]["inUseBy"]
    assert without_description(in_use_by) == ROUTE_KEYS
    assert "`namespace/name`" in in_use_by["description"] and "`InUse`" in in_use_by["description"]


def test_served_versions_declare_the_routes_that_pin_them(crds: dict[str, Node]) -> None:
    served = status_schema(crds, "PolicyBundle")["properties"]["servedVersions"]
    pinned_by = served["items"]["properties"]["pinnedBy"]
    assert without_description(pinned_by) == ROUTE_KEYS
    assert "older than N-1" in pinned_by["description"] and "`VersionsPinned`" in pinned_by["description"]
    assert "older versions Routes still pin" in served["description"]


def test_every_summary_key_the_operator_writes_is_declared_by_a_status_schema(crds: dict[str, Node]) -> None:
    declared = {name for kind in crds for name in status_schema(crds, kind)["properties"]}
    assert set(SUMMARY_KEYS) - declared == set()


def _operator_statuses() -> list[tuple[ResourceStatus, Node]]:
    """Every status the samples get, with what the operator adds: workers, inUseBy and a pinned version."""
    documents = [
        d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]
    newer = copy.deepcopy(
        next(d for d in documents if d["kind"] == "PolicyBundle" and d["spec"]["version"] == "1.3.0")
    )
    newer["spec"]["version"] = "1.4.0"  # 1.2.0 is then kept only while Routes pin it
    compiled = compile_resources([*documents, newer])
    availability = WorkerAvailability()
    results = []
    for (kind, key), status in sorted(compiled.statuses.items()):
        summary = dict(status.summary)
        if kind == "Route" and summary.get("deployments"):
            # The stable workers observed with an available replica, and a canary worker
            # Deployment no controller has observed yet (``available`` unknown: null).
            canary = f"{key.split('/')[1]}-canary-worker"
            for name in [*summary["deployments"], canary]:
                body: Node = {
                    "metadata": {
                        "name": name,
                        "labels": {"apx.dev/track": "canary" if name == canary else "stable"},
                        "annotations": {"apx.dev/route-key": key},
                    },
                    "spec": {"replicas": 2},
                    "status": {} if name == canary else {"observedGeneration": 1, "availableReplicas": 1},
                }
                availability.observe(body)
            summary["workers"], _ = availability.summary(key, [*summary["deployments"], canary])
            assert summary["workers"]["canary"] == {"available": None, "desired": 2}
        if kind in ("Product", "PolicyBundle"):
            summary["inUseBy"] = ["default/payments-charges"]
        status.summary = summary
        results.append((status, merge_patched(status.to_dict("2026-12-06T00:00:00Z", []))))
    return results


def test_statuses_the_operator_writes_validate_against_status_schemas_that_refuse_unknown_fields(
    crds: dict[str, Node],
) -> None:
    written = _operator_statuses()
    seen = {key for _, document in written for key in document}
    assert {"workers", "inUseBy", "canaryPolicyArtifact", "servedVersions"} <= seen
    assert any(v.get("pinnedBy") for _, d in written for v in d.get("servedVersions", []))
    workers = [d["workers"] for _, d in written if "workers" in d]
    assert workers and all(w["stable"]["available"] >= 1 and w["canary"] == {"desired": 2} for w in workers)
    for status, document in written:
        validator = jsonschema.Draft4Validator(exact(status_schema(crds, status.kind)))
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)
        ]
        assert errors == [], (status.kind, status.key, errors)


def test_an_exact_status_schema_does_refuse_undeclared_and_mistyped_fields(crds: dict[str, Node]) -> None:
    # The check above has teeth: the same schemas refuse what is not declared.
    route = jsonschema.Draft4Validator(exact(status_schema(crds, "Route")))
    assert not route.is_valid({"workers": {"stable": {"desired": 1, "ready": 1}}})
    assert not route.is_valid({"workers": {"shadow": {"desired": 1}}})
    assert not route.is_valid({"workers": {"stable": {"desired": -1}}})
    bundle = jsonschema.Draft4Validator(exact(status_schema(crds, "PolicyBundle")))
    assert not bundle.is_valid({"inUseBy": "default/r"})
    assert bundle.is_valid({"servedVersions": [{"version": "1.2.0", "digest": "d", "artifact": "a"}]})
    assert not bundle.is_valid(
        {"servedVersions": [{"version": "1.2.0", "digest": "d", "artifact": "a", "pinnedBy": [1]}]}
    )
