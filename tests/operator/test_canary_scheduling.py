"""The canary loop's scheduling at scale, against an in-memory store and API client (no services).

What is checked: a thousand canaries falling due together are handled a bounded
number at a time (new revisions first, then the most overdue checks), every one
of them is handled in the end, a round with nothing due looks at none of
the Routes without a canary, and a round looks only at the Routes whose check
is due or whose body changed.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from apx.operator.canary import CanaryController
from apx.operator.metrics import OperatorMetrics
from e2e.canaryrig import documents

pytestmark = pytest.mark.asyncio

CANARY: dict[str, Any] = {"steps": [20, 50, 100], "interval": "30s", "analysis": {"checkInterval": "10s"}}


class Store:
    """What the canary loop reads of the reconciler: its objects, and the listener hook."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleting: dict[tuple[str, str], dict[str, Any]] = {}
        self.listed = True
        self.listeners: list[Any] = []
        self.metrics = OperatorMetrics()

    def observe(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        self.objects[(kind, f"{meta['namespace']}/{meta['name']}")] = dict(body)
        for listener in self.listeners:
            listener(kind, body)


class SlowApi:
    """Status writes that take a while; records how many were in flight at once, and in what order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.in_flight = 0
        self.most_in_flight = 0
        self.order: list[str] = []

    async def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.order.append(name)
        try:
            await asyncio.sleep(0.002)
        finally:
            self.in_flight -= 1
        body = copy.deepcopy(self.store.objects[(kind, f"{namespace}/{name}")])
        body["status"] = {**(body.get("status") or {}), **status}
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return body

    async def request(self, *args: Any, **kwargs: Any) -> Any:  # Events
        return {}

    async def create(self, manifest: Mapping[str, Any]) -> Any:
        return dict(manifest)


def _routes(store: Store, count: int, plain: int) -> None:
    route = next(
        d for d in documents("default", "sync", "http://a", "http://b", CANARY) if d["kind"] == "Route"
    )
    for index in range(count + plain):
        body = copy.deepcopy(route)
        body["metadata"] = {"name": f"r{index:04d}", "namespace": "default", "resourceVersion": "1"}
        if index >= count:
            del body["spec"]["canary"]
        store.observe("Route", body)


async def test_a_thousand_canaries_due_together_are_started_a_bounded_number_at_a_time() -> None:
    store = Store()
    _routes(store, 1000, plain=2000)
    api = SlowApi(store)
    controller = CanaryController(
        store, api, None, store.metrics, clock=lambda: 1_800_000_000.0, concurrency=8
    )  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(controller.run(stop))
    try:
        async with asyncio.timeout(60):
            while len(set(api.order)) < 1000:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
    assert api.most_in_flight <= 8, api.most_in_flight
    assert len(set(api.order)) == 1000
    assert all(name < "r1000" for name in api.order), "a Route without a canary got a status write"


async def test_a_round_looks_only_at_the_routes_whose_time_came_or_whose_body_changed() -> None:
    store = Store()
    _routes(store, 300, plain=100)
    api = SlowApi(store)
    now = [1_800_000_000.0]
    reconciler: Any = store  # what the loop reads of the reconciler
    controller = CanaryController(reconciler, api, None, store.metrics, clock=lambda: now[0], concurrency=300)
    looked: list[str] = []
    work_for = controller._work_for

    def counting(key: str, body: Mapping[str, Any], at: float) -> Any:
        looked.append(key)
        return work_for(key, body, at)

    controller._work_for = counting  # type: ignore[method-assign]
    controller.schedule(now[0])  # every canary starts (a new revision): its first status is written
    await controller.settle()
    controller.schedule(now[0])  # the written bodies: each now waits for its first check
    await controller.settle()
    assert len(set(looked)) == 300
    looked.clear()
    for _ in range(20):  # rounds with nothing due (a finished check elsewhere, a tick)
        now[0] += 0.1
        assert controller.schedule(now[0]) > 0
    assert looked == [], f"{len(looked)} Routes looked at with nothing due"
    # One body changes: that Route alone is looked at.
    changed = copy.deepcopy(store.objects[("Route", "default/r0007")])
    changed["metadata"]["resourceVersion"] = str(int(changed["metadata"]["resourceVersion"]) + 1)
    changed["metadata"]["labels"] = {"edited": "yes"}
    store.observe("Route", changed)
    controller.schedule(now[0])
    assert looked == ["default/r0007"]
    looked.clear()
    # Their checks fall due: each is looked at (and started) once.
    now[0] += 10
    controller.schedule(now[0])
    await controller.settle()
    assert len(looked) == 300 and len(set(looked)) == 300
