"""API-level tests of "what is serving keeps serving": one test per kind of failure a new spec can meet.

The reconciler runs in-process against the emulated Kubernetes API, real
Redis and the Pub/Sub emulator (as in ``test_reconciler.py``). Each test takes
a Ready object, applies a spec that fails at one stage (translation, Envoy
rendering, Redis rule rendering, Kubernetes manifest rendering), and checks
that the object is Stalled with the field named while the Envoy snapshot
ConfigMap and the Redis route table still carry what it served before. The
same holds for the objects a Route depends on: a new PolicyBundle version
keeps serving the versions Routes pin, and a Product or PolicyBundle deleted
while Routes use it keeps serving until none does. And the converse: an async
Route is not Ready while none of its workers is available.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from apx.controllers.appliers.kube import KubeClient
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.controllers.names import route_table_current_key, route_table_key
from apx.controllers.renderers import redis_rules
from apx.operator.reconciler import InUse, Reconciler
from apx.operator.settings import OperatorSettings
from e2e.services import Service
from tests.operator.conftest import samples

ROOT = Path(__file__).resolve().parents[2]


async def _put(kube: KubeClient, reconciler: Reconciler, document: dict[str, Any]) -> None:
    """Create or server-side apply ``document`` and let the reconciler see the stored body."""
    kind, name = document["kind"], document["metadata"]["name"]
    if await kube.get(kind, "default", name) is None:
        await kube.create(document)
    else:
        await kube.apply({**document, "metadata": {"name": name, "namespace": "default"}})
    body = await kube.get(kind, "default", name)
    assert body is not None
    reconciler.observe(kind, {**body, "kind": kind})


async def _serving(
    kube: KubeClient,
    redis_service: Service,
    pubsub_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    database: int,
    extra: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> tuple[Reconciler, redis.Redis]:
    """A reconciler that has reconciled the samples (plus ``extra``), everything Ready."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_service.address)
    url = f"redis://{redis_service.address}/{database}"
    settings = OperatorSettings(
        redis_url=url,
        pubsub_project=f"apx-test-{uuid.uuid4().hex[:8]}",
        resync_seconds=3600,
        snapshot_configmap_seconds=0,
    )
    reconciler = Reconciler(settings, kube, RedisApplier(url, keep_versions=3), PubSubApplier())
    for document in [*samples(), *extra]:
        await _put(kube, reconciler, document)
        if document["kind"] == "PolicyBundle":
            await reconciler.reconcile_once()
    await reconciler.reconcile_once()
    client = redis.Redis.from_url(url, decode_responses=True)
    return reconciler, client


async def _status(kube: KubeClient, kind: str, name: str) -> dict[str, Any]:
    body = await kube.get(kind, "default", name)
    assert body is not None
    return dict(body.get("status") or {})


def _condition(status: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == kind), None)


async def _serving_state(kube: KubeClient, client: redis.Redis) -> tuple[str, str, dict[str, Any]]:
    """(Envoy snapshot version, route table version, route table entries) as the dataplane reads them."""
    snapshot = await kube.get("ConfigMap", "apx-system", "apx-envoy-snapshot")
    assert snapshot is not None
    version = str(snapshot["data"]["version"])
    table_version = client.get(route_table_current_key())
    assert table_version
    entries = {k: json.loads(v) for k, v in client.hgetall(route_table_key(str(table_version))).items()}
    return version, str(table_version), entries


async def _apply_bad_spec_and_check_old_keeps_serving(
    kube: KubeClient,
    reconciler: Reconciler,
    client: redis.Redis,
    route: dict[str, Any],
    field: str,
) -> dict[str, Any]:
    """Apply ``route`` (a bad new spec), run passes, and check the Stalled status and unchanged serving."""
    name = route["metadata"]["name"]
    before = await _serving_state(kube, client)
    assert f"default/{name}" in before[2]
    await _put(kube, reconciler, route)
    await reconciler.reconcile_once()
    await reconciler.reconcile_once(full=True)  # a full resync keeps it too

    status = await _status(kube, "Route", name)
    assert _condition(status, "Ready") == "False", status
    assert field in status["message"], status["message"]
    after = await _serving_state(kube, client)
    assert after == before  # same snapshot, same route table: the old spec is what serves
    return status


def _route(name: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in samples() if d["metadata"]["name"] == name))


@pytest.mark.asyncio
async def test_spec_failing_translation_is_stalled_and_its_last_good_spec_keeps_serving(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, client = await _serving(kube, redis_service, pubsub_service, monkeypatch, database=4)
    route = _route("payments-legacy")
    route["spec"]["policyRef"]["version"] = "9.0.0"  # not served: translation refuses it
    await _apply_bad_spec_and_check_old_keeps_serving(
        kube, reconciler, client, route, "spec.policyRef.version"
    )


@pytest.mark.asyncio
async def test_header_regex_envoy_refuses_is_stalled_and_its_last_good_spec_keeps_serving(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, client = await _serving(kube, redis_service, pubsub_service, monkeypatch, database=5)
    route = _route("payments-legacy")
    # Lookahead: Python's engine accepts it, RE2 (Envoy) does not.
    route["spec"]["match"]["headers"] = [{"name": "x-client", "regex": "(?=abc)abc"}]
    status = await _apply_bad_spec_and_check_old_keeps_serving(
        kube, reconciler, client, route, "spec.match.headers[0]"
    )
    assert _condition(status, "Stalled") == "True", status
    assert "RE2" in status["message"] or "regular expression" in status["message"]

    # Fixing the spec serves the new one.
    route["spec"]["match"]["headers"] = [{"name": "x-client", "regex": "ab+c"}]
    await _put(kube, reconciler, route)
    await reconciler.reconcile_once()
    fixed = await _status(kube, "Route", "payments-legacy")
    assert _condition(fixed, "Ready") == "True", fixed


@pytest.mark.asyncio
async def test_spec_whose_redis_rules_fail_to_render_is_stalled_and_its_last_good_spec_keeps_serving(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, client = await _serving(kube, redis_service, pubsub_service, monkeypatch, database=6)
    original = redis_rules.route_rule

    def refuse_odd_timeouts(route: Any) -> dict[str, Any]:
        # Stands in for any rule the Redis renderer cannot produce from a spec.
        if route.timeout_ms == 31_000:
            raise ValueError("spec.timeout: the lease cannot be computed for 31s")
        return original(route)

    monkeypatch.setattr(redis_rules, "route_rule", refuse_odd_timeouts)
    route = _route("payments-legacy")
    route["spec"]["timeout"] = "31s"
    status = await _apply_bad_spec_and_check_old_keeps_serving(
        kube, reconciler, client, route, "spec.timeout"
    )
    assert status["reason"] == "RenderError"
    assert _condition(status, "Stalled") == "True", status
    # The fast path (a limit change of the same product) still publishes the last good rules.
    product = next(d for d in samples() if d["metadata"]["name"] == "payments")
    product["spec"]["plans"][0]["rateLimit"]["requestsPerSecond"] += 1
    await _put(kube, reconciler, product)
    assert await reconciler.publish_rule_sets_fast() == 1


@pytest.mark.asyncio
async def test_worker_manifests_that_collide_are_stalled_and_the_last_good_spec_keeps_serving(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = _route("ledger-exports")
    jobs["metadata"]["name"] = "jobs"
    jobs["spec"]["match"]["hosts"] = ["jobs.example.eu"]
    twin = copy.deepcopy(jobs)
    twin["metadata"]["name"] = "jobs-enterprise"
    twin["spec"]["match"]["hosts"] = ["jobs-enterprise.example.eu"]
    reconciler, client = await _serving(
        kube, redis_service, pubsub_service, monkeypatch, database=7, extra=[jobs, twin]
    )
    assert _condition(await _status(kube, "Route", "jobs"), "Ready") == "True"
    # Moving "jobs" to a product with a dedicated "enterprise" plan would render
    # a worker Deployment apx-worker-jobs-enterprise-stable: the twin's name.
    moved = copy.deepcopy(jobs)
    moved["spec"]["productRef"]["name"] = "payments"
    moved["spec"]["policyRef"]["version"] = "1.3.0"
    status = await _apply_bad_spec_and_check_old_keeps_serving(kube, reconciler, client, moved, "collide")
    assert "apx-worker-jobs-enterprise-stable" in status["message"]
    assert _condition(status, "Stalled") == "True", status
    assert _condition(await _status(kube, "Route", "jobs-enterprise"), "Ready") == "True"
    # Its summaries are those of what is served (the ledger product's topics).
    assert status["topics"] and all("ledger" in topic for topic in status["topics"])


@pytest.mark.asyncio
async def test_new_bundle_version_keeps_serving_a_version_routes_still_pin_until_they_move(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, client = await _serving(kube, redis_service, pubsub_service, monkeypatch, database=8)
    before = await _serving_state(kube, client)
    bundle = copy.deepcopy(next(d for d in samples() if d["spec"].get("version") == "1.3.0"))
    bundle["spec"]["version"] = "1.4.0"  # backward compatible: N-1 becomes 1.3.0
    await _put(kube, reconciler, bundle)
    await reconciler.reconcile_once()
    await reconciler.reconcile_once(full=True)

    status = await _status(kube, "PolicyBundle", "payments-policy")
    assert _condition(status, "Ready") == "True", status
    assert status["reason"] == "VersionsPinned", status
    assert "1.2.0" in status["message"] and "default/payments-legacy" in status["message"]
    served = {v["version"]: v for v in status["servedVersions"]}
    assert list(served) == ["1.4.0", "1.3.0", "1.2.0"]
    assert served["1.2.0"]["pinnedBy"] == ["default/payments-charges", "default/payments-legacy"]
    for name in ("payments-charges", "payments-legacy"):
        assert _condition(await _status(kube, "Route", name), "Ready") == "True", name
    after = await _serving_state(kube, client)
    for key in ("default/payments-charges", "default/payments-legacy"):
        assert after[2][key] == before[2][key]  # same route table entry: still served with 1.2.0

    # Once no Route pins 1.2.0 it is no longer served and the warning goes.
    for name in ("payments-charges", "payments-legacy"):
        route = _route(name)
        route["spec"]["policyRef"]["version"] = "1.3.0"
        if "canary" in route["spec"]:
            route["spec"]["canary"]["policyVersion"] = None  # merge semantics: null removes it
        await _put(kube, reconciler, route)
    await reconciler.reconcile_once()
    status = await _status(kube, "PolicyBundle", "payments-policy")
    assert status["reason"] == "Ready", status
    assert [v["version"] for v in status["servedVersions"]] == ["1.4.0", "1.3.0"]
    for name in ("payments-charges", "payments-legacy"):
        assert _condition(await _status(kube, "Route", name), "Ready") == "True", name


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "name", "users"), [
    ("Product", "ledger", ["default/ledger-exports"]),
    ("PolicyBundle", "payments-policy", ["default/ledger-exports", "default/payments-charges",
                                         "default/payments-legacy"]),
])  # fmt: skip
async def test_deleting_what_routes_use_keeps_it_serving_until_no_route_references_it(
    kube: KubeClient,
    redis_service: Service,
    pubsub_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    name: str,
    users: list[str],
) -> None:
    database = 9 if kind == "Product" else 10
    reconciler, client = await _serving(kube, redis_service, pubsub_service, monkeypatch, database=database)
    before = await _serving_state(kube, client)
    stored = await kube.get(kind, "default", name)
    assert stored is not None
    deleted = {
        **stored,
        "kind": kind,
        "metadata": {**stored["metadata"], "deletionTimestamp": "2026-12-06T00:00:00Z"},
    }
    reconciler.observe(kind, deleted)
    with pytest.raises(InUse, match=users[0]):
        await reconciler.finalize(kind, deleted)
    await reconciler.reconcile_once()
    await reconciler.reconcile_once(full=True)

    status = await _status(kube, kind, name)
    assert _condition(status, "Ready") == "True", status
    assert status["reason"] == "InUse"
    assert status["inUseBy"] == users
    for route in users:
        assert _condition(await _status(kube, "Route", route.split("/")[1]), "Ready") == "True", route
    assert await _serving_state(kube, client) == before
    events = await kube.list("Event", "default")
    assert any(e.get("reason") == "InUse" and users[0] in e.get("message", "") for e in events), events

    # The Routes go (or move elsewhere): the deletion completes.
    for route in users:
        reconciler.forget("Route", route)
    finalizing = asyncio.create_task(reconciler.finalize(kind, deleted, timeout=20))
    for _ in range(100):
        await asyncio.sleep(0.05)
        await reconciler.reconcile_once()
        if finalizing.done():
            break
    await finalizing


@pytest.mark.asyncio
async def test_async_route_is_ready_only_while_its_worker_deployments_have_an_available_replica(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, _ = await _serving(kube, redis_service, pubsub_service, monkeypatch, database=11)
    route = await _status(kube, "Route", "ledger-exports")
    deployments = list(route["deployments"])
    assert deployments and _condition(route, "Ready") == "True"

    async def report(available: int | None) -> None:
        # What a Deployment controller writes; the emulated API runs none, so the test does.
        status: dict[str, Any] = {"observedGeneration": 1, "replicas": 2}
        if available is not None:
            status["availableReplicas"] = available
        for name in deployments:
            body = await kube.patch_status("Deployment", "default", name, status)
            reconciler.observe_worker(body)
        await reconciler.reconcile_once()

    await report(None)  # Kubernetes omits availableReplicas when it is 0
    waiting = await _status(kube, "Route", "ledger-exports")
    assert _condition(waiting, "Ready") == "False", waiting
    assert waiting["reason"] == "WorkersUnavailable"
    assert deployments[0] in waiting["message"]
    assert waiting["workers"]["stable"] == {"available": 0, "desired": 2 * len(
        [d for d in deployments if d.endswith("-stable")]
    )}  # fmt: skip

    await report(1)
    serving = await _status(kube, "Route", "ledger-exports")
    assert _condition(serving, "Ready") == "True", serving
    assert serving["workers"]["stable"]["available"] == len([d for d in deployments if d.endswith("-stable")])
