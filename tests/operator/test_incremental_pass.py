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
