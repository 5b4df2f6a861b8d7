"""Pub/Sub applier: creates and updates topics and subscriptions through the admin API.

Called by the operator's reconciler with the Pub/Sub renderer's plan (objects
in google.pubsub.v1 field names), and by test fixtures and benchmarks that
need a plan in place. Works against real Pub/Sub and against the emulator
(``PUBSUB_EMULATOR_HOST``).

What can change in place is updated (subscription ack deadline, retry and
dead-letter policy, retention, labels); what Pub/Sub cannot change on an
existing subscription (its topic, message ordering) is reported as a problem
naming the Route field, and the existing subscription keeps serving.

Built for tens of thousands of objects (see ``PUBSUB.md`` beside this file):

* **Bounded, globally.** Every admin call runs on the applier's own pool of
  ``max_in_flight`` threads, so at most that many RPCs are in flight however
  many passes or callers ask at once (a per-call semaphore would bound one
  pass only). The two clients, and their gRPC channels, are created once.
* **Back-off shared by all calls.** RESOURCE_EXHAUSTED, UNAVAILABLE, ABORTED
  and DEADLINE_EXCEEDED pause *every* worker for an exponentially growing
  delay (reset by the next success), instead of each call retrying on its own
  and keeping the backend saturated.
* **Incremental.** What was ensured is remembered by content digest;
  ``ensure(..., verify=False)`` issues no RPC for an object whose document is
  unchanged. ``verify=True`` (the default) checks every object it is given
  against Pub/Sub, which is how drift is repaired; ``resync`` does that for a
  whole plan by listing each project instead of one call per object.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.protobuf import field_mask_pb2

from apx.dataplane.common.redact import redact_text

from ..renderers.pubsub_plan import INSPECTION_KIND

# Errors after which the backend may answer later: retried under the shared back-off.
_RETRYABLE = (gexc.ResourceExhausted, gexc.ServiceUnavailable, gexc.Aborted, gexc.DeadlineExceeded)
# Errors that mean "Pub/Sub is not usable now" once the retries are spent.
_UNAVAILABLE = (*_RETRYABLE, gexc.RetryError, gexc.InternalServerError)
_MUTABLE_SUBSCRIPTION_FIELDS = (
    "ack_deadline_seconds",
    "retry_policy",
    "dead_letter_policy",
    "message_retention_duration",
    "labels",
)
DEFAULT_MAX_IN_FLIGHT = 8
_T = TypeVar("_T")


class PubSubUnavailable(Exception):
    """Pub/Sub (or its emulator) could not be reached."""


@dataclass(frozen=True, slots=True)
class PubSubProblem:
    """A desired change Pub/Sub does not allow; the existing object keeps serving."""

    resource: str
    message: str


def _duration_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return float(value.rstrip("s"))
    if isinstance(value, Mapping):
        return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    return float(value)


def _to_request(document: Mapping[str, Any]) -> dict[str, Any]:
    """Plan document → request dict for the proto-plus client (durations as {"seconds": n})."""
    request: dict[str, Any] = json.loads(json.dumps(document))
    for key in ("message_retention_duration",):
        if key in request and isinstance(request[key], str):
            request[key] = {"seconds": int(_duration_seconds(request[key]) or 0)}
    retry = request.get("retry_policy")
    if isinstance(retry, dict):
        for key in ("minimum_backoff", "maximum_backoff"):
            if isinstance(retry.get(key), str):
                retry[key] = {"seconds": int(_duration_seconds(retry[key]) or 0)}
    return request


def _differs(desired: Mapping[str, Any], live: Any, field: str) -> bool:
    want = desired.get(field)
    if want is None:
        return False
    have = getattr(live, field, None)
    if field in ("message_retention_duration",):
        return _duration_seconds(want) != _duration_seconds(have)
    if field == "retry_policy":
        return any(
            _duration_seconds(want.get(k)) != _duration_seconds(getattr(have, k, None))
            for k in ("minimum_backoff", "maximum_backoff")
        )
    if field == "dead_letter_policy":
        return (want.get("dead_letter_topic"), int(want.get("max_delivery_attempts", 0))) != (
            getattr(have, "dead_letter_topic", None),
            int(getattr(have, "max_delivery_attempts", 0)),
        )
    if field == "labels":
        return dict(want) != dict(have or {})
    return bool(want != have)


def _topic_as_planned(document: Mapping[str, Any], live: Any) -> bool:
    """Whether a live topic matches what ``_ensure_topic`` would converge it to (its labels)."""
    labels = document.get("labels")
    return not labels or dict(live.labels) == dict(labels)


def _ordering_as_planned(request: Mapping[str, Any], live: Any) -> bool:
    """Whether a live subscription's (immutable) message ordering is acceptable for ``request``.

    A dead-letter inspection subscription is ordered since the plan asked for it (for readers,
    and so the Pub/Sub emulator does not run a thread per subscription); one created unordered
    by an earlier version serves its purpose as it is, and recreating it would drop the dead
    letters it holds, so either setting is accepted there. A worker subscription's ordering is
    the Route's ``spec.async.ordering`` and must match.
    """
    if bool(request.get("enable_message_ordering", False)) == bool(live.enable_message_ordering):
        return True
    return dict(request.get("labels") or {}).get("apx-kind") == INSPECTION_KIND


def _subscription_as_planned(document: Mapping[str, Any], live: Any) -> bool:
    """Whether a live subscription matches its plan in everything ``_ensure_subscription`` checks."""
    request = _to_request(document)
    return (
        live.topic == request["topic"]
        and _ordering_as_planned(request, live)
        and not any(_differs(request, live, field) for field in _MUTABLE_SUBSCRIPTION_FIELDS)
    )


def _digest(data: str) -> int:
    # 64-bit keys and values keep the cache near 100 bytes per object (about
    # 7 MB for the 72,000 objects of a 10,000-Route cluster) instead of
    # holding names and documents; a collision needs ~2^32 objects.
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


def _keyed(documents: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], int, int]]:
    """(document, digest of its name, digest of its content) for each document."""
    return [
        (document, _digest(str(document["name"])), _digest(json.dumps(document, sort_keys=True)))
        for document in documents
    ]


@dataclass(frozen=True, slots=True)
class _Outcome:
    name_key: int
    digest: int
    problem: PubSubProblem | None = None


class PubSubApplier:
    """Ensures topics and subscriptions exist as planned; deletes them on request.

    ``max_in_flight`` bounds the admin RPCs in flight across every caller;
    ``call_budget`` is how long one object may spend retrying under back-off
    before ``PubSubUnavailable`` is raised; ``backoff`` is (first, largest)
    pause in seconds after a RESOURCE_EXHAUSTED/UNAVAILABLE answer.
    """

    def __init__(
        self,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        call_timeout: float = 8.0,
        call_budget: float = 8.0,
        backoff: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self._publisher = pubsub_v1.PublisherClient()
        self._subscriber = pubsub_v1.SubscriberClient()
        # One pool for the life of the applier: its size is the global bound,
        # and the operator's default executor stays free for the pure pipeline.
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="apx-pubsub")
        self._call_timeout = call_timeout
        self._call_budget = call_budget
        self._backoff_first, self._backoff_max = backoff
        self._lock = threading.Lock()
        self._delay = 0.0
        self._pause_until = 0.0
        self._in_flight = 0
        self.peak_in_flight = 0
        self.calls: Counter[str] = Counter()
        self.backoffs = 0
        # name digest → content digest of what was last ensured.
        self._ensured: dict[int, int] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._subscriber.close()

    # --- public API (async; the RPCs run on the pool) ----------------------------------

    async def ensure(
        self,
        topics: Iterable[Mapping[str, Any]],
        subscriptions: Iterable[Mapping[str, Any]],
        *,
        verify: bool = True,
    ) -> list[PubSubProblem]:
        """Create or update ``topics`` then ``subscriptions``; return the changes refused.

        ``verify=False`` skips every object whose document equals what this
        applier last ensured (no RPC at all); ``verify=True`` checks each
        object against Pub/Sub, so one deleted or edited behind the
        operator's back is repaired.
        """
        topic_list, subscription_list = list(topics), list(subscriptions)
        # Digests off the event loop: a full plan is tens of thousands of documents.
        keyed_topics, keyed_subscriptions = await asyncio.to_thread(
            lambda: (_keyed(topic_list), _keyed(subscription_list))
        )
        abort = threading.Event()
        problems: list[PubSubProblem] = []
        # Topics first: a subscription needs its topic and its dead-letter topic.
        for keyed, job in (
            (keyed_topics, self._ensure_topic),
            (keyed_subscriptions, self._ensure_subscription),
        ):
            work = [
                (document, name_key, digest)
                for document, name_key, digest in keyed
                if verify or self._ensured.get(name_key) != digest
            ]
            outcomes = await self._run(
                [
                    functools.partial(job, document, name_key, digest, name_key in self._ensured, abort)
                    for document, name_key, digest in work
                ],
                abort,
            )
            for outcome in outcomes:
                if outcome.problem is None:
                    self._ensured[outcome.name_key] = outcome.digest
                else:
                    # Not remembered: the next call reports it again (the Route stays Stalled).
                    self._ensured.pop(outcome.name_key, None)
                    problems.append(outcome.problem)
        return problems

    async def delete(self, topics: Iterable[str], subscriptions: Iterable[str]) -> None:
        abort = threading.Event()
        for names, job in (
            (list(subscriptions), self._delete_subscription),
            (list(topics), self._delete_topic),
        ):
            await self._run([functools.partial(job, name, abort) for name in names], abort)
            for name in names:
                self._ensured.pop(_digest(name), None)

    async def resync(
        self, topics: Iterable[Mapping[str, Any]], subscriptions: Iterable[Mapping[str, Any]]
    ) -> list[PubSubProblem]:
        """Verify a whole plan against Pub/Sub by listing it, and repair what drifted.

        For a full resync with the complete plan: one ``ListTopics`` and one
        ``ListSubscriptions`` per project (paged) instead of one ``Get`` per
        object; only missing or different objects then cost a call (bounded
        like every other). Everything found as planned is remembered, so the
        following ``ensure(verify=False)`` calls skip it. Objects in Pub/Sub
        that the plan does not name are left alone (deletion is the reconciler's).
        """
        topic_list, subscription_list = list(topics), list(subscriptions)
        projects = sorted({str(d["name"]).split("/")[1] for d in (*topic_list, *subscription_list)})
        live_topics: dict[str, Any] = {}
        live_subscriptions: dict[str, Any] = {}
        for project in projects:
            found_topics, found_subscriptions = await self._one(functools.partial(self._list_live, project))
            live_topics.update(found_topics)
            live_subscriptions.update(found_subscriptions)

        def classify() -> tuple[list[tuple[Mapping[str, Any], int, int, bool]], ...]:
            # Off the event loop: tens of thousands of comparisons.
            plans = []
            for documents, live, same in (
                (topic_list, live_topics, _topic_as_planned),
                (subscription_list, live_subscriptions, _subscription_as_planned),
            ):
                in_place, repairs = [], []
                for document, name_key, digest in _keyed(documents):
                    found = live.get(str(document["name"]))
                    if found is not None and same(document, found):
                        in_place.append((document, name_key, digest, True))
                    else:
                        repairs.append((document, name_key, digest, found is not None))
                plans += [in_place, repairs]
            return tuple(plans)

        topics_ok, topic_repairs, subscriptions_ok, subscription_repairs = await asyncio.to_thread(classify)
        for _, name_key, digest, _ in (*topics_ok, *subscriptions_ok):
            self._ensured[name_key] = digest
        abort = threading.Event()
        problems: list[PubSubProblem] = []
        for repairs, job in (
            (topic_repairs, self._ensure_topic),
            (subscription_repairs, self._ensure_subscription),
        ):
            outcomes = await self._run(
                [
                    functools.partial(job, d, name_key, digest, exists, abort)
                    for d, name_key, digest, exists in repairs
                ],
                abort,
            )
            for outcome in outcomes:
                if outcome.problem is None:
                    self._ensured[outcome.name_key] = outcome.digest
                else:
                    self._ensured.pop(outcome.name_key, None)
                    problems.append(outcome.problem)
        return problems

    def forget(self) -> None:
        """Forget what was ensured: the next ``ensure(verify=False)`` checks everything again."""
        self._ensured.clear()

    @property
    def remembered(self) -> int:
        """How many objects the applier knows to be in place (for metrics and tests)."""
        return len(self._ensured)

    async def topic_exists(self, name: str) -> bool:
        return await self._one(lambda: self._topic_exists_sync(name))

    async def list_topics(self, project: str) -> list[str]:
        return await self._one(lambda: self._list_topics_sync(project))

    async def list_subscriptions(self, project: str) -> list[str]:
        return await self._one(lambda: self._list_subscriptions_sync(project))

    # --- scheduling ------------------------------------------------------------------

    async def _one(self, job: Callable[[], _T]) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)
        except _UNAVAILABLE as exc:
            raise PubSubUnavailable(f"Pub/Sub unreachable: {redact_text(str(exc))}") from exc

    async def _run(self, jobs: list[Callable[[], Any]], abort: threading.Event) -> list[Any]:
        """Run ``jobs`` on the pool; the first error stops the rest and is raised (unavailable first)."""
        if not jobs:
            return []
        loop = asyncio.get_running_loop()
        results: list[Any] = []
        errors: list[BaseException] = []
        pending = iter(jobs)

        async def feed() -> None:
            # A few feeders hand jobs to the pool one at a time, so a 70,000-object plan is
            # never 70,000 queued futures, a cancelled call leaves nothing queued behind it,
            # and after the first failure (say, Pub/Sub down) no further job is started.
            for job in pending:
                if abort.is_set():
                    return
                try:
                    results.append(await loop.run_in_executor(self._pool, job))
                except Exception as exc:  # sorted out below: unavailable first
                    abort.set()
                    errors.append(exc)

        await asyncio.gather(*(feed() for _ in range(min(len(jobs), 2 * self.max_in_flight))))
        if errors:
            given_up = next((e for e in errors if isinstance(e, PubSubUnavailable)), None)
            if given_up is not None:
                raise given_up
            first = next((e for e in errors if isinstance(e, _UNAVAILABLE)), None)
            if first is not None:
                raise PubSubUnavailable(f"Pub/Sub unreachable: {redact_text(str(first))}") from first
            raise errors[0]
        return [r for r in results if r is not None]

    def _call(self, method: str, function: Callable[..., Any], request: Mapping[str, Any]) -> Any:
        """One admin RPC under the shared back-off; retried until ``call_budget`` is spent."""
        deadline = time.monotonic() + self._call_budget
        while True:
            with self._lock:
                pause = self._pause_until - time.monotonic()
            if pause > 0:
                if time.monotonic() + pause > deadline:
                    raise PubSubUnavailable(f"Pub/Sub asked to back off ({method}); retry budget spent")
                time.sleep(pause)
            with self._lock:
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                self.calls[method] += 1
            try:
                # retry=None: the client's own per-call retry would hide the
                # back-pressure from the other workers.
                result = function(request=request, timeout=self._call_timeout, retry=None)
            except _RETRYABLE:
                with self._lock:
                    self.backoffs += 1
                    self._delay = min(max(self._delay * 2, self._backoff_first), self._backoff_max)
                    self._pause_until = max(self._pause_until, time.monotonic() + self._delay)
                    delay = self._delay
                if time.monotonic() + delay > deadline:
                    raise
                continue
            finally:
                with self._lock:
                    self._in_flight -= 1
            with self._lock:
                self._delay = 0.0
            return result

    # --- jobs (run on the pool) --------------------------------------------------------

    def _ensure_topic(
        self, topic: Mapping[str, Any], name_key: int, digest: int, known: bool, abort: threading.Event
    ) -> _Outcome | None:
        if abort.is_set():
            return None
        request = _to_request(topic)
        name = request["name"]
        live = None
        if known:
            # Ensured before: most likely still there, so one GET verifies it.
            with contextlib.suppress(gexc.NotFound):
                live = self._call("GetTopic", self._publisher.get_topic, {"topic": name})
        if live is None:
            try:
                self._call("CreateTopic", self._publisher.create_topic, request)
                return _Outcome(name_key, digest)
            except gexc.AlreadyExists:
                live = self._call("GetTopic", self._publisher.get_topic, {"topic": name})
        if request.get("labels") and dict(live.labels) != dict(request["labels"]):
            # The emulator does not implement topic updates; labels are informational.
            with contextlib.suppress(gexc.MethodNotImplemented, gexc.InvalidArgument):
                self._call(
                    "UpdateTopic",
                    self._publisher.update_topic,
                    {
                        "topic": {"name": name, "labels": request["labels"]},
                        "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
                    },
                )
        return _Outcome(name_key, digest)

    def _ensure_subscription(
        self, subscription: Mapping[str, Any], name_key: int, digest: int, known: bool, abort: threading.Event
    ) -> _Outcome | None:
        if abort.is_set():
            return None
        request = _to_request(subscription)
        name = request["name"]
        live = None
        if known:
            with contextlib.suppress(gexc.NotFound):
                live = self._call(
                    "GetSubscription", self._subscriber.get_subscription, {"subscription": name}
                )
        if live is None:
            try:
                self._call("CreateSubscription", self._subscriber.create_subscription, request)
                return _Outcome(name_key, digest)
            except gexc.AlreadyExists:
                live = self._call(
                    "GetSubscription", self._subscriber.get_subscription, {"subscription": name}
                )
        if live.topic != request["topic"]:
            message = (
                f"subscription is attached to {live.topic}, not {request['topic']}; Pub/Sub cannot move it"
            )
            return _Outcome(name_key, digest, PubSubProblem(name, message))
        if not _ordering_as_planned(request, live):
            message = (
                "spec.async.ordering: Pub/Sub cannot change message ordering of an existing subscription; "
                "the subscription keeps its current setting (recreate the Route to change it)"
            )
            return _Outcome(name_key, digest, PubSubProblem(name, message))
        changed = [field for field in _MUTABLE_SUBSCRIPTION_FIELDS if _differs(request, live, field)]
        if changed:
            body = {field: request[field] for field in changed}
            body["name"] = name
            self._call(
                "UpdateSubscription",
                self._subscriber.update_subscription,
                {"subscription": body, "update_mask": field_mask_pb2.FieldMask(paths=changed)},
            )
        return _Outcome(name_key, digest)

    def _delete_subscription(self, name: str, abort: threading.Event) -> None:
        if not abort.is_set():
            with contextlib.suppress(gexc.NotFound):
                self._call("DeleteSubscription", self._subscriber.delete_subscription, {"subscription": name})

    def _delete_topic(self, name: str, abort: threading.Event) -> None:
        if not abort.is_set():
            with contextlib.suppress(gexc.NotFound):
                self._call("DeleteTopic", self._publisher.delete_topic, {"topic": name})

    def _list_live(self, project: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every topic and subscription of ``project``, by name (one call per page)."""
        found: list[dict[str, Any]] = [{}, {}]
        for index, (method, function, key) in enumerate(
            (
                ("ListTopics", self._publisher.list_topics, "topics"),
                ("ListSubscriptions", self._subscriber.list_subscriptions, "subscriptions"),
            )
        ):
            pager = self._call(method, function, {"project": f"projects/{project}", "page_size": 1000})
            for number, page in enumerate(pager.pages):
                if number:
                    # Later pages are fetched by the pager itself, outside ``_call``: counted here.
                    with self._lock:
                        self.calls[method] += 1
                for item in getattr(page, key):
                    found[index][item.name] = item
        return found[0], found[1]

    def _topic_exists_sync(self, name: str) -> bool:
        try:
            self._call("GetTopic", self._publisher.get_topic, {"topic": name})
            return True
        except gexc.NotFound:
            return False

    def _list_topics_sync(self, project: str) -> list[str]:
        pages = self._call("ListTopics", self._publisher.list_topics, {"project": f"projects/{project}"})
        return [str(t.name) for t in pages]

    def _list_subscriptions_sync(self, project: str) -> list[str]:
        pages = self._call(
            "ListSubscriptions", self._subscriber.list_subscriptions, {"project": f"projects/{project}"}
        )
        return [str(s.name) for s in pages]
