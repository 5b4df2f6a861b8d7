"""API-level tests of the canary loop: emulated Kubernetes API, real Redis and Pub/Sub, one reconciler.

The loop (``apx.operator.canary.CanaryController``) runs in-process round by
round with a clock the test moves, against a scripted metrics provider (the
Prometheus provider has its own tests against a real Prometheus, and the e2e
suite closes the whole loop). What is checked is what users and the dataplane
see: ``status.canary`` in the API, the weight in the Redis route table and the
Envoy snapshot after one ordinary pass, Events, metrics, and that the loop
never loses an ``apx rollout`` request nor touches the spec.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from envoy.config.route.v3 import route_pb2

from apx.controllers import names
from apx.controllers.appliers.kube import KubeClient, Unavailable
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.controllers.canary.types import MetricsUnavailable, RouteTarget, Track, TrackWindow
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps
from apx.operator import canary as canary_module
from apx.operator.canary import CanaryController
from apx.operator.metrics import OperatorMetrics
from apx.operator.reconciler import Reconciler
from apx.operator.settings import OperatorSettings
from e2e.canaryrig import documents
from e2e.services import Service

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
CANARY: dict[str, Any] = {
    "steps": [20, 50, 100],
    "interval": "30s",
    "analysis": {"checkInterval": "10s", "window": "1m", "minSamples": 50, "failureThreshold": 2},
}
GOOD = TrackWindow(requests=1000, errors=1, latency_buckets=((100.0, 990.0), (float("inf"), 1000.0)))
BAD = TrackWindow(requests=200, errors=60, latency_buckets=((100.0, 198.0), (float("inf"), 200.0)))


class ScriptedProvider:
    """A metrics provider whose answers the test sets; records what it was asked."""

    name = "scripted"

    def __init__(self) -> None:
        self.windows: dict[Track, TrackWindow] = {"stable": GOOD, "canary": GOOD}
        self.error: str | None = None
        self.asked: list[tuple[RouteTarget, Track, int]] = []

    async def query(self, target: RouteTarget, track: Track, window_seconds: int) -> TrackWindow:
        self.asked.append((target, track, window_seconds))
        if self.error is not None:
            raise MetricsUnavailable(self.error)
        return self.windows[track]

    async def healthy(self) -> bool:
        return self.error is None


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Loop:
    """The reconciler and the canary loop, driven one round at a time."""

    def __init__(self, kube: KubeClient, redis_url: str, project: str) -> None:
        self.kube = kube
        self.redis_url = redis_url
        settings = OperatorSettings(
            redis_url=redis_url, pubsub_project=project, resync_seconds=3600, snapshot_configmap_seconds=0
        )
        self.metrics = OperatorMetrics()
        self.reconciler = Reconciler(
            settings, kube, RedisApplier(redis_url, keep_versions=3), PubSubApplier(), metrics=self.metrics
        )
        self.provider = ScriptedProvider()
        self.clock = Clock()
        self.canary = CanaryController(self.reconciler, kube, self.provider, self.metrics, clock=self.clock)

    async def observe_all(self) -> None:
        for kind in ("Product", "PolicyBundle", "Route"):
            for body in await self.kube.list(kind, NAMESPACE):
                self.reconciler.observe(kind, {**body, "kind": kind})

    async def round(self, advance: float = 0.0) -> None:
        """Move the clock, let the loop do what is due, then one ordinary (not full) pass."""
        self.clock.now += advance
        self.canary.schedule(self.clock.now)
        await self.canary.settle()
        await self.reconciler.reconcile_once()

    async def route(self) -> dict[str, Any]:
        body = await self.kube.get("Route", NAMESPACE, "jobs")
        assert body is not None
        return body

    async def canary_status(self) -> dict[str, Any]:
        return dict((await self.route())["status"].get("canary") or {})

    def route_table_weights(self) -> dict[str, int]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            version = client.get(names.route_table_current_key())
            assert isinstance(version, bytes)
            raw = client.hget(names.route_table_key(version.decode()), f"{NAMESPACE}/jobs")
        finally:
            client.close()
        assert raw is not None
        return {t["track"]: t["weight"] for t in json.loads(raw)["tracks"]}

    async def snapshot_weights(self) -> dict[str, int]:
        resources = decode_configmaps(await self.kube.list("ConfigMap", "apx-system"))
        assert resources is not None
        weights: dict[str, int] = {}
        for resource in resources:
            if not resource.type_url.endswith("RouteConfiguration"):
                continue
            configuration = route_pb2.RouteConfiguration()
            resource.Unpack(configuration)
            for host in configuration.virtual_hosts:
                for route in host.routes:
                    if route.name == f"{NAMESPACE}/jobs":
                        for cluster in route.route.weighted_clusters.clusters:
                            track = next(
                                h.header.value
                                for h in cluster.request_headers_to_add
                                if h.header.key == "x-apx-track"
                            )
                            weights[track] = cluster.weight.value
        return weights

    async def events(self) -> list[dict[str, Any]]:
        return [
            e for e in await self.kube.list("Event", NAMESPACE) if e["involvedObject"].get("kind") == "Route"
        ]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    async def close(self) -> None:
        await self.reconciler.redis.close()
        self.reconciler.pubsub.close()


@pytest_asyncio.fixture
async def loop(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Loop]:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_service.address)
    database = 9
    redis_url = f"redis://{redis_service.address}/{database}"
    redis.Redis.from_url(redis_url).flushdb()
    running = Loop(kube, redis_url, f"apx-test-{uuid.uuid4().hex[:8]}")
    for document in documents(NAMESPACE, "sync", "http://127.0.0.1:9", "http://127.0.0.1:10", CANARY):
        await kube.create(document)
    await running.observe_all()
    await running.reconciler.reconcile_once()
    try:
        yield running
    finally:
        await running.close()


async def test_a_new_canary_starts_at_its_first_step_in_status_redis_and_the_envoy_snapshot(
    loop: Loop,
) -> None:
    await loop.round()
    status = await loop.canary_status()
    assert status["phase"] == "Progressing" and status["step"] == 0 and status["weight"] == 20
    assert (await loop.route())["status"]["canaryWeight"] == 20
    assert loop.route_table_weights() == {"stable": 80, "canary": 20}
    assert await loop.snapshot_weights() == {"stable": 80, "canary": 20}
    assert loop.metric("apx_canary_weight", namespace=NAMESPACE, route="jobs") == 20
    assert loop.provider.asked == [], "starting a revision must not run a check"


async def test_failing_checks_roll_back_on_the_next_ordinary_pass_with_numbers_and_an_event(
    loop: Loop,
) -> None:
    await loop.round()
    loop.provider.windows["canary"] = BAD
    await loop.round(advance=10)
    first = await loop.canary_status()
    assert first["phase"] == "Progressing" and first["failedChecks"] == 1
    await loop.round(advance=10)
    status = await loop.canary_status()
    assert status["phase"] == "RolledBack" and status["weight"] == 0
    decision = status["lastDecision"]
    assert decision["result"] == "rollback"
    assert decision["canary"]["requests"] == 200 and decision["canary"]["successRate"] == pytest.approx(0.7)
    assert decision["stable"]["successRate"] == pytest.approx(0.999)
    assert loop.route_table_weights() == {"stable": 100, "canary": 0}
    assert await loop.snapshot_weights() == {"stable": 100, "canary": 0}
    warnings = [
        e for e in await loop.events() if e["type"] == "Warning" and e["reason"] == "CanaryRolledBack"
    ]
    assert warnings and "70" in warnings[0]["message"], warnings
    assert loop.metric("apx_canary_rollbacks_total", namespace=NAMESPACE, route="jobs") == 1
    assert loop.metric("apx_canary_checks_total", result="rollback") == 1
    # Rolled back stays rolled back: later rounds run no check and change nothing.
    asked = len(loop.provider.asked)
    await loop.round(advance=60)
    assert len(loop.provider.asked) == asked
    assert (await loop.canary_status())["phase"] == "RolledBack"


async def test_metrics_unavailable_holds_and_names_the_backend_without_rolling_back(loop: Loop) -> None:
    await loop.round()
    loop.provider.error = "Prometheus at 127.0.0.1:9090 unreachable"
    for _ in range(3):
        await loop.round(advance=10)
    status = await loop.canary_status()
    assert status["phase"] == "Progressing" and status["weight"] == 20
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["MetricsAvailable"]["status"] == "False"
    assert "Prometheus at 127.0.0.1:9090" in conditions["MetricsAvailable"]["message"]
    assert loop.metric("apx_canary_metrics_up", provider="scripted") == 0
    assert not status.get("rollbacks")


async def test_a_rollout_request_is_handled_once_and_never_echoed_back(loop: Loop) -> None:
    await loop.round()
    request = {"action": "promote", "id": "req-1", "full": False, "at": "2027-01-15T08:00:00Z"}
    await loop.kube.patch_status("Route", NAMESPACE, "jobs", {"canary": {"request": request}})
    await loop.observe_all()
    before = await loop.route()
    await loop.round()
    after = await loop.route()
    status = after["status"]["canary"]
    assert status["handledRequest"] == "req-1" and status["step"] == 1 and status["weight"] == 50
    assert status["request"] == request, "the loop must leave the CLI's request as it was"
    assert after["spec"] == before["spec"] and after["metadata"].get("generation") == before["metadata"].get(
        "generation"
    )
    assert loop.route_table_weights()["canary"] == 50
    await loop.round()
    assert (await loop.canary_status())["step"] == 1, "the same request id acted twice"


async def test_the_reconcilers_own_status_writes_leave_status_canary_alone(loop: Loop) -> None:
    await loop.round()
    # A decision the reconciler's store has not seen yet (its pass started earlier):
    # the pass must not write its older view of status.canary back over it.
    newer = {**(await loop.canary_status()), "step": 1, "weight": 50}
    await loop.kube.patch_status("Route", NAMESPACE, "jobs", {"canary": newer})
    await loop.reconciler.reconcile_once(full=True)
    assert await loop.canary_status() == newer


async def test_removing_the_canary_block_clears_its_progress(loop: Loop) -> None:
    await loop.round()
    await loop.kube.request(
        "PATCH",
        "/apis/apx.dev/v1alpha1/namespaces/default/routes/jobs",
        body={"spec": {"canary": None}},
        content_type="application/merge-patch+json",
    )
    await loop.observe_all()
    await loop.round()
    route = await loop.route()
    assert "canary" not in route["status"]
    assert loop.route_table_weights() == {"stable": 100}


async def test_a_check_that_moves_no_weight_runs_no_pass_and_a_weight_change_does(loop: Loop) -> None:
    await loop.round()
    passes = loop.reconciler.passes
    # A thousand canaries each write their check every interval: bookkeeping alone
    # (checks, lastCheckAt, healthySince) must not make the reconciler re-render anything.
    loop.reconciler._dirty.clear()
    loop.reconciler._fast_wanted.clear()
    weights = []
    for _ in range(8):
        loop.clock.now += 10
        loop.canary.schedule(loop.clock.now)
        await loop.canary.settle()
        status = await loop.canary_status()
        weights.append(status["weight"])
        if status["weight"] != 20:
            break
        assert status["checks"] >= 1
        assert not loop.reconciler._dirty.is_set(), "a check that moved no weight scheduled a pass"
        assert not loop.reconciler._fast_wanted.is_set(), "a check that moved no weight woke the fast path"
    assert weights[-1] == 50, weights
    assert loop.reconciler._dirty.is_set() and loop.reconciler._fast_wanted.is_set()
    await loop.reconciler.reconcile_once()
    assert loop.reconciler.passes == passes + 1
    assert loop.route_table_weights() == {"stable": 50, "canary": 50}


class FailingWrites:
    """The API client with status writes failing (timeouts) while ``failing`` is set; counts them."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self.failing = True
        self.writes = 0

    async def patch_status(self, kind: str, namespace: str, name: str, status: Any) -> Any:
        self.writes += 1
        if self.failing:
            raise Unavailable(0, "Kubernetes API at 127.0.0.1 unreachable: timed out")
        return await self._kube.patch_status(kind, namespace, name, status)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kube, name)


async def test_a_failed_status_write_is_retried_after_a_growing_back_off_not_on_every_round(
    loop: Loop,
) -> None:
    failing = FailingWrites(loop.kube)
    loop.canary.kube = failing  # type: ignore[assignment]

    async def rounds(count: int) -> None:
        for _ in range(count):
            loop.canary.schedule(loop.clock.now)
            await loop.canary.settle()

    await rounds(5)
    assert failing.writes == 1, "every round wrote again to an API that times out"
    loop.clock.now += 1.1
    await rounds(5)
    assert failing.writes == 2
    loop.clock.now += 1.1  # the second delay is 2 s
    await rounds(3)
    assert failing.writes == 2
    loop.clock.now += 1.0
    await rounds(3)
    assert failing.writes == 3
    failing.failing = False
    loop.clock.now += 4.1
    await rounds(3)
    assert failing.writes == 4
    status = await loop.canary_status()
    assert status["phase"] == "Progressing" and status["weight"] == 20


async def test_a_round_with_nothing_due_parses_no_status(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    await loop.round()
    await loop.round(advance=10)  # the first check: the loop now knows when the next is due
    loop.canary.schedule(loop.clock.now)  # the body the pass's status write left, planned once
    parsed: list[object] = []
    original = canary_module.parse_status

    def counting(raw: object) -> Any:
        parsed.append(raw)
        return original(raw)

    monkeypatch.setattr(canary_module, "parse_status", counting)
    for _ in range(20):
        loop.clock.now += 0.1
        loop.canary.schedule(loop.clock.now)
    assert parsed == [], "every round parsed the recorded status again"
    loop.clock.now += 10
    loop.canary.schedule(loop.clock.now)
    await loop.canary.settle()
    assert (await loop.canary_status())["checks"] == 2


async def test_a_halted_canary_writes_repeated_inconclusive_checks_only_as_a_heartbeat(loop: Loop) -> None:
    await loop.round()
    loop.provider.error = "Prometheus at 127.0.0.1:9090 unreachable"
    for _ in range(30):
        await loop.round(advance=10)
        if (await loop.canary_status())["phase"] == "Halted":
            break
    halted = await loop.canary_status()
    assert halted["phase"] == "Halted", halted
    counting = FailingWrites(loop.kube)
    counting.failing = False
    loop.canary.kube = counting  # type: ignore[assignment]
    asked = len(loop.provider.asked)
    for _ in range(20):  # 200 s of inconclusive checks, every one run on time
        await loop.round(advance=10)
    assert len(loop.provider.asked) == asked + 2 * 20, "the checks must still run every interval"
    assert counting.writes == 0, "a halted canary wrote each repeated inconclusive check"
    assert await loop.canary_status() == halted
    for _ in range(11):  # past HALTED_HEARTBEAT_SECONDS since the recorded check: one write
        await loop.round(advance=10)
    assert counting.writes == 1
    heartbeat = await loop.canary_status()
    assert heartbeat["phase"] == "Halted" and heartbeat["checks"] > halted["checks"]
    # The first conclusive check is written at once.
    loop.provider.error = None
    await loop.round(advance=10)
    assert counting.writes == 2
    assert (await loop.canary_status())["phase"] == "Progressing"
