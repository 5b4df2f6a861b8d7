"""End-to-end: two operator processes (instances) over disjoint namespaces, one Redis, one Pub/Sub.

How an installation that outgrows one operator splits (README, "Outgrowing one
operator"): ``apx-operator`` A runs with ``APX_INSTANCE=<team-a ns>`` watching
only its namespace, B likewise for its own; both share the API server, the
operator namespace (``apx-system``), one Redis and one Pub/Sub project. The
samples go into both namespaces with kubectl. The API-level test
``tests/operator/test_two_instances.py`` checks the same on the wire (no write
of A into B's namespace); this one runs the real processes with kopf's
namespaced watches and finalizers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from apx.controllers import names
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps
from e2e.harness import condition, eventually
from e2e.services import start_pubsub_emulator, start_redis

from .conftest import Backend, Stack, make_stack
from .test_operator import NAMES, SAMPLES, _apply_samples, _wait_all_ready

pytestmark = pytest.mark.timeout(150)

OPERATOR_NAMESPACE = "apx-system"
ROUTES = sorted(name for kind, name in NAMES if kind == "Route")


@pytest.fixture
def two_stacks(backend: Backend, tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    """Two operator processes, each its own instance over its own namespace, sharing Redis and Pub/Sub."""
    suffix = uuid.uuid4().hex[:8]
    namespaces = (f"team-a-{suffix}", f"team-b-{suffix}")
    redis_service = start_redis(tmp_path / "redis")
    pubsub = start_pubsub_emulator(tmp_path / "pubsub")
    stacks: list[Stack] = []
    try:
        for namespace in namespaces:
            backend.kubectl.run("create", "namespace", namespace)
            stack = make_stack(backend, tmp_path / namespace, redis_service, pubsub, namespace)
            stack.operator.env["APX_INSTANCE"] = namespace  # the namespace doubles as the instance name
            if stacks:  # one Pub/Sub project for both: topic names carry the namespace
                stack.project = stacks[0].project
                stack.operator.env["APX_PUBSUB_PROJECT"] = stacks[0].project
            stacks.append(stack)
        for stack in stacks:
            stack.operator.start()
        yield stacks[0], stacks[1]
    finally:
        for stack in stacks:
            stack.operator.stop()
        for namespace in namespaces:
            backend.kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
        pubsub.stop()
        redis_service.stop()


def _instance(stack: Stack) -> str:
    return stack.operator.env["APX_INSTANCE"]


def _namespace(stack: Stack) -> str:
    return stack.operator.env["APX_NAMESPACES"]


def _route_table(stack: Stack) -> dict[str, dict[str, Any]]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        version = client.get(names.route_table_current_key(_instance(stack)))
        assert version is not None, f"no route table of instance {_instance(stack)}"
        raw: dict[str, str] = client.hgetall(names.route_table_key(str(version), _instance(stack)))  # type: ignore[assignment]
        return {key: json.loads(value) for key, value in raw.items()}
    finally:
        client.close()


def _redis_dump(stack: Stack) -> dict[bytes, Any]:
    """Every Redis key naming the stack's namespace or instance, as DUMP bytes."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        return {key: client.dump(key) for key in sorted(client.scan_iter(match=f"*{_namespace(stack)}*"))}
    finally:
        client.close()


def _snapshot(stack: Stack) -> dict[str, Any]:
    """The instance's snapshot ConfigMaps (name → data) in the shared operator namespace."""
    index = names.envoy_snapshot_configmap(_instance(stack))
    parts = names.envoy_snapshot_part_prefix(_instance(stack))
    listed = stack.kubectl.list("configmap", OPERATOR_NAMESPACE)
    return {
        c["metadata"]["name"]: (c.get("data"), c.get("binaryData"))
        for c in listed
        if c["metadata"]["name"] == index or c["metadata"]["name"].startswith(parts)
    }


def _snapshot_routes(stack: Stack) -> set[str]:
    from envoy.config.route.v3 import route_pb2

    resources = decode_configmaps(stack.kubectl.list("configmap", OPERATOR_NAMESPACE), _instance(stack))
    assert resources is not None, f"no snapshot of instance {_instance(stack)}"
    found: set[str] = set()
    for resource in resources:
        if resource.type_url.endswith("RouteConfiguration"):
            config = route_pb2.RouteConfiguration()
            resource.Unpack(config)
            found |= {r.name for host in config.virtual_hosts for r in host.routes if r.name}
    return {name for name in found if not name.startswith("apx-status/")}


def test_two_operator_instances_over_disjoint_namespaces_keep_their_outputs_apart(
    two_stacks: tuple[Stack, Stack],
) -> None:
    a, b = two_stacks
    _apply_samples(a, _namespace(a))
    _apply_samples(b, _namespace(b))

    for stack in (a, b):
        namespace = _namespace(stack)
        assert set(_route_table(stack)) == {f"{namespace}/{r}" for r in ROUTES}

        def own_routes_only(stack: Stack = stack) -> bool:
            return {r.split("/")[0] for r in _snapshot_routes(stack)} == {_namespace(stack)}

        eventually(own_routes_only, timeout=20, what=f"snapshot of instance {_instance(stack)}")
    client = redis.Redis.from_url(a.redis_url)
    assert client.get(names.route_table_current_key()) is None  # neither wrote the default instance's
    client.close()

    # Editing a Route in A's namespace changes A's outputs only.
    b_redis, b_snapshot = _redis_dump(b), _snapshot(b)
    a_snapshot = _snapshot(a)
    route = a.kubectl.get("route", "payments-charges", _namespace(a))
    assert route is not None
    route["spec"]["timeout"] = "7s"
    edited = {"apiVersion": route["apiVersion"], "kind": "Route", "metadata": {"name": "payments-charges"}}
    a.kubectl.apply(json.dumps({**edited, "spec": route["spec"]}), _namespace(a))
    eventually(
        lambda: _route_table(a)[f"{_namespace(a)}/payments-charges"]["timeout_ms"] == 7000,
        timeout=20,
        what="A's route table has the new timeout",
    )
    eventually(lambda: _snapshot(a) != a_snapshot, timeout=20, what="A's snapshot ConfigMaps rewritten")
    assert _redis_dump(b) == b_redis
    assert _snapshot(b) == b_snapshot

    # Deleting everything in A's namespace: A prunes its own outputs, B keeps serving.
    a.kubectl.run("delete", "-n", _namespace(a), "-f", str(SAMPLES), "--wait=false", "--ignore-not-found")
    eventually(lambda: _route_table(a) == {}, timeout=30, what="A's route table empty")
    eventually(lambda: _snapshot_routes(a) == set(), timeout=30, what="A's snapshot without Routes")
    assert _redis_dump(b) == b_redis
    assert _snapshot(b) == b_snapshot
    _wait_all_ready(b, _namespace(b), timeout=10)
    for kind, name in NAMES:
        assert condition(b.kubectl.get(kind.lower(), name, _namespace(b)), "Ready") == "True"
