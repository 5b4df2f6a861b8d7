"""The Pub/Sub applier against the real emulator: bounded, incremental, repairing drift, backing off.

Each test uses its own project in the session's emulator (``tests/conftest.py``)
and the renderer's real plan for the samples, so documents carry dead-letter
policies, ordering and retry policies as the operator sends them.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from apx.controllers.appliers.pubsub import PubSubApplier, PubSubUnavailable
from apx.controllers.renderers.pubsub_plan import PubSubOutput, render_pubsub
from apx.controllers.translate import translate
from e2e.services import Service, free_port
from tests.operator.conftest import samples

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def emulator_env(pubsub_service: Service, monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_service.address)
    return pubsub_service


@pytest.fixture
def applier(emulator_env: Service) -> Iterator[PubSubApplier]:
    applier = PubSubApplier(max_in_flight=3)
    try:
        yield applier
    finally:
        applier.close()


def _plan() -> PubSubOutput:
    result = translate(samples())
    plan = render_pubsub(result.ir, project=f"apx-test-{uuid.uuid4().hex[:8]}")
    assert plan.topics and plan.subscriptions
    return plan


class _Concurrency:
    """Wraps client methods to count calls in flight at the backend, independently of the applier."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.now = 0
        self.peak = 0
        self.calls = 0
        self._lock = threading.Lock()

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def slow(**kwargs: Any) -> Any:
            with self._lock:
                self.now += 1
                self.calls += 1
                self.peak = max(self.peak, self.now)
            try:
                time.sleep(self.delay)  # a slow backend, so concurrency shows
                return method(**kwargs)
            finally:
                with self._lock:
                    self.now -= 1

        return slow


@pytest.mark.asyncio
async def test_admin_calls_in_flight_stay_within_the_bound_across_concurrent_callers(
    applier: PubSubApplier,
) -> None:
    counter = _Concurrency(delay=0.02)
    for client, names in (
        (applier._publisher, ("create_topic", "get_topic")),
        (applier._subscriber, ("create_subscription", "get_subscription", "update_subscription")),
    ):
        for name in names:
            setattr(client, name, counter.wrap(getattr(client, name)))
    plans = [_plan(), _plan(), _plan()]

    # Three "passes" at once, as overlapping reconciles or a start-up burst would call it.
    results = await asyncio.gather(*(applier.ensure(p.topics, p.subscriptions) for p in plans))

    assert results == [[], [], []]
    total = sum(len(p.topics) + len(p.subscriptions) for p in plans)
    assert counter.calls == total  # one create per object, nothing else
    assert counter.peak == 3  # the bound was reached and never passed
    assert applier.peak_in_flight == 3


@pytest.mark.asyncio
async def test_unchanged_objects_cost_no_rpc_and_a_changed_one_costs_only_its_own(
    applier: PubSubApplier,
) -> None:
    plan = _plan()
    assert await applier.ensure(plan.topics, plan.subscriptions) == []
    before = sum(applier.calls.values())

    assert await applier.ensure(plan.topics, plan.subscriptions, verify=False) == []
    assert sum(applier.calls.values()) == before

    changed = dict(plan.subscriptions[0])
    changed["ack_deadline_seconds"] = int(changed["ack_deadline_seconds"]) + 7
    calls = dict(applier.calls)
    subscriptions = [changed, *plan.subscriptions[1:]]
    assert await applier.ensure(plan.topics, subscriptions, verify=False) == []

    issued = {k: v - calls.get(k, 0) for k, v in applier.calls.items() if v != calls.get(k, 0)}
    assert issued == {"GetSubscription": 1, "UpdateSubscription": 1}
    live = pubsub_v1.SubscriberClient().get_subscription(request={"subscription": changed["name"]})
    assert live.ack_deadline_seconds == changed["ack_deadline_seconds"]


@pytest.mark.asyncio
async def test_a_topic_deleted_behind_the_applier_is_repaired_by_a_verifying_resync(
    applier: PubSubApplier,
) -> None:
    plan = _plan()
    assert await applier.ensure(plan.topics, plan.subscriptions) == []
    worker = next(s for s in plan.subscriptions if "dead_letter_policy" in s)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    subscriber.delete_subscription(request={"subscription": worker["name"]})
    publisher.delete_topic(request={"topic": worker["topic"]})

    # The incremental path trusts its memory: nothing is sent, nothing repaired.
    calls = sum(applier.calls.values())
    await applier.ensure(plan.topics, plan.subscriptions, verify=False)
    assert sum(applier.calls.values()) == calls
    with pytest.raises(gexc.NotFound):
        publisher.get_topic(request={"topic": worker["topic"]})

    assert await applier.ensure(plan.topics, plan.subscriptions, verify=True) == []

    publisher.get_topic(request={"topic": worker["topic"]})
    live = subscriber.get_subscription(request={"subscription": worker["name"]})
    assert live.dead_letter_policy.dead_letter_topic == worker["dead_letter_policy"]["dead_letter_topic"]
    assert applier.calls["CreateTopic"] == len(plan.topics) + 1
    assert applier.calls["CreateSubscription"] == len(plan.subscriptions) + 1


@pytest.mark.asyncio
async def test_resource_exhausted_pauses_every_worker_and_the_plan_still_converges(
    applier: PubSubApplier,
) -> None:
    plan = _plan()
    create = applier._publisher.create_topic
    refusals = {"left": 3}
    issued_at: list[float] = []
    refused_at: list[float] = []
    lock = threading.Lock()

    def crowded(**kwargs: Any) -> Any:
        with lock:
            issued_at.append(time.monotonic())
            if refusals["left"]:
                refusals["left"] -= 1
                refused_at.append(issued_at[-1])
                raise gexc.ResourceExhausted("too many admin operations")  # type: ignore[no-untyped-call]
        return create(**kwargs)

    applier._publisher.create_topic = crowded
    assert await applier.ensure(plan.topics, plan.subscriptions) == []

    assert applier.backoffs == 3
    assert pubsub_v1.PublisherClient().get_topic(request={"topic": plan.topics[0]["name"]})
    # After a refusal no worker (three of them) sends anything for at least the first
    # back-off step (0.1 s), not only the one that was refused; a call that had already
    # passed the pause check when the refusal came may still go out (10 ms of slack).
    last = refused_at[-1]
    assert [t for t in issued_at if last + 0.01 < t < last + 0.1] == []
    assert len(issued_at) == len(plan.topics) + 3
    assert len(issued_at) == len(plan.topics) + 3


@pytest.mark.asyncio
async def test_an_unreachable_pubsub_fails_the_whole_call_within_one_retry_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    applier = PubSubApplier(max_in_flight=2, call_timeout=0.5, call_budget=1.5)
    try:
        topics = [{"name": f"projects/apx-down/topics/topic-{i:04d}"} for i in range(400)]
        started = time.monotonic()
        with pytest.raises(PubSubUnavailable):
            await applier.ensure(topics, [])
        # The first job to give up stops the 398 queued behind it: one budget, not 200.
        assert time.monotonic() - started < 5
        assert applier.remembered == 0
        assert sum(applier.calls.values()) < 40
    finally:
        applier.close()


@pytest.mark.asyncio
async def test_an_ordering_change_is_reported_on_every_call_and_never_remembered(
    applier: PubSubApplier,
) -> None:
    plan = _plan()
    assert await applier.ensure(plan.topics, plan.subscriptions) == []
    target = next(s for s in plan.subscriptions if "dead_letter_policy" in s)
    flipped = [
        {**s, "enable_message_ordering": not s["enable_message_ordering"]} if s is target else s
        for s in plan.subscriptions
    ]
    for _ in range(2):
        problems = await applier.ensure(plan.topics, flipped, verify=False)
        assert [p.resource for p in problems] == [target["name"]]
        assert "spec.async.ordering" in problems[0].message


@pytest.mark.asyncio
async def test_an_unordered_dead_letter_inspection_subscription_from_before_is_kept_as_it_is(
    applier: PubSubApplier,
) -> None:
    # Earlier plans created inspection subscriptions unordered; ordering is immutable and
    # recreating one would drop the dead letters it holds, so it is accepted as it is.
    plan = _plan()
    inspections = [s for s in plan.subscriptions if s["labels"]["apx-kind"] == "dead-letter-inspection"]
    assert inspections and all(s["enable_message_ordering"] for s in inspections)
    earlier = [{**s, "enable_message_ordering": False} if s in inspections else s for s in plan.subscriptions]
    assert await applier.ensure(plan.topics, earlier) == []
    for verify in (False, True):
        assert await applier.ensure(plan.topics, plan.subscriptions, verify=verify) == []
    assert await applier.resync(plan.topics, plan.subscriptions) == []
    live = applier._subscriber.get_subscription(request={"subscription": inspections[0]["name"]})
    assert live.enable_message_ordering is False


@pytest.mark.asyncio
async def test_deleted_objects_are_forgotten_so_ensuring_them_again_recreates_them(
    applier: PubSubApplier,
) -> None:
    plan = _plan()
    assert await applier.ensure(plan.topics, plan.subscriptions) == []
    remembered = applier.remembered
    await applier.delete([t["name"] for t in plan.topics], [s["name"] for s in plan.subscriptions])
    assert applier.remembered == remembered - len(plan.topics) - len(plan.subscriptions)

    assert await applier.ensure(plan.topics, plan.subscriptions, verify=False) == []
    assert pubsub_v1.PublisherClient().get_topic(request={"topic": plan.topics[0]["name"]})


@pytest.mark.asyncio
async def test_a_cancelled_call_leaves_no_admin_call_queued_behind_it(applier: PubSubApplier) -> None:
    counter = _Concurrency(delay=0.1)
    applier._publisher.create_topic = counter.wrap(applier._publisher.create_topic)
    topics = [{"name": f"projects/apx-cancel-{uuid.uuid4().hex[:6]}/topics/topic-{i:03d}"} for i in range(60)]

    call = asyncio.ensure_future(applier.ensure(topics, []))
    await asyncio.sleep(0.35)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.3)  # the calls already running finish
    settled = counter.calls
    await asyncio.sleep(0.5)

    assert counter.calls == settled  # nothing was left queued on the pool
    assert settled <= 3 * 4  # about 0.35 s of 3 workers at 0.1 s each, not 60


@pytest.mark.asyncio
async def test_a_listing_resync_repairs_only_what_drifted(applier: PubSubApplier) -> None:
    plan = _plan()
    assert await applier.ensure(plan.topics, plan.subscriptions) == []
    workers = [s for s in plan.subscriptions if "dead_letter_policy" in s]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    # Drift behind the applier's back: a worker subscription and its topic deleted,
    # another worker subscription's ack deadline edited by hand.
    subscriber.delete_subscription(request={"subscription": workers[0]["name"]})
    publisher.delete_topic(request={"topic": workers[0]["topic"]})
    edited = workers[1]
    subscriber.update_subscription(
        request={
            "subscription": {"name": edited["name"], "ack_deadline_seconds": 599},
            "update_mask": {"paths": ["ack_deadline_seconds"]},
        }
    )
    fresh = PubSubApplier(max_in_flight=3)  # a restarted operator: nothing remembered
    try:
        assert await fresh.resync(plan.topics, plan.subscriptions) == []

        assert dict(fresh.calls) == {
            "ListTopics": 1,
            "ListSubscriptions": 1,
            "CreateTopic": 1,
            "CreateSubscription": 1,
            "GetSubscription": 1,
            "UpdateSubscription": 1,
        }
        publisher.get_topic(request={"topic": workers[0]["topic"]})
        subscriber.get_subscription(request={"subscription": workers[0]["name"]})
        live = subscriber.get_subscription(request={"subscription": edited["name"]})
        assert live.ack_deadline_seconds == edited["ack_deadline_seconds"]
        # Everything is remembered now: the incremental path sends nothing.
        calls = sum(fresh.calls.values())
        assert await fresh.ensure(plan.topics, plan.subscriptions, verify=False) == []
        assert sum(fresh.calls.values()) == calls
    finally:
        fresh.close()
