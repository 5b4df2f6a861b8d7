"""A lean gRPC server: unary and server-streaming calls over cleartext HTTP/2, on asyncio, two transports.

Used by the rate-limit service (``ratelimit.server.start_service``) for
``ShouldRateLimit`` and ``grpc.health.v1.Health``, and by the benchmark's
transport floor. Why not ``grpc.aio``: its floor is 120-230 µs of CPU per
unary call on these machines and every call hops between the C core's
completion queue and the loop; Envoy's rate-limit filter sends small unary
calls on a few long-lived connections and wants the answer within a
millisecond or two. Two transports serve the same API and the same limits
(``transport=``, ``--grpc-transport``): ``h2``, the library (framing, HPACK,
stream states, flow control, RFC 9113 §8 validation), in ``_Connection``
below with ``h2conn``; and ``lean``, our own framing hardened to pass the
same hostile-peer suite (``grpclean.LeanConnection``), which the latency
target needs. What is ours in both is the gRPC layer and the limits a
hostile peer needs (``grpclimits.TransportLimits``; ``TRANSPORT.md`` has the
figures of both and why both exist).

Shape of the fast path (both transports): the bytes of one read are parsed
in one go (at most ``read_chunk_bytes`` per loop turn and connection, the
rest on the next turns, so a connection that floods cannot hold the loop);
a call whose request is complete is handed to its handler at once;
everything answered in one loop turn leaves in one ``transport.write`` per
connection.

gRPC as served: one length-prefixed request message, ``identity`` or
``gzip`` (inflated with its output capped at the message limit);
``grpc-status`` and percent-encoded ``grpc-message`` in trailers, or
trailers-only for errors. Unknown methods get UNIMPLEMENTED; a handler's
``GrpcError`` its code; any other exception INTERNAL (logged). Deadlines
(``grpc-timeout``) are the client's to keep: at its deadline it resets the
stream, which cancels the handler (silently). ``stop`` sends GOAWAY, lets
calls in flight finish for ``grace`` seconds, then closes.

A peer that breaks the protocol or a limit loses its stream (REFUSED_STREAM,
PROTOCOL_ERROR, RESOURCE_EXHAUSTED) or its connection (GOAWAY with the
error), never the process; each such event is counted by reason
(``on_rejected``, the ``apx_ratelimit_grpc_rejected_total`` metric) and
logged at DEBUG only, so a flood cannot flood the logs too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from hyperframe.frame import GoAwayFrame

from .grpclean import LeanConnection
from .grpclimits import (
    REJECT_CONNECTIONS,
    REJECT_HANDSHAKE,
    REJECT_HEADER_BLOCK,
    REJECT_IDLE,
    REJECT_INTERNAL,
    REJECT_MALFORMED,
    REJECT_MESSAGE_SIZE,
    REJECT_PROTOCOL,
    REJECT_REASONS,
    REJECT_REFUSED_STREAM,
    REJECT_RESET_RATE,
    ResetBudget,
    TransportLimits,
)
from .grpcmessage import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    GrpcError,
    GrpcStatus,
    decode_request,
    frame_message,
    status_trailers,
)
from .h2conn import HeaderBlockGuard, StreamRefused, new_connection

__all__ = [
    "REJECT_REASONS",
    "TRANSPORTS",
    "GrpcError",
    "GrpcServer",
    "GrpcStatus",
    "Method",
    "TransportLimits",
    "parse_listen",
]

# The two HTTP/2 transports a server can run on (``--grpc-transport``): our own framing (``grpclean``,
# for the latency target) and the ``h2`` library (``_Connection`` below). TRANSPORT.md says why both.
TRANSPORT_LEAN = "lean"
TRANSPORT_H2 = "h2"
TRANSPORTS = (TRANSPORT_LEAN, TRANSPORT_H2)
DEFAULT_TRANSPORT = TRANSPORT_LEAN

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 65_535


# Why reading from a connection is paused (several may hold at once).
_PAUSED_FOR_WRITES = 1
_PAUSED_FOR_BACKLOG = 2

Headers = Iterable[tuple[bytes, bytes]]
HeaderList = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Method:
    """A method's handler and shape."""

    handler: Callable[[bytes], Any]
    streaming: bool = False


class _Stream:
    __slots__ = (
        "body",
        "closed",
        "encoding",
        "method",
        "pending",
        "received",
        "remote_done",
        "running",
        "stream_id",
        "task",
        "trailers",
        "unacked",
    )

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.method: Method | None = None
        self.encoding = b"identity"
        self.body: list[bytes] = []
        self.received = 0  # request bytes, padding excluded
        self.unacked = 0  # flow-controlled bytes not yet handed back to the peer
        self.task: asyncio.Future[Any] | None = None
        self.running = False  # handed to its handler, not answered yet
        self.closed = False  # answered, reset or refused: nothing more to send
        self.remote_done = False  # END_STREAM received
        self.pending: list[bytes] = []  # answer bytes waiting for the peer's flow-control window
        self.trailers: HeaderList | None = None  # sent once ``pending`` has left


if sys.version_info >= (3, 12):

    def _start(coroutine: Any) -> asyncio.Future[Any]:
        # The handler's first step runs at once, inside its task (what eager tasks do): a handler
        # that needs no I/O is done before this returns, and one that waits for Redis has queued
        # its command before this loop turn ends.
        return asyncio.Task(coroutine, eager_start=True)

else:
    _start = asyncio.ensure_future


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: bytes into ``h2``, events to calls, answers out in one write per loop turn."""

    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.h2 = new_connection(self.limits)
        self.guard = HeaderBlockGuard(self.limits.max_header_list_bytes, self.limits.max_continuation_frames)
        self.streams: dict[int, _Stream] = {}
        self.blocked: dict[int, _Stream] = {}  # streams whose answer waits for window, oldest first
        self.backlog = bytearray()
        self.paused = 0
        self.flush_scheduled = False
        self.opened_at = self.loop.time()
        self.idle_since = self.opened_at
        self.handshaken = False
        self.running = 0
        self.stalled_since: float | None = None  # since when every running call waits for the peer's window
        self.resets = ResetBudget(self.limits.max_resets_per_second, self.opened_at)
        self.going_away = False
        self.closed = False

    # --- transport callbacks ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport; uvloop's is no subclass
        if not self.server._admit():
            # Accepted only to be closed: the descriptor is released at once and nothing is read.
            self.closed = True
            transport.close()
            return
        self.server._connections.add(self)
        self.h2.initiate_connection()
        # The connection window starts at 64 KiB whatever SETTINGS say; open it to the buffer bound once.
        if self.limits.connection_window > DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(self.limits.connection_window - DEFAULT_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.backlog or len(data) > self.limits.read_chunk_bytes:
            self.backlog += data
            if not self.paused & _PAUSED_FOR_BACKLOG:
                self._pause(_PAUSED_FOR_BACKLOG)
                self.loop.call_soon(self._drain_backlog)
            return
        self._receive(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        for stream in self.streams.values():
            stream.closed = True
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self.server._streams_ended(len(self.streams))
        self.streams.clear()
        self.blocked.clear()
        self.backlog.clear()

    def pause_writing(self) -> None:
        # A peer that does not read its answers gets no more of its requests read until it does.
        self._pause(_PAUSED_FOR_WRITES)

    def resume_writing(self) -> None:
        self._resume(_PAUSED_FOR_WRITES)

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- bytes in ----------------------------------------------------------------------------------------

    def _drain_backlog(self) -> None:
        if self.closed:
            self.backlog.clear()
            return
        size = self.limits.read_chunk_bytes
        chunk = bytes(self.backlog[:size])
        del self.backlog[:size]
        self._receive(chunk)
        if self.backlog and not self.closed:
            self.loop.call_soon(self._drain_backlog)  # after the other connections' turn
        else:
            self._resume(_PAUSED_FOR_BACKLOG)

    def _receive(self, data: bytes) -> None:
        try:
            flood = self.guard.feed(data)
            if flood is not None:
                self._abort(ErrorCodes.ENHANCE_YOUR_CALM, flood, REJECT_HEADER_BLOCK)
                return
            try:
                events = self.h2.receive_data(data)
            except H2Error as exc:
                # h2 has queued the GOAWAY with the error code; send it and close.
                self.server._rejected(REJECT_PROTOCOL)
                log.debug("closing an HTTP/2 connection: %s", exc)
                self._close_now()
                return
            for event in events:
                self._event(event)
                if self.closed:
                    return
        except Exception as exc:
            self._internal_error(exc)
            return
        self._schedule_flush()

    def _event(self, event: Any) -> None:
        kind = type(event)
        if kind is RequestReceived:
            self._request(event.stream_id, event.headers)
        elif kind is DataReceived:
            self._data(event.stream_id, event.data, event.flow_controlled_length)
        elif kind is StreamEnded:
            self._request_complete(event.stream_id)
        elif kind is StreamReset:
            self._peer_reset(event.stream_id)
        elif kind is WindowUpdated:
            if self.blocked:
                self._release_blocked()
        elif kind is RemoteSettingsChanged:
            self.handshaken = True
            if self.blocked:
                self._release_blocked()
        elif kind is StreamRefused:
            malformed = event.error_code == ErrorCodes.PROTOCOL_ERROR
            self.server._rejected(REJECT_MALFORMED if malformed else REJECT_REFUSED_STREAM)
            stream = self.streams.get(event.stream_id)
            if stream is not None:  # malformed trailers of a request already under way
                self._drop(stream)
            self._spend_reset()
        elif kind is ConnectionTerminated:
            # The peer's GOAWAY: h2 sends nothing more on this connection, so what is running is moot.
            self._close_now()
        # PING (answered by h2), SETTINGS ACK, PRIORITY, unknown frames: nothing to do.

    def _request(self, stream_id: int, headers: Headers) -> None:
        if self.going_away:
            # Opened after our GOAWAY crossed it: the client retries elsewhere.
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        path = b""
        encoding = b"identity"
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"grpc-encoding":
                encoding = value
        stream = _Stream(stream_id)
        self.streams[stream_id] = stream
        self.server._stream_started()
        method = self.server.methods.get(path)
        if method is None:
            self._finish(stream, GrpcStatus.UNIMPLEMENTED, f"unknown method {path.decode('latin-1')}")
            return
        stream.method = method
        stream.encoding = encoding

    def _data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            self._acknowledge(stream_id, flow_controlled)  # answered already: the bytes are dropped
            return
        stream.unacked += flow_controlled
        stream.received += len(data)
        if stream.received > self.limits.stream_window:
            # Unreachable within flow control (the stream window is the limit); kept as the invariant.
            self.server._rejected(REJECT_MESSAGE_SIZE)
            self._finish(stream, GrpcStatus.RESOURCE_EXHAUSTED, "request message too large")
            return
        if data:
            stream.body.append(data)

    def _request_complete(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            return
        stream.remote_done = True
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        stream.body = []
        # The message is consumed: only now does the peer get the window back.
        self._acknowledge(stream_id, stream.unacked)
        stream.unacked = 0
        method = stream.method
        if method is None:
            return
        try:
            message = decode_request(body, stream.encoding, self.limits.max_message_bytes)
        except GrpcError as exc:
            if exc.code == GrpcStatus.RESOURCE_EXHAUSTED:
                self.server._rejected(REJECT_MESSAGE_SIZE)
            self._finish(stream, exc.code, exc.message)
            return
        stream.running = True
        self.running += 1
        if method.streaming:
            stream.task = self.loop.create_task(self._run_stream(stream, method.handler(message)))
            return
        # A task per call: handlers may use what needs one (asyncio.timeout in redis-py, for one).
        task = _start(method.handler(message))
        stream.task = task
        task.add_done_callback(lambda done: self._unary_done(stream, done))

    def _peer_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._drop(stream)
        self._spend_reset()

    def _drop(self, stream: _Stream) -> None:
        """Forget a stream that was reset: its call is cancelled, nothing is sent."""
        stream.closed = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self._stream_done(stream)

    def _spend_reset(self) -> None:
        if not self.resets.spend(self.loop.time()):
            self._abort(ErrorCodes.ENHANCE_YOUR_CALM, "too many reset or refused streams", REJECT_RESET_RATE)

    # --- calls -------------------------------------------------------------------------------------------

    def _unary_done(self, stream: _Stream, task: asyncio.Future[Any]) -> None:
        # The outcome is always read, so a call cancelled or lost with its connection never leaves
        # "Task exception was never retrieved" behind.
        cancelled = task.cancelled()
        error = None if cancelled else task.exception()
        self._unary_result(stream, cancelled, error, None if cancelled or error else task.result())

    def _unary_result(
        self, stream: _Stream, cancelled: bool, error: BaseException | None, result: Any
    ) -> None:
        if stream.closed:
            return
        try:
            if cancelled:
                self._finish(stream, GrpcStatus.CANCELLED, "call cancelled")
            elif error is None:
                self._answer(stream, result)
            elif isinstance(error, GrpcError):
                self._finish(stream, error.code, error.message)
            else:
                log.error("handler failed", exc_info=error)
                self._finish(stream, GrpcStatus.INTERNAL, f"{type(error).__name__}: {error}")
        except Exception as exc:
            self._internal_error(exc)
            return
        self._schedule_flush()

    async def _run_stream(self, stream: _Stream, messages: AsyncIterator[bytes]) -> None:
        first = True
        try:
            async for message in messages:
                if stream.closed or self.closed:
                    return
                if first:
                    self.h2.send_headers(stream.stream_id, RESPONSE_HEADERS)
                    first = False
                self._send_data(stream, frame_message(message))
                self._schedule_flush()
        except asyncio.CancelledError:
            return  # reset by the client or lost with the connection: nothing to say, nothing to log
        except GrpcError as exc:
            self._end(stream, status_trailers(exc.code, exc.message), with_headers=first)
        except H2Error:
            return  # the stream or connection closed under us
        except Exception as exc:
            log.error("stream handler failed", exc_info=exc)
            self._end(stream, status_trailers(GrpcStatus.INTERNAL, str(exc)), with_headers=first)
        else:
            self._end(stream, OK_TRAILERS, with_headers=first)
        finally:
            aclose = getattr(messages, "aclose", None)
            if aclose is not None:
                await aclose()
        self._schedule_flush()

    def _answer(self, stream: _Stream, message: bytes) -> None:
        self.h2.send_headers(stream.stream_id, RESPONSE_HEADERS)
        self._send_data(stream, frame_message(message))
        self._end(stream, OK_TRAILERS, with_headers=False)

    def _finish(self, stream: _Stream, code: int, message: str) -> None:
        """End a call with an error status, trailers-only."""
        self._end(stream, status_trailers(code, message), with_headers=True)

    def _end(self, stream: _Stream, trailers: HeaderList, *, with_headers: bool) -> None:
        if stream.closed:
            return
        stream.closed = True
        block = (*RESPONSE_HEADERS, *trailers) if with_headers else trailers
        if stream.pending:
            stream.trailers = block  # sent after the data still waiting for window
            return
        self._send_trailers(stream, block)

    def _send_trailers(self, stream: _Stream, block: HeaderList) -> None:
        try:
            self.h2.send_headers(stream.stream_id, block, end_stream=True)
            if not stream.remote_done:
                # Answered before the client finished sending (unknown method, too large): tell it to
                # stop, as RFC 9113 §8.1 asks.
                self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        except H2Error:
            pass  # reset by the peer meanwhile
        self._stream_done(stream)

    def _stream_done(self, stream: _Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self.server._streams_ended(1)
        self.blocked.pop(stream.stream_id, None)
        if stream.unacked:
            self._acknowledge(stream.stream_id, stream.unacked)
            stream.unacked = 0
        if stream.running:
            stream.running = False
            self.running -= 1
            if not self.running:
                self.idle_since = self.loop.time()
        if self.going_away and not self.streams:
            self._close_soon()

    def _acknowledge(self, stream_id: int, length: int) -> None:
        if length:
            with contextlib.suppress(H2Error):  # the connection is closing
                self.h2.acknowledge_received_data(length, stream_id)

    # --- bytes out ---------------------------------------------------------------------------------------

    def _send_data(self, stream: _Stream, data: bytes) -> None:
        if stream.pending:
            stream.pending.append(data)
            return
        sent = self._write_data(stream, data)
        if sent < len(data):
            stream.pending.append(data[sent:])
            self.blocked[stream.stream_id] = stream

    def _write_data(self, stream: _Stream, data: bytes) -> int:
        """Send as much of ``data`` as the windows allow; how many bytes went."""
        h2 = self.h2
        stream_id = stream.stream_id
        size = len(data)
        if size <= h2.max_outbound_frame_size and size <= h2.local_flow_control_window(stream_id):
            h2.send_data(stream_id, data)
            return size
        sent = 0
        while sent < size:
            room = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size, size - sent)
            if room <= 0:
                break
            h2.send_data(stream_id, data[sent : sent + room])
            sent += room
        return sent

    def _release_blocked(self) -> None:
        for stream_id, stream in list(self.blocked.items()):
            try:
                while stream.pending:
                    data = stream.pending[0]
                    sent = self._write_data(stream, data)
                    if sent < len(data):
                        stream.pending[0] = data[sent:]
                        break
                    stream.pending.pop(0)
            except H2Error:
                stream.pending.clear()  # the stream went away meanwhile
            if stream.pending:
                continue
            del self.blocked[stream_id]
            if stream.trailers is not None:
                self._send_trailers(stream, stream.trailers)
            elif stream.closed:
                self._stream_done(stream)

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self.h2.data_to_send()
        if data:
            transport.write(data)

    # --- ends of connections ----------------------------------------------------------------------------

    def _internal_error(self, exc: Exception) -> None:
        # A fault of ours, not the peer's: this connection only is closed; one line, no traceback.
        log.warning("closing an HTTP/2 connection after an internal error: %s: %s", type(exc).__name__, exc)
        self._abort(ErrorCodes.INTERNAL_ERROR, "internal error", REJECT_INTERNAL)

    def _abort(self, code: ErrorCodes, message: str, reason: str) -> None:
        """GOAWAY with ``code`` and ``message`` as debug data, then close."""
        self.server._rejected(reason)
        log.debug("closing an HTTP/2 connection: %s", message, extra={"reason": reason})
        with contextlib.suppress(H2Error):  # already closed on h2's side: its GOAWAY is queued
            self.h2.close_connection(code, additional_data=message.encode()[:256])
        self._close_now()

    def go_away(self) -> None:
        """Tell the peer no new streams will be served; close once those in flight are answered."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        # Written beside h2 rather than through close_connection: h2 sends nothing more after its own
        # GOAWAY, and the calls in flight still have to be answered.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(goaway.serialize())
        if not self.streams:
            self._close_soon()

    def check_timers(self, now: float) -> None:
        """Called every second or so by the server: the handshake and idle timeouts."""
        if self.closed:
            return
        if not self.handshaken:
            if now - self.opened_at > self.limits.handshake_timeout:
                self._abort(ErrorCodes.NO_ERROR, "no HTTP/2 handshake in time", REJECT_HANDSHAKE)
        elif self._idle(now) > self.limits.idle_timeout:
            # No call running (half-sent requests are dropped with the connection), or every answer
            # waiting for a window the peer never opens.
            self.server._rejected(REJECT_IDLE)
            self.go_away()
            self._close_soon()

    def _idle(self, now: float) -> float:
        """For how long nothing has been going on that this server is waiting for."""
        if not self.running:
            return now - self.idle_since
        stalled = sum(1 for stream in self.blocked.values() if stream.running)
        if stalled < self.running:
            self.stalled_since = None
            return 0.0
        if self.stalled_since is None:
            self.stalled_since = now
        return now - self.stalled_since

    def _close_soon(self) -> None:
        # After this turn's answers are queued, so they leave with the close.
        self.loop.call_soon(self.close)

    def _close_now(self) -> None:
        self._flush()
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.closed = True
            self.transport.close()


class GrpcServer:
    """A listening socket serving ``methods`` (full paths such as ``/pkg.Service/Method``)."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        *,
        limits: TransportLimits | None = None,
        on_rejected: Callable[[str], None] | None = None,
        transport: str = DEFAULT_TRANSPORT,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.transport = transport
        self.methods = {path.encode(): method for path, method in methods.items()}
        self.limits = limits or TransportLimits()
        self.on_rejected = on_rejected
        self.rejected: dict[str, int] = {}
        self.max_connections = self.limits.max_connections
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection | LeanConnection] = set()
        self._stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 picks a free port); the port listened on."""
        self.max_connections = _within_file_limit(self.limits.max_connections)
        loop = asyncio.get_running_loop()
        connection = LeanConnection if self.transport == TRANSPORT_LEAN else _Connection
        self._server = await loop.create_server(lambda: connection(self), host, port, reuse_address=True)
        self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Calls received and not yet answered, reset or lost with their connection."""
        return self._in_flight

    def _admit(self) -> bool:
        if self._stopping or len(self._connections) >= self.max_connections:
            self._rejected(REJECT_CONNECTIONS)
            return False
        return True

    def _rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self.on_rejected is not None:
            self.on_rejected(reason)

    def _stream_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _streams_ended(self, count: int) -> None:
        self._in_flight -= count
        if self._in_flight <= 0:
            self._in_flight = 0
            self._idle.set()

    async def _sweep(self) -> None:
        """One timer for every connection's handshake and idle timeouts (none per call)."""
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.limits.handshake_timeout / 2, self.limits.idle_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self._connections):
                connection.check_timers(now)

    async def stop(self, grace: float) -> None:
        """Stop accepting, send GOAWAY, let calls in flight finish for ``grace`` seconds, then close."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for connection in list(self._connections):
            connection.go_away()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("calls still in flight after the grace period", extra={"in_flight": self._in_flight})
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()


# Descriptors kept for everything but gRPC connections: Redis pool, metrics server, logs, the listener.
_RESERVED_DESCRIPTORS = 256


def _within_file_limit(wanted: int) -> int:
    """``wanted``, lowered so that connections can never exhaust the process's descriptors.

    Past the limit, accept() fails and new clients see UNAVAILABLE while the cap was never reached;
    below it, excess connections are closed at once and counted.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    allowed = max(16, soft - _RESERVED_DESCRIPTORS)
    if allowed < wanted:
        log.warning(
            "gRPC connection cap lowered to stay within the file descriptor limit",
            extra={"max_connections": allowed, "configured": wanted, "nofile": soft},
        )
    return min(wanted, allowed)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a (host, port) pair; an empty host listens everywhere."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"listen address must be host:port, not {listen!r}")
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)
