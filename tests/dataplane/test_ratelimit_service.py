"""The rate-limit service as Envoy sees it: descriptors, API keys, no cross-limit burn, headers, credits,
concurrency, hot reload, failure modes with Redis stopped and restarted, health, the console script.

Real Redis, the operator's own rule-set rendering and publishing, Envoy's
``RateLimitRequest`` over a real gRPC channel; time is pinned where a test
walks it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apx.contracts import redis_keys
from apx.contracts.rule_set import Quota, Rate, Rule
from apx.controllers import names
from apx.controllers.renderers.redis_rules import api_key_id, request_counter_keys
from apx.dataplane.ratelimit.leases import ConcurrencyLeases, Credits
from e2e.services import free_port, start_redis, wait_for_port
from tests.dataplane.conftest import (
    RlClock,
    add_api_key,
    publish_rule_sets,
    ratelimit_docs,
    rls_service,
    wait_for,
)

OK = 1
OVER_LIMIT = 2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def plan(name: str, rps: int = 1, burst: int = 5, tier: str = "free", **extra: Any) -> dict[str, Any]:
    return {"name": name, "tier": tier, "rateLimit": {"requestsPerSecond": rps, "burst": burst}, **extra}


async def _zcard(redis_url: str, key: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int(await client.zcard(key))
    finally:
        await client.aclose()


# --- which rule answers -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_listed_tenant_rule_then_claimed_plan_then_default_plan(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    plans = [plan("free", burst=2), plan("pro", burst=4, tier="pro")]
    tenants = [
        {"id": "vip", "plan": "pro"},
        {"id": "custom", "plan": "free", "rateLimit": {"requestsPerSecond": 1, "burst": 3}},
    ]
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, plans, tenants=tenants, default_plan="free"))
    product = f"{namespace}/shop"
    async with rls_service(redis_url, clock=rl_clock) as rls:
        assert await rls.allowed(product, 5, tenant="nobody") == 2  # default plan
        assert await rls.allowed(product, 5, tenant="claims-pro", plan="pro") == 4
        assert await rls.allowed(product, 5, tenant="vip", plan="free") == 4  # the Product's word wins
        assert await rls.allowed(product, 5, tenant="custom") == 3  # the tenant's own override
        assert await rls.allowed(product, 5, tenant="typo", plan="platinum") == 2  # unknown plan: default
        # No tenant claim and no API key: one shared "anonymous" tenant.
        assert await rls.allowed(product, 3) == 2
        assert (
            rls.metric(
                "apx_ratelimit_decisions_total",
                {"domain": "apx", "tier": "pro", "code": "OK", "limit": "none"},
            )
            == 8
        )
        assert (
            rls.metric(
                "apx_ratelimit_decisions_total",
                {"domain": "apx", "tier": "free", "code": "OVER_LIMIT", "limit": "rate"},
            )
            == 9
        )  # 3 + 2 + 3 + 1
        assert rls.metric("apx_ratelimit_grpc_connections") == 1  # the test's one channel
        assert rls.metric("apx_ratelimit_grpc_calls_in_flight") == 0


@pytest.mark.asyncio
async def test_api_keys_resolve_the_tenant_and_unknown_keys_are_refused_before_any_counter(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [plan("free", burst=4)]))
    product = f"{namespace}/shop"
    await add_api_key(redis_url, product, "key-of-acme", "acme")
    async with rls_service(redis_url, clock=rl_clock) as rls:
        unknown = await rls.ask(product, tenant="acme", api_keys=("stolen-or-typo",))
        assert unknown.overall_code == OVER_LIMIT
        assert rls.headers(unknown)["x-apx-reason"] == "unknown-api-key"
        assert [s.code for s in unknown.statuses] == [OK, OVER_LIMIT]
        # The key's tenant shares the tenant's counter with its JWT requests.
        assert await rls.allowed(product, 2, api_keys=("key-of-acme",)) == 2
        assert await rls.allowed(product, 3, tenant="acme") == 2
        # Both descriptors (header and query key) must be known.
        both = await rls.ask(product, api_keys=("key-of-acme", "nope"))
        assert rls.headers(both)["x-apx-reason"] == "unknown-api-key"
        assert (
            rls.metric(
                "apx_ratelimit_decisions_total",
                {"domain": "apx", "tier": "none", "code": "OVER_LIMIT", "limit": "api_key"},
            )
            == 2
        )


@pytest.mark.asyncio
async def test_a_revoked_api_key_is_refused_within_the_cache_time_and_bogus_keys_are_cached_too(
    redis_url: str, namespace: str
) -> None:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [plan("free", burst=1000)]))
    product = f"{namespace}/shop"
    await add_api_key(redis_url, product, "key-to-revoke", "acme")
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with rls_service(redis_url, pointer_ttl=0.05) as rls:
            assert (await rls.ask(product, api_keys=("key-to-revoke",))).overall_code == OK
            await client.hdel(names.api_key_table_key(product), api_key_id("key-to-revoke"))

            async def refused() -> bool:
                response = await rls.ask(product, api_keys=("key-to-revoke",))
                return rls.headers(response).get("x-apx-reason") == "unknown-api-key"

            await wait_for(refused, timeout=5)
            # A flood of one bogus key reads the key table about once per cache period, not per request.
            before = await _hget_calls(client)
            for _ in range(50):
                await rls.ask(product, api_keys=("bogus",))
            assert await _hget_calls(client) - before < 10
    finally:
        await client.aclose()


async def _hget_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


@pytest.mark.asyncio
async def test_api_key_rate_is_per_key_inside_the_tenant_rate(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    pro = plan("pro", burst=10, tier="pro", apiKeyRateLimit={"requestsPerSecond": 1, "burst": 2})
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [pro]))
    product = f"{namespace}/shop"
    for key in ("key-a", "key-b"):
        await add_api_key(redis_url, product, key, "acme")
    async with rls_service(redis_url, clock=rl_clock) as rls:
        assert await rls.allowed(product, 4, api_keys=("key-a",)) == 2
        refused = await rls.ask(product, api_keys=("key-a",))
        assert rls.headers(refused)["x-apx-reason"] == "api-key-rate-limited"
        assert [s.code for s in refused.statuses] == [OK, OVER_LIMIT]
        assert await rls.allowed(product, 4, api_keys=("key-b",)) == 2
        # The tenant was charged for the 4 admitted requests only.
        assert await rls.allowed(product, 10, tenant="acme") == 6


# --- no cross-limit burn ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_request_refused_by_one_limit_consumes_nothing_in_the_others(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    quota_plan = plan(
        "metered",
        rps=1,
        burst=10,
        quota={"requests": 3, "period": "minute"},
        apiKeyRateLimit={"requestsPerSecond": 1, "burst": 10},
    )
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [quota_plan]))
    product = f"{namespace}/shop"
    await add_api_key(redis_url, product, "key-a", "acme")
    async with rls_service(redis_url, clock=rl_clock) as rls:
        assert await rls.allowed(product, 50, api_keys=("key-a",)) == 3  # 47 refused by the quota
        rule = (await rls.running.reader.lookup(product, "acme", None)).rule  # type: ignore[union-attr]
        keys = request_counter_keys(product, "acme", rule, "sliding-window", rl_clock.ms(), api_key="key-a")
        # envoyproxy/ratelimit would have counted all 50 in the rate limits as well.
        assert await _zcard(redis_url, keys["rate"]) == 3
        assert await _zcard(redis_url, keys["api_key_rate"]) == 3
        # A new quota period: the rate limits still have 7 of 10 left, not 0.
        rl_clock.set_ms(60_000)
        assert await rls.allowed(product, 5, api_keys=("key-a",)) == 3
        rl_clock.set_ms(120_000)
        assert await rls.allowed(product, 3, api_keys=("key-a",)) == 3


# --- headers, credits and concurrency -------------------------------------------------------------


@pytest.mark.asyncio
async def test_headers_describe_the_most_restrictive_limit(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    quota_plan = plan("metered", rps=1, burst=10, quota={"requests": 4, "period": "hour"})
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [quota_plan]))
    product = f"{namespace}/shop"
    async with rls_service(redis_url, clock=rl_clock) as rls:
        first = await rls.ask(product, tenant="t1")
        headers = rls.headers(first)
        # The quota (3 left) is tighter than the rate (9 left).
        assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("4", "3")
        assert headers["x-ratelimit-reset"] == "3600"
        assert "retry-after" not in headers and "x-apx-reason" not in headers
        assert first.statuses[0].limit_remaining == 3
        # Left unset so that Envoy's own x-ratelimit headers do not duplicate ours.
        assert not first.statuses[0].HasField("current_limit")
        assert await rls.allowed(product, 3, tenant="t1") == 3
        refused = await rls.ask(product, tenant="t1")
        body = json.loads(refused.raw_body)
        assert body == {
            "error": "too_many_requests",
            "reason": "quota-exhausted",
            "retry_after_seconds": 3600,
        }
        assert rls.headers(refused)["content-type"] == "application/json"


@pytest.mark.asyncio
async def test_prepaid_credits_are_charged_only_for_admitted_requests_and_exhaustion_says_so(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    prepaid = plan("prepaid", rps=1, burst=3, tier="enterprise", credits={"costPerRequest": 2})
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [prepaid]))
    product = f"{namespace}/shop"
    client = aioredis.Redis.from_url(redis_url)
    credits = Credits(client)
    try:
        await credits.top_up(product, "acme", 100)
        async with rls_service(redis_url, clock=rl_clock) as rls:
            assert await rls.allowed(product, 10, tenant="acme") == 3
            assert await credits.balance(product, "acme") == 94  # 7 refused by the rate: not charged
            await client.set(redis_keys.credits_key(product, "acme"), 3)
            rl_clock.set_ms(10_000)
            admitted = await rls.ask(product, tenant="acme")
            assert rls.headers(admitted)["x-apx-credits-remaining"] == "1"
            exhausted = await rls.ask(product, tenant="acme")
            headers = rls.headers(exhausted)
            assert exhausted.overall_code == OVER_LIMIT
            assert headers["x-apx-reason"] == "credits-exhausted"
            assert "retry-after" not in headers  # waiting does not refill a balance
            assert json.loads(exhausted.raw_body)["error"] == "payment_required"
            assert await credits.balance(product, "acme") == 1
            assert (
                rls.metric(
                    "apx_ratelimit_decisions_total",
                    {"domain": "apx", "tier": "enterprise", "code": "OVER_LIMIT", "limit": "credits"},
                )
                == 1
            )
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_concurrency_slots_held_by_leases_refuse_new_requests_until_released_or_expired(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    capped = plan("capped", rps=100, burst=100, concurrency=2)
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [capped]))
    product = f"{namespace}/shop"
    client = aioredis.Redis.from_url(redis_url)
    async with rls_service(redis_url, clock=rl_clock) as rls:
        leases = ConcurrencyLeases(client, rls.running.reader, clock_ms=rl_clock.ms)
        try:
            first = await leases.acquire_for(product, "acme")
            second = await leases.acquire_for(product, "acme")
            assert first is not None and second is not None
            assert await leases.acquire_for(product, "acme") is None
            refused = await rls.ask(product, tenant="acme")
            assert refused.overall_code == OVER_LIMIT
            assert rls.headers(refused)["x-apx-reason"] == "concurrency-limited"
            assert rls.headers(refused)["retry-after"] == "1"
            assert await leases.release(first)
            assert (await rls.ask(product, tenant="acme")).overall_code == OK
            assert await leases.acquire_for(product, "acme") is not None
            # A crashed holder never releases: its lease expires after meta.lease_ms.
            rl_clock.advance(60_000)
            assert (await rls.ask(product, tenant="acme")).overall_code == OK
        finally:
            await client.aclose()


# --- hot reload -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_new_rule_set_version_applies_without_restart_and_each_request_sees_one_version(
    redis_url: str, namespace: str, rl_clock: RlClock
) -> None:
    before = await publish_rule_sets(redis_url, ratelimit_docs(namespace, [plan("basic", burst=2)]))
    product = f"{namespace}/shop"
    async with rls_service(redis_url, clock=rl_clock, pointer_ttl=0.05) as rls:
        assert await rls.allowed(product, 5, tenant="t1") == 2
        after = await publish_rule_sets(redis_url, ratelimit_docs(namespace, [plan("basic", burst=6)]))
        assert after[product].version != before[product].version

        async def serving(version: str) -> bool:
            return await rls.running.reader.current_version(product) == version

        await wait_for(lambda: serving(after[product].version), timeout=5)
        limit = rls.headers(await rls.ask(product, tenant="other"))["x-ratelimit-limit"]
        assert limit == "6"
        # The same counter, judged by the new limit: 4 more fit in the window.
        assert await rls.allowed(product, 10, tenant="t1") == 4

        # An algorithm change moves to counters of the new type (the key names the algorithm).
        bucket = ratelimit_docs(namespace, [plan("basic", burst=6)], algorithm="token-bucket")
        third = await publish_rule_sets(redis_url, bucket)
        await wait_for(lambda: serving(third[product].version), timeout=5)
        assert await rls.allowed(product, 10, tenant="t1") == 6


# --- failure modes ------------------------------------------------------------------------------------


async def _health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int((await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)).status)


@pytest.mark.asyncio
async def test_redis_down_answers_unavailable_so_envoy_applies_the_route_failure_mode_then_recovers(
    tmp_path: Path, namespace: str
) -> None:
    private = start_redis(tmp_path / "redis")
    url = f"redis://{private.address}/0"
    docs = ratelimit_docs(namespace, [plan("basic", burst=100)])
    product = f"{namespace}/shop"
    try:
        await publish_rule_sets(url, docs)
        async with rls_service(url) as rls:
            port = rls.running.port
            assert (await rls.ask(product, tenant="t1")).overall_code == OK
            assert await _rls_health_is(port, SERVING)

            private.stop()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await rls.ask(product, tenant="t1")
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            labels = {"failure_mode": "open", "decided_by": "envoy", "reason": "redis"}
            assert rls.metric("apx_ratelimit_failures_total", labels) >= 1
            await wait_for(lambda: _rls_health_is(port, NOT_SERVING), timeout=5)
            assert await _health(port, "") == SERVING  # the process is alive: no restart loop

            # Redis comes back empty; the operator's full resync republishes the rule sets.
            private = start_redis(tmp_path / "redis", port=private.port)
            await publish_rule_sets(url, docs)

            async def recovered() -> bool:
                try:
                    return (await rls.ask(product, tenant="t1")).overall_code == OK
                except grpc.aio.AioRpcError:
                    return False

            await wait_for(recovered, timeout=10)
            await wait_for(lambda: _rls_health_is(port, SERVING), timeout=5)
            assert rls.metric("apx_ratelimit_redis_up") == 1
    finally:
        private.stop()


async def _rls_health_is(port: int, status: int) -> bool:
    return await _health(port, "envoy.service.ratelimit.v3.RateLimitService") == status


@pytest.mark.asyncio
async def test_service_failure_mode_answers_from_the_policy_open_or_closed_when_redis_is_down(
    tmp_path: Path, namespace: str
) -> None:
    private = start_redis(tmp_path / "redis")
    url = f"redis://{private.address}/0"
    closed = ratelimit_docs(namespace, [plan("basic", burst=100)], failure_mode="closed", product="strict")
    opened = ratelimit_docs(namespace, [plan("basic", burst=100)], failure_mode="open", product="lenient")
    try:
        await publish_rule_sets(url, closed)
        await publish_rule_sets(url, opened)
        async with rls_service(url, failure_mode="service") as rls:
            for product in ("strict", "lenient"):
                assert (await rls.ask(f"{namespace}/{product}", tenant="t1")).overall_code == OK
            private.stop()
            strict = await rls.ask(f"{namespace}/strict", tenant="t1")
            assert strict.overall_code == OVER_LIMIT
            assert rls.headers(strict)["x-apx-reason"] == "ratelimit-unavailable"
            assert (await rls.ask(f"{namespace}/lenient", tenant="t1")).overall_code == OK
            # Never seen: the service knows no policy, so it fails open.
            assert (await rls.ask(f"{namespace}/unknown", tenant="t1")).overall_code == OK
            assert (
                rls.metric(
                    "apx_ratelimit_failures_total",
                    {"failure_mode": "open", "decided_by": "service", "reason": "redis"},
                )
                == 2
            )
            assert (
                rls.metric(
                    "apx_ratelimit_failures_total",
                    {"failure_mode": "closed", "decided_by": "service", "reason": "redis"},
                )
                == 1
            )
            private = start_redis(tmp_path / "redis", port=private.port)
            await publish_rule_sets(url, closed)

            async def recovered() -> bool:
                response = await rls.ask(f"{namespace}/strict", tenant="t1")
                return response.overall_code == OK and "x-apx-reason" not in rls.headers(response)

            await wait_for(recovered, timeout=10)
    finally:
        private.stop()


@pytest.mark.asyncio
async def test_calls_outside_the_contract_are_errors_not_guesses(redis_url: str, namespace: str) -> None:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [plan("basic")]))
    async with rls_service(redis_url) as rls:
        with pytest.raises(grpc.aio.AioRpcError) as wrong_domain:
            await rls.ask(f"{namespace}/shop", tenant="t1", domain="other")
        assert wrong_domain.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as no_rules:
            await rls.ask(f"{namespace}/not-published", tenant="t1")
        assert no_rules.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (
            rls.metric(
                "apx_ratelimit_failures_total",
                {"failure_mode": "open", "decided_by": "envoy", "reason": "no_rules"},
            )
            == 1
        )


# --- the console script ---------------------------------------------------------------------------------


def test_console_script_has_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "apx.dataplane.ratelimit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--redis-url" in out.stdout and "APX_REDIS_URL" in out.stdout


def test_console_script_exits_with_a_clear_error_when_it_cannot_listen() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        for listen in (f"127.0.0.1:{taken.getsockname()[1]}", "no-port-here"):
            result = subprocess.run(
                [sys.executable, "-m", "apx.dataplane.ratelimit", "--listen", listen, "--metrics-port", "0"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 1, result.stderr
            messages = [json.loads(line)["message"] for line in result.stderr.splitlines() if line.strip()]
            assert any(m.startswith("cannot start") for m in messages), messages
    finally:
        taken.close()


@pytest.mark.asyncio
async def test_console_script_serves_logs_json_and_exits_cleanly_on_sigterm(
    redis_url: str, namespace: str
) -> None:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [plan("basic")]))
    port = free_port()
    env = {**os.environ, "APX_REDIS_URL": redis_url, "APX_GRPC_PORT": str(port), "APX_METRICS_PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "apx.dataplane.ratelimit"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 20, None, "apx-ratelimit")
        from tests.dataplane.conftest import RlsClient

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            from envoy.service.ratelimit.v3 import rls_pb2_grpc

            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            response = await stub.ShouldRateLimit(
                RlsClient.request(f"{namespace}/shop", tenant="t1"), timeout=5
            )
            assert response.overall_code == OK
        assert await _health(port, "") == SERVING
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 15)
        assert code == 0
        assert process.stderr is not None
        lines = [json.loads(line) for line in process.stderr.read().splitlines() if line.strip()]
        assert any(line["message"] == "rate-limit service listening" for line in lines)
        # Startup objects are out of the collector's sight, so full collections stay short.
        frozen = [line["objects"] for line in lines if line["message"] == "startup heap frozen"]
        assert len(frozen) == 1 and frozen[0] > 10_000
        assert lines[-1]["message"] == "stopped"
        assert all(line["service"] == "apx-ratelimit" for line in lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_rule_sets_and_counters_share_the_hash_tags_of_the_contract() -> None:
    rule = Rule(
        kind="plan",
        plan="p",
        tier="free",
        isolation="shared",
        rate=Rate.of(1, 1),
        api_key_rate=Rate.of(1, 1),
        quota=Quota(10, 60),
        concurrency=1,
        credits_cost=1,
    )
    keys = request_counter_keys("ns/shop", "acme", rule, "fixed-window", 0, api_key="k")
    tags = {key[key.index("{") : key.index("}") + 1] for key in keys.values()}
    assert tags == {names.counter_tag("ns/shop", "acme")}
