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
target needs. Both subclass ``grpcconn.ConnectionBase``, which holds what a
connection does the same way on either (calls, limits, reading, ends); each
keeps only its framing. What is ours in both is the gRPC layer and the limits a
hostile peer needs (``grpclimits.TransportLimits``; ``TRANSPORT.md`` has the
figures of both and why both exist).

Shape of the fast path (both transports): the bytes of one read are parsed
in one go (at most ``read_chunk_bytes`` per loop turn and connection, the
rest on the next turns, so a connection that floods cannot hold the loop);
a call whose request is complete is handed to its handler at once;
everything answered in one loop turn leaves in one ``transport.write`` per
connection. ``start(reuse_port=True)`` lets several processes listen on one
port (``apx-ratelimit --workers``).

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
from collections.abc import Callable, Iterable, Mapping
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

from .grpcconn import CallStream, ConnectionBase, HeaderList, start_task
from .grpclean import LeanConnection
from .grpclimits import (
    REJECT_CONNECTIONS,
    REJECT_HEADER_BLOCK,
    REJECT_MALFORMED,
    REJECT_PROTOCOL,
    REJECT_REASONS,
    REJECT_REFUSED_STREAM,
    REJECT_RESET_RATE,
    TransportLimits,
)
from .grpcmessage import GrpcError, GrpcStatus
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


Headers = Iterable[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Method:
    """A method's handler and shape."""

    handler: Callable[[bytes], Any]
    streaming: bool = False


class _Connection(ConnectionBase):
    """One HTTP/2 connection: bytes into ``h2``, events to calls, answers out in one write per loop turn."""

    _STREAM_GONE = (H2Error,)  # what h2 raises when a stream or the connection closed under a send

    def __init__(self, server: GrpcServer) -> None:
        super().__init__(server)
        self.h2 = new_connection(self.limits)
        self.guard = HeaderBlockGuard(self.limits.max_header_list_bytes, self.limits.max_continuation_frames)

    def _handshake(self) -> None:
        self.h2.initiate_connection()
        # The connection window starts at 64 KiB whatever SETTINGS say; open it to the buffer bound once.
        if self.limits.connection_window > DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(self.limits.connection_window - DEFAULT_WINDOW)

    # --- bytes in ----------------------------------------------------------------------------------------

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
            self._request_ended(event.stream_id)
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
        stream = CallStream(stream_id)
        self._open(stream, headers)
        if stream.method is None:
            self._unimplemented(stream)

    def _data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            self._give_back(stream_id, flow_controlled)  # answered already: the bytes are dropped
            return
        self._take_data(stream, data, flow_controlled)

    def _request_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            return
        self._request_complete(stream)

    def _peer_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._drop(stream)
        self._spend_reset()

    def _spend_reset(self) -> None:
        if not self.resets.spend(self.loop.time()):
            self._abort(ErrorCodes.ENHANCE_YOUR_CALM, "too many reset or refused streams", REJECT_RESET_RATE)

    def _give_back(self, stream_id: int, length: int) -> None:
        if length:
            with contextlib.suppress(H2Error):  # the connection is closing
                self.h2.acknowledge_received_data(length, stream_id)

    # --- calls -------------------------------------------------------------------------------------------

    def _start_unary(self, stream: CallStream, handler: Callable[[bytes], Any], message: bytes) -> None:
        task = start_task(handler(message))
        stream.task = task
        task.add_done_callback(lambda done: self._unary_done(stream, done))

    def _unary_done(self, stream: CallStream, task: asyncio.Future[Any]) -> None:
        # The outcome is always read, so a call cancelled or lost with its connection never leaves
        # "Task exception was never retrieved" behind.
        cancelled = task.cancelled()
        error = None if cancelled else task.exception()
        self._unary_result(stream, cancelled, error, None if cancelled or error else task.result())

    def _unary_result(
        self, stream: CallStream, cancelled: bool, error: BaseException | None, result: Any
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

    # --- bytes out ---------------------------------------------------------------------------------------

    def _send_headers(self, stream_id: int, fields: HeaderList) -> None:
        self.h2.send_headers(stream_id, fields)

    def _last_block(self, stream_id: int, fields: HeaderList) -> HeaderList:
        return fields  # h2 encodes it when it is sent

    def _send_trailers(self, stream: CallStream, block: HeaderList) -> None:
        try:
            self.h2.send_headers(stream.stream_id, block, end_stream=True)
            if not stream.remote_done:
                # Answered before the client finished sending (unknown method, too large): tell it to
                # stop, as RFC 9113 §8.1 asks.
                self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        except H2Error:
            pass  # reset by the peer meanwhile
        self._stream_done(stream)

    def _write_data(self, stream: CallStream, data: bytes) -> int:
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

    def _flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self.h2.data_to_send()
        if data:
            transport.write(data)

    # --- ends of connections ----------------------------------------------------------------------------

    def _abort(self, code: int, message: str, reason: str) -> None:
        self.server._rejected(reason)
        log.debug("closing an HTTP/2 connection: %s", message, extra={"reason": reason})
        with contextlib.suppress(H2Error):  # already closed on h2's side: its GOAWAY is queued
            self.h2.close_connection(code, additional_data=message.encode()[:256])
        self._close_now()

    def _send_goaway(self) -> None:
        # Written beside h2 rather than through close_connection: h2 sends nothing more after its own
        # GOAWAY, and the calls in flight still have to be answered.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(goaway.serialize())


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
        self._connections: set[ConnectionBase] = set()
        self._stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0 picks a free port); the port listened on.

        ``reuse_port``: bind with ``SO_REUSEPORT``, so several processes listen on the same port and the
        kernel spreads new connections over them (``apx-ratelimit --workers``).
        """
        self.max_connections = _within_file_limit(self.limits.max_connections)
        loop = asyncio.get_running_loop()
        connection = LeanConnection if self.transport == TRANSPORT_LEAN else _Connection
        self._server = await loop.create_server(
            lambda: connection(self), host, port, reuse_address=True, reuse_port=reuse_port or None
        )
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
