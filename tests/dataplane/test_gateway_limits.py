"""The gateway's listener cuts off slow and oversized clients and keeps answering legitimate ones.

The real gateway application (``Gateway.application()``, real Redis) behind
``limits.start_listener`` as ``main`` starts it, attacked with raw sockets:
slow headers, a slow body, idle connections, a huge ``Content-Length`` with
a tiny body, an oversized header, more connections than the cap. Each attack
is cut off within its limit (plus scheduling slack) while a legitimate
client, during the attack, is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from apx.dataplane.gateway.app import Gateway
from apx.dataplane.gateway.config import GatewayConfig, parse_config
from apx.dataplane.gateway.limits import HttpLimits, Listener, start_listener
from apx.dataplane.gateway.metrics import GatewayMetrics
from apx.dataplane.gateway.publisher import Publisher

SLACK = 1.5  # timers fire on a shared 2-core machine: allow this much lateness
ATTACKERS = 40


@dataclass
class Served:
    listener: Listener
    metrics: GatewayMetrics
    port: int

    def refused(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "apx_gateway_connections_refused_total", {"reason": reason}
        )
        return float(value or 0.0)


@contextlib.asynccontextmanager
async def _gateway(redis_url: str, **limits: Any) -> AsyncIterator[Served]:
    config = GatewayConfig(redis_url=redis_url, pubsub_project="apx-limits", port=0, metrics_port=0)
    redis_client = aioredis.Redis.from_url(redis_url)
    session = aiohttp.ClientSession()
    publisher = Publisher("apx-limits")
    metrics = GatewayMetrics()
    gateway = Gateway(config, redis_client, publisher, session, metrics=metrics)
    listener = await start_listener(
        gateway.application(),
        "127.0.0.1",
        0,
        HttpLimits(**{"max_body_bytes": 1024, **limits}),
        refusals=metrics.connections_refused,
        shutdown_timeout=1.0,
    )
    try:
        yield Served(listener, metrics, listener.port)
    finally:
        await listener.cleanup()
        await publisher.close()
        await gateway.close()
        await session.close()
        await redis_client.aclose()


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until the server closes; how long it took and what it sent (fails past ``limit``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = b""
    async with asyncio.timeout(limit):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return loop.time() - started, received


async def _legitimate_get(port: int) -> int:
    """A normal client: GET /healthz on a fresh connection, answered within two seconds."""
    async with aiohttp.ClientSession() as client, asyncio.timeout(2.0):
        response = await client.get(f"http://127.0.0.1:{port}/healthz")
        await response.read()
        return response.status


async def _under_attack(
    port: int, attack: Callable[[], Awaitable[float]], count: int = ATTACKERS
) -> list[float]:
    """Run ``count`` attacking connections; while they hold on, a legitimate client must be answered."""
    attackers = [asyncio.create_task(attack()) for _ in range(count)]
    await asyncio.sleep(0.3)
    assert await _legitimate_get(port) == 200
    return list(await asyncio.gather(*attackers))


@pytest.fixture(autouse=True)
def no_lost_task_exceptions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Cut-off connections leave no "exception was never retrieved" behind."""
    yield
    gc.collect()
    lost = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert lost == []


@pytest.mark.asyncio
async def test_slow_headers_are_cut_off_at_the_header_timeout(redis_url: str) -> None:
    async with _gateway(redis_url, header_timeout=1.0, idle_timeout=30.0) as served:

        async def slowloris() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")

            async def drip() -> None:
                for i in range(100):
                    await asyncio.sleep(0.2)
                    writer.write(b"X-Drip-%d: x\r\n" % i)

            dripping = asyncio.create_task(drip())
            try:
                took, received = await _closed_after(reader, 1.0 + SLACK + 1.0)
            finally:
                dripping.cancel()
                writer.close()
            assert received == b""  # never answered: the head never completed
            return took

        durations = await _under_attack(served.port, slowloris)
        assert max(durations) < 1.0 + SLACK
        assert served.refused("header_timeout") == ATTACKERS


@pytest.mark.asyncio
async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(redis_url: str) -> None:
    async with _gateway(redis_url, header_timeout=1.0, idle_timeout=30.0) as served:

        async def silent() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            try:
                took, _ = await _closed_after(reader, 1.0 + SLACK + 1.0)
            finally:
                writer.close()
            return took

        durations = await _under_attack(served.port, silent)
        assert min(durations) >= 0.8 and max(durations) < 1.0 + SLACK


@pytest.mark.asyncio
async def test_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout(redis_url: str) -> None:
    async with _gateway(redis_url, header_timeout=5.0, idle_timeout=1.0) as served:

        async def idle_after_one_request() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            try:
                took, _ = await _closed_after(reader, 5.0)
            finally:
                writer.close()
            return took

        durations = await _under_attack(served.port, idle_after_one_request)
        # Closed by the idle timer (1 s), well before the 5 s header timeout.
        assert min(durations) >= 0.8 and max(durations) < 1.0 + SLACK


@pytest.mark.asyncio
async def test_a_slow_body_is_cut_off_at_the_body_timeout(redis_url: str) -> None:
    # A long lingering time: without the body timer aiohttp would keep draining the body for 30 s.
    async with _gateway(redis_url, body_timeout=1.0, lingering_seconds=30.0, max_body_bytes=10_000) as served:

        async def slow_body() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"POST /v1/jobs HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\nab")

            async def drip() -> None:
                for _ in range(200):
                    await asyncio.sleep(0.1)
                    writer.write(b"x")

            dripping = asyncio.create_task(drip())
            try:
                took, _ = await _closed_after(reader, 1.0 + SLACK + 1.0)
            finally:
                dripping.cancel()
                writer.close()
            return took

        durations = await _under_attack(served.port, slow_body)
        assert max(durations) < 1.0 + SLACK
        assert served.refused("body_timeout") == ATTACKERS


@pytest.mark.asyncio
async def test_a_huge_content_length_gets_413_before_the_body_and_the_connection_closes(
    redis_url: str,
) -> None:
    async with _gateway(redis_url, body_timeout=30.0, lingering_seconds=1.0) as served:

        async def huge_announced_body() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"POST /v1/jobs HTTP/1.1\r\nHost: gw\r\nContent-Length: 10000000000\r\n\r\ntiny")
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0)
                assert head.startswith(b"HTTP/1.1 413"), head
                took, _ = await _closed_after(reader, 1.0 + SLACK + 1.0)
            finally:
                writer.close()
            return took

        durations = await _under_attack(served.port, huge_announced_body)
        assert max(durations) < 1.0 + SLACK  # lingering for the unread body is bounded too
        assert served.refused("body_too_large") == ATTACKERS


@pytest.mark.asyncio
async def test_an_oversized_header_is_refused_and_closed(redis_url: str) -> None:
    async with _gateway(redis_url, max_field_bytes=4096) as served:

        async def oversized_header() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
            try:
                took, received = await _closed_after(reader, 2.0)
            finally:
                writer.close()
            status = received.split(b" ", 2)[1] if received else b""
            assert status in (b"400", b"431"), received[:80]
            return took

        durations = await _under_attack(served.port, oversized_header, count=10)
        assert max(durations) < SLACK
        # Counted, not logged as a server error with a traceback (a flood must not flood the logs).
        assert served.refused("malformed_request") == 10


@pytest.mark.asyncio
async def test_connections_above_the_cap_get_503_and_the_cap_frees_when_they_close(redis_url: str) -> None:
    async with _gateway(redis_url, max_connections=5, header_timeout=30.0) as served:
        held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(5)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        _, received = await _closed_after(reader, 2.0)
        writer.close()
        assert received.startswith(b"HTTP/1.1 503")
        assert served.refused("connection_limit") == 1
        for _, held_writer in held:
            held_writer.close()
        await asyncio.sleep(0.2)
        assert await _legitimate_get(served.port) == 200


def test_limits_are_configurable_by_flags_and_environment_with_safe_defaults() -> None:
    defaults = parse_config([], {"APX_REDIS_URL": "redis://127.0.0.1:6379/0"}).limits()
    assert defaults.header_timeout == 10.0 and defaults.body_timeout == 30.0
    assert defaults.idle_timeout == 60.0 and defaults.max_connections == 10_000
    assert defaults.max_field_bytes == 16384 and defaults.max_headers == 100
    env = {
        "APX_REDIS_URL": "redis://127.0.0.1:6379/0",
        "APX_HTTP_HEADER_TIMEOUT_SECONDS": "3",
        "APX_HTTP_BODY_TIMEOUT_SECONDS": "4",
        "APX_HTTP_IDLE_TIMEOUT_SECONDS": "5",
        "APX_HTTP_MAX_HEADER_BYTES": "4096",
        "APX_HTTP_MAX_HEADERS": "20",
        "APX_HTTP_MAX_CONNECTIONS": "100",
    }
    limits = parse_config(["--max-connections", "50"], env).limits()
    assert (limits.header_timeout, limits.body_timeout, limits.idle_timeout) == (3.0, 4.0, 5.0)
    assert (limits.max_field_bytes, limits.max_headers, limits.max_connections) == (4096, 20, 50)
    with pytest.raises(SystemExit):
        parse_config(["--header-timeout", "0"], env)
