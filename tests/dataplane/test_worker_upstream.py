"""The worker's HTTP/1.1 client against a raw socket server: framing, keep-alive, limits, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from apx.dataplane.worker.upstream import (
    SWEEP_SECONDS,
    ResponseTooLarge,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
)

Answer = Callable[[bytes], bytes | None]  # request head+body -> raw response (None: close without answering)


class RawServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                response = self.answer(request)
                if response is None:
                    break
                writer.write(response)
                await writer.drain()
                if b"connection: close" in response.lower() or response.startswith(b"HTTP/1.0"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/base"


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[Answer], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Answer) -> RawServer:
        server = RawServer(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.server is not None:
            server.server.close()


async def _started(server: RawServer) -> RawServer:
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    return server


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


@pytest.mark.asyncio
async def test_content_length_chunked_and_close_framing_with_keep_alive(
    serve: Callable[[Answer], RawServer],
) -> None:
    answers = iter(
        [
            _ok(b"first"),
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            b'4\r\n{"a"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n',
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
        ]
    )
    server = await _started(serve(lambda request: next(answers)))
    client = UpstreamClient(server.url, max_connections=4, max_body=1000)
    first = await client.request("POST", "/base/a?x=1", {"x-request-id": "r1"}, b"payload", 5)
    second = await client.request("POST", "/base/b", {}, b"", 5)
    third = await client.request("DELETE", "/base/c", {}, b"", 5)
    fourth = await client.request("GET", "/base/d", {}, b"", 5)
    assert (first.status, first.content_type, first.body) == (200, "text/plain", b"first")
    assert (second.status, second.body) == (201, b'{"a":1}')
    assert (third.status, third.body) == (204, b"")
    assert fourth.body == b"until close"
    assert server.connections == 1  # the first three shared one keep-alive connection
    assert server.requests[0].startswith(b"POST /base/a?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"x-request-id: r1\r\n" in server.requests[0] and server.requests[0].endswith(b"\r\n\r\npayload")
    await client.close()


@pytest.mark.asyncio
async def test_limits_timeouts_and_refused_connections(serve: Callable[[Answer], RawServer]) -> None:
    server = await _started(serve(lambda request: _ok(b"x" * 100)))
    small = UpstreamClient(server.url, max_connections=2, max_body=10)
    with pytest.raises(ResponseTooLarge):
        await small.request("GET", "/", {}, b"", 5)
    with pytest.raises(ValueError):
        await small.request("GET", "/", {"x-evil": "a\r\nInjected: 1"}, b"", 5)

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(5)
        writer.close()

    silent = await asyncio.start_server(never, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    slow = UpstreamClient(f"http://127.0.0.1:{port}", max_connections=1, max_body=10)
    with pytest.raises(UpstreamTimeout):
        await slow.request("GET", "/", {}, b"", 0.2)
    silent.close()
    refused = UpstreamClient(f"http://127.0.0.1:{port}", max_connections=1, max_body=10)
    with pytest.raises(UpstreamError):
        await refused.request("GET", "/", {}, b"", 2)


@pytest.mark.asyncio
async def test_an_idle_connection_the_server_closed_is_retried_once_on_a_new_one(
    serve: Callable[[Answer], RawServer],
) -> None:
    calls = {"n": 0}

    def answer(request: bytes) -> bytes | None:
        calls["n"] += 1
        # The second request arrives on the kept-alive connection, which the server then drops unanswered.
        return None if calls["n"] == 2 else _ok(b"ok")

    server = await _started(serve(answer))
    client = UpstreamClient(server.url, max_connections=1, max_body=100)
    assert (await client.request("GET", "/", {}, b"", 5)).body == b"ok"
    await asyncio.sleep(0.05)
    assert (await client.request("GET", "/", {}, b"", 5)).body == b"ok"
    assert server.connections == 2 and calls["n"] == 3
    await client.close()


@pytest.mark.asyncio
async def test_a_timeout_covers_the_wait_for_a_connection_and_gives_the_slot_back() -> None:
    answered = asyncio.Event()

    async def first_hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The first connection never answers; later ones answer every request.
        await reader.readuntil(b"\r\n\r\n")
        if not answered.is_set():
            answered.set()
            await asyncio.sleep(5)
        else:
            writer.write(_ok(b"late"))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(first_hangs, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(f"http://127.0.0.1:{port}", max_connections=1, max_body=100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    hanging = asyncio.ensure_future(client.request("GET", "/", {}, b"", 0.4))
    await answered.wait()
    with pytest.raises(UpstreamTimeout, match="no free connection"):
        await client.request("GET", "/", {}, b"", 0.1)
    assert loop.time() - started < 0.35  # it gave up waiting for the slot, not after the first call
    with pytest.raises(UpstreamTimeout, match=r"no complete response within 0\.4 s"):
        await hanging
    # Late by at most one sweep (plus scheduling), never early.
    assert 0.4 <= loop.time() - started < 0.4 + SWEEP_SECONDS + 0.2
    # The slot came back: the next call gets a connection and its answer.
    assert (await client.request("GET", "/", {}, b"", 2)).body == b"late"
    await client.close()
    server.close()
