"""API-level tests of the reconciler: emulated Kubernetes API, real Redis, real Pub/Sub emulator.

The reconciler runs in-process (one pass at a time, no kopf), so each test
drives it step by step and checks what a user would see: statuses in the API,
rule sets in Redis, topics in the emulator, Deployments and ConfigMaps.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from google.cloud import pubsub_v1

from apx.controllers.appliers.kube import KubeClient, KubeError
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.controllers.names import ruleset_current_key
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps
from apx.operator.reconciler import Reconciler
from apx.operator.settings import OperatorSettings
from e2e.services import Service, start_redis
from tests.operator.conftest import samples

ROOT = Path(__file__).resolve().parents[2]


def _make_reconciler(
    kube: KubeClient, redis_url: str, project: str, monkeypatch: pytest.MonkeyPatch, pubsub: Service
) -> Reconciler:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.address)
    settings = OperatorSettings(
        redis_url=redis_url, pubsub_project=project, resync_seconds=3600, snapshot_configmap_seconds=0
    )
    return Reconciler(settings, kube, RedisApplier(redis_url, keep_versions=3), PubSubApplier())


async def _apply_samples(kube: KubeClient, reconciler: Reconciler) -> None:
    """Apply samples in order, with a pass after each PolicyBundle version (as the operator sees them)."""
    for document in samples():
        existing = await kube.get(document["kind"], "default", document["metadata"]["name"])
        if existing is None:
            await kube.create(document)
        else:
            await kube.apply({**document, "metadata": {**document["metadata"], "namespace": "default"}})
        body = await kube.get(document["kind"], "default", document["metadata"]["name"])
        assert body is not None
        reconciler.observe(document["kind"], {**body, "kind": document["kind"]})
        if document["kind"] == "PolicyBundle":
            await reconciler.reconcile_once()
    await reconciler.reconcile_once()


async def _reconciler_with_samples(
    kube: KubeClient,
    redis_service: Service,
    pubsub_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    database: int,
) -> tuple[Reconciler, str]:
    """A reconciler (fresh Pub/Sub project, its own Redis database) that has reconciled the samples."""
    project = f"apx-test-{uuid.uuid4().hex[:8]}"
    url = f"redis://{redis_service.address}/{database}"
    reconciler = _make_reconciler(kube, url, project, monkeypatch, pubsub_service)
    await _apply_samples(kube, reconciler)
    return reconciler, project


async def _apply_spec(kube: KubeClient, body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply a new ``spec`` to the object ``body`` (as a user would), returning the result."""
    meta = body["metadata"]
    return await kube.apply(
        {"apiVersion": body["apiVersion"], "kind": body["kind"],
         "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")}, "spec": spec}
    )  # fmt: skip


def _ready(body: dict[str, Any] | None) -> bool:
    assert body is not None
    conditions = {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions") or []}
    return conditions.get("Ready") == "True"


@pytest.mark.asyncio
async def test_samples_become_ready_with_rules_topics_deployments_and_snapshot(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, project = await _reconciler_with_samples(kube, redis_service, pubsub_service, monkeypatch, database=1)

    for document in samples():
        body = await kube.get(document["kind"], "default", document["metadata"]["name"])
        assert _ready(body), (document["metadata"]["name"], (body or {}).get("status"))

    product = await kube.get("Product", "default", "payments")
    assert product is not None
    version = product["status"]["ruleSetVersion"]
    client = redis.Redis.from_url(f"redis://{redis_service.address}/1", decode_responses=True)
    assert client.get(ruleset_current_key("default/payments")) == version

    route = await kube.get("Route", "default", "ledger-exports")
    assert route is not None
    topics = route["status"]["topics"]
    assert topics and all("europe-" in t for t in topics)
    publisher = pubsub_v1.PublisherClient()
    existing = {
        t.name.rsplit("/", 1)[1] for t in publisher.list_topics(request={"project": f"projects/{project}"})
    }
    assert set(topics) <= existing
    assert {f"{t}.dlq" for t in topics} <= existing

    deployment = await kube.get("Deployment", "default", route["status"]["deployments"][0])
    assert deployment is not None
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == route["metadata"]["uid"]
    resources = decode_configmaps(await kube.list("ConfigMap", "apx-system"))
    assert resources is not None
    assert {r.type_url.rsplit(".", 1)[-1] for r in resources} == {"Listener", "RouteConfiguration", "Cluster"}
    for kind in ("ConfigMap", "Secret"):
        assert await kube.get(kind, "default", "apx-dataplane") is not None

    bundle = await kube.get("PolicyBundle", "default", "payments-policy")
    assert bundle is not None
    assert [v["version"] for v in bundle["status"]["servedVersions"]] == ["1.3.0", "1.2.0"]


@pytest.mark.asyncio
async def test_changing_a_plan_limit_publishes_a_new_rule_set_version(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler = _make_reconciler(
        kube,
        f"redis://{redis_service.address}/2",
        f"apx-test-{uuid.uuid4().hex[:8]}",
        monkeypatch,
        pubsub_service,
    )
    await _apply_samples(kube, reconciler)
    client = redis.Redis.from_url(f"redis://{redis_service.address}/2", decode_responses=True)
    before = client.get(ruleset_current_key("default/payments"))

    product = copy.deepcopy(next(d for d in samples() if d["metadata"]["name"] == "payments"))
    product["spec"]["plans"][0]["rateLimit"]["requestsPerSecond"] = 7
    updated = await kube.apply({**product, "metadata": {**product["metadata"], "namespace": "default"}})
    reconciler.observe("Product", updated)
    report = await reconciler.reconcile_once()

    after = client.get(ruleset_current_key("default/payments"))
    assert after != before
    assert report.redis_published >= 1
    rule = client.hget(f"apx:rules:{{default/payments}}:v:{after}", "plan:free")
    assert rule is not None and '"requests_per_second":7' in rule


@pytest.mark.asyncio
async def test_update_pinning_an_unserved_version_waits_and_what_was_applied_keeps_serving(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=3
    )
    client = redis.Redis.from_url(f"redis://{redis_service.address}/3", decode_responses=True)
    route = await kube.get("Route", "default", "payments-legacy")
    assert route is not None
    # Something admission cannot see: a pin to a version that is not served.
    route["spec"]["policyRef"]["version"] = "9.0.0"
    updated = await _apply_spec(kube, route, route["spec"])
    reconciler.observe("Route", updated)
    await reconciler.reconcile_once()

    stalled = await kube.get("Route", "default", "payments-legacy")
    assert stalled is not None
    conditions = {c["type"]: c["status"] for c in stalled["status"]["conditions"]}
    # kstatus: the version may still be applied, so the Route waits (not Stalled).
    assert conditions == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert stalled["status"]["reason"] == "PolicyVersionNotServed"
    assert "spec.policyRef.version" in stalled["status"]["message"]
    assert _ready(await kube.get("Route", "default", "payments-charges"))
    assert client.get(ruleset_current_key("default/payments")) is not None
    current = client.get(ruleset_current_key("default/payments"))
    # The product's other Route is still in the live rule set, and so is the
    # Stalled one, as it was last good: a wrong new spec removes nothing.
    assert client.hget(f"apx:rules:{{default/payments}}:v:{current}", "route:default/payments-charges")
    assert client.hget(f"apx:rules:{{default/payments}}:v:{current}", "route:default/payments-legacy")
    packed = decode_configmaps(await kube.list("ConfigMap", "apx-system"))
    assert packed is not None
    assert any(b"payments-legacy" in resource.value for resource in packed)

    # The fast path (a limit change of the same product) keeps it too.
    product = await kube.get("Product", "default", "payments")
    assert product is not None
    product["spec"]["plans"][0]["rateLimit"]["requestsPerSecond"] += 1
    changed = await _apply_spec(kube, product, product["spec"])
    reconciler.observe("Product", changed)
    assert await reconciler.publish_rule_sets_fast() == 1
    newer = client.get(ruleset_current_key("default/payments"))
    assert newer != current
    assert client.hget(f"apx:rules:{{default/payments}}:v:{newer}", "route:default/payments-legacy")


@pytest.mark.asyncio
async def test_redis_outage_is_reported_and_recovers_without_restart(
    kube: KubeClient, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own_redis = start_redis(tmp_path / "redis")
    port = own_redis.port
    try:
        reconciler = _make_reconciler(
            kube,
            f"redis://{own_redis.address}/0",
            f"apx-test-{uuid.uuid4().hex[:8]}",
            monkeypatch,
            pubsub_service,
        )
        await _apply_samples(kube, reconciler)
        own_redis.stop()

        report = await reconciler.reconcile_once(full=True)
        assert report.problems
        product = await kube.get("Product", "default", "payments")
        assert product is not None
        assert product["status"]["reason"] == "RedisUnavailable"
        assert "Redis" in product["status"]["message"]
        conditions = {c["type"]: c["status"] for c in product["status"]["conditions"]}
        assert conditions == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}

        own_redis = start_redis(tmp_path / "redis", port=port)
        report = await reconciler.reconcile_once(full=True)
        assert not report.problems
        assert _ready(await kube.get("Product", "default", "payments"))
        client = redis.Redis(port=port, decode_responses=True)
        assert client.get(ruleset_current_key("default/payments")) is not None
    finally:
        own_redis.stop()


@pytest.mark.asyncio
async def test_flushed_redis_and_deleted_topic_are_repaired_by_a_full_resync(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, project = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=4
    )
    client = redis.Redis.from_url(f"redis://{redis_service.address}/4", decode_responses=True)
    client.flushdb()
    route = await kube.get("Route", "default", "ledger-exports")
    assert route is not None
    topic = f"projects/{project}/topics/{route['status']['topics'][0]}"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    for subscription in publisher.list_topic_subscriptions(request={"topic": topic}):
        subscriber.delete_subscription(request={"subscription": subscription})
    publisher.delete_topic(request={"topic": topic})

    await reconciler.reconcile_once(full=True)

    assert client.get(ruleset_current_key("default/payments")) is not None
    publisher.get_topic(request={"topic": topic})


@pytest.mark.asyncio
async def test_deleting_a_route_with_delete_policy_removes_its_topics(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, project = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=5
    )
    route = await kube.get("Route", "default", "ledger-exports")
    assert route is not None
    topics = [f"projects/{project}/topics/{t}" for t in route["status"]["topics"]]
    route["spec"]["deletionPolicy"] = "Delete"

    import asyncio

    finalizing = asyncio.create_task(reconciler.finalize("Route", route, timeout=20))
    await asyncio.sleep(0)
    await reconciler.reconcile_once()
    await finalizing

    publisher = pubsub_v1.PublisherClient()
    existing = {t.name for t in publisher.list_topics(request={"project": f"projects/{project}"})}
    assert not set(topics) & existing


@pytest.mark.asyncio
async def test_deleting_a_route_with_retain_policy_keeps_its_topics(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, project = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=6
    )
    route = await kube.get("Route", "default", "ledger-exports")
    assert route is not None
    topics = [f"projects/{project}/topics/{t}" for t in route["status"]["topics"]]

    import asyncio

    finalizing = asyncio.create_task(reconciler.finalize("Route", route, timeout=20))
    await asyncio.sleep(0)
    await reconciler.reconcile_once()
    await finalizing

    publisher = pubsub_v1.PublisherClient()
    existing = {t.name for t in publisher.list_topics(request={"project": f"projects/{project}"})}
    assert set(topics) <= existing


@pytest.mark.asyncio
async def test_fast_path_publishes_only_the_touched_products_rule_set(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=7
    )
    client = redis.Redis.from_url(f"redis://{redis_service.address}/7", decode_responses=True)
    payments_before = client.get(ruleset_current_key("default/payments"))
    ledger_before = client.get(ruleset_current_key("default/ledger"))

    route = await kube.get("Route", "default", "payments-legacy")
    assert route is not None
    updated = await _apply_spec(kube, route, {**route["spec"], "timeout": "45s"})
    reconciler.observe("Route", updated)
    assert await reconciler.publish_rule_sets_fast() == 1

    fast = client.get(ruleset_current_key("default/payments"))
    assert fast != payments_before
    assert client.get(ruleset_current_key("default/ledger")) == ledger_before
    # The full pass renders the same rule set from every object: nothing more to publish.
    report = await reconciler.reconcile_once()
    assert client.get(ruleset_current_key("default/payments")) == fast
    assert report.redis_published <= 1  # only the route table may move


@pytest.mark.asyncio
async def test_store_keeps_objects_without_field_manager_records_and_still_reconciles(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=8
    )

    route = await kube.get("Route", "default", "payments-legacy")
    assert route is not None and route["metadata"].get("managedFields")
    assert reconciler.objects
    for (kind, key), stored in reconciler.objects.items():
        assert "managedFields" not in stored["metadata"], (kind, key)
    stored_route = reconciler.objects[("Route", "default/payments-legacy")]
    assert stored_route["spec"] == route["spec"]
    assert stored_route["metadata"]["resourceVersion"] == route["metadata"]["resourceVersion"]
    assert _ready(stored_route)


@pytest.mark.asyncio
async def test_a_route_edit_after_status_writes_renders_only_that_route_again(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status writes replace bodies without changing what a pass reads: nothing else is rendered again.

    Before, the Product's status write (its Route count, its summary) gave the next pass a new
    Product body, hence a new Product IR, which made every stage start afresh: at 10,000 Routes
    each one-Route edit cost a whole render.
    """
    from apx.controllers.renderers.envoy import incremental as envoy_incremental
    from apx.controllers.translation import routes as translation_routes

    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=10
    )
    await reconciler.reconcile_once()  # statuses of the last pass written, bodies replaced
    for key in list(reconciler.objects):  # and again, as their watch events or a relist would
        body = await kube.get(key[0], "default", key[1].split("/", 1)[1])
        assert body is not None
        reconciler.observe(key[0], {**body, "kind": key[0]})
    await reconciler.reconcile_once()

    built: list[str] = []
    rendered: list[str] = []
    route_ir, entries = translation_routes.route_ir, envoy_incremental._entries

    def counted_route_ir(ctx: Any, route: Any, override: Any) -> Any:
        built.append(route.key)
        return route_ir(ctx, route, override)

    def counted_entries(route: Any, ctx: Any) -> Any:
        rendered.append(route.key)
        return entries(route, ctx)

    monkeypatch.setattr(translation_routes, "route_ir", counted_route_ir)
    monkeypatch.setattr(envoy_incremental, "_entries", counted_entries)

    route = await kube.get("Route", "default", "payments-legacy")
    assert route is not None
    updated = await _apply_spec(kube, route, {**route["spec"], "timeout": "44s"})
    reconciler.observe("Route", updated)
    report = await reconciler.reconcile_once()
    assert built == ["default/payments-legacy"], built
    assert rendered == ["default/payments-legacy"], rendered
    assert report.statuses_written >= 1
    # The next edit, after this pass's own status writes, again renders only the Route edited.
    built.clear()
    rendered.clear()
    route = await kube.get("Route", "default", "payments-charges")
    assert route is not None
    updated = await _apply_spec(kube, route, {**route["spec"], "timeout": "43s"})
    reconciler.observe("Route", updated)
    await reconciler.reconcile_once()
    assert built == ["default/payments-charges"], built
    assert rendered == ["default/payments-charges"], rendered


class RefusingApplies:
    """The API client, with server-side applies of some objects refused (403 from RBAC, 413 too large)."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def apply(self, manifest: dict[str, Any], force: bool = True) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        if manifest["kind"] == "ConfigMap" and name.startswith("apx-envoy-snapshot"):
            raise KubeError(413, "Maximum request body size 1048576 exceeded.")
        if manifest["kind"] == "Deployment":
            raise KubeError(403, f'deployments.apps "{name}" is forbidden: User cannot patch resource')
        return await self._kube.apply(manifest, force)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kube, name)


@pytest.mark.asyncio
async def test_a_manifest_the_api_refuses_marks_its_owner_and_every_other_object_still_gets_its_status(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = f"apx-test-{uuid.uuid4().hex[:8]}"
    url = f"redis://{redis_service.address}/11"
    reconciler = _make_reconciler(kube, url, project, monkeypatch, pubsub_service)
    reconciler.kube = RefusingApplies(kube)  # type: ignore[assignment]
    await _apply_samples(kube, reconciler)  # a refused apply used to fail the whole pass
    async_route = await kube.get("Route", "default", "ledger-exports")
    assert async_route is not None
    status = async_route["status"]
    assert status["reason"] == "ManifestRefused", status
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
    assert "forbidden" in message and "Deployment" in message
    for name in ("payments-charges", "payments-legacy"):
        route = await kube.get("Route", "default", name)
        assert route is not None and _ready(route), (name, route.get("status"))


@pytest.mark.asyncio
async def test_a_route_edit_publishes_the_route_table_as_its_changes_and_readers_see_the_whole_table(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apx.controllers import names

    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=12
    )
    client = redis.Redis.from_url(f"redis://{redis_service.address}/12", decode_responses=True)
    before = client.get(names.route_table_current_key())
    sent: list[tuple[str, int]] = []
    full, changes = reconciler.redis.publish, reconciler.redis.publish_changes

    async def counted_full(keys: Any, version: str, fields: Any) -> bool:
        sent.append(("whole", len(fields)))
        return await full(keys, version, fields)

    async def counted_changes(
        keys: Any, version: str, base: str, changed: Any, removed: Any, fields: Any
    ) -> bool:
        sent.append(("changes", len(changed) + len(removed)))
        return await changes(keys, version, base, changed, removed, fields)

    monkeypatch.setattr(reconciler.redis, "publish", counted_full)
    monkeypatch.setattr(reconciler.redis, "publish_changes", counted_changes)
    route = await kube.get("Route", "default", "payments-legacy")
    assert route is not None
    reconciler.observe("Route", await _apply_spec(kube, route, {**route["spec"], "timeout": "41s"}))
    await reconciler.reconcile_once()
    version = client.get(names.route_table_current_key())
    assert version is not None and version != before
    assert ("changes", 1) in sent, sent
    assert client.hgetall(names.route_table_key(version)) == reconciler._applied_route_table_entries
    # The previous version's hash was trimmed meanwhile (or flushed): the whole table is published.
    client.delete(names.route_table_key(version))
    route = await kube.get("Route", "default", "payments-legacy")
    assert route is not None
    reconciler.observe("Route", await _apply_spec(kube, route, {**route["spec"], "timeout": "42s"}))
    await reconciler.reconcile_once()
    latest = client.get(names.route_table_current_key())
    assert latest is not None and latest != version
    assert client.hgetall(names.route_table_key(latest)) == reconciler._applied_route_table_entries
    assert len(client.hgetall(names.route_table_key(latest))) == 3
