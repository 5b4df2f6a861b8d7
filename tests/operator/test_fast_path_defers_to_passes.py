"""The rule-set fast path publishes only what no pass published, and waits briefly for the passes.

A change arriving between passes reaches Redis through the next ordinary pass
(its Redis phase comes first); the fast path then has nothing left to do and
translates nothing. A change arriving after a pass took its snapshot is the
fast path's. Driven over the benchmark workload with the in-memory targets
(no services), each result checked against a pass from scratch.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from apx.operator.reconciler import Reconciler
from e2e.memory_targets import MemoryKube, edited, memory_reconciler
from tests.operator.test_incremental_pass import _settled as settled_workload
from tests.operator.test_incremental_pass import _workload, conflicting_newcomer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

Key = tuple[str, str]


async def _settled() -> tuple[Reconciler, MemoryKube]:
    reconciler, kube, _ = await settled_workload(60, 6)
    await reconciler.publish_rule_sets_fast()  # what loading the store marked
    return reconciler, kube


def _routes_of(reconciler: Reconciler, product: str) -> list[Key]:
    namespace, name = product.split("/", 1)
    return sorted(
        key
        for key, body in reconciler.objects.items()
        if key[0] == "Route"
        and key[1].startswith(f"{namespace}/")
        and body["spec"]["productRef"]["name"] == name
        and not body["spec"].get("canary")
    )


def _count_stages(reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the fast path's translations (the passes' carry their caches, the fast path's none)."""
    calls: list[int] = []
    original = reconciler._serving_stage

    def counting(documents: list[dict[str, Any]], caches: Any = None, *args: Any) -> Any:
        if caches is None:
            calls.append(len(documents))
        return original(documents, caches, *args)

    monkeypatch.setattr(reconciler, "_serving_stage", counting)
    return calls


async def _from_scratch(reconciler: Reconciler) -> dict[str, str]:
    reconciler._rebuild_requested = True
    await reconciler.reconcile_once(full=True)
    return dict(reconciler._applied_rule_sets)


async def test_a_change_the_next_pass_published_is_not_translated_again_by_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reconciler, kube = await _settled()
    product = "team-01/product-001"
    route = _routes_of(reconciler, product)[0]
    before = reconciler._applied_rule_sets[product]
    # The route's timeout is in its product's rule set (the lease of its requests).
    reconciler.observe("Route", edited(reconciler, route, kube, timeout="37s"))
    assert not reconciler.rules_covered(product)
    await reconciler.reconcile_once()
    assert reconciler.rules_covered(product)
    published = reconciler._applied_rule_sets[product]
    assert published != before
    stages = _count_stages(reconciler, monkeypatch)
    assert await reconciler.publish_rule_sets_fast() == 0
    assert stages == []  # nothing translated again
    assert not reconciler._dirty_products
    assert await _from_scratch(reconciler) == reconciler._applied_rule_sets
    assert reconciler._applied_rule_sets[product] == published


async def test_a_change_arriving_after_a_pass_took_its_snapshot_is_published_by_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reconciler, kube = await _settled()
    product = "team-01/product-001"
    first, second = _routes_of(reconciler, product)[:2]
    reconciler.observe("Route", edited(reconciler, first, kube, timeout="37s"))
    apply_redis = reconciler._apply_redis
    arrived: list[bool] = []

    async def change_arrives_meanwhile(*args: Any) -> None:
        if not arrived:  # the pass has translated; a second edit of the product comes in now
            arrived.append(True)
            reconciler.observe("Route", edited(reconciler, second, kube, timeout="38s"))
        await apply_redis(*args)

    monkeypatch.setattr(reconciler, "_apply_redis", change_arrives_meanwhile)
    await reconciler.reconcile_once()
    assert arrived
    assert not reconciler.rules_covered(product)  # the pass left it (its snapshot is older)
    stages = _count_stages(reconciler, monkeypatch)
    assert await reconciler.publish_rule_sets_fast() == 1
    assert len(stages) == 1  # the product's own objects, not the store
    assert stages[0] < len(reconciler.objects) // 2
    assert reconciler.rules_covered(product)
    fast = reconciler._applied_rule_sets[product]
    monkeypatch.setattr(reconciler, "_apply_redis", apply_redis)
    assert (await _from_scratch(reconciler))[product] == fast


async def test_every_change_moves_its_products_epoch_even_while_it_waits_for_the_fast_path() -> None:
    reconciler, kube = await _settled()
    product = "team-01/product-001"
    first, second = _routes_of(reconciler, product)[:2]
    epoch = reconciler._epoch.get(product, 0)
    reconciler.observe("Route", edited(reconciler, first, kube, timeout="37s"))
    assert product in reconciler._dirty_products
    reconciler.observe("Route", edited(reconciler, second, kube, timeout="38s"))
    assert reconciler._epoch[product] == epoch + 2


async def test_the_fast_path_waits_for_the_pass_that_publishes_the_change() -> None:
    reconciler, kube = await _settled()
    product = "team-01/product-001"
    reconciler.observe("Route", edited(reconciler, _routes_of(reconciler, product)[0], kube, timeout="37s"))
    waiting = asyncio.create_task(reconciler._rules_left_to_passes(60.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no pass yet: it waits (up to its grace)
    await reconciler.reconcile_once()
    await asyncio.wait_for(waiting, 10)  # the pass published it: no need to wait the grace out
    assert reconciler.rules_covered(product)


async def test_the_fast_path_waits_no_longer_than_its_grace_and_not_at_all_during_a_full_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reconciler, kube = await _settled()
    product = "team-01/product-001"
    reconciler.observe("Route", edited(reconciler, _routes_of(reconciler, product)[0], kube, timeout="37s"))
    await asyncio.wait_for(reconciler._rules_left_to_passes(0.05), 10)  # no pass came: gave up
    assert not reconciler.rules_covered(product)

    # A full pass reaches Redis only after translating everything: the fast path goes at once,
    # also when the full pass begins while it waits.
    reconciler._full_pass_running = True
    await asyncio.wait_for(reconciler._rules_left_to_passes(60.0), 10)
    reconciler._full_pass_running = False
    waiting = asyncio.create_task(reconciler._rules_left_to_passes(60.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # The full pass is held before its Redis phase: the wait ends because it began.
    apply_redis, release = reconciler._apply_redis, asyncio.Event()

    async def held(*args: Any) -> None:
        await release.wait()
        await apply_redis(*args)

    monkeypatch.setattr(reconciler, "_apply_redis", held)
    full_pass = asyncio.create_task(reconciler.reconcile_once(full=True))
    await asyncio.wait_for(waiting, 10)
    assert not reconciler.rules_covered(product)
    release.set()
    await full_pass
    assert reconciler.rules_covered(product)


async def test_a_pass_that_publishes_while_the_fast_path_translates_is_not_overwritten_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reconciler, kube, _ = memory_reconciler(_workload(120, 12))
    await reconciler.reconcile_once(full=True)
    for _ in range(3):
        await reconciler.reconcile_once()
    await reconciler.publish_rule_sets_fast()
    # The pass, over every object, leaves the newcomer out (MatchConflict); the fast path, over
    # product-011's own objects, renders a rule set with it. The pass's must stay published.
    product = "team-01/product-011"
    newcomer = conflicting_newcomer(reconciler, kube)
    reconciler.observe("Route", newcomer)
    entered, release = threading.Event(), threading.Event()
    original = reconciler._serving_stage

    def held(documents: list[dict[str, Any]], caches: Any = None, *args: Any) -> Any:
        if caches is None:  # the fast path's translation, in its thread
            entered.set()
            release.wait(30)
        return original(documents, caches, *args)

    monkeypatch.setattr(reconciler, "_serving_stage", held)
    fast = asyncio.create_task(reconciler.publish_rule_sets_fast())
    assert await asyncio.to_thread(entered.wait, 30)
    await reconciler.reconcile_once()
    assert reconciler.objects[("Route", "team-01/route-99999")]["status"]["reason"] == "MatchConflict"
    by_pass = reconciler._applied_rule_sets[product]
    release.set()
    assert await fast == 0
    assert reconciler._applied_rule_sets[product] == by_pass


async def test_a_change_that_would_wait_for_the_running_pass_goes_to_the_fast_path_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reconciler, kube = await _settled()
    product, other = "team-01/product-001", "team-02/product-002"
    reconciler.observe("Route", edited(reconciler, _routes_of(reconciler, product)[0], kube, timeout="37s"))
    apply_redis, release, reached = reconciler._apply_redis, asyncio.Event(), asyncio.Event()

    async def held(*args: Any) -> None:
        reached.set()
        await release.wait()
        await apply_redis(*args)

    monkeypatch.setattr(reconciler, "_apply_redis", held)
    running = asyncio.create_task(reconciler.reconcile_once())
    await asyncio.wait_for(reached.wait(), 10)
    # The change the running pass holds: left to it.
    waiting = asyncio.create_task(reconciler._rules_left_to_passes(60.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # A change that pass does not hold would wait for it to end: no waiting.
    reconciler.observe("Route", edited(reconciler, _routes_of(reconciler, other)[0], kube, timeout="39s"))
    await asyncio.wait_for(waiting, 10)
    await asyncio.wait_for(reconciler._rules_left_to_passes(60.0), 10)
    assert not reconciler.rules_covered(other)
    assert await reconciler.publish_rule_sets_fast() >= 1  # (the held product's too: not published yet)
    assert reconciler.rules_covered(other)  # while the pass is still held
    release.set()
    await running
    assert reconciler.rules_covered(product) and reconciler.rules_covered(other)
