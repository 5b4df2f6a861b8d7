"""Concurrency leases and prepaid credits (``apx.dataplane.ratelimit.leases``) against real Redis.

What the async gateway and workers rely on: a cap that holds under
concurrent acquirers, slots that come back on release or when a crashed
holder's lease expires, renewals for long jobs, and a balance that concurrent
spenders can never take below zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from apx.dataplane.common.rulesets import RuleSetReader
from apx.dataplane.ratelimit.leases import ConcurrencyLeases, Credits, tenant_counter_key
from tests.dataplane.conftest import RlClock, publish_rule_sets, ratelimit_docs


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_url)
    try:
        yield redis_client
    finally:
        await redis_client.aclose()


@pytest.mark.asyncio
async def test_the_cap_holds_under_concurrent_acquirers_and_release_frees_a_slot(
    client: aioredis.Redis, namespace: str
) -> None:
    leases = ConcurrencyLeases(client)
    product = f"{namespace}/shop"
    got = await asyncio.gather(
        *(leases.acquire(product, "acme", limit=5, lease_ms=30_000) for _ in range(40))
    )
    held = [lease for lease in got if lease is not None]
    assert len(held) == 5
    assert await leases.active(product, "acme") == 5
    assert await leases.active(product, "other") == 0
    assert await leases.release(held[0])
    assert not await leases.release(held[0])  # already free
    assert await leases.acquire(product, "acme", limit=5, lease_ms=30_000) is not None
    async with leases.hold(product, "acme", limit=5, lease_ms=30_000) as extra:
        assert extra is None  # at the cap again


@pytest.mark.asyncio
async def test_a_crashed_holder_frees_its_slot_when_the_lease_expires_and_renewal_keeps_it(
    client: aioredis.Redis, namespace: str, rl_clock: RlClock
) -> None:
    leases = ConcurrencyLeases(client, clock_ms=rl_clock.ms)
    product = f"{namespace}/shop"
    crashed = await leases.acquire(product, "acme", limit=2, lease_ms=10_000)
    long_job = await leases.acquire(product, "acme", limit=2, lease_ms=10_000)
    assert crashed is not None and long_job is not None
    assert await leases.acquire(product, "acme", limit=2, lease_ms=10_000) is None
    rl_clock.advance(9_000)
    assert await leases.renew(long_job, 10_000)
    rl_clock.advance(2_000)  # the crashed holder's lease is over, the renewed one is not
    assert await leases.active(product, "acme") == 1
    assert await leases.acquire(product, "acme", limit=2, lease_ms=10_000) is not None
    rl_clock.advance(50_000)
    assert not await leases.renew(long_job, 10_000)  # expired before it was renewed
    # The key outlives its leases (TTL ≥ lease length), so nothing leaks if nobody returns.
    assert 0 < await client.pttl(tenant_counter_key(product, "acme", "concurrency")) <= 10_000


@pytest.mark.asyncio
async def test_acquire_for_reads_the_cap_and_lease_length_from_the_rule_set(
    client: aioredis.Redis, redis_url: str, namespace: str
) -> None:
    plans = [
        {"name": "capped", "tier": "free", "rateLimit": {"requestsPerSecond": 10}, "concurrency": 1},
        {"name": "open", "tier": "pro", "rateLimit": {"requestsPerSecond": 10}},
    ]
    await publish_rule_sets(
        redis_url,
        ratelimit_docs(namespace, plans, default_plan="capped", tenants=[{"id": "big", "plan": "open"}]),
    )
    product = f"{namespace}/shop"
    reader = RuleSetReader(client)
    leases = ConcurrencyLeases(client, reader)
    try:
        first = await leases.acquire_for(product, "small")
        assert first is not None and first.key is not None
        assert await leases.acquire_for(product, "small") is None
        # meta.lease_ms is the slowest Route's timeout (30 s default) plus 5 s.
        assert 0 < await client.pttl(first.key) <= 35_000
        unlimited = [await leases.acquire_for(product, "big") for _ in range(3)]
        assert all(lease is not None and lease.key is None for lease in unlimited)
    finally:
        await reader.close()


@pytest.mark.asyncio
async def test_credits_are_never_overspent_by_concurrent_spenders(
    client: aioredis.Redis, namespace: str
) -> None:
    credits = Credits(client)
    product = f"{namespace}/shop"
    assert await credits.top_up(product, "acme", 20) == 20
    results = await asyncio.gather(*(credits.spend(product, "acme", 1) for _ in range(50)))
    assert sum(r.spent for r in results) == 20
    assert await credits.balance(product, "acme") == 0
    refused = await credits.spend(product, "acme", 1)
    assert not refused.spent and refused.balance == 0
    assert (await credits.spend(product, "acme", 0)).spent
    with pytest.raises(ValueError):
        await credits.spend(product, "acme", -5)
