"""What both transports of ``GrpcServer`` share: one connection's calls, limits, reading and ends.

Subclassed by ``grpcserver._Connection`` (the ``h2`` library transport) and
``grpclean.LeanConnection`` (our own framing); nothing else uses it. The two
differ only in how bytes become frames and events and how answers are
framed; everything a connection does the same way on both lives here, once:

* the connection's life: admission (``GrpcServer._admit``), pausing reading
  while the peer does not read its answers or while a backlog is drained
  (at most ``read_chunk_bytes`` per loop turn, so one flooding connection
  cannot hold the loop), losing the connection (every call cancelled);
* calls: a stream's route (``:path``, ``grpc-encoding``), its request body
  bounded and handed to its handler once complete, answers and error
  statuses (trailers-only), answer bytes that wait for the peer's window,
  a reset stream dropped and its call cancelled;
* ends: the handshake and idle timeouts (``check_timers``, from the
  server's sweeper), GOAWAY on ``stop``, closing after an error of ours.

What each transport supplies is a handful of hooks (``_handshake``,
``_receive``, ``_send_headers``, ``_last_block``, ``_send_trailers``,
``_write_data``, ``_can_send``, ``_give_back``, ``_start_unary``,
``_send_goaway``, ``_abort``, ``_flush``); the lean transport also overrides
``_answer`` for the usual unary answer (its three frames built in one
piece). Sharing costs the lean
transport a few method calls per call (the hooks, ``_open``,
``_take_data``), well under a microsecond of its ≈20 µs; the hot path
is otherwise the same code it was (``bench/bench_ratelimit.py`` measures
it beside the ``h2`` transport).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes

from .grpclimits import REJECT_HANDSHAKE, REJECT_IDLE, REJECT_INTERNAL, REJECT_MESSAGE_SIZE, ResetBudget
from .grpcmessage import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    GrpcError,
    GrpcStatus,
    decode_request,
    frame_message,
    status_trailers,
)

if TYPE_CHECKING:
    from .grpcserver import GrpcServer, Method

log = logging.getLogger(__name__)

# Why reading from a connection is paused (several may hold at once).
_PAUSED_FOR_WRITES = 1
_PAUSED_FOR_BACKLOG = 2

HeaderList = Sequence[tuple[bytes, bytes]]


if sys.version_info >= (3, 12):

    def start_task(coroutine: Any) -> asyncio.Future[Any]:
        # The call's first step runs at once, inside its task (what eager tasks do): a handler that
        # needs no I/O is done before this returns, and one that waits for Redis has queued its command
        # before this loop turn ends.
        return asyncio.Task(coroutine, eager_start=True)

else:
    start_task = asyncio.ensure_future


class CallStream:
    """One stream's call as both transports keep it.

    One class for both (no subclass per transport): its construction is on the lean transport's hot path.
    ``send_window`` and ``recv_window`` are the lean transport's own accounts; ``h2`` keeps its windows in
    the library and leaves them at 0.
    """

    __slots__ = (
        "body",
        "closed",
        "encoding",
        "method",
        "path",
        "pending",
        "received",
        "recv_window",
        "remote_done",
        "running",
        "send_window",
        "stream_id",
        "task",
        "trailers",
        "unacked",
    )

    def __init__(self, stream_id: int, send_window: int = 0, recv_window: int = 0) -> None:
        self.stream_id = stream_id
        self.method: Method | None = None
        self.path = b""
        self.encoding = b"identity"
        self.body: list[bytes] = []
        self.received = 0  # request bytes, padding excluded
        self.recv_window = recv_window  # what the peer may still send on it (never re-opened)
        self.send_window = send_window  # what we may still send on it
        self.unacked = 0  # flow-controlled bytes not yet handed back to the peer
        self.task: asyncio.Future[Any] | None = None
        self.running = False  # handed to its handler, not answered yet
        self.closed = False  # answered, reset or refused: nothing more to send
        self.remote_done = False  # END_STREAM received
        self.pending: list[bytes] = []  # answer bytes waiting for the peer's flow-control window
        # The last block, sent once ``pending`` has left: what ``_last_block`` made of the trailers (a
        # header list for ``h2``, an encoded HEADERS frame for the lean transport).
        self.trailers: Any = None


class ConnectionBase(asyncio.Protocol):
    """One HTTP/2 connection's state and logic common to both transports; subclasses frame the bytes."""

    # What a transport raises when a stream or the connection closed under a send (``h2`` raises; the lean
    # transport's sends only queue bytes, so nothing).
    _STREAM_GONE: tuple[type[Exception], ...] = ()

    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, CallStream] = {}
        self.blocked: dict[int, CallStream] = {}  # streams whose answer waits for window, oldest first
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

    # --- hooks: what each transport does its own way -----------------------------------------------------

    def _handshake(self) -> None:
        """Queue our side of the connection's start (SETTINGS, the connection window)."""
        raise NotImplementedError

    def _receive(self, data: bytes) -> None:
        """Parse ``data`` (at most ``read_chunk_bytes``) into frames and act on them."""
        raise NotImplementedError

    def _send_headers(self, stream_id: int, fields: HeaderList) -> None:
        """Queue a HEADERS block that does not end the stream."""
        raise NotImplementedError

    def _last_block(self, stream_id: int, fields: HeaderList) -> Any:
        """The block that ends the stream, as ``_send_trailers`` takes it."""
        raise NotImplementedError

    def _send_trailers(self, stream: CallStream, last: Any) -> None:
        """Queue ``last`` (from ``_last_block``), end the stream, and forget it."""
        raise NotImplementedError

    def _write_data(self, stream: CallStream, data: bytes) -> int:
        """Queue as much of ``data`` as the windows allow; how many bytes went."""
        raise NotImplementedError

    def _can_send(self) -> bool:
        """Whether the connection's window lets any answer bytes out (h2 tells per stream only)."""
        return True

    def _give_back(self, stream_id: int, length: int) -> None:
        """``length`` received bytes of ``stream_id`` are no longer held: the peer may send them again."""
        raise NotImplementedError

    def _start_unary(self, stream: CallStream, handler: Callable[[bytes], Any], message: bytes) -> None:
        """Run a unary handler in a task of its own (``stream.task``) that answers the call."""
        raise NotImplementedError

    def _send_goaway(self) -> None:
        """Send GOAWAY(NO_ERROR) after what is queued, keeping the streams in flight."""
        raise NotImplementedError

    def _abort(self, code: int, message: str, reason: str) -> None:
        """GOAWAY with ``code`` and ``message`` as debug data, then close."""
        raise NotImplementedError

    def _flush(self) -> None:
        """Write what is queued in one ``transport.write``."""
        raise NotImplementedError

    # --- transport callbacks ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport; uvloop's is no subclass
        if not self.server._admit():
            # Accepted only to be closed: the descriptor is released at once and nothing is read.
            self.closed = True
            transport.close()
            return
        self.server._connections.add(self)
        self._handshake()
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

    # --- streams -----------------------------------------------------------------------------------------

    def _open(self, stream: CallStream, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Register a new stream's call: its method (None when unknown) and message encoding."""
        path = b""
        encoding = b"identity"
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"grpc-encoding":
                encoding = value
        self.streams[stream.stream_id] = stream
        self.server._stream_started()
        stream.path = path
        stream.method = self.server.methods.get(path)
        stream.encoding = encoding

    def _unimplemented(self, stream: CallStream) -> None:
        self._finish(stream, GrpcStatus.UNIMPLEMENTED, f"unknown method {stream.path.decode('latin-1')}")

    def _take_data(self, stream: CallStream, data: bytes, flow_controlled: int) -> bool:
        """Add request bytes to an open stream's body; False when that made the call fail (too large)."""
        stream.unacked += flow_controlled
        stream.received += len(data)
        if stream.received > self.limits.stream_window:
            # Unreachable within flow control (the stream window is the limit); kept as the invariant.
            self.server._rejected(REJECT_MESSAGE_SIZE)
            self._finish(stream, GrpcStatus.RESOURCE_EXHAUSTED, "request message too large")
            return False
        if data:
            stream.body.append(data)
        return True

    def _request_complete(self, stream: CallStream) -> None:
        stream.remote_done = True
        if stream.closed:
            return
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        stream.body = []
        # The message is consumed: only now does the peer get the window back.
        self._give_back(stream.stream_id, stream.unacked)
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
        self._start_unary(stream, method.handler, message)

    def _drop(self, stream: CallStream) -> None:
        """Forget a stream that was reset: its call is cancelled, nothing is sent."""
        stream.closed = True
        stream.pending.clear()
        stream.trailers = None
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self._stream_done(stream)

    def _stream_done(self, stream: CallStream) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self.server._streams_ended(1)
        self.blocked.pop(stream.stream_id, None)
        if stream.unacked:
            self._give_back(stream.stream_id, stream.unacked)
            stream.unacked = 0
        if stream.running:
            stream.running = False
            self.running -= 1
            if not self.running:
                self.idle_since = self.loop.time()
        if self.going_away and not self.streams:
            self._close_soon()

    # --- answers -----------------------------------------------------------------------------------------

    def _answer(self, stream: CallStream, message: bytes) -> None:
        self._send_headers(stream.stream_id, RESPONSE_HEADERS)
        self._send_data(stream, frame_message(message))
        self._end(stream, OK_TRAILERS, with_headers=False)

    def _finish(self, stream: CallStream, code: int, message: str) -> None:
        """End a call with an error status, trailers-only."""
        self._end(stream, status_trailers(code, message), with_headers=True)

    def _end(self, stream: CallStream, trailers: HeaderList, *, with_headers: bool) -> None:
        if stream.closed:
            return
        stream.closed = True
        fields = (*RESPONSE_HEADERS, *trailers) if with_headers else trailers
        last = self._last_block(stream.stream_id, fields)
        if stream.pending:
            stream.trailers = last  # sent after the data still waiting for window
            return
        self._send_trailers(stream, last)

    async def _run_stream(self, stream: CallStream, messages: AsyncIterator[bytes]) -> None:
        """Answer a server-streaming call from its handler's messages."""
        first = True
        try:
            async for message in messages:
                if stream.closed or self.closed:
                    return
                if first:
                    self._send_headers(stream.stream_id, RESPONSE_HEADERS)
                    first = False
                self._send_data(stream, frame_message(message))
                self._schedule_flush()
        except asyncio.CancelledError:
            return  # reset by the client or lost with the connection: nothing to say, nothing to log
        except GrpcError as exc:
            self._end(stream, status_trailers(exc.code, exc.message), with_headers=first)
        except self._STREAM_GONE:
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

    def _send_data(self, stream: CallStream, data: bytes) -> None:
        if stream.pending:
            stream.pending.append(data)
            return
        sent = self._write_data(stream, data)
        if sent < len(data):
            stream.pending.append(data[sent:])
            self.blocked[stream.stream_id] = stream

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _release_blocked(self) -> None:
        """Send what waits for window now that the peer has opened some, oldest stream first."""
        for stream_id, stream in list(self.blocked.items()):
            if not self._can_send():
                return
            try:
                pending = stream.pending
                while pending:
                    data = pending[0]
                    sent = self._write_data(stream, data)
                    if sent < len(data):
                        pending[0] = data[sent:]
                        break
                    pending.pop(0)
            except self._STREAM_GONE:
                stream.pending.clear()  # the stream went away meanwhile
            if stream.pending:
                continue
            del self.blocked[stream_id]
            if stream.trailers is not None:
                last, stream.trailers = stream.trailers, None
                self._send_trailers(stream, last)
            elif stream.closed:
                self._stream_done(stream)

    # --- ends of connections ----------------------------------------------------------------------------

    def _internal_error(self, exc: Exception) -> None:
        # A fault of ours, not the peer's: this connection only is closed; one line, no traceback.
        log.warning("closing an HTTP/2 connection after an internal error: %s: %s", type(exc).__name__, exc)
        self._abort(ErrorCodes.INTERNAL_ERROR, "internal error", REJECT_INTERNAL)

    def go_away(self) -> None:
        """Tell the peer no new streams will be served; close once those in flight are answered."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._send_goaway()
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
