"""A lean gRPC server: unary and server-streaming calls over cleartext HTTP/2, on the asyncio loop.

Used by the rate-limit service (``ratelimit.server.start_service``) for
``ShouldRateLimit`` and ``grpc.health.v1.Health``. Why not ``grpc.aio``: its
floor is about 120 µs of CPU per unary call on these machines (an empty
servicer), half of a whole decision's budget, and every call is a coroutine
hopping between the C core's completion queue and the loop several times.
Envoy's rate-limit filter sends small unary calls on a few long-lived
HTTP/2 connections (one per Envoy worker thread), and the answer must come
within a millisecond or two: that is what this server is shaped for. Frames
are read straight off the socket, a call whose message is complete is
handed to its handler at once, and everything answered in one turn of the
loop leaves in one write.

What it speaks (RFC 9113, the gRPC HTTP/2 protocol):

* h2c with prior knowledge (what Envoy's gRPC clients and ``grpcio`` use on
  ``http://`` targets); no TLS (in-cluster, behind the mesh if any).
* Headers decoded with ``hpack`` (the dynamic table kept in step even when
  a block is served from the cache of identical blocks); responses use
  literal fields without indexing, so the peer's decoder needs no state of
  ours.
* Flow control both ways: the receive windows are opened wide (one message
  may be up to ``max_message_bytes``) and replenished as data arrives; what
  we send waits for the peer's connection and stream windows.
* ``SETTINGS``, ``PING``, ``WINDOW_UPDATE``, ``RST_STREAM`` (the call is
  cancelled), ``GOAWAY`` (both ways: ``stop`` sends it, lets calls in flight
  finish for ``grace`` seconds, then closes), ``CONTINUATION``, padding,
  priority fields (ignored, as RFC 9113 allows).
* gRPC framing: one length-prefixed message per request, ``identity`` or
  ``gzip`` encoded; ``grpc-status`` and ``grpc-message`` (percent-encoded)
  in trailers, or trailers-only for errors. Unknown methods get
  UNIMPLEMENTED; a handler's ``GrpcError`` its code; any other exception
  INTERNAL (logged). A peer that breaks the protocol gets ``GOAWAY`` with
  the error and is disconnected; the server itself never stops for it.
* Deadlines (``grpc-timeout``) are the client's to keep: at its deadline it
  resets the stream (Envoy and every gRPC client do), which cancels the
  handler, so no timer per call is needed here.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import hpack
from hpack.exceptions import HPACKError
from hpack.hpack import encode_integer

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings identifiers.
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
COMPRESSION_ERROR = 0x9

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
OUR_MAX_FRAME_SIZE = 16_384  # the protocol's default, which every peer accepts

FRAME_HEADER = struct.Struct(">HBBBL")
_MESSAGE_PREFIX = struct.Struct(">BL")


class GrpcStatus:
    """The gRPC status codes this server sends."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class GrpcError(Exception):
    """Raised by a handler to end its call with ``code`` and ``message``."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def literal_field(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing and with a literal name (no decoder state needed)."""
    return b"\x00" + bytes(encode_integer(len(name), 7)) + name + bytes(encode_integer(len(value), 7)) + value


_STATUS_200 = b"\x88"  # static table entry 8, ":status: 200"
RESPONSE_HEADERS = _STATUS_200 + literal_field(b"content-type", b"application/grpc")
OK_TRAILERS = literal_field(b"grpc-status", b"0")


def _error_fields(code: int, message: str) -> bytes:
    fields = literal_field(b"grpc-status", b"%d" % code)
    if message:
        # The gRPC spec percent-encodes grpc-message (everything outside printable ASCII, and '%').
        quoted = urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
        fields += literal_field(b"grpc-message", quoted.encode("ascii"))
    return fields


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id) + payload


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
        "received",
        "remote_done",
        "send_window",
        "stream_id",
        "task",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.stream_id = stream_id
        self.method: Method | None = None
        self.encoding = b"identity"
        self.body: list[bytes] = []
        self.received = 0
        self.send_window = send_window
        self.task: asyncio.Future[Any] | None = None
        self.closed = False
        self.remote_done = False  # END_STREAM received: the client has sent everything


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: frames in, calls dispatched, answers out in one write per loop turn."""

    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.preface_seen = False
        self.decoder = hpack.Decoder()
        self.decoded_blocks: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self.table_mark = self._table_state()
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.header_block: list[bytes] = []
        self.header_stream = 0
        self.header_end_stream = False
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = 16_384
        self.send_window = DEFAULT_WINDOW
        self.blocked: dict[int, list[tuple[bytes, int]]] = {}
        self.recv_unacked = 0
        self.going_away = False
        self.closed = False

    # --- transport callbacks ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport; uvloop's is no subclass
        self.server._connections.add(self)
        settings = struct.pack(
            ">HLHLHLHLHL",
            SETTINGS_ENABLE_PUSH,
            0,
            SETTINGS_MAX_CONCURRENT_STREAMS,
            self.server.max_concurrent_streams,
            SETTINGS_INITIAL_WINDOW_SIZE,
            self.server.stream_window,
            SETTINGS_MAX_FRAME_SIZE,
            OUR_MAX_FRAME_SIZE,
            SETTINGS_MAX_HEADER_LIST_SIZE,
            self.server.max_header_list_bytes,
        )
        self._send(frame(SETTINGS, 0, 0, settings))
        # The connection window starts at 64 KiB whatever the settings say; open it wide at once.
        self._send(
            frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.server.connection_window - DEFAULT_WINDOW))
        )

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        try:
            if not self.preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self.buffer = buffer
                    return
                if not buffer.startswith(PREFACE):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self.preface_seen = True
                buffer = buffer[len(PREFACE) :]
            position = 0
            size = len(buffer)
            unpack = FRAME_HEADER.unpack_from
            while size - position >= 9:
                high, low, frame_type, flags, stream_id = unpack(buffer, position)
                length = (high << 8) | low
                if length > OUR_MAX_FRAME_SIZE:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = position + 9 + length
                if end > size:
                    break
                self._frame_received(frame_type, flags, stream_id & 0x7FFFFFFF, buffer[position + 9 : end])
                position = end
            self.buffer = buffer[position:] if position < size else b""
        except _ConnectionError as exc:
            self._abort(exc.code, str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        for stream in self.streams.values():
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self.server._streams_ended(len(self.streams))
        self.streams.clear()

    def pause_writing(self) -> None:
        # A peer that does not read its answers gets no more calls read from it until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # --- frames in ---------------------------------------------------------------------------------------

    def _frame_received(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_stream and frame_type != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        if frame_type == DATA:
            self._data(flags, stream_id, payload)
        elif frame_type == HEADERS:
            self._headers(flags, stream_id, payload)
        elif frame_type == CONTINUATION:
            if stream_id != self.header_stream or not self.header_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.header_block.append(payload)
            if sum(map(len, self.header_block)) > self.server.max_header_list_bytes:
                # Endless CONTINUATION frames would otherwise buffer without bound.
                raise _ConnectionError(PROTOCOL_ERROR, "header block larger than the advertised limit")
            if flags & END_HEADERS:
                self._header_block_done()
        elif frame_type == SETTINGS:
            if stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._settings(payload)
        elif frame_type == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif frame_type == PING:
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING must carry 8 bytes")
            if not flags & ACK:
                self._send(frame(PING, ACK, 0, payload))
        elif frame_type == RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.closed = True
                self.blocked.pop(stream_id, None)
                if stream.task is not None and not stream.task.done():
                    stream.task.cancel()
                self.server._streams_ended(1)
        elif frame_type == GOAWAY:
            # The peer opens no more streams; answer those it has, then let it close.
            self.going_away = True
        elif frame_type == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5, §6.3).

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        start = 0
        end = len(payload)
        if flags & PADDED:
            start = 1
            end -= payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
        self.header_block = [payload[start:end]]
        self.header_stream = stream_id
        self.header_end_stream = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._header_block_done()

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        # Envoy sends the same few headers on every call; after the first, the block is a handful
        # of dynamic-table references. Decoding it again gives the same list as long as the table
        # is as it was, so a block that left the table unchanged (entries and size limit) is
        # cached, and the cache is dropped whenever a block changes the table.
        mark = self._table_state()
        if not self._same_table(mark, self.table_mark):
            self.decoded_blocks.clear()
            self.table_mark = mark
        cached = self.decoded_blocks.get(block)
        if cached is not None:
            return cached
        try:
            # hpack returns a list of (name, value) tuples of bytes when raw.
            headers = cast(list[tuple[bytes, bytes]], self.decoder.decode(block, raw=True))
        except HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from exc
        if self._same_table(self._table_state(), mark) and len(self.decoded_blocks) < 64:
            self.decoded_blocks[block] = headers
        return headers

    def _table_state(self) -> tuple[int, int, object]:
        """The dynamic table's size limit, length and newest entry.

        Every insertion makes a new entry object, so the newest entry compared by identity (held
        here, so its identity cannot be reused) tells whether anything was inserted.
        """
        table = self.decoder.header_table
        entries = table.dynamic_entries
        return (table.maxsize, len(entries), entries[0] if entries else None)

    @staticmethod
    def _same_table(a: tuple[int, int, object], b: tuple[int, int, object]) -> bool:
        return a[0] == b[0] and a[1] == b[1] and a[2] is b[2]

    def _header_block_done(self) -> None:
        stream_id = self.header_stream
        block = self.header_block[0] if len(self.header_block) == 1 else b"".join(self.header_block)
        self.header_stream = 0
        self.header_block = []
        headers = self._decode(block)
        stream = self.streams.get(stream_id)
        if stream is not None:
            # Trailers from the client: unary and server-streaming calls have none to read.
            if self.header_end_stream:
                self._request_complete(stream)
            return
        if stream_id <= self.last_stream_id:
            return  # trailers of a call already answered (and reset): decoded for the table, dropped
        self.last_stream_id = stream_id
        if self.going_away or self.server._stopping:
            self._send(frame(RST_STREAM, 0, stream_id, struct.pack(">L", REFUSED_STREAM)))
            return
        if len(self.streams) >= self.server.max_concurrent_streams:
            self._send(frame(RST_STREAM, 0, stream_id, struct.pack(">L", REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, self.peer_initial_window)
        path = b""
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"grpc-encoding":
                stream.encoding = value
        self.streams[stream_id] = stream
        self.server._stream_started()
        stream.method = self.server.methods.get(path.decode("latin-1"))
        if stream.method is None:
            self._finish(stream, GrpcStatus.UNIMPLEMENTED, f"unknown method {path.decode('latin-1')}")
            return
        if self.header_end_stream:
            self._request_complete(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        # Flow control counts the whole payload, padding included.
        self.recv_unacked += len(payload)
        if self.recv_unacked >= self.server.connection_window // 2:
            self._send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.recv_unacked)))
            self.recv_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id == 0 or stream_id > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we already answered or reset; its late data is dropped
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : len(payload) - payload[0]]
        stream.received += len(payload)
        if stream.received > self.server.max_message_bytes + 5:
            self._finish(stream, GrpcStatus.RESOURCE_EXHAUSTED, "request message too large")
            return
        if payload:
            stream.body.append(payload)
        if flags & END_STREAM:
            self._request_complete(stream)

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            identifier, value = struct.unpack_from(">HL", payload, offset)
            if identifier == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif identifier == SETTINGS_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise _ConnectionError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
            # The header table size only limits the peer's decoder for what we send; our fields are
            # literals without indexing, so any size (even 0) is already honoured.
        self._send(frame(SETTINGS, ACK, 0))
        self._release_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE must carry 4 bytes")
        increment = struct.unpack(">L", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        self._release_blocked()

    # --- calls -------------------------------------------------------------------------------------------

    def _request_complete(self, stream: _Stream) -> None:
        stream.remote_done = True
        if stream.task is not None or stream.closed:
            return
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        stream.body = []
        if len(body) < 5:
            self._finish(stream, GrpcStatus.INTERNAL, "a call must carry one length-prefixed message")
            return
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if length != len(body) - 5:
            self._finish(stream, GrpcStatus.INTERNAL, "a unary call must carry exactly one message")
            return
        message = body[5:]
        if compressed:
            if stream.encoding != b"gzip":
                self._finish(
                    stream,
                    GrpcStatus.UNIMPLEMENTED,
                    f"message compressed with {stream.encoding.decode('latin-1')!r}; only gzip is accepted",
                )
                return
            try:
                message = zlib.decompress(message, wbits=31)
            except zlib.error as exc:
                self._finish(stream, GrpcStatus.INTERNAL, f"cannot gunzip the message: {exc}")
                return
        method = stream.method
        assert method is not None
        if method.streaming:
            stream.task = self.loop.create_task(self._run_stream(stream, method.handler(message)))
            return
        task = asyncio.ensure_future(method.handler(message))
        stream.task = task
        task.add_done_callback(lambda done: self._unary_done(stream, done))

    def _unary_done(self, stream: _Stream, task: asyncio.Future[Any]) -> None:
        if stream.closed:
            return
        if task.cancelled():
            self._finish(stream, GrpcStatus.CANCELLED, "call cancelled")
            return
        error = task.exception()
        if error is None:
            self._answer(stream, task.result())
        elif isinstance(error, GrpcError):
            self._finish(stream, error.code, error.message)
        else:
            log.error("handler failed", exc_info=error)
            self._finish(stream, GrpcStatus.INTERNAL, f"{type(error).__name__}: {error}")

    async def _run_stream(self, stream: _Stream, messages: AsyncIterator[bytes]) -> None:
        first = True
        try:
            async for message in messages:
                if stream.closed:
                    return
                if first:
                    self._send(frame(HEADERS, END_HEADERS, stream.stream_id, RESPONSE_HEADERS))
                    first = False
                self._send_data(stream, _MESSAGE_PREFIX.pack(0, len(message)) + message, 0)
        except GrpcError as exc:
            self._end(stream, _error_fields(exc.code, exc.message), with_headers=first)
            return
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.error("stream handler failed", exc_info=exc)
            self._end(stream, _error_fields(GrpcStatus.INTERNAL, str(exc)), with_headers=first)
            return
        self._end(stream, OK_TRAILERS, with_headers=first)

    def _answer(self, stream: _Stream, message: bytes) -> None:
        self._send(frame(HEADERS, END_HEADERS, stream.stream_id, RESPONSE_HEADERS))
        self._send_data(stream, _MESSAGE_PREFIX.pack(0, len(message)) + message, 0)
        self._end(stream, OK_TRAILERS, with_headers=False)

    def _finish(self, stream: _Stream, code: int, message: str) -> None:
        """End a call with an error status, trailers-only."""
        self._end(stream, _error_fields(code, message), with_headers=True)

    def _end(self, stream: _Stream, trailer_fields: bytes, *, with_headers: bool) -> None:
        if stream.closed:
            return
        stream.closed = True
        block = RESPONSE_HEADERS + trailer_fields if with_headers else trailer_fields
        trailers = frame(HEADERS, END_HEADERS | END_STREAM, stream.stream_id, block)
        if stream.stream_id in self.blocked:
            # Trailers must follow the data still waiting for window.
            self.blocked[stream.stream_id].append((trailers, -1))
        else:
            self._send(trailers)
            self._stream_done(stream)
        if not stream.remote_done and stream.stream_id not in self.blocked:
            # Answered before the client finished sending (unknown method, message too large):
            # tell it to stop, as RFC 9113 §8.1 asks.
            self._send(frame(RST_STREAM, 0, stream.stream_id, struct.pack(">L", NO_ERROR)))

    def _stream_done(self, stream: _Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self.server._streams_ended(1)
        if self.going_away and not self.streams:
            self._close_soon()

    # --- frames out --------------------------------------------------------------------------------------

    def _send_data(self, stream: _Stream, data: bytes, flags: int) -> None:
        pending = self.blocked.get(stream.stream_id)
        if pending is not None:
            pending.append((data, flags))
            return
        sent = self._write_data(stream, data, flags)
        if sent < len(data):
            self.blocked[stream.stream_id] = [(data[sent:], flags)]

    def _write_data(self, stream: _Stream, data: bytes, flags: int) -> int:
        """Frame as much of ``data`` as the windows allow; how many bytes went out."""
        sent = 0
        while sent < len(data):
            room = min(self.send_window, stream.send_window, self.peer_max_frame, len(data) - sent)
            if room <= 0:
                return sent
            chunk = data[sent : sent + room]
            sent += room
            self.send_window -= room
            stream.send_window -= room
            self._send(frame(DATA, flags if sent == len(data) else 0, stream.stream_id, chunk))
        return sent

    def _release_blocked(self) -> None:
        for stream_id in list(self.blocked):
            if self.send_window <= 0:
                return
            stream = self.streams.get(stream_id)
            pending = self.blocked[stream_id]
            if stream is None:
                del self.blocked[stream_id]
                continue
            while pending:
                data, flags = pending[0]
                if flags == -1:  # the trailers frame, queued behind the data
                    self._send(data)
                    pending.pop(0)
                    continue
                sent = self._write_data(stream, data, flags)
                if sent < len(data):
                    pending[0] = (data[sent:], flags)
                    break
                pending.pop(0)
            if not pending:
                del self.blocked[stream_id]
                if stream.closed:
                    self._stream_done(stream)

    def _send(self, encoded: bytes) -> None:
        self.outgoing.append(encoded)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.closed or self.transport is None or not self.outgoing:
            self.outgoing.clear()
            return
        data = self.outgoing[0] if len(self.outgoing) == 1 else b"".join(self.outgoing)
        self.outgoing.clear()
        self.transport.write(data)

    def _abort(self, code: int, message: str) -> None:
        log.warning("closing an HTTP/2 connection: %s", message, extra={"h2_error": code})
        self._send(
            frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_stream_id, code) + message.encode()[:256])
        )
        self.close()

    def go_away(self) -> None:
        """Tell the peer no new streams will be served; close once those in flight are answered."""
        if self.closed:
            return
        self.going_away = True
        self._send(frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_stream_id, NO_ERROR)))
        if not self.streams:
            self._close_soon()

    def _close_soon(self) -> None:
        # After this turn's answers are queued, so they leave with the close.
        self.loop.call_soon(self.close)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()


class GrpcServer:
    """A listening socket serving ``methods`` (full paths such as ``/pkg.Service/Method``)."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        *,
        max_concurrent_streams: int = 4096,
        max_message_bytes: int = 4 * 1024 * 1024,
        max_header_list_bytes: int = 16 * 1024,
    ) -> None:
        self.methods = dict(methods)
        self.max_concurrent_streams = max_concurrent_streams
        self.max_message_bytes = max_message_bytes
        self.max_header_list_bytes = max_header_list_bytes
        # A whole message fits the stream window, so unary requests never wait for WINDOW_UPDATE.
        self.stream_window = min(max_message_bytes + 1024, MAX_WINDOW)
        self.connection_window = min(max(self.stream_window * 4, 16 * 1024 * 1024), MAX_WINDOW)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 picks a free port); the port listened on."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Calls received and not yet answered, reset or lost with their connection."""
        return self._in_flight

    def _stream_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _streams_ended(self, count: int) -> None:
        self._in_flight -= count
        if self._in_flight <= 0:
            self._in_flight = 0
            self._idle.set()

    async def stop(self, grace: float) -> None:
        """Stop accepting, send GOAWAY, let calls in flight finish for ``grace`` seconds, then close."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
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


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a (host, port) pair; an empty host listens everywhere."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"listen address must be host:port, not {listen!r}")
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)
