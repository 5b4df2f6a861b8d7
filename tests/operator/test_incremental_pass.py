"""A pass after a small change looks only at what changed: documents to translate, statuses to write.

Drives the reconciler over the benchmark workload with in-memory stand-ins
for the Kubernetes API, Redis and Pub/Sub (no services): what is checked is
the reconciler's own bookkeeping, which at 10,000 objects decides whether a
one-Route edit costs milliseconds or a second. Each test also checks the
result against what a from-scratch computation gives, so a shortcut that
skips too much fails here.
"""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from apx.operator.reconciler import Reconciler
from e2e.memory_targets import MemoryKube, MemoryRedis, edited, memory_reconciler

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
Key = tuple[str, str]


def _workload(routes: int, products: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from workload import generate_documents
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return [copy.deepcopy(d) for d in generate_documents(routes, products)]


async def _settled(routes: int = 120, products: int = 12) -> tuple[Reconciler, MemoryKube, MemoryRedis]:
    reconciler, kube, redis = memory_reconciler(_workload(routes, products))
    await reconciler.reconcile_once(full=True)
    for _ in range(5):
        if (await reconciler.reconcile_once()).statuses_written == 0:
            break
    kube.status_writes.clear()
    return reconciler, kube, redis


def conflicting_newcomer(reconciler: Reconciler, kube: MemoryKube) -> dict[str, Any]:
    """A new Route ``team-01/route-99999`` of product-011 with the match of a Ready Route of product-001.

    A pass over every object leaves it out (MatchConflict); the rule-set fast
    path, which translates product-011 with its own objects only, includes it.
    """
    winner = next(
        key
        for key, body in sorted(reconciler.objects.items())
        if key[0] == "Route"
        and key[1].startswith("team-01/")
        and body["spec"]["productRef"]["name"] == "product-001"
        and reconciler._phases.get(key) == "Ready"
    )
    newcomer = copy.deepcopy(reconciler.objects[winner])
    newcomer.pop("status", None)
    newcomer["metadata"].update(
        name="route-99999", uid="newcomer", resourceVersion=kube.next_version(), generation=1
    )
    newcomer["spec"]["productRef"] = {"name": "product-011"}
    newcomer["spec"]["policyRef"] = {"name": "policy-011", "version": "1.1.0"}
    return newcomer


def _phase_counts(reconciler: Reconciler) -> dict[tuple[str, str], int]:
    return {k: v for k, v in reconciler._phase_totals.items() if v}


def _a_route(reconciler: Reconciler, index: int = 7) -> Key:
    return sorted(k for k in reconciler.objects if k[0] == "Route")[index]


async def test_a_one_route_edit_looks_at_the_statuses_of_that_route_and_its_product_only() -> None:
    reconciler, kube, _ = await _settled()
    route = _a_route(reconciler)
    product = (
        "Product",
        f"{route[1].split('/')[0]}/{reconciler.objects[route]['spec']['productRef']['name']}",
    )
    reconciler.observe("Route", edited(reconciler, route, kube, timeout="9s"))
    report = await reconciler.reconcile_once()
    assert reconciler._candidates_now is not None
    assert reconciler._candidates_now <= {route, product}, reconciler._candidates_now
    # The Route (new generation) and its Product (a new rule-set version): nothing else.
    assert route in kube.status_writes and set(kube.status_writes) <= {route, product}
    assert report.statuses_written == len(kube.status_writes)
    assert reconciler.objects[route]["status"]["observedGeneration"] == 2
    # The counts kept per object since the first pass equal a recount from scratch.
    kept = _phase_counts(reconciler)
    await reconciler.reconcile_once(full=True)
    assert reconciler._candidates_now is None
    assert _phase_counts(reconciler) == kept
    assert sum(kept.values()) == len(reconciler.objects)


async def test_a_failed_status_write_is_written_on_the_next_pass_though_nothing_else_changed() -> None:
    reconciler, kube, _ = await _settled()
    route = _a_route(reconciler, 3)
    kube.refuse.add(route)
    reconciler.observe("Route", edited(reconciler, route, kube, timeout="11s"))
    await reconciler.reconcile_once()
    assert route not in kube.status_writes
    assert reconciler.objects[route]["status"]["observedGeneration"] == 1
    kube.status_writes.clear()
    assert (await reconciler.reconcile_once()).statuses_written == 1
    assert kube.status_writes == [route]
    assert reconciler.objects[route]["status"]["observedGeneration"] == 2


async def test_a_status_edited_by_someone_else_is_written_back_by_the_resync() -> None:
    reconciler, kube, _ = await _settled()
    route = _a_route(reconciler, 5)
    body = copy.deepcopy(reconciler.objects[route])
    body["status"]["message"] = "edited by hand"
    body["metadata"]["resourceVersion"] = kube.next_version()
    reconciler.observe("Route", body)
    # Nothing a pass reads changed: an ordinary pass trusts what it wrote last ...
    assert (await reconciler.reconcile_once()).statuses_written == 0
    # ... and the periodic full pass repairs it, writing that object only.
    assert (await reconciler.reconcile_once(full=True)).statuses_written == 1
    assert reconciler.objects[route]["status"]["message"] != "edited by hand"
    assert kube.status_writes == [route]


async def test_a_dependency_problem_shows_on_every_object_it_touches_and_clears_when_it_is_gone() -> None:
    reconciler, kube, redis = await _settled()
    ready = _phase_counts(reconciler)
    redis.down = True
    reconciler.observe("Route", edited(reconciler, _a_route(reconciler), kube, timeout="12s"))
    report = await reconciler.reconcile_once()
    # Every Product and Route Redis serves (those that translated; the workload's broken ones stay Stalled).
    assert len(report.problems) > 50
    unavailable = {
        key for key, body in reconciler.objects.items() if body["status"].get("reason") == "RedisUnavailable"
    }
    assert unavailable == set(report.problems)
    # A second pass with Redis still down writes nothing new: the statuses already say so.
    reconciler.observe("Route", edited(reconciler, _a_route(reconciler, 9), kube, timeout="13s"))
    assert set((await reconciler.reconcile_once()).problems) == unavailable
    redis.down = False
    await reconciler.reconcile_once()
    assert not any(body["status"].get("reason") == "RedisUnavailable" for body in reconciler.objects.values())
    assert _phase_counts(reconciler) == ready


async def test_the_documents_a_pass_translates_follow_every_store_change_like_a_fresh_sort() -> None:
    reconciler, kube, _ = await _settled(routes=60, products=6)
    rng = random.Random(14)
    spare = _workload(80, 6)[-20:]
    for step in range(60):
        routes = sorted(k for k in reconciler.objects if k[0] == "Route")
        action = rng.choice(["spec", "status", "forget", "create"])
        key = rng.choice(routes)
        if action == "spec":
            reconciler.observe("Route", edited(reconciler, key, kube, timeout=f"{step + 1}s"))
        elif action == "status":
            body = copy.deepcopy(reconciler.objects[key])
            body["status"] = {**(body.get("status") or {}), "lastCheckAt": f"step {step}"}
            body["metadata"]["resourceVersion"] = kube.next_version()
            reconciler.observe("Route", body)
        elif action == "forget":
            reconciler.forget("Route", key[1])
        elif spare:
            document = spare.pop()
            document["metadata"].update(resourceVersion=kube.next_version(), generation=1, uid=f"new-{step}")
            reconciler.observe(document["kind"], document)
        documents = reconciler.translation_documents()
        expected = [
            body for key, body in sorted(reconciler.objects.items()) if key not in reconciler.deleting
        ]
        # The same objects in the same order; a body replaced only in what no pass reads keeps the
        # document of the body before it (same spec object), anything else is the stored body.
        assert [d["metadata"]["name"] for d in documents] == [b["metadata"]["name"] for b in expected]
        for document, body in zip(documents, expected, strict=True):
            assert document is body or document["spec"] is body["spec"]
        if step % 10 == 9:
            await reconciler.reconcile_once()


def _an_async_route(reconciler: Reconciler) -> Key:
    """A Ready async Route (it has topics and worker Deployments)."""
    return next(
        key
        for key in sorted(reconciler.objects)
        if key[0] == "Route"
        and reconciler.objects[key]["spec"].get("mode") == "async"
        and reconciler._phases.get(key) == "Ready"
    )


def _ready_sample(reconciler: Reconciler, key: Key) -> float | None:
    namespace, name = key[1].split("/", 1)
    labels = {"kind": key[0], "namespace": namespace, "name": name}
    return reconciler.metrics.registry.get_sample_value("apx_operator_object_ready", labels)


async def test_a_deleted_route_leaves_the_phase_counts_and_its_ready_series_on_an_ordinary_pass() -> None:
    reconciler, _, _ = await _settled()
    route = _a_route(reconciler, 11)
    phase = reconciler._phases[route]
    before = _phase_counts(reconciler)
    assert _ready_sample(reconciler, route) is not None
    reconciler.forget("Route", route[1])
    await reconciler.reconcile_once()
    assert reconciler._candidates_now is not None  # an ordinary pass, not a recount
    assert route not in reconciler._phases
    assert _ready_sample(reconciler, route) is None
    expected = {**before, ("Route", phase): before[("Route", phase)] - 1}
    assert _phase_counts(reconciler) == {k: v for k, v in expected.items() if v}
    await reconciler.reconcile_once(full=True)
    assert _phase_counts(reconciler) == {k: v for k, v in expected.items() if v}


async def test_the_statuses_a_pass_looks_at_again_are_the_new_objects_and_those_gone() -> None:
    from types import SimpleNamespace

    from apx.controllers.status import ready

    reconciler, _, _ = memory_reconciler([])
    statuses = {("Route", f"ns/r{i}"): ready("Route", f"ns/r{i}", 1, "ok") for i in range(6)}
    reconciler._status_seen = statuses

    def changed(new: dict[Key, Any]) -> set[Key]:
        return reconciler._statuses_changed(SimpleNamespace(statuses=new))  # type: ignore[arg-type]

    # The same objects, then two replaced in place (same keys, same order).
    assert changed(dict(statuses)) == set() and reconciler._status_gone == set()
    edited_statuses = dict(statuses)
    edited_statuses[("Route", "ns/r1")] = ready("Route", "ns/r1", 2, "ok")
    edited_statuses[("Route", "ns/r4")] = ready("Route", "ns/r4", 2, "ok")
    assert changed(edited_statuses) == {("Route", "ns/r1"), ("Route", "ns/r4")}
    assert reconciler._status_gone == set()
    # One gone and another come: the same length, but not the same keys.
    swapped = {k: v for k, v in statuses.items() if k != ("Route", "ns/r2")}
    swapped[("Route", "ns/r9")] = ready("Route", "ns/r9", 1, "ok")
    assert changed(swapped) == {("Route", "ns/r9")}
    assert reconciler._status_gone == {("Route", "ns/r2")}
    # The same keys in another order: nothing is new, nothing is gone.
    assert changed(dict(reversed(list(statuses.items())))) == set()
    assert reconciler._status_gone == set()


class _RecordingRedis(MemoryRedis):
    """Keeps the route table Redis would hold, from whole publishes and published changes."""

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[str, str] = {}
        self.changes: list[tuple[dict[str, str], list[str]]] = []

    async def publish(self, keys: Any, version: str, fields: Any) -> bool:
        if keys is not None and "route" in str(keys.current):
            self.table = dict(fields)
        return await super().publish(keys, version, fields)

    async def publish_changes(self, *args: Any) -> bool:
        _, _, _, changed, removed, _ = args
        self.changes.append((dict(changed), list(removed)))
        self.table = {k: v for k, v in {**self.table, **changed}.items() if k not in removed}
        return await super().publish_changes(*args)


async def test_the_route_table_changes_published_add_up_to_the_table_through_edits_and_new_routes() -> None:
    reconciler, kube, _ = memory_reconciler(_workload(60, 6))
    redis = _RecordingRedis()
    reconciler.redis = redis  # type: ignore[assignment]
    await reconciler.reconcile_once(full=True)
    assert redis.table and redis.table == dict(reconciler._applied_route_table_entries or {})
    rng = random.Random(7)
    spare = _workload(80, 6)[-20:]
    for step in range(12):
        routes = sorted(k for k in reconciler.objects if k[0] == "Route")
        action = ["spec", "spec", "forget", "create"][step % 4]
        key = rng.choice(routes)
        redis.changes.clear()
        if action == "spec":
            reconciler.observe("Route", edited(reconciler, key, kube, timeout=f"{step + 40}s"))
        elif action == "forget":
            reconciler.forget("Route", key[1])
        else:
            document = spare.pop()
            document["metadata"].update(resourceVersion=kube.next_version(), generation=1, uid=f"new-{step}")
            reconciler.observe(document["kind"], document)
        await reconciler.reconcile_once()
        applied = dict(reconciler._applied_route_table_entries or {})
        assert redis.table == applied, (step, action)
        if action == "spec" and redis.changes:
            # One Route edited: that entry travels, nothing else.
            assert [list(changed) for changed, _ in redis.changes] == [[key[1]]]
            assert all(not removed for _, removed in redis.changes)
    expected = dict(reconciler._applied_route_table_entries or {})
    reconciler._rebuild_requested = True
    await reconciler.reconcile_once(full=True)
    assert dict(reconciler._applied_route_table_entries or {}) == expected == redis.table


async def test_a_pubsub_change_refused_once_is_ensured_again_by_the_next_pass_without_any_change() -> None:
    from apx.controllers.appliers.pubsub import PubSubProblem

    reconciler, kube, _ = await _settled()
    route = _an_async_route(reconciler)
    name = route[1].split("/", 1)[1]
    ensured: list[str] = []
    refuse = [name]

    async def ensure(topics: Any, subscriptions: Any, verify: bool = False) -> list[Any]:
        mine = name in str(topics)
        ensured.append(route[1] if mine else "other")
        if mine and refuse:
            refuse.clear()
            return [PubSubProblem("topic", "message retention cannot shrink")]
        return []

    reconciler.pubsub.ensure = ensure  # type: ignore[method-assign]
    delivery = {"maxDeliveryAttempts": 7, "minimumBackoff": "10s", "maximumBackoff": "300s"}
    reconciler.observe("Route", edited(reconciler, route, kube, **{"async": delivery}))
    report = await reconciler.reconcile_once()
    assert report.problems[route].reason == "PubSubChangeRejected"
    assert ensured == [route[1]]
    ensured.clear()
    report = await reconciler.reconcile_once()  # nothing changed: the refused Route is tried again
    assert ensured == [route[1]] and route not in report.problems
    ensured.clear()
    await reconciler.reconcile_once()
    assert ensured == []


async def test_a_manifest_the_api_could_not_take_is_applied_by_the_next_pass_without_any_change() -> None:
    from apx.controllers.appliers.kube import Unavailable

    reconciler, kube, _ = await _settled()
    route = _an_async_route(reconciler)
    name = route[1].split("/", 1)[1]
    attempts: list[str] = []
    refuse = [name]

    async def apply(manifest: Any) -> Any:
        attempts.append(manifest["metadata"]["name"])
        if refuse and name in attempts[-1]:
            refuse.clear()
            raise Unavailable(503, "etcd leader changed")
        return manifest

    kube.apply = apply  # type: ignore[method-assign]
    reconciler.observe("Route", edited(reconciler, route, kube, timeout="19s"))
    report = await reconciler.reconcile_once()
    assert report.problems[route].reason == "KubernetesUnavailable"
    # Only the edited Route's manifests were due (its worker Deployments), not every manifest.
    refused = attempts[0]
    assert attempts and all(name in manifest_name for manifest_name in attempts)
    attempts.clear()
    report = await reconciler.reconcile_once()  # nothing changed: the refused manifest goes again
    assert attempts == [refused] and route not in report.problems
    attempts.clear()
    await reconciler.reconcile_once()
    assert attempts == []


class _VersionsRedis(MemoryRedis):
    """Keeps the version each rule-set family points at, as Redis would."""

    def __init__(self) -> None:
        super().__init__()
        self.current: dict[str, str] = {}

    async def publish(self, keys: Any, version: str, fields: Any) -> bool:
        if keys is not None:
            self.current[keys.current] = version
        return await super().publish(keys, version, fields)


async def test_a_rule_set_the_fast_path_published_from_a_subset_is_corrected_by_the_next_pass() -> None:
    reconciler, kube, _ = memory_reconciler(_workload(120, 12))
    redis = _VersionsRedis()
    reconciler.redis = redis  # type: ignore[assignment]
    await reconciler.reconcile_once(full=True)
    for _ in range(3):
        await reconciler.reconcile_once()

    # A new Route of product-011 takes the match of an older Ready Route of product-001: a pass
    # over every object leaves it out (MatchConflict; it never rendered, so no last good body
    # serves in its place) and product-011's rule set stays the very object it was, while the
    # fast path, which translates product-011 with its own Routes only, publishes one with it.
    product = "team-01/product-011"
    await reconciler.publish_rule_sets_fast()  # what loading the store marked (nothing new to publish)
    newcomer_key = ("Route", "team-01/route-99999")
    for step in range(3):
        if step == 0:
            newcomer = conflicting_newcomer(reconciler, kube)
        else:  # edited while it still conflicts: no object comes or goes, the pass takes its delta path
            newcomer = edited(reconciler, newcomer_key, kube, timeout=f"{30 + step}s")
        reconciler.observe("Route", newcomer)
        assert await reconciler.publish_rule_sets_fast() == 1  # the subset's rule set, with the newcomer
        published = reconciler._applied_rule_sets[product]
        await reconciler.reconcile_once()
        assert reconciler.objects[newcomer_key]["status"]["reason"] == "MatchConflict"
        # The pass's rule set (without the newcomer) replaced it: in Redis and in the bookkeeping.
        assert reconciler._applied_rule_sets[product] != published
        current = [key for key in redis.current if product in key]
        assert len(current) == 1 and redis.current[current[0]] == reconciler._applied_rule_sets[product]
    expected = dict(reconciler._applied_rule_sets)
    reconciler._rebuild_requested = True
    await reconciler.reconcile_once(full=True)
    assert reconciler._applied_rule_sets == expected


async def test_a_pass_waits_for_the_envoy_snapshot_build_before_its_status_writes() -> None:
    # The xDS server builds the snapshot in a thread; the pass's later phases (Pub/Sub,
    # Kubernetes, status writes) wait for it instead of taking the interpreter from it.
    reconciler, kube, _ = await _settled()
    handed: list[str] = []
    seen_at_wait: list[tuple[list[str], int]] = []

    async def built() -> None:
        seen_at_wait.append((list(handed), len(kube.status_writes)))

    reconciler.envoy_listeners.append(lambda output: handed.append(output.version))
    reconciler.envoy_waits.append(built)
    key = next(k for k in reconciler.objects if k[0] == "Route")
    reconciler.observe("Route", edited(reconciler, key, kube, timeout="41s"))
    await reconciler.reconcile_once()
    assert len(handed) == 1 and seen_at_wait == [(handed, 0)]
    assert key in kube.status_writes  # written after the wait
