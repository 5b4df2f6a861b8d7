"""The rate-limit service's per-call path: one decision per call, parsed once per distinct message,
no tracing objects for calls the sampler leaves out, and no Redis timeout for a reply that arrived
while the process was busy.

In-process, with a stand-in limiter (no Redis): what is proven here is what
``RateLimitService`` does around ``Limiter.decide``; the decisions themselves
are ``test_ratelimit_service.py``'s. The pipe test uses a private Redis and
uvloop, whose loop runs due timers before it reads sockets.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apx.dataplane.common.pipe import PipelinedRedis, encode_command
from apx.dataplane.ratelimit import server
from apx.dataplane.ratelimit.limiter import Decision, LimitRequest, LimitStatus
from apx.dataplane.ratelimit.metrics import RateLimitMetrics
from apx.dataplane.ratelimit.server import RateLimitService
from e2e.services import start_redis

Response = rls_pb2.RateLimitResponse


class _CountingLimiter:
    """Admits every call after one loop turn (as a Redis round trip would) and counts the calls."""

    def __init__(self) -> None:
        self.requests: list[LimitRequest] = []

    async def decide(self, request: LimitRequest) -> Decision:
        self.requests.append(request)
        await asyncio.sleep(0)
        tenant = dict(request.descriptors[0]).get("tenant", "anonymous")
        rate = LimitStatus("rate", True, 10, 9 - len(self.requests) % 10, 1500, None, 1000)
        return Decision(True, "team-a/orders", tenant, "pro", "v1", (rate,))

    def failure_mode(self, product: str | None) -> str:
        return "open"


class _UntouchableTracer:
    """A tracer that fails the test if a span is ever started."""

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a span was started for a call the sampler left out")


def _message(tenant: str, api_key: str | None = None) -> bytes:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    descriptors = [
        ratelimit_pb2.RateLimitDescriptor(
            entries=[entry(key="product", value="team-a/orders"), entry(key="tenant", value=tenant)]
        )
    ]
    if api_key is not None:
        descriptors.append(
            ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key="product", value="team-a/orders"), entry(key="api_key", value=api_key)]
            )
        )
    message: bytes = rls_pb2.RateLimitRequest(domain="apx", descriptors=descriptors).SerializeToString()
    return message


def test_each_call_is_decided_exactly_once_even_when_many_are_in_flight() -> None:
    limiter = _CountingLimiter()
    service = RateLimitService(limiter, RateLimitMetrics())  # type: ignore[arg-type]
    messages = [_message(f"t{i % 7}") for i in range(200)]

    async def run_all() -> list[bytes]:
        return list(await asyncio.gather(*(service.should_rate_limit(m) for m in messages)))

    answers = asyncio.run(run_all())

    assert len(limiter.requests) == len(messages)
    assert [dict(r.descriptors[0])["tenant"] for r in limiter.requests] == [f"t{i % 7}" for i in range(200)]
    assert all(Response.FromString(a).overall_code == Response.OK for a in answers)
    decided = service.metrics.decisions.labels("apx", "pro", "OK", "none")._value.get()
    assert decided == len(messages)


def test_a_repeated_message_answers_like_a_fresh_one_and_the_parsed_calls_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "PARSED_CALLS_KEPT", 4)
    service = RateLimitService(_CountingLimiter(), RateLimitMetrics())  # type: ignore[arg-type]
    message = _message("acme", api_key="k-1")

    first = Response.FromString(asyncio.run(service.should_rate_limit(message)))
    again = Response.FromString(asyncio.run(service.should_rate_limit(message)))
    fresh = RateLimitService(_CountingLimiter(), RateLimitMetrics())  # type: ignore[arg-type]
    reference = Response.FromString(asyncio.run(fresh.should_rate_limit(message)))

    # The tenant's descriptor shows the rate limit, the API-key descriptor its own (none here).
    assert [s.code for s in first.statuses] == [Response.OK, Response.OK]
    assert first.statuses[0].HasField("duration_until_reset")
    assert first.statuses[0].duration_until_reset.seconds == 1
    assert first.statuses[0].duration_until_reset.nanos == 500_000_000
    assert not first.statuses[1].HasField("duration_until_reset")
    assert again.statuses[0].limit_remaining == first.statuses[0].limit_remaining - 1
    assert reference == first
    for i in range(10):
        asyncio.run(service.should_rate_limit(_message(f"other-{i}")))
    assert len(service._calls) <= 4


def test_calls_left_out_by_the_sampler_never_reach_the_tracer_and_sampled_ones_get_a_span() -> None:
    service = RateLimitService(_CountingLimiter(), RateLimitMetrics())  # type: ignore[arg-type]
    service.tracer = _UntouchableTracer()  # type: ignore[assignment]
    service.trace_ratio = 0.0
    for i in range(50):
        asyncio.run(service.should_rate_limit(_message(f"t{i}")))

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service.tracer = provider.get_tracer("apx.ratelimit")
    service.trace_ratio = 1.0
    asyncio.run(service.should_rate_limit(_message("traced")))

    (span,) = exporter.get_finished_spans()
    assert span.name == "apx.ratelimit.decide"
    assert span.attributes is not None
    assert span.attributes["apx.product"] == "team-a/orders"
    assert span.attributes["apx.ratelimit.code"] == "OK"


def test_the_service_draws_its_own_one_percent_when_no_sampler_variable_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = RateLimitService(_CountingLimiter(), RateLimitMetrics())  # type: ignore[arg-type]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service.tracer = provider.get_tracer("apx.ratelimit")
    service.trace_ratio = 0.01
    draws = iter([0.5, 0.009, 0.99, 0.0101])
    monkeypatch.setattr(random, "random", lambda: next(draws))

    for i in range(4):
        asyncio.run(service.should_rate_limit(_message(f"t{i}")))

    assert len(exporter.get_finished_spans()) == 1


def test_a_redis_reply_that_arrived_while_the_loop_was_busy_is_delivered_not_timed_out(
    tmp_path: Path,
) -> None:
    service = start_redis(tmp_path / "redis")
    ping = encode_command([b"PING"])
    # A script of ≈10-25 ms: its reply comes after the loop has polled, while it is busy.
    slow = encode_command([b"EVAL", b"local i = 0 while i < 1000000 do i = i + 1 end return 'done'", b"0"])

    async def scenario() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        pipe = PipelinedRedis(f"redis://{service.address}/0", timeout=0.15)
        busy, poke = socket.socketpair()

        def long_callback() -> None:  # a callback of the I/O phase that holds the loop past the deadline
            loop.remove_reader(busy)
            busy.recv(1)
            time.sleep(0.6)

        try:
            assert await pipe.execute(ping) == b"PONG"  # connected
            loop.add_reader(busy, long_callback)
            call = asyncio.ensure_future(pipe.execute(slow))
            # Readable right after the command is written (the write is the next loop pass's first step).
            loop.call_soon(lambda: loop.call_soon(poke.send, b"x"))
            late = await call
            # The connection was kept: no failure, no reconnect.
            return late, await pipe.execute(ping)
        finally:
            busy.close()
            poke.close()
            await pipe.close()

    try:
        # uvloop runs due timers before it polls: the deadline is checked before the reply is read.
        assert uvloop.run(scenario()) == (b"done", b"PONG")
    finally:
        service.stop()
