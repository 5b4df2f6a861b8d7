"""The lean gRPC server (``apx.dataplane.common.grpcserver``) and its health service, against real clients.

Every server test runs on both transports (the ``transport`` fixture: ``lean``, our own framing,
and ``h2``, the library); they are expected to behave alike.

``grpcio``'s client (the C core, as any gRPC client would) checks answers,
status codes and messages, gzip, big messages, cancellation, concurrency,
server streaming and graceful stop; a raw socket checks what a client library
would hide: flow control with a tiny window, PING, and that a peer breaking
the protocol is disconnected while others keep being served.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import hpack
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import example, given, settings
from hypothesis import strategies as st

from apx.dataplane.common.grpchealth import NOT_SERVING, SERVING, HealthService
from apx.dataplane.common.grpcserver import (
    DEFAULT_TRANSPORT,
    TRANSPORTS,
    GrpcError,
    GrpcServer,
    GrpcStatus,
    Method,
)
from apx.dataplane.common.h2conn import HeaderBlockGuard
from apx.dataplane.common.hpackcache import LiteralEncoder

ECHO = "/test.Echo/Echo"
SLOW = "/test.Echo/Slow"
FAIL = "/test.Echo/Fail"
BROKEN = "/test.Echo/Broken"
COUNT = "/test.Echo/Count"


class Handlers:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.started = 0

    async def echo(self, message: bytes) -> bytes:
        return message[::-1]

    async def slow(self, message: bytes) -> bytes:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"done:" + message

    async def fail(self, message: bytes) -> bytes:
        raise GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, message.decode())

    async def broken(self, message: bytes) -> bytes:
        raise KeyError("boom")

    async def count(self, message: bytes) -> AsyncIterator[bytes]:
        for index in range(int(message)):
            yield b"%d" % index


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Each server test runs on both transports: our own framing (``lean``) and the ``h2`` library."""
    return str(request.param)


async def _serve(
    handlers: Handlers, transport: str, health: HealthService | None = None
) -> tuple[GrpcServer, int]:
    methods = {
        ECHO: Method(handlers.echo),
        SLOW: Method(handlers.slow),
        FAIL: Method(handlers.fail),
        BROKEN: Method(handlers.broken),
        COUNT: Method(handlers.count, streaming=True),
    }
    if health is not None:
        methods.update(health.methods())
    server = GrpcServer(methods, transport=transport)
    return server, await server.start("127.0.0.1", 0)


def _unary(channel: grpc.aio.Channel, path: str) -> Any:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


@pytest.mark.asyncio
async def test_calls_get_their_answers_status_codes_and_percent_encoded_messages(transport: str) -> None:
    handlers = Handlers()
    server, port = await _serve(handlers, transport)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _unary(channel, ECHO)(b"hello", timeout=5) == b"olleh"
            # Many calls at once on one connection, each with its own answer.
            payloads = [b"call-%d" % i for i in range(500)]
            answers = await asyncio.gather(*(_unary(channel, ECHO)(p, timeout=10) for p in payloads))
            assert answers == [p[::-1] for p in payloads]

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _unary(channel, FAIL)("quota % épuisé\n".encode(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == "quota % épuisé\n"

            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await _unary(channel, "/test.Echo/Nope")(b"x", timeout=5)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "/test.Echo/Nope" in str(unknown.value.details())

            with pytest.raises(grpc.aio.AioRpcError) as internal:
                await _unary(channel, BROKEN)(b"x", timeout=5)
            assert internal.value.code() == grpc.StatusCode.INTERNAL
            assert "boom" in str(internal.value.details())

            # The connection is still good after errors.
            assert await _unary(channel, ECHO)(b"again", timeout=5) == b"niaga"
        assert server.in_flight == 0
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_gzip_and_messages_bigger_than_every_default_window_go_both_ways(transport: str) -> None:
    server, port = await _serve(Handlers(), transport)
    try:
        big = bytes(range(256)) * 8192  # 2 MiB: 32 times HTTP/2's default window, 128 frames
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _unary(channel, ECHO)(big, timeout=20) == big[::-1]
            compressed = await _unary(channel, ECHO)(
                b"z" * 10_000, timeout=5, compression=grpc.Compression.Gzip
            )
            assert compressed == b"z" * 10_000
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_a_cancelled_call_cancels_its_handler(transport: str) -> None:
    handlers = Handlers()
    server, port = await _serve(handlers, transport)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = _unary(channel, SLOW)(b"x", timeout=10)
            while handlers.started == 0:
                await asyncio.sleep(0.01)
            assert server.in_flight == 1
            call.cancel()
            await asyncio.wait_for(handlers.cancelled.wait(), 5)
            assert server.in_flight == 0
            # A deadline is a cancellation too, from the client's side.
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await _unary(channel, SLOW)(b"y", timeout=0.2)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_stop_finishes_calls_in_flight_and_refuses_new_ones(transport: str) -> None:
    handlers = Handlers()
    server, port = await _serve(handlers, transport)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        in_flight = asyncio.ensure_future(_unary(channel, SLOW)(b"x", timeout=10))
        while handlers.started == 0:
            await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(server.stop(5))
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waiting for the call in flight
        handlers.release.set()
        assert await in_flight == b"done:x"
        await asyncio.wait_for(stopping, 5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _unary(channel, ECHO)(b"x", timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_server_streaming_and_the_health_service(transport: str) -> None:
    health = HealthService()
    health.set("", SERVING)
    health.set("svc", SERVING)
    server, port = await _serve(Handlers(), transport, health)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.unary_stream(COUNT, request_serializer=None, response_deserializer=None)
            assert [m async for m in stream(b"5", timeout=5)] == [b"0", b"1", b"2", b"3", b"4"]

            stub = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest
            assert (await stub.Check(check(service=""), timeout=5)).status == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.Check(check(service="nope"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

            watch = stub.Watch(check(service="svc"), timeout=10)
            seen = [(await watch.read()).status]
            health.set("svc", NOT_SERVING)
            seen.append((await watch.read()).status)
            health.enter_graceful_shutdown()
            health.set("svc", SERVING)  # frozen: ignored
            assert (await stub.Check(check(service=""), timeout=5)).status == NOT_SERVING
            assert seen == [SERVING, NOT_SERVING]
            watch.cancel()
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_keepalive_pings_of_grpcio_keep_one_connection_that_serves_every_call(transport: str) -> None:
    server, port = await _serve(Handlers(), transport)
    options = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            for index in range(8):
                assert await _unary(channel, ECHO)(b"%d" % index, timeout=5) == b"%d" % index
                await asyncio.sleep(0.15)  # pings go out between the calls
            assert server.connections == 1  # never dropped for pinging
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_cancelled_and_timed_out_calls_log_nothing(
    caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    handlers = Handlers()
    server, port = await _serve(handlers, transport)
    caplog.set_level(logging.DEBUG)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            late = [_unary(channel, SLOW)(b"x", timeout=0.05) for _ in range(50)]
            outcomes = await asyncio.gather(*late, return_exceptions=True)
            assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
            assert {o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)} == {
                grpc.StatusCode.DEADLINE_EXCEEDED
            }
            while server.in_flight:
                await asyncio.sleep(0.01)
            assert handlers.cancelled.is_set()
        await server.stop(1)
        gc.collect()  # a task whose exception nobody read complains when it is collected
        await asyncio.sleep(0)
    finally:
        await server.stop(1)
    noisy = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING or "never retrieved" in r.getMessage()
    ]
    assert noisy == []


# --- raw HTTP/2 -------------------------------------------------------------------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, kind, flags, stream) + payload


def _request_headers(path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """What a gRPC client sends to call ``path``."""
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra]  # fmt: skip


def _well_formed(headers: list[tuple[str, str]]) -> bool:
    """Pseudo-headers first, each one a request needs exactly once (h2 requires :authority too)."""
    names = [name for name, _ in headers]
    pseudo = [name for name in names if name.startswith(":")]
    return names[: len(pseudo)] == pseudo and sorted(pseudo) == [":authority", ":method", ":path", ":scheme"]


class RawClient:
    """A blocking HTTP/2 client that shows every frame, run in a thread."""

    def __init__(self, port: int, initial_window: int, path: str = ECHO) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        self.decoder = hpack.Decoder()
        self.block = hpack.Encoder().encode(_request_headers(path))
        settings = struct.pack(">HL", 0x4, initial_window)
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, stream: int, message: bytes) -> None:
        body = b"\0" + struct.pack(">L", len(message)) + message
        self.send(_frame(1, 0x4, stream, self.block) + _frame(0, 0x1, stream, body))

    def frames_until(self, stop: Any, timeout: float = 2.0) -> list[tuple[int, int, int, bytes, Any]]:
        """Read frames until ``stop(frame)`` is true or nothing comes for ``timeout`` seconds."""
        seen = []
        self.sock.settimeout(timeout)
        while True:
            while len(self.buffer) >= 9:
                high, low, kind, flags, stream = struct.unpack_from(">HBBBL", self.buffer)
                end = 9 + ((high << 8) | low)
                if len(self.buffer) < end:
                    break
                payload, self.buffer = self.buffer[9:end], self.buffer[end:]
                # Every header block goes through the decoder in order: the server's encoder indexes.
                headers = self.decoder.decode(payload) if kind == 1 else []
                item = (kind, flags, stream, payload, headers)
                seen.append(item)
                if stop(item):
                    return seen
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return seen
            if not data:
                return seen
            self.buffer += data


@pytest.mark.asyncio
async def test_answers_wait_for_the_clients_flow_control_window(transport: str) -> None:
    server, port = await _serve(Handlers(), transport)
    try:
        client = await asyncio.to_thread(RawClient, port, 10)
        await asyncio.to_thread(client.call, 1, b"0123456789" * 3)  # 30 bytes back, + 5 of prefix
        frames = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 0, 2.0)
        data = [f for f in frames if f[0] == 0]
        assert [len(f[3]) for f in data] == [10]  # exactly the window, then it waits
        more = await asyncio.to_thread(client.frames_until, lambda f: False, 0.3)
        assert not [f for f in more if f[0] in (0, 1) and f[2] == 1]
        # PING is answered while the stream waits.
        await asyncio.to_thread(client.send, _frame(6, 0, 0, b"12345678"))
        pong = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 6)
        assert pong[-1][:2] == (6, 0x1) and pong[-1][3] == b"12345678"
        await asyncio.to_thread(client.send, _frame(8, 0, 1, struct.pack(">L", 100)))
        rest = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 1 and f[1] & 0x1)
        body = data[0][3] + b"".join(f[3] for f in rest if f[0] == 0)
        assert body == b"\0" + struct.pack(">L", 30) + (b"0123456789" * 3)[::-1]
        trailers = [f for f in rest if f[0] == 1][-1][4]
        assert ("grpc-status", "0") in trailers
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_a_peer_breaking_the_protocol_is_disconnected_and_others_are_still_served(
    transport: str,
) -> None:
    server, port = await _serve(Handlers(), transport)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # read to EOF: the server closed it
        assert answer  # SETTINGS then GOAWAY
        writer.close()

        client = await asyncio.to_thread(RawClient, port, 65535)
        await asyncio.to_thread(client.send, _frame(0, 0x1, 2, b"x"))  # DATA on an even, idle stream
        frames = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 7)
        assert frames[-1][0] == 7 and struct.unpack(">L", frames[-1][3][4:8])[0] == 0x1  # PROTOCOL_ERROR

        # A frame above the advertised SETTINGS_MAX_FRAME_SIZE, even one that arrives whole.
        client = await asyncio.to_thread(RawClient, port, 65535)
        await asyncio.to_thread(client.send, _frame(0, 0, 1, b"x" * 16_385))
        frames = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 7)
        assert frames[-1][0] == 7 and struct.unpack(">L", frames[-1][3][4:8])[0] == 0x6  # FRAME_SIZE_ERROR

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _unary(channel, ECHO)(b"ok", timeout=5) == b"ko"
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_a_header_block_without_end_is_refused_before_it_grows_past_the_limit(transport: str) -> None:
    server, port = await _serve(Handlers(), transport)
    try:
        client = await asyncio.to_thread(RawClient, port, 65535)
        flood = _frame(1, 0, 1, client.block) + _frame(9, 0, 1, b"\x00" * 8192) * 4  # no END_HEADERS
        await asyncio.to_thread(client.send, flood)
        frames = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 7)
        assert frames and frames[-1][0] == 7  # GOAWAY
        assert b"header block" in frames[-1][3][8:]
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_a_lost_connection_cancels_its_calls_and_frees_their_slots(transport: str) -> None:
    handlers = Handlers()
    server = GrpcServer({SLOW: Method(handlers.slow)}, transport=transport)
    port = await server.start("127.0.0.1", 0)
    try:
        client = await asyncio.to_thread(RawClient, port, 65535, SLOW)
        for stream in (1, 3, 5):
            await asyncio.to_thread(client.call, stream, b"x")
        while handlers.started < 3:
            await asyncio.sleep(0.01)
        assert server.in_flight == 3
        client.sock.close()
        await asyncio.wait_for(handlers.cancelled.wait(), 5)
        for _ in range(100):
            if server.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert server.in_flight == 0 and server.connections == 0
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_repeated_header_blocks_decode_as_the_table_says_when_it_changes_between_them(
    transport: str,
) -> None:
    server, port = await _serve(Handlers(), transport)
    try:
        client = await asyncio.to_thread(RawClient, port, 65535)
        encoder = hpack.Encoder()
        reference = hpack.Decoder()  # what the server's decoder must agree with, block by block

        def headers(path: str, extra: str) -> list[tuple[str, str]]:
            return _request_headers(path, ("x-call", extra))

        blocks: list[bytes] = []
        blocks.append(encoder.encode(headers(ECHO, "a")))  # inserts into the table
        echo_indexed = encoder.encode(headers(ECHO, "a"))  # only references now
        blocks += [echo_indexed, echo_indexed]  # the second is served from the cache
        blocks.append(encoder.encode(headers(FAIL, "b")))  # inserts: every index above shifts
        blocks.append(echo_indexed)  # same bytes, different meaning now
        encoder.header_table_size = 64  # a size update evicts most of the table
        blocks.append(encoder.encode(headers(ECHO, "c")))
        encoder.header_table_size = 4096
        blocks.append(encoder.encode(headers(FAIL, "d")))
        blocks.append(encoder.encode(headers(ECHO, "e")))

        # A full table (room for two paths): an insertion evicts one, so the length stays the same and
        # only which entry is newest tells the change. Written by hand: ":method POST", ":scheme http"
        # from the static table; 0x44 = a literal ":path" added to the table; 0xbe = the newest entry.
        # 0x01 0x01 "x": ":authority: x", a literal not added to the table.
        def insert_path(path: str) -> bytes:
            return b"\x83\x86\x44" + bytes([len(path)]) + path.encode() + b"\x01\x01x"

        newest_path = b"\x83\x86\xbe\x01\x01x"
        blocks.append(b"\x3f\x49" + insert_path(ECHO))  # table size 104: two 52-byte path entries
        blocks += [newest_path, newest_path]
        blocks.append(insert_path(FAIL))
        blocks += [newest_path, newest_path]
        blocks.append(insert_path(ECHO))  # evicts the first ECHO: same length, new newest entry
        blocks.append(newest_path)

        expected = []
        for block in blocks:
            decoded = reference.decode(block)
            # A block whose replayed references now decode to a malformed request (a pseudo-header
            # after a regular one, one twice) must be reset, as RFC 9113 §8.1.1 asks.
            expected.append(dict(decoded).get(":path", "") if _well_formed(decoded) else "malformed")
        assert expected[4] != ECHO  # the replayed block really means something else by then
        assert expected[-8:] == [ECHO, ECHO, ECHO, FAIL, FAIL, FAIL, ECHO, ECHO]

        outcomes = []
        for index, block in enumerate(blocks):
            stream = 1 + 2 * index
            body = b"\0" + struct.pack(">L", 2) + b"hi"
            await asyncio.to_thread(client.send, _frame(1, 0x4, stream, block) + _frame(0, 0x1, stream, body))
            frames = await asyncio.to_thread(
                client.frames_until,
                lambda f, s=stream: f[2] == s and (f[0] == 3 or (f[0] == 1 and bool(f[1] & 0x1))),
            )
            last = frames[-1]
            if last[0] == 3:
                outcomes.append(f"reset:{struct.unpack('>L', last[3])[0]}")
            else:
                outcomes.append(dict(last[4])["grpc-status"])
        status_for = {ECHO: "0", FAIL: str(GrpcStatus.RESOURCE_EXHAUSTED), "malformed": "reset:1"}
        assert outcomes == [status_for.get(path, str(GrpcStatus.UNIMPLEMENTED)) for path in expected]
    finally:
        await server.stop(1)


@pytest.mark.asyncio
async def test_a_call_answered_before_its_body_ends_is_reset_and_its_late_frames_do_no_harm(
    transport: str,
) -> None:
    server, port = await _serve(Handlers(), transport)
    try:
        client = await asyncio.to_thread(RawClient, port, 65535)
        unknown = hpack.Encoder().encode(_request_headers("/test.Echo/Nope"))
        # Headers only: the server knows at once the method does not exist.
        await asyncio.to_thread(client.send, _frame(1, 0x4, 1, unknown))
        frames = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 3 and f[2] == 1)
        answer = [f for f in frames if f[2] == 1]
        assert [f[0] for f in answer] == [1, 3]  # trailers-only answer, then RST_STREAM
        assert struct.unpack(">L", answer[1][3])[0] == 0  # NO_ERROR: "stop sending, all is said"
        assert ("grpc-status", "12") in answer[0][4]
        # The client's body and trailers were already on the way: dropped, the connection lives on.
        body = b"\0" + struct.pack(">L", 1) + b"x"
        await asyncio.to_thread(client.send, _frame(0, 0, 1, body) + _frame(1, 0x5, 1, b"\x88"))
        await asyncio.to_thread(client.call, 3, b"abc")
        frames = await asyncio.to_thread(client.frames_until, lambda f: f[0] == 1 and f[2] == 3 and f[1] & 1)
        assert not [f for f in frames if f[0] == 7]  # no GOAWAY
        assert [f[3][5:] for f in frames if f[0] == 0 and f[2] == 3] == [b"cba"]
    finally:
        await server.stop(1)


# --- limits as configured -----------------------------------------------------------------------------


def test_transport_limits_come_from_apx_grpc_variables_and_flags_override_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apx.dataplane.ratelimit.main import build_parser, settings_from_args

    monkeypatch.setenv("APX_GRPC_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("APX_GRPC_IDLE_TIMEOUT", "12.5")
    args = build_parser().parse_args(["--grpc-max-concurrent-streams", "9", "--grpc-idle-timeout", "3"])
    limits = settings_from_args(args).transport
    assert (limits.max_connections, limits.max_concurrent_streams, limits.idle_timeout) == (7, 9, 3.0)
    assert limits.max_message_bytes == 4 * 1024 * 1024  # untouched: the safe default


def test_the_transport_comes_from_apx_grpc_transport_and_the_flag_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apx.dataplane.ratelimit.main import build_parser, settings_from_args

    monkeypatch.delenv("APX_GRPC_TRANSPORT", raising=False)
    assert settings_from_args(build_parser().parse_args([])).grpc_transport == DEFAULT_TRANSPORT
    monkeypatch.setenv("APX_GRPC_TRANSPORT", "lean")
    assert settings_from_args(build_parser().parse_args([])).grpc_transport == "lean"
    args = build_parser().parse_args(["--grpc-transport", "h2"])
    assert settings_from_args(args).grpc_transport == "h2"


def test_an_unknown_transport_stops_the_service_with_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from apx.dataplane.ratelimit.main import main

    monkeypatch.setenv("APX_GRPC_TRANSPORT", "quic")
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
    assert "APX_GRPC_TRANSPORT" in capsys.readouterr().err
    with pytest.raises(ValueError, match="transport must be one of"):
        GrpcServer({}, transport="quic")


@pytest.mark.parametrize(
    "argv",
    [
        ["--grpc-max-message-bytes", "0"],
        ["--grpc-connection-buffer-bytes", "1000"],  # less than one whole message
        ["--grpc-handshake-timeout", "-1"],
    ],
)
def test_limits_out_of_range_stop_the_service_with_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from apx.dataplane.ratelimit.main import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "gRPC transport limits" in capsys.readouterr().err


# --- the header-block guard and the HPACK caches, in isolation -------------------------------------------

_FRAMES = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x4, 0x5, 0x6, 0x9]), st.sampled_from([0, 0x4]), st.binary(max_size=40)
    ),
    max_size=30,
)


_OPEN, _CONT, _END = (0x1, 0, b"ab"), (0x9, 0, b""), (0x9, 0x4, b"")


@settings(max_examples=200, deadline=None)
@given(frames=_FRAMES, cuts=st.lists(st.integers(1, 2000), max_size=12))
@example(frames=[_OPEN, _CONT, _CONT, _END], cuts=[30])  # exactly the frame limit: allowed
@example(frames=[_OPEN, _CONT, _CONT, _CONT, _END], cuts=[30, 40])  # one over
@example(frames=[(0x1, 0, b"x" * 60), (0x9, 0x4, b"y" * 40)], cuts=[])  # exactly the byte limit
@example(frames=[(0x1, 0, b"x" * 60), (0x9, 0x4, b"y" * 41)], cuts=[33, 34, 35])  # one byte over
def test_the_header_block_guard_judges_a_stream_the_same_however_it_is_cut(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"".join(
        _frame(kind, flags, 1, p) for kind, flags, p in frames
    )
    whole = HeaderBlockGuard(max_bytes=100, max_frames=3)
    expected = whole.feed(data)
    pieces = HeaderBlockGuard(max_bytes=100, max_frames=3)
    verdict = None
    start = 0
    for cut in [*sorted({c for c in cuts if c < len(data)}), len(data)]:
        verdict = pieces.feed(data[start:cut])
        start = cut
        if verdict is not None:
            break
    assert verdict == expected
    # Walked frame by frame: the verdict is right, not only consistent.
    in_block, block, continuations, reason = False, 0, 0, None
    for kind, flags, payload in frames:
        if kind in (0x1, 0x5):
            in_block, block, continuations = True, len(payload), 0
        elif kind == 0x9 and in_block:
            block += len(payload)
            continuations += 1
            if continuations > 3:
                reason = "frames"
                break
        else:
            continue
        if block > 100:
            reason = "bytes"
            break
        in_block = not flags & 0x4
    assert (expected is None) == (reason is None)


def test_the_literal_encoder_signals_a_smaller_table_and_stays_decodable() -> None:
    encoder = LiteralEncoder()
    decoder = hpack.Decoder()
    headers = ((b":status", b"200"), (b"content-type", b"application/grpc"))
    first = encoder.encode(headers)
    assert encoder.encode(headers) is first  # encoded once
    encoder.header_table_size = 0  # the peer's SETTINGS_HEADER_TABLE_SIZE went to 0
    resized = encoder.encode(headers)
    assert resized != first and resized.endswith(first)  # a size update in front, then the same fields
    for block in (first, resized, encoder.encode(headers)):
        assert [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)] == list(headers)
    assert decoder.header_table_size == 0


class _RecordingTransport:
    """Stands in for a socket transport: records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


@pytest.mark.asyncio
async def test_lean_answers_of_one_loop_turn_leave_in_one_write_with_the_general_paths_bytes() -> None:
    from apx.dataplane.common.grpcconn import CallStream, ConnectionBase
    from apx.dataplane.common.grpclean import LeanConnection

    def connection() -> tuple[LeanConnection, _RecordingTransport]:
        transport = _RecordingTransport()
        conn = LeanConnection(GrpcServer({}))
        conn.transport = transport  # type: ignore[assignment]
        return conn, transport

    def stream(conn: LeanConnection, stream_id: int) -> CallStream:
        call = CallStream(stream_id, 65_535, 65_535)
        call.remote_done = True
        conn.streams[stream_id] = call
        return call

    fast, fast_out = connection()
    general, general_out = connection()
    for stream_id in (1, 3, 5):
        fast._answer(stream(fast, stream_id), b"answer %d" % stream_id)
        ConnectionBase._answer(general, stream(general, stream_id), b"answer %d" % stream_id)
    assert fast_out.writes == general_out.writes == []  # queued until the turn's flush
    await asyncio.sleep(0)
    # One write each, the same frames as the general path in the same order, and every stream done.
    assert len(fast_out.writes) == 1 and fast_out.writes == general_out.writes
    assert not fast.streams and fast.send_window == general.send_window
