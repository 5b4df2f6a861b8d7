"""The rate-limit service's Redis pool waits instead of failing, and overload follows the failure mode.

Real Redis and the operator's own rule sets. A burst of calls for many new
tenants (each one a rule-set read) against a pool much smaller than the burst
is answered in full; a pool held busy past its wait deadline answers by the
product's failure mode, exactly like a Redis outage, and is counted in
``apx_ratelimit_overload_total``; a full wait queue turns callers away at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from apx.dataplane.common.redisconn import BoundedBlockingPool, PoolOverloaded, bounded_pool
from apx.dataplane.ratelimit.server import ServiceSettings, start_service
from tests.dataplane.conftest import RlsClient, publish_rule_sets, ratelimit_docs

OK = 1
OVER_LIMIT = 2


def _plan(name: str = "basic", burst: int = 1000) -> dict[str, Any]:
    return {"name": name, "tier": "free", "rateLimit": {"requestsPerSecond": 1, "burst": burst}}


@contextlib.asynccontextmanager
async def _service(redis_url: str, **settings: Any) -> AsyncIterator[RlsClient]:
    running = await start_service(
        ServiceSettings(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            pointer_ttl=1.0,
            health_interval=0.1,
            grace_seconds=1.0,
            **settings,
        )
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield RlsClient(running, channel, rls_pb2_grpc.RateLimitServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(grace=1.0)


@contextlib.asynccontextmanager
async def _all_connections_held(pool: BoundedBlockingPool) -> AsyncIterator[None]:
    """Check out every connection of ``pool`` (as slow calls would) and give them back on exit."""
    held = [await pool.get_connection() for _ in range(pool.max_connections)]
    try:
        yield
    finally:
        for connection in held:
            await pool.release(connection)


@pytest.mark.asyncio
async def test_a_burst_of_new_tenants_far_above_the_pool_size_is_answered_in_full(
    redis_url: str, namespace: str
) -> None:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [_plan()]))
    product = f"{namespace}/shop"
    async with _service(redis_url, redis_max_connections=4, redis_pool_timeout_ms=5_000) as rls:
        # Every tenant is new to the service: each call reads its own rule-set field from Redis.
        calls = [rls.ask(product, tenant=f"tenant-{i}") for i in range(400)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        errors = [a for a in answers if isinstance(a, BaseException)]
        assert errors == [], f"{len(errors)} calls failed, first: {errors[:1]}"
        assert {a.overall_code for a in answers if not isinstance(a, BaseException)} == {OK}
        pool = rls.running.redis.connection_pool
        assert isinstance(pool, BoundedBlockingPool)
        assert len(pool._in_use_connections) + len(pool._available_connections) <= 4
        assert (
            rls.metric("apx_ratelimit_overload_total", {"failure_mode": "open", "decided_by": "envoy"}) == 0
        )
        assert (
            rls.metric(
                "apx_ratelimit_decisions_total",
                {"domain": "apx", "tier": "free", "code": "OK", "limit": "none"},
            )
            == 400
        )


@pytest.mark.asyncio
async def test_a_pool_starved_past_its_deadline_answers_by_the_failure_mode_and_counts_it(
    redis_url: str, namespace: str
) -> None:
    await publish_rule_sets(
        redis_url, ratelimit_docs(namespace, [_plan()], failure_mode="closed", product="strict")
    )
    await publish_rule_sets(
        redis_url, ratelimit_docs(namespace, [_plan()], failure_mode="open", product="lenient")
    )
    strict, lenient = f"{namespace}/strict", f"{namespace}/lenient"
    async with _service(
        redis_url, failure_mode="service", redis_max_connections=2, redis_pool_timeout_ms=100
    ) as rls:
        # Seen once, so the service knows each product's failure mode.
        assert (await rls.ask(strict, tenant="known")).overall_code == OK
        assert (await rls.ask(lenient, tenant="known")).overall_code == OK
        pool = rls.running.redis.connection_pool
        async with _all_connections_held(pool):
            started = time.monotonic()
            refused = await rls.ask(strict, tenant="new-1")
            waited = time.monotonic() - started
            admitted = await rls.ask(lenient, tenant="new-2")
        assert refused.overall_code == OVER_LIMIT
        assert rls.headers(refused)["x-apx-reason"] == "ratelimit-unavailable"
        assert admitted.overall_code == OK
        assert 0.09 <= waited < 2.0  # waited for the deadline, then answered
        overload = "apx_ratelimit_overload_total"
        assert rls.metric(overload, {"failure_mode": "closed", "decided_by": "service"}) == 1
        assert rls.metric(overload, {"failure_mode": "open", "decided_by": "service"}) == 1
        failures = {"failure_mode": "closed", "decided_by": "service", "reason": "overload"}
        assert rls.metric("apx_ratelimit_failures_total", failures) == 1
        # Overload is not an outage: Redis stays reported up, and freed connections serve again.
        assert rls.metric("apx_ratelimit_redis_up") == 1
        assert (await rls.ask(strict, tenant="new-1")).overall_code == OK


@pytest.mark.asyncio
async def test_in_envoy_mode_overload_is_unavailable_like_an_outage_never_too_many_connections(
    redis_url: str, namespace: str
) -> None:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [_plan()]))
    product = f"{namespace}/shop"
    async with _service(redis_url, redis_max_connections=1, redis_pool_timeout_ms=50) as rls:
        assert (await rls.ask(product, tenant="known")).overall_code == OK
        async with _all_connections_held(rls.running.redis.connection_pool):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rls.ask(product, tenant="new")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Too many connections" not in (refused.value.details() or "")
        assert (
            rls.metric("apx_ratelimit_overload_total", {"failure_mode": "open", "decided_by": "envoy"}) == 1
        )


@pytest.mark.asyncio
async def test_a_full_wait_queue_turns_callers_away_at_once(redis_url: str) -> None:
    pool = bounded_pool(redis_url, max_connections=1, pool_timeout=5.0, max_waiting=1)
    try:
        async with _all_connections_held(pool):
            waiting = asyncio.create_task(pool.get_connection())
            await asyncio.sleep(0.05)
            assert pool.waiting == 1
            started = time.monotonic()
            with pytest.raises(PoolOverloaded):
                await pool.get_connection()
            assert time.monotonic() - started < 0.5
        # The queued caller got the connection once it was given back.
        connection = await asyncio.wait_for(waiting, 2.0)
        await pool.release(connection)
        assert pool.waiting == 0
    finally:
        await pool.disconnect()
