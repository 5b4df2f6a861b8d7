"""The worker's upstream client against a hostile upstream: bounded body, bounded head, bounded time.

A raw asyncio server plays the upstream: a huge announced body, an endless
close-delimited body, an endless chunked body, endless headers, endless
``100 Continue`` answers, endless trailers, a slow drip. Every call fails
quickly with the size error (or the timeout for the drip) and the client
never takes in more than ``max_body + max_head`` bytes. End to end, an
oversized answer fails the request for good with 502 and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from apx.dataplane.common.requeststate import RequestState, request_key
from apx.dataplane.worker.upstream import (
    ResponseHeadTooLarge,
    ResponseTooLarge,
    UpstreamClient,
    UpstreamTimeout,
)
from e2e.services import Service
from tests.dataplane.conftest import Jwks, apx_docs, deploy, running_gateway, running_worker, wait_for

MAX_BODY = 64 * 1024
MAX_HEAD = 8 * 1024
Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


class Hostile:
    """An upstream that reads one request head and then runs ``behaviour``; counts what it sent."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sent = 0
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await self.behaviour(writer)
        writer.close()

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():
            raise ConnectionResetError("the test is over")
        writer.write(data)
        self.sent += len(data)
        await writer.drain()


@contextlib.asynccontextmanager
async def _hostile(make: Callable[[Hostile], Behaviour]) -> AsyncIterator[Hostile]:
    hostile = Hostile(lambda writer: asyncio.sleep(0))
    hostile.behaviour = make(hostile)
    server = await asyncio.start_server(hostile.handle, "127.0.0.1", 0)
    hostile.port = server.sockets[0].getsockname()[1]
    try:
        yield hostile
    finally:
        server.close()
        for writer in hostile.writers:
            writer.close()
        await asyncio.sleep(0.1)  # the handlers see their writers closed and end


async def _call(hostile: Hostile, timeout: float = 5.0) -> None:
    client = UpstreamClient(
        f"http://127.0.0.1:{hostile.port}", max_connections=4, max_body=MAX_BODY, max_head=MAX_HEAD
    )
    try:
        await client.request("GET", "/", {}, b"", timeout)
    finally:
        await client.close()


def _endless(hostile: Hostile, first: bytes, repeated: bytes) -> Behaviour:
    async def behaviour(writer: asyncio.StreamWriter) -> None:
        await hostile.write(writer, first)
        for _ in range(1_000_000):
            await hostile.write(writer, repeated)

    return behaviour


# A hostile upstream may push this much past the bound before the client's socket closes
# (kernel buffers on both sides); without a bound it would be the whole megabytes-long stream.
SENT_BOUND = MAX_BODY + MAX_HEAD + 8 * 1024 * 1024


@pytest.fixture(autouse=True)
def no_lost_task_exceptions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Failed and timed-out calls leave no "exception was never retrieved" behind."""
    yield
    gc.collect()
    lost = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert lost == []


@pytest.mark.asyncio
async def test_a_huge_announced_body_fails_at_once_without_reading_it() -> None:
    async with _hostile(
        lambda h: _endless(h, b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n", b"x" * 65536)
    ) as hostile:
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge) as refused:
            await _call(hostile)
        assert time.monotonic() - started < 1.0
        assert refused.value.part == "body"


@pytest.mark.parametrize(
    ("head", "chunk"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"y" * 65536),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"z" * 65536 + b"\r\n"),
    ],
    ids=["close-delimited", "chunked"],
)
@pytest.mark.asyncio
async def test_an_endless_body_fails_once_it_passes_the_body_bound(head: bytes, chunk: bytes) -> None:
    async with _hostile(lambda h: _endless(h, head, chunk)) as hostile:
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge):
            await _call(hostile)
        assert time.monotonic() - started < 2.0
        assert hostile.sent < SENT_BOUND


@pytest.mark.parametrize(
    ("first", "repeated"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"X-Endless: " + b"h" * 100 + b"\r\n"),
        (b"", b"HTTP/1.1 100 Continue\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n",
            b"X-Trailer: " + b"t" * 100 + b"\r\n",
        ),
    ],
    ids=["endless-headers", "endless-100-continue", "endless-trailers"],
)
@pytest.mark.asyncio
async def test_an_endless_head_fails_once_it_passes_the_head_bound(first: bytes, repeated: bytes) -> None:
    async with _hostile(lambda h: _endless(h, first, repeated)) as hostile:
        started = time.monotonic()
        with pytest.raises(ResponseHeadTooLarge) as refused:
            await _call(hostile)
        assert time.monotonic() - started < 2.0
        assert refused.value.part == "head"
        assert hostile.sent < SENT_BOUND


@pytest.mark.asyncio
async def test_a_slow_drip_fails_at_the_call_timeout() -> None:
    def drip(hostile: Hostile) -> Behaviour:
        async def behaviour(writer: asyncio.StreamWriter) -> None:
            await hostile.write(writer, b"HTTP/1.1 200 OK\r\n")
            for _ in range(10_000):
                await asyncio.sleep(0.05)
                await hostile.write(writer, b"X")

        return behaviour

    async with _hostile(drip) as hostile:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await _call(hostile, timeout=1.0)
        assert 0.9 <= time.monotonic() - started < 2.0


@pytest.mark.asyncio
async def test_a_head_within_bounds_still_works() -> None:
    async def fine(writer: asyncio.StreamWriter) -> None:
        body = b"ok" * 100
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(50))
        writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async with _hostile(lambda _: fine) as hostile:
        client = UpstreamClient(
            f"http://127.0.0.1:{hostile.port}", max_connections=1, max_body=MAX_BODY, max_head=MAX_HEAD
        )
        try:
            response = await client.request("GET", "/", {}, b"", 2.0)
        finally:
            await client.close()
        assert response.status == 200 and response.body == b"ok" * 100


@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_an_oversized_answer_fails_the_request_with_502_for_good_and_is_counted(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    huge = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 50000000\r\n\r\n"
    async with _hostile(lambda h: _endless(h, huge, b"x" * 65536)) as hostile:
        docs = apx_docs(namespace, jwks, f"http://127.0.0.1:{hostile.port}", regions=("europe-west1",))
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        async with running_gateway(redis_url, project) as gw:
            request_id = (await gw.submit(token=jwks.token("acme"))).headers["x-request-id"]

            async def state() -> RequestState | None:
                return RequestState.decode(
                    request_id, await gw.gateway.redis.hgetall(request_key(request_id))
                )

            async def terminal() -> bool:
                found = await state()
                return found is not None and found.terminal

            async with running_worker(redis_url, project, compiled) as worker:
                await wait_for(terminal, timeout=30)
                counted = worker.metrics.registry.get_sample_value(
                    "apx_worker_upstream_responses_too_large_total", {"part": "body"}
                )
            final = await state()
    assert final is not None and final.state == "failed" and final.code == 502
    assert not final.dead_lettered and final.attempts == 1
    assert counted == 1
