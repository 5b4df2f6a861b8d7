"""The worker's message processing: per-tenant ordering, idempotency, the upstream call, results in Redis.

Created by ``apx.dataplane.worker.main`` (and by tests and the benchmark)
around a ``consumer.PullConsumer``. Everything here runs on one asyncio event
loop; the consumer's threads hand batches over with ``call_soon_threadsafe``.

Per message (``_handle``):

1. The attributes the gateway set are decoded
   (``apx.contracts.pubsub_attributes``), the trace context and baggage
   extracted from them; the worker span (``apx.worker.process``, kind CONSUMER) is a
   child of the gateway's span, and the upstream call carries it on. With
   tracing off (no tracer: no exporter configured) no span is made at all and
   the message's ``traceparent``/``tracestate``/``baggage`` go to the upstream
   unchanged, so the trace still connects across the worker.
2. ``claim`` the request in Redis (``common.requeststate``): already ``done``
   (a redelivery of finished work) → ack without calling the upstream again;
   held by another worker → wait for its lease; otherwise run it.
3. Call the upstream (``upstream.UpstreamClient``, the Route's timeout): the body is the message
   data, the path is the original one (with a URL backend's path put in place
   of the matched prefix, as Envoy's ``prefix_rewrite`` does), and the
   headers carry the verified identity (``x-apx-tenant``, ``x-apx-track``,
   ``x-apx-policy-version``, ``x-apx-route``), ``x-request-id`` and the trace.
4. Outcome: below 400 → ``done`` with the response as the result, then ack.
   Other 4xx (except 408/425/429) → ``failed`` for good, then ack (a retry
   cannot fix the request). 5xx, 408/425/429, timeouts and connection errors
   → ``release`` and nack: Pub/Sub redelivers after the subscription's
   exponential backoff, and after ``max_delivery_attempts`` moves the message
   to the dead-letter topic; on that last attempt the request is recorded as
   ``failed`` (``dead_lettered``) first, so ``/status`` tells the caller.
   When a request becomes terminal (exactly once, by ``finish``), its Route
   track's backlog counter is decremented (decrements of one event-loop turn
   go out as one ``DECRBY``) and, if the gateway took a concurrency lease for
   it (attribute ``lease``), the lease is released.

Ordering: on a subscription with message ordering, messages with an ordering
key (the tenant) run one at a time per key in the order received; a failure
nacks the rest of that key's queue too, so a later message never overtakes an
earlier one that will be redelivered. On a subscription without ordering
(``async.ordering: false``) Pub/Sub promises no order, so keys a publisher set
anyway are ignored and, like messages without a key, run concurrently.
Concurrency overall is bounded by the consumer's flow control (max
outstanding messages).

Redis calls of concurrent messages are coalesced: every script call made in
one event-loop turn goes out in one pipeline (``_Coalescer``), so throughput
does not pay one round trip per call.

Leases: a loop extends the ack deadline of every message held longer than
half its subscription's deadline (slow upstreams, messages queued behind their
tenant's earlier ones).

Shutdown (``drain``): stop pulling; nack what waits in tenant queues; give the
upstream calls in flight ``drain_seconds`` to finish (their results are stored
and acked); cancel the rest, which release their claim and are nacked. Nothing
is lost: every message is either done and acked, or nacked for redelivery.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode

from apx.contracts import pubsub_attributes
from apx.contracts.headers import (
    POLICY_VERSION_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_HEADER,
    TENANT_HEADER,
    TRACK_HEADER,
)
from apx.contracts.pubsub_attributes import RequestAttributes, decode_attributes
from apx.dataplane.common.redact import redact_url
from apx.dataplane.common.requeststate import Call, ScriptRunner, backlog_key, request_key
from apx.dataplane.common.tracecontext import (
    BAGGAGE_POLICY_VERSION,
    BAGGAGE_TENANT,
    extract_context,
    inject_attributes,
)
from apx.dataplane.ratelimit.leases import tenant_counter_key

from .config import WorkerConfig
from .consumer import Delivery, PullConsumer, SubscriptionSettings
from .metrics import WorkerMetrics, tier_label
from .upstream import ResponseTooLarge, UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
RETRYABLE_CODES = frozenset({408, 425, 429})
LEASE_MARGIN_MS = 5_000
USER_AGENT = "apx-worker"
MAX_COALESCED = 512


class _Coalescer:
    """Sends the script calls made in one event-loop turn as one pipeline (a few pipelines in flight)."""

    def __init__(self, runner: ScriptRunner, max_in_flight: int = 4) -> None:
        self._runner = runner
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(((name, keys, args), future))
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._pending[:MAX_COALESCED]
            del self._pending[:MAX_COALESCED]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._runner.run([call for call, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)


@dataclass(slots=True)
class _Outcome:
    """What an upstream call came to."""

    state: str  # "done" | "failed" | "retry"
    code: int  # upstream status; 504 timeout, 502 connection failure
    content_type: str = ""
    body: bytes = b""
    error: str = ""


def _log_retire_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        # The counter stays high by these requests until reset (see common.requeststate).
        log.warning("could not decrement a backlog counter: %s", future.exception())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Processor:
    """Runs the messages a ``PullConsumer`` delivers; ``start``, then ``drain`` on shutdown."""

    def __init__(
        self,
        config: WorkerConfig,
        runner: ScriptRunner,
        upstream: UpstreamClient,
        *,
        metrics: WorkerMetrics | None = None,
        tracer: trace.Tracer | None = None,
        consumer: PullConsumer | None = None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.redis = _Coalescer(runner)
        self.upstream = upstream
        self.metrics = metrics or WorkerMetrics()
        # None: tracing is off (no exporter), and the message's trace headers go to the upstream as they are.
        self.tracer = tracer
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.consumer = consumer or PullConsumer(
            [config.subscription_path(s) for s in config.subscriptions],
            self._on_batch,
            max_outstanding=config.max_outstanding_messages,
            max_batch=config.max_pull_batch,
        )
        self.settings: dict[str, SubscriptionSettings] = {}
        self._ordered: frozenset[str] = frozenset()  # subscriptions with message ordering
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys: dict[str, deque[Delivery]] = {}
        self._held: set[Delivery] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Future[None]] = {}
        self._retiring: dict[str, int] = {}
        self._retire_scheduled = False
        self._lease_task: asyncio.Task[None] | None = None
        self._timeout = config.timeout_ms / 1000
        self._base_path = upstream.base_path
        self._children: dict[tuple[str, ...], Any] = {}
        self.started = False
        self.stopping = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Read the subscriptions' settings, load the Redis scripts, start pulling."""
        self._loop = asyncio.get_running_loop()
        for path in self.consumer.subscriptions:
            self.settings[path] = await asyncio.to_thread(self.consumer.settings, path)
        self._ordered = frozenset(path for path, settings in self.settings.items() if settings.ordering)
        await self.runner.load()
        log.info(
            "consuming",
            extra={
                "subscriptions": list(self.consumer.subscriptions),
                "max_outstanding": self.config.max_outstanding_messages,
                "upstream": redact_url(self.config.upstream_url),
                "dead_letter_attempts": {p: s.max_delivery_attempts for p, s in self.settings.items()},
            },
        )
        self.consumer.start()
        self._lease_task = asyncio.create_task(self._lease_loop())
        self.started = True

    def healthy(self) -> str | None:
        if self.started and not self.stopping and not self.consumer.alive():
            return "a puller or the ack sender thread died"
        return None

    def ready(self) -> str | None:
        if self.stopping:
            return "draining"
        if not self.started:
            return "starting"
        return None

    async def drain(self, deadline_seconds: float | None = None) -> None:
        """Stop pulling, finish work in flight within the deadline, nack the rest; then stop the consumer."""
        self.stopping = True
        self.consumer.stop_pulling()
        for key in list(self._keys):
            queued = self._keys[key]
            while queued:
                self._settle(queued.popleft(), "drained")
        deadline = self.config.drain_seconds if deadline_seconds is None else deadline_seconds
        in_flight = [t for t in self._tasks if not t.done()]
        log.info("draining", extra={"in_flight": len(in_flight), "deadline_seconds": deadline})
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=deadline)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                log.warning("drain deadline reached; nacked work in flight", extra={"nacked": len(late)})
        # Messages that arrived from a pull still waiting when we stopped are nacked by the consumer.
        for delivery in list(self._held):
            self._settle(delivery, "drained")
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
        await asyncio.to_thread(self.consumer.close)
        log.info("drained")

    # --- dispatch -----------------------------------------------------------------------------

    def _on_batch(self, batch: list[Delivery]) -> None:
        """Called from a puller thread."""
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._dispatch, batch)

    def _dispatch(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            self._held.add(delivery)
            if self.stopping:
                self._settle(delivery, "drained")
                continue
            key = delivery.ordering_key if delivery.subscription in self._ordered else ""
            if key:
                queued = self._keys.get(key)
                if queued is not None:
                    queued.append(delivery)
                    continue
                self._keys[key] = deque()
                self._spawn(self._run_key(key, delivery))
            else:
                self._spawn(self._handle(delivery))
        self.metrics.outstanding.set(self.consumer.outstanding)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_key(self, key: str, first: Delivery) -> None:
        delivery: Delivery | None = first
        try:
            while delivery is not None:
                succeeded = await self._handle(delivery)
                queued = self._keys.get(key)
                if queued is None:
                    return
                if not succeeded:
                    # Keep the key's order: everything after a redelivered message comes back after it.
                    while queued:
                        self._settle(queued.popleft(), "retried")
                delivery = queued.popleft() if queued else None
        finally:
            queued = self._keys.pop(key, None)
            while queued:
                self._settle(queued.popleft(), "drained")

    def _settle(self, delivery: Delivery, outcome: str) -> None:
        self._held.discard(delivery)
        if outcome in ("acked", "duplicate"):
            self.consumer.ack(delivery)
        else:
            self.consumer.nack(delivery)
        # Labels only: the two attributes by their contract names, without decoding the whole message.
        attributes = delivery.attributes
        route = self.config.route or attributes.get(pubsub_attributes.ROUTE) or "unknown"
        track = self.config.track or attributes.get(pubsub_attributes.TRACK) or "unknown"
        self._child(self.metrics.messages, route, track, outcome).inc()

    # --- one message ---------------------------------------------------------------------------

    def _route_track(self, message: RequestAttributes) -> tuple[str, str]:
        # Labels come from this worker's own settings; the message's are used only when it has none.
        return (
            self.config.route or message.route or "unknown",
            self.config.track or message.track or "unknown",
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def _handle(self, delivery: Delivery) -> bool:
        """Process one delivery; True when it was acked (done, failed for good, or a duplicate)."""
        message = decode_attributes(delivery.attributes)
        request_id = message.request_id
        if not REQUEST_ID.match(request_id):
            log.warning(
                "message without a valid request_id nacked", extra={"message_id": delivery.message_id}
            )
            self._settle(delivery, "invalid")
            return False
        earlier = self._running.get(request_id)
        if earlier is not None:
            # A redelivery of a request this worker is running right now: let that run decide.
            await asyncio.shield(earlier)
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[request_id] = marker
        try:
            return await self._traced(delivery, message)
        finally:
            if self._running.get(request_id) is marker:
                del self._running[request_id]
            marker.set_result(None)

    async def _traced(self, delivery: Delivery, message: RequestAttributes) -> bool:
        request_id = message.request_id
        route, track = self._route_track(message)
        if self.tracer is None:
            return await self._process(delivery, message, route, track, trace.INVALID_SPAN)
        parent = extract_context(message.trace_context)
        span_attributes: dict[str, str | int] = {
            "messaging.system": "gcp_pubsub",
            "messaging.operation": "process",
            "messaging.destination.subscription.name": delivery.subscription,
            "messaging.message.id": delivery.message_id,
            "apx.request_id": request_id,
            "apx.route": route,
            "apx.track": track,
            "apx.tenant": str(baggage.get_baggage(BAGGAGE_TENANT, parent) or message.tenant_id),
            "apx.policy_version": str(
                baggage.get_baggage(BAGGAGE_POLICY_VERSION, parent) or message.policy_version
            ),
            "apx.delivery_attempt": delivery.delivery_attempt,
        }
        # Attach the extracted context (not just parent the span on it) so its baggage travels on upstream.
        token = otel_context.attach(parent)
        try:
            with self.tracer.start_as_current_span(
                "apx.worker.process", kind=SpanKind.CONSUMER, attributes=span_attributes
            ) as span:
                return await self._process(delivery, message, route, track, span)
        finally:
            otel_context.detach(token)

    async def _process(
        self, delivery: Delivery, message: RequestAttributes, route: str, track: str, span: trace.Span
    ) -> bool:
        request_id = message.request_id
        tier = tier_label(message.tenant_tier or None)
        key = request_key(request_id)
        settings = self.settings.get(delivery.subscription)
        max_attempts = settings.max_delivery_attempts if settings else 0
        while True:
            now = int(time.time() * 1000)
            answer = await self.redis.call(
                "claim",
                [key],
                [
                    self.owner,
                    now,
                    now + self.config.timeout_ms + LEASE_MARGIN_MS,
                    delivery.delivery_attempt,
                    self.config.result_ttl_ms,
                    message.tenant_id,
                    message.route or route,
                    message.track or track,
                    message.tenant_tier,
                ],
            )
            status = _text(answer[0])
            if status == "claimed":
                break
            if status in ("done", "failed"):
                span.set_attribute("apx.duplicate", True)
                self._settle(delivery, "duplicate")
                return True
            if status == "dead":
                self._settle(delivery, "retried")
                return False
            # "busy": another worker runs it; wait for its lease rather than spend a delivery attempt.
            if self.stopping:
                self._settle(delivery, "drained")
                return False
            wait_ms = int(_text(answer[1])) - now if len(answer) > 1 else 1000
            await asyncio.sleep(min(5.0, max(0.05, wait_ms / 1000)))

        self._child(self.metrics.queue_latency, route, track, tier).observe(
            max(0.0, time.time() - delivery.publish_time)
        )
        in_flight = self._child(self.metrics.in_flight, route, track)
        in_flight.inc()
        started = time.perf_counter()
        try:
            outcome = await self._call_upstream(delivery, message)
        except asyncio.CancelledError:
            # The drain deadline passed: give the request back, then let the cancellation through.
            in_flight.dec()
            await self._give_back(key, delivery, "the worker stopped before the upstream answered")
            raise
        in_flight.dec()
        elapsed = time.perf_counter() - started
        code = str(outcome.code)
        self._child(self.metrics.requests, route, track, tier, code).inc()
        self._child(self.metrics.duration, route, track, tier, code).observe(elapsed)
        span.set_attribute("http.response.status_code", outcome.code)
        if outcome.state == "retry":
            span.set_status(Status(StatusCode.ERROR, outcome.error))
            last = max_attempts > 0 and delivery.delivery_attempt >= max_attempts
            if last:
                await self._finish(key, message, route, track, outcome, dead_lettered=True)
                log.warning(
                    "last delivery failed; Pub/Sub moves the message to the dead-letter topic",
                    extra={
                        "request_id": request_id,
                        "attempts": delivery.delivery_attempt,
                        "error": outcome.error,
                    },
                )
                self._settle(delivery, "dead_lettered")
            else:
                await self._give_back(key, delivery, outcome.error, settle=False)
                self._settle(delivery, "retried")
            return False
        if outcome.state == "failed":
            span.set_status(Status(StatusCode.ERROR, outcome.error))
        await self._finish(key, message, route, track, outcome, dead_lettered=False)
        self._settle(delivery, "acked")
        return True

    async def _finish(
        self,
        key: str,
        message: RequestAttributes,
        route: str,
        track: str,
        outcome: _Outcome,
        *,
        dead_lettered: bool,
    ) -> None:
        made_terminal = await self.redis.call(
            "finish",
            [key],
            [
                "done" if outcome.state == "done" else "failed",
                int(time.time() * 1000),
                self.config.result_ttl_ms,
                outcome.code,
                outcome.content_type,
                outcome.body,
                outcome.error,
                "1" if dead_lettered else "0",
            ],
        )
        if int(made_terminal) == 1:
            # Terminal exactly once: the request leaves the backlog and frees its tenant's concurrency slot.
            self._retire(backlog_key(message.route or route, message.track or track))
            product = message.product or self.config.product
            tenant = message.tenant_id
            if message.lease and product and tenant:
                lease_key = tenant_counter_key(product, tenant, "concurrency")
                await self.redis.call("zrem", [lease_key], [message.request_id])

    def _retire(self, counter: str) -> None:
        """Count a finished request off ``counter``; decrements of one loop turn go out as one DECRBY."""
        pending = self._retiring.get(counter, 0)
        self._retiring[counter] = pending + 1
        if not self._retire_scheduled:
            self._retire_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_retired)

    def _flush_retired(self) -> None:
        self._retire_scheduled = False
        retiring, self._retiring = self._retiring, {}
        for counter, count in retiring.items():
            future = self.redis.call("retire", [counter], [count])
            future.add_done_callback(_log_retire_failure)

    async def _give_back(self, key: str, delivery: Delivery, error: str, settle: bool = True) -> None:
        try:
            await asyncio.shield(
                self.redis.call(
                    "release", [key], [self.owner, int(time.time() * 1000), error, self.config.result_ttl_ms]
                )
            )
        except Exception as exc:  # the lease expires on its own; the nack below is what matters
            log.warning("could not release a request", extra={"key": key, "error": str(exc)})
        if settle:
            self._settle(delivery, "drained")

    # --- upstream ------------------------------------------------------------------------------

    def _target(self, message: RequestAttributes) -> str:
        """The request target on the upstream: the original path and query.

        A URL backend's path replaces the prefix the Route matched, as Envoy's ``prefix_rewrite`` does.
        """
        path = message.path or "/"
        if self._base_path:
            base = message.route_base
            if base and path.startswith(base):
                rewrite = self._base_path + "/" if base.endswith("/") else self._base_path
                path = rewrite + path[len(base) :]
            else:
                path = self._base_path + path
        if not path.startswith("/"):
            path = "/" + path
        query = message.query
        return f"{path}?{query}" if query else path

    async def _call_upstream(self, delivery: Delivery, message: RequestAttributes) -> _Outcome:
        headers = {
            REQUEST_ID_HEADER: message.request_id,
            TENANT_HEADER: message.tenant_id,
            TRACK_HEADER: message.track,
            POLICY_VERSION_HEADER: message.policy_version,
            ROUTE_HEADER: message.route,
            "x-apx-delivery-attempt": str(delivery.delivery_attempt),
            "user-agent": USER_AGENT,
        }
        if message.content_type:
            headers["content-type"] = message.content_type
        if message.accept:
            headers["accept"] = message.accept
        if self.tracer is None:
            # The message's own trace context, passed on unchanged (see the module notes).
            headers.update((name, value) for name, value in message.trace_context.items() if value)
        else:
            headers.update(inject_attributes())
        method = message.method or "POST"
        try:
            response = await self.upstream.request(
                method, self._target(message), headers, delivery.data, self._timeout
            )
        except ValueError as exc:
            return _Outcome("failed", 400, error=f"request cannot be sent: {exc}")
        except UpstreamTimeout:
            return _Outcome("retry", 504, error=f"upstream timed out after {self.config.timeout_ms} ms")
        except ResponseTooLarge as exc:
            # Oversized answers fail for good (a retry would get the same answer), counted apart.
            self.metrics.upstream_too_large.labels(exc.part).inc()
            return _Outcome("failed", 502, error=str(exc))
        except UpstreamError as exc:
            return _Outcome("retry", 502, error=f"upstream unreachable: {exc}")
        status = response.status
        if status < 400:
            return _Outcome("done", status, response.content_type, response.body)
        outcome = "retry" if status >= 500 or status in RETRYABLE_CODES else "failed"
        return _Outcome(
            outcome, status, response.content_type, response.body, error=f"upstream answered {status}"
        )

    # --- leases --------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        deadlines = [s.ack_deadline_seconds for s in self.settings.values()] or [10]
        period = max(1.0, min(10.0, min(deadlines) / 3))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            due: dict[str, list[Delivery]] = {}
            for delivery in self._held:
                settings = self.settings.get(delivery.subscription)
                deadline = settings.ack_deadline_seconds if settings else 10
                if now - delivery.extended > deadline / 2:
                    due.setdefault(delivery.subscription, []).append(delivery)
            for path, deliveries in due.items():
                settings = self.settings.get(path)
                self.consumer.extend(deliveries, settings.ack_deadline_seconds if settings else 10)
            self.metrics.outstanding.set(self.consumer.outstanding)
