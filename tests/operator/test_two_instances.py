"""Two operator instances over disjoint namespaces share one API server, one Redis and one Pub/Sub.

How an installation that outgrows one operator splits (README, "Outgrowing one
operator"): instance ``team-a`` watches namespace ``team-a``, instance
``team-b`` watches ``team-b``, both write their operator-wide objects into the
same operator namespace (``apx-system``, the hardest case). Emulated Kubernetes
API, real Redis (``tests/conftest.py``), the real Pub/Sub emulator. Each
reconciler seeds its store with its own namespace-scoped LIST (``list_all``,
what the operator does at start and on resync) and its client records every
write it sends, so "A never writes in team-b" is checked on the wire.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from apx.controllers import names
from apx.controllers.appliers.kube import Connection, KubeClient
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps
from apx.dataplane.common.routetable import RouteTableReader
from apx.operator.reconciler import Reconciler
from apx.operator.settings import OperatorSettings
from e2e.kubeemu.testing import RunningEmulator
from e2e.services import Service
from tests.operator.conftest import samples

pytestmark = pytest.mark.timeout(60)

OPERATOR_NAMESPACE = "apx-system"
TEAMS = ("team-a", "team-b")
DATABASE = 13
APX_KINDS = ("Product", "PolicyBundle", "Route")


class RecordingKube(KubeClient):
    """A KubeClient that records the method and path of every request that is not a read."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self.writes: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() not in ("GET", "HEAD"):
            self.writes.append((method.upper(), path))
        return await super().request(method, path, *args, **kwargs)


@dataclass
class Instance:
    name: str
    kube: RecordingKube
    reconciler: Reconciler

    async def sees_and_reconciles(self, full: bool = False) -> None:
        """What a watch event or a resync gives it: a LIST of its namespace, then a pass."""
        await self.reconciler.list_all()
        await self.reconciler.reconcile_once(full=full)


@pytest.fixture
def redis_client(redis_service: Service) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"redis://{redis_service.address}/{DATABASE}")
    client.flushdb()
    yield client
    client.close()


@pytest_asyncio.fixture
async def instances(
    emulator: RunningEmulator,
    kube: KubeClient,
    redis_service: Service,
    pubsub_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
) -> AsyncIterator[dict[str, Instance]]:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_service.address)
    project = f"apx-test-{uuid.uuid4().hex[:8]}"  # one project for both: topic names must not collide
    url = f"redis://{redis_service.address}/{DATABASE}"
    for team in TEAMS:
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team}})
    running: dict[str, Instance] = {}
    try:
        for team in TEAMS:
            client = RecordingKube(Connection(server=emulator.url))
            await client.open()
            settings = OperatorSettings(
                instance=team,
                namespaces=[team],
                operator_namespace=OPERATOR_NAMESPACE,
                redis_url=url,
                pubsub_project=project,
                resync_seconds=3600,
                snapshot_configmap_seconds=0,
            )
            reconciler = Reconciler(settings, client, RedisApplier(url, keep_versions=3), PubSubApplier())
            running[team] = Instance(team, client, reconciler)
        yield running
    finally:
        for instance in running.values():
            await instance.kube.close()


async def _apply_samples(kube: KubeClient, instance: Instance, namespace: str) -> None:
    """The samples with ``metadata.namespace`` rewritten, a pass after each PolicyBundle version."""
    for document in samples():
        document = {**document, "metadata": {**document["metadata"], "namespace": namespace}}
        existing = await kube.get(document["kind"], namespace, document["metadata"]["name"])
        if existing is None:
            await kube.create(document)
        else:
            await kube.apply(document)
        if document["kind"] == "PolicyBundle":
            await instance.sees_and_reconciles()
    await instance.sees_and_reconciles()


def _ready(body: Mapping[str, Any] | None) -> bool:
    conditions = {c["type"]: c["status"] for c in ((body or {}).get("status") or {}).get("conditions") or []}
    return conditions.get("Ready") == "True"


def _route_table(client: Any, instance: str) -> dict[bytes, bytes]:
    version = client.get(names.route_table_current_key(instance))
    assert version is not None, f"no route table for instance {instance}"
    return dict(client.hgetall(names.route_table_key(version.decode(), instance)))


def _redis_state(client: Any, team: str) -> dict[bytes, bytes | None]:
    """Every key whose name carries ``team`` (its route table, rule sets, counters), as DUMP bytes."""
    return {key: client.dump(key) for key in sorted(client.scan_iter(match=f"*{team}*"))}


async def _snapshot_configmaps(kube: KubeClient, instance: str) -> dict[str, Any]:
    index, parts = names.envoy_snapshot_configmap(instance), names.envoy_snapshot_part_prefix(instance)
    listed = await kube.list("ConfigMap", OPERATOR_NAMESPACE)
    return {
        c["metadata"]["name"]: {"data": c.get("data"), "binaryData": c.get("binaryData")}
        for c in listed
        if re.fullmatch(f"{re.escape(index)}|{re.escape(parts)}\\d+", c["metadata"]["name"])
    }


async def _namespace_state(kube: KubeClient, namespace: str) -> dict[tuple[str, str], Any]:
    """Every APX object, Deployment, ConfigMap, Secret and Event of a namespace, as stored."""
    state: dict[tuple[str, str], Any] = {}
    for kind in (*APX_KINDS, "Deployment", "ConfigMap", "Secret", "Event"):
        for item in await kube.list(kind, namespace):
            body = copy.deepcopy(item)
            body.get("metadata", {}).pop("managedFields", None)
            state[(kind, body["metadata"]["name"])] = body
    return state


def _envoy_routes(resources: list[Any] | None) -> set[str]:
    """Names of the Envoy routes (``<namespace>/<route>``) in a decoded snapshot."""
    from envoy.config.route.v3 import route_pb2

    assert resources is not None
    found: set[str] = set()
    for resource in resources:
        if resource.type_url.endswith("RouteConfiguration"):
            config = route_pb2.RouteConfiguration()
            resource.Unpack(config)
            found |= {route.name for host in config.virtual_hosts for route in host.routes if route.name}
    # The gateway's per-host status route (``apx-status/<host>``) belongs to no namespace.
    return {name for name in found if not name.startswith("apx-status/")}


def _writes_outside(instance: Instance, allowed: set[str]) -> list[tuple[str, str]]:
    """Writes of ``instance`` to a namespace not in ``allowed`` (or to no namespace at all)."""
    outside = []
    for method, path in instance.kube.writes:
        match = re.search(r"/namespaces/([^/]+)/", path)
        if match is None or match.group(1) not in allowed:
            outside.append((method, path))
    return outside


@pytest.mark.asyncio
async def test_two_instances_over_disjoint_namespaces_serve_both_and_never_touch_each_other(
    kube: KubeClient, instances: dict[str, Instance], redis_client: Any, redis_service: Service
) -> None:
    a, b = instances["team-a"], instances["team-b"]
    redis_address = redis_service.address
    await _apply_samples(kube, a, "team-a")
    await _apply_samples(kube, b, "team-b")

    # Every object Ready in both namespaces.
    for team in TEAMS:
        for document in samples():
            body = await kube.get(document["kind"], team, document["metadata"]["name"])
            assert _ready(body), (team, document["metadata"]["name"], (body or {}).get("status"))

    # Each instance's route table holds its own Routes only; the default instance's is never written.
    routes = {d["metadata"]["name"] for d in samples() if d["kind"] == "Route"}
    for team in TEAMS:
        table = _route_table(redis_client, team)
        assert {k.decode() for k in table} == {f"{team}/{r}" for r in routes}
    assert redis_client.get(names.route_table_current_key()) is None
    # A gateway of instance team-b (``apx-gateway --instance team-b``) serves team-b's Routes only.
    async with aioredis.Redis.from_url(f"redis://{redis_address}/{DATABASE}") as gateway_redis:
        gateway_table = await RouteTableReader(gateway_redis, instance="team-b").snapshot()
    assert set(gateway_table.entries) == {f"team-b/{r}" for r in routes}
    # Rule sets are per product, so per namespace: each names its own Routes only.
    for team in TEAMS:
        for key in redis_client.scan_iter(match=f"apx:rules:{{{team}/*}}:v:*"):
            fields = {f.decode() for f in redis_client.hkeys(key)}
            assert all(f.startswith(f"route:{team}/") for f in fields if f.startswith("route:")), fields

    # Each instance has its own Envoy snapshot ConfigMaps, holding its own Routes only.
    listed = await kube.list("ConfigMap", OPERATOR_NAMESPACE)
    for team in TEAMS:
        assert await _snapshot_configmaps(kube, team)
        served = _envoy_routes(decode_configmaps(listed, team))
        assert served and {r.split("/", 1)[0] for r in served} == {team}, served
    assert decode_configmaps(listed) is None  # no default-instance snapshot

    # On the wire: A wrote only in team-a and the operator namespace, B likewise.
    for instance in (a, b):
        assert instance.kube.writes
        assert _writes_outside(instance, {instance.name, OPERATOR_NAMESPACE}) == []

    # Editing a Route in team-a changes A's outputs and leaves B's byte-identical.
    b_redis, b_snapshot = _redis_state(redis_client, "team-b"), await _snapshot_configmaps(kube, "team-b")
    b_objects = await _namespace_state(kube, "team-b")
    a_table, a_snapshot = _route_table(redis_client, "team-a"), await _snapshot_configmaps(kube, "team-a")
    b_writes = len(b.kube.writes)
    route = await kube.get("Route", "team-a", "payments-charges")
    assert route is not None
    spec = copy.deepcopy(route["spec"])
    spec["timeout"] = "7s"
    await kube.apply(
        {"apiVersion": route["apiVersion"], "kind": "Route",
         "metadata": {"name": "payments-charges", "namespace": "team-a"}, "spec": spec}
    )  # fmt: skip
    await a.sees_and_reconciles()
    await a.sees_and_reconciles(full=True)
    await b.sees_and_reconciles()  # B looks too (its LIST of team-b): nothing of its own changed
    assert json_of(_route_table(redis_client, "team-a"), "team-a/payments-charges")["timeout_ms"] == 7000
    assert _route_table(redis_client, "team-a") != a_table
    assert await _snapshot_configmaps(kube, "team-a") != a_snapshot
    assert _redis_state(redis_client, "team-b") == b_redis
    assert await _snapshot_configmaps(kube, "team-b") == b_snapshot
    assert await _namespace_state(kube, "team-b") == b_objects
    assert b.kube.writes[b_writes:] == []

    # Deleting everything in team-a: A prunes its own outputs only.
    assert await kube.list("Deployment", "team-a")  # the async Route's workers, to be collected
    for document in samples():
        if await kube.delete(document["kind"], "team-a", document["metadata"]["name"]):
            a.reconciler.forget(document["kind"], f"team-a/{document['metadata']['name']}")
    await a.sees_and_reconciles(full=True)
    await b.sees_and_reconciles(full=True)
    assert _route_table(redis_client, "team-a") == {}
    assert (
        _envoy_routes(decode_configmaps(await kube.list("ConfigMap", OPERATOR_NAMESPACE), "team-a")) == set()
    )
    assert await _wait_for(lambda: _no_deployments(kube, "team-a"))
    assert _route_table(redis_client, "team-b").keys() == {f"team-b/{r}".encode() for r in routes}
    assert await _snapshot_configmaps(kube, "team-b") == b_snapshot
    after = await _namespace_state(kube, "team-b")
    assert {k: v for k, v in after.items() if k[0] != "Event"} == {
        k: v for k, v in b_objects.items() if k[0] != "Event"
    }
    for instance in (a, b):
        assert _writes_outside(instance, {instance.name, OPERATOR_NAMESPACE}) == []


def json_of(table: Mapping[bytes, bytes], route: str) -> dict[str, Any]:
    import json

    value: dict[str, Any] = json.loads(table[route.encode()])
    return value


async def _no_deployments(kube: KubeClient, namespace: str) -> bool:
    return not await kube.list("Deployment", namespace)


async def _wait_for(check: Any, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
