"""Rate-limit algorithms through the real service: Envoy's messages over gRPC, real Redis, pinned time.

Each test publishes a Product whose PolicyBundle picks the algorithm, starts
``apx-ratelimit`` in process with a settable clock (the scripts use it instead
of Redis TIME), and walks time across window edges exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from apx.controllers.renderers.redis_rules import request_counter_keys
from tests.dataplane.conftest import RlClock, publish_rule_sets, ratelimit_docs, rls_service

OK = 1
OVER_LIMIT = 2


def plan(name: str = "basic", rps: int = 1, burst: int = 5, **extra: Any) -> dict[str, Any]:
    return {"name": name, "tier": "free", "rateLimit": {"requestsPerSecond": rps, "burst": burst}, **extra}


async def _setup(redis_url: str, namespace: str, algorithm: str, plans: list[dict[str, Any]]) -> str:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, plans, algorithm=algorithm))
    return f"{namespace}/shop"


@pytest.mark.asyncio
async def test_sliding_window_admits_burst_per_window_and_frees_slots_exactly_when_they_age_out(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    product = await _setup(redis_url, namespace, "sliding-window", [plan(rps=1, burst=5)])  # window 5 s
    async with rls_service(redis_url, clock=rl_clock) as rls:
        assert await rls.allowed(product, 3, tenant="t1") == 3
        rl_clock.set_ms(2500)
        assert await rls.allowed(product, 2, tenant="t1") == 2
        refused = await rls.ask(product, tenant="t1")
        assert refused.overall_code == OVER_LIMIT
        headers = rls.headers(refused)
        assert headers["x-ratelimit-limit"] == "5"
        assert headers["x-ratelimit-remaining"] == "0"
        assert headers["retry-after"] == "3"  # the three from t=0 leave at t=5 s
        assert headers["x-ratelimit-reset"] == "5"  # the window is whole again when those of 2.5 s leave
        assert headers["x-apx-reason"] == "rate-limited"

        rl_clock.set_ms(4999.999)
        assert await rls.allowed(product, 1, tenant="t1") == 0
        rl_clock.set_ms(5000)  # (now - 5 s, now]: the three of t=0 are out, the two of 2.5 s are in
        assert await rls.allowed(product, 5, tenant="t1") == 3
        rl_clock.set_ms(7500)
        assert await rls.allowed(product, 5, tenant="t1") == 2


@pytest.mark.asyncio
async def test_sliding_window_never_admits_twice_the_burst_across_a_window_edge_unlike_fixed_window(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    sliding = await _setup(redis_url, namespace, "sliding-window", [plan(rps=1, burst=5)])
    fixed = await _setup(redis_url, namespace + "-fw", "fixed-window", [plan(rps=1, burst=5)])
    async with rls_service(redis_url, clock=rl_clock) as rls:
        # Fixed windows are aligned to the epoch (RL_EPOCH_US is a multiple of 5 s):
        # 1 ms before and 1 ms after the edge are two different windows.
        admitted = {}
        for product in (sliding, fixed):
            rl_clock.set_ms(4999)
            first = await rls.allowed(product, 10, tenant="edge")
            rl_clock.set_ms(5001)
            second = await rls.allowed(product, 10, tenant="edge")
            admitted[product] = (first, second)
        assert admitted[fixed] == (5, 5)  # 10 within 2 ms: the burst the design warns about
        assert admitted[sliding] == (5, 0)  # never more than 5 in any 5 s
        rl_clock.set_ms(9999)
        assert await rls.allowed(sliding, 1, tenant="edge") == 1  # the five of 4.999 s left at 9.999 s


@pytest.mark.asyncio
async def test_token_bucket_is_gcra_burst_then_one_per_emission_interval(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    product = await _setup(redis_url, namespace, "token-bucket", [plan(rps=2, burst=4)])  # T = 500 ms
    async with rls_service(redis_url, clock=rl_clock) as rls:
        first = await rls.ask(product, tenant="t1")
        assert rls.headers(first)["x-ratelimit-remaining"] == "3"
        assert await rls.allowed(product, 5, tenant="t1") == 3
        refused = await rls.ask(product, tenant="t1")
        assert refused.overall_code == OVER_LIMIT
        assert rls.headers(refused)["retry-after"] == "1"  # 500 ms, rounded up to whole seconds
        assert rls.headers(refused)["x-ratelimit-reset"] == "2"  # the bucket is full again after 4 x 500 ms

        rl_clock.set_ms(499)
        assert await rls.allowed(product, 1, tenant="t1") == 0
        rl_clock.set_ms(500)
        assert await rls.allowed(product, 2, tenant="t1") == 1
        rl_clock.set_ms(1750)  # 2.5 intervals later: two more tokens
        assert await rls.allowed(product, 3, tenant="t1") == 2
        rl_clock.set_ms(10_000)  # long idle: the bucket holds the burst, never more
        assert await rls.allowed(product, 6, tenant="t1") == 4


@pytest.mark.asyncio
async def test_fixed_window_counts_per_epoch_aligned_window_in_the_contract_keys(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    product = await _setup(redis_url, namespace, "fixed-window", [plan(rps=1, burst=5)])
    async with rls_service(redis_url, clock=rl_clock) as rls:
        rl_clock.set_ms(1000)
        assert await rls.allowed(product, 7, tenant="t1") == 5
        refused = await rls.ask(product, tenant="t1")
        assert rls.headers(refused)["retry-after"] == "4"  # the window ends at 5 s
        rule = (await rls.running.reader.lookup(product, "t1", None)).rule  # type: ignore[union-attr]
        key = request_counter_keys(product, "t1", rule, "fixed-window", rl_clock.ms())["rate"]
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert int(await client.get(key)) == 5
            assert 0 < await client.pttl(key) <= 5000
        finally:
            await client.aclose()
        rl_clock.set_ms(5000)
        assert await rls.allowed(product, 7, tenant="t1") == 5


@pytest.mark.asyncio
async def test_quota_is_exhausted_per_period_and_resets_with_the_next_one(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    quota_plan = plan(rps=100, burst=100, quota={"requests": 3, "period": "minute"})
    product = await _setup(redis_url, namespace, "sliding-window", [quota_plan])
    async with rls_service(redis_url, clock=rl_clock) as rls:
        rl_clock.set_ms(45_000)
        assert await rls.allowed(product, 3, tenant="t1") == 3
        refused = await rls.ask(product, tenant="t1")
        headers = rls.headers(refused)
        assert refused.overall_code == OVER_LIMIT
        assert headers["x-apx-reason"] == "quota-exhausted"
        assert headers["retry-after"] == "15"
        assert headers["x-ratelimit-limit"] == "3"
        assert refused.raw_body and b"quota-exhausted" in refused.raw_body
        rl_clock.set_ms(60_000)
        assert await rls.allowed(product, 1, tenant="t1") == 1


@pytest.mark.asyncio
async def test_hits_addend_counts_several_requests_at_once(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    product = await _setup(redis_url, namespace, "sliding-window", [plan(rps=1, burst=5)])
    async with rls_service(redis_url, clock=rl_clock) as rls:
        first = await rls.ask(product, tenant="t1", hits=3)
        assert first.overall_code == OK
        assert rls.headers(first)["x-ratelimit-remaining"] == "2"
        assert (await rls.ask(product, tenant="t1", hits=3)).overall_code == OVER_LIMIT
        assert (await rls.ask(product, tenant="t1", hits=2)).overall_code == OK
        assert (await rls.ask(product, tenant="t1")).overall_code == OVER_LIMIT
