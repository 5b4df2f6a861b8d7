"""The lean transport of ``GrpcServer``: our own HTTP/2 framing, hardened, for the rate-limit latency target.

Used by ``grpcserver.GrpcServer`` when built with ``transport="lean"`` (the
``--grpc-transport`` flag of ``apx-ratelimit``); the other transport is the
``h2`` library (``grpcserver._Connection``). Both subclass
``grpcconn.ConnectionBase`` (calls, limits, reading, ends: what the two do
alike); this module is only what is lean: frames in, frames out. Why this
exists beside ``h2``: ``h2`` costs ≈127 µs of CPU per call here, so one
process saturates below the 5,000 calls/s at which the service must answer
within 2 ms (p99); this transport costs a fraction of that
(``TRANSPORT.md`` has the numbers of both from the same run). What is a library's still is: HPACK
(``hpack``, through ``hpackcache``), the RFC 9113 §8 header checks
(``h2.utilities.validate_headers``), gzip (``zlib``, capped, in
``grpcmessage``). What is ours is reading the 9-byte frame headers and the
few fields of each frame type (``h2wire``), and the state of streams and
windows.

Every limit of ``grpclimits.TransportLimits`` holds here as in the ``h2``
transport, with the same defaults, counted under the same reasons
(``grpclimits.REJECT_REASONS``); ``tests/dataplane/test_transport_hostile.py``
and ``test_grpcserver.py`` run against both, and a differential fuzz test
sends the same random frames to both.

* A header block is bounded while it arrives: at most
  ``max_continuation_frames`` CONTINUATION frames and
  ``max_header_list_bytes`` encoded bytes, counted frame by frame before
  anything is decoded (GOAWAY ENHANCE_YOUR_CALM); the decoded list is
  bounded by the decoder (``hpack``'s ``max_header_list_size``).
* Request bytes are bounded by flow control: a stream's window is one
  message and is never re-opened; the connection's window is
  ``connection_buffer_bytes`` and bytes are handed back only once a
  message is handed to its handler or dropped, so a peer can never make
  the server hold more (sending past it is FLOW_CONTROL_ERROR).
* Streams beyond ``max_concurrent_streams`` are refused (REFUSED_STREAM),
  malformed requests reset (PROTOCOL_ERROR, RFC 9113 §8.1.1); both, and
  the peer's own resets, spend the connection's ``ResetBudget`` (GOAWAY
  ENHANCE_YOUR_CALM when empty: rapid reset).
* Any other protocol error is a connection error: GOAWAY with its code,
  then close (that connection only). An exception of ours does the same
  with INTERNAL_ERROR and one log line; nothing escapes to the loop.

Where ``h2`` is lenient and it does no harm (DATA on a closed stream is a
stream error, RST_STREAM on an idle stream is ignored once a stream was
opened, no SETTINGS first), this transport
is lenient the same way, so the two answer a peer alike; where ``h2``
picks another error code than RFC 9113 (SETTINGS ACK with a payload),
this one follows the RFC.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from hpack.exceptions import HPACKError, OversizedHeaderListError

from .grpcconn import CallStream, ConnectionBase, HeaderList, start_task
from .grpclimits import (
    MAX_WINDOW,
    REJECT_HEADER_BLOCK,
    REJECT_MALFORMED,
    REJECT_REFUSED_STREAM,
    REJECT_RESET_RATE,
)
from .grpcmessage import OK_TRAILERS, RESPONSE_HEADERS, GrpcError, GrpcStatus
from .h2wire import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    OUR_MAX_FRAME_SIZE,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTING,
    SETTINGS,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    ProtocolViolation,
    data_payload,
    frame,
    goaway,
    header_fragment,
    rst_stream,
    settings_values,
)
from .hpackcache import CachingDecoder, LiteralEncoder

if TYPE_CHECKING:
    from .grpcserver import GrpcServer

# gRPC's 5-byte message prefix (compressed flag, length), as ``grpcmessage.frame_message`` writes it.
MESSAGE_PREFIX = struct.Struct(">BL")
LAST_FLAGS = END_HEADERS | END_STREAM

log = logging.getLogger(__name__)

# Streams remembered as reset (by either side) after they are gone, so their late frames are dropped
# quietly instead of ending the connection; the oldest are forgotten first.
_REMEMBERED_CLOSED = 1024

_REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_TRAILERS = _REQUEST._replace(is_trailer=True)


class LeanConnection(ConnectionBase):
    """One HTTP/2 connection: frames in, calls dispatched, answers out in one write per loop turn."""

    def __init__(self, server: GrpcServer) -> None:
        super().__init__(server)
        limits = self.limits
        self.buffer = b""  # input not yet parsed: part of a frame, or of the preface
        self.preface_seen = False
        self.decoder = CachingDecoder(limits.max_header_list_bytes)
        self.encoder = LiteralEncoder()
        # Streams whose request ended (or whose method is unknown) in the input being parsed: answered or
        # handed to their handler once the whole chunk is read, so the frames after them in the same
        # chunk (a reset, a protocol error) count first, as they do in h2's batch of events.
        self.ready: list[CallStream] = []
        self.last_stream_id = 0
        self.closed_streams: dict[int, bool] = {}  # stream id -> closed by a reset (True) or by END_STREAM
        # The header block being received (HEADERS then CONTINUATION frames).
        self.block: list[bytes] = []
        self.block_stream = 0
        self.block_end_stream = False
        self.block_bytes = 0
        self.continuations = 0
        # Flow control: what we may send, and what the peer may still send us.
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = OUR_MAX_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW
        self.recv_window = limits.connection_window
        self.recv_unacked = 0  # bytes consumed (handed to handlers or dropped) not yet given back
        self.reopen_below = limits.connection_window // 2
        self.out: list[bytes] = []

    # --- transport callbacks ----------------------------------------------------------------------------

    def _handshake(self) -> None:
        limits = self.limits
        settings = b"".join(
            SETTING.pack(identifier, value)
            for identifier, value in (
                (ENABLE_PUSH, 0),
                (MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
                (INITIAL_WINDOW_SIZE, limits.stream_window),
                (MAX_HEADER_LIST_SIZE, limits.max_header_list_bytes),
            )
        )
        self._send(frame(SETTINGS, 0, 0, settings))
        # The connection window starts at 64 KiB whatever SETTINGS say; open it to the buffer bound once.
        if limits.connection_window > DEFAULT_WINDOW:
            self._send(frame(WINDOW_UPDATE, 0, 0, U32.pack(limits.connection_window - DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.buffer = b""
        self.block = []
        self.ready.clear()

    # --- bytes in ----------------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        try:
            self._parse(self.buffer + data if self.buffer else data)
            if self.ready:
                if self.closed:  # the peer's GOAWAY: nothing more is answered
                    self.ready.clear()
                else:
                    self._dispatch()
        except ProtocolViolation as exc:
            self.ready.clear()
            self._abort(exc.code, str(exc), exc.reason)
        except Exception as exc:
            self.ready.clear()
            self._internal_error(exc)

    def _dispatch(self) -> None:
        ready, self.ready = self.ready, []
        for stream in ready:
            if stream.closed:
                continue  # reset meanwhile, or listed twice
            if stream.method is None:
                self._unimplemented(stream)
            else:
                self._request_complete(stream)

    def _parse(self, buffer: bytes) -> None:
        position = 0
        if not self.preface_seen:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(buffer):
                    raise ProtocolViolation(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self.buffer = buffer
                return
            if not buffer.startswith(PREFACE):
                raise ProtocolViolation(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self.preface_seen = True
            position = len(PREFACE)
        size = len(buffer)
        unpack = FRAME_HEADER.unpack_from
        while size - position >= 9:
            high, low, kind, flags, stream_id = unpack(buffer, position)
            length = (high << 8) | low
            if length > OUR_MAX_FRAME_SIZE:
                # Refused on its header: a peer cannot make us buffer a frame we never allowed.
                raise ProtocolViolation(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = position + 9 + length
            if end > size:
                break
            self._frame(kind, flags, stream_id & 0x7FFFFFFF, buffer[position + 9 : end])
            position = end
            if self.closed:
                return
        self.buffer = buffer[position:] if position < size else b""

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block_stream:
            if kind != CONTINUATION or stream_id != self.block_stream:
                raise ProtocolViolation(PROTOCOL_ERROR, "header block interrupted")
            self._continuation(flags, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "PING must carry 8 bytes")
            if not flags & ACK:
                self._send(frame(PING, ACK, 0, payload))
        elif kind == PRIORITY:
            if not stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "PRIORITY must carry 5 bytes")
            if U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, f"stream {stream_id} depends on itself")
            # Priorities are otherwise ignored, as RFC 9113 §5.3.2 allows.
        elif kind == GOAWAY:
            if stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            # The peer ends the connection: what is running is moot (as with h2, which sends no more).
            self._close_now()
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation(PROTOCOL_ERROR, "clients cannot push")
        elif kind == CONTINUATION:
            raise ProtocolViolation(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        # Unknown frame types are ignored (RFC 9113 §5.5).

    # --- header blocks -----------------------------------------------------------------------------------

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        self.block = [header_fragment(flags, stream_id, payload)]
        self.block_stream = stream_id
        self.block_end_stream = bool(flags & END_STREAM)
        self.block_bytes = len(payload)
        self.continuations = 0
        self._check_block()
        if flags & END_HEADERS:
            self._block_done()

    def _continuation(self, flags: int, payload: bytes) -> None:
        self.continuations += 1
        self.block_bytes += len(payload)
        self._check_block()
        self.block.append(payload)
        if flags & END_HEADERS:
            self._block_done()

    def _check_block(self) -> None:
        # Counted as the frames arrive, before anything is decoded: the CONTINUATION flood costs one
        # comparison per frame and is cut at the first frame over either bound.
        limits = self.limits
        if self.continuations > limits.max_continuation_frames:
            raise ProtocolViolation(
                ENHANCE_YOUR_CALM,
                f"header block of more than {limits.max_continuation_frames} CONTINUATION frames",
                REJECT_HEADER_BLOCK,
            )
        if self.block_bytes > limits.max_header_list_bytes:
            raise ProtocolViolation(
                ENHANCE_YOUR_CALM,
                f"header block larger than {limits.max_header_list_bytes} bytes",
                REJECT_HEADER_BLOCK,
            )

    def _block_done(self) -> None:
        stream_id = self.block_stream
        block = self.block[0] if len(self.block) == 1 else b"".join(self.block)
        end_stream = self.block_end_stream
        self.block_stream = 0
        self.block = []
        # Every block is decoded, whatever becomes of its stream: the HPACK table must stay in step.
        try:
            headers: HeaderList = self.decoder.decode(block, raw=True)
        except OversizedHeaderListError as exc:
            raise ProtocolViolation(
                ENHANCE_YOUR_CALM, f"header list too large: {exc}", REJECT_HEADER_BLOCK
            ) from exc
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise ProtocolViolation(COMPRESSION_ERROR, f"bad header block: {exc}") from exc
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._trailers(stream, headers, end_stream)
            return
        if stream_id <= self.last_stream_id:
            closed_by_reset = self.closed_streams.get(stream_id)
            if closed_by_reset:
                # A stream reset a moment ago: its late block was decoded for the table; a stream error.
                self._reset(stream_id, STREAM_CLOSED, remember=False)
                return
            code = STREAM_CLOSED if closed_by_reset is not None else PROTOCOL_ERROR
            raise ProtocolViolation(code, f"HEADERS on closed stream {stream_id}")
        self.last_stream_id = stream_id
        if self.going_away:
            # Opened after our GOAWAY crossed it: the client retries elsewhere.
            self._reset(stream_id, REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self.server._rejected(REJECT_REFUSED_STREAM)
            self._reset(stream_id, REFUSED_STREAM)
            self._spend_reset()
            return
        if not self._valid_request(block, headers):
            self.server._rejected(REJECT_MALFORMED)
            self._reset(stream_id, PROTOCOL_ERROR)
            self._spend_reset()
            return
        self._request(stream_id, headers, end_stream)

    def _valid_request(self, block: bytes, headers: HeaderList) -> bool:
        """RFC 9113 §8 checks by h2's validator, remembered for a block seen before (``hpackcache``)."""
        decoder = self.decoder
        if decoder.known_valid(block):
            return True
        try:
            for _ in validate_headers(headers, _REQUEST):
                pass
        except ProtocolError:
            return False
        decoder.remember_valid(block)
        return True

    def _trailers(self, stream: CallStream, headers: HeaderList, end_stream: bool) -> None:
        if stream.remote_done:
            # The request had ended already (half-closed): a stream error, as h2 treats it.
            self._drop(stream)
            self._reset(stream.stream_id, STREAM_CLOSED)
            return
        if not end_stream:
            raise ProtocolViolation(PROTOCOL_ERROR, "trailers without END_STREAM")
        try:
            for _ in validate_headers(headers, _TRAILERS):
                pass
        except ProtocolError:
            self.server._rejected(REJECT_MALFORMED)
            self._drop(stream)
            self._reset(stream.stream_id, PROTOCOL_ERROR)
            self._spend_reset()
            return
        stream.remote_done = True  # unary and server-streaming calls have no trailers to read
        self.ready.append(stream)

    # --- other frames ------------------------------------------------------------------------------------

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)  # flow control counts the whole payload, padding included
        self.recv_window -= length
        if self.recv_window < 0:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        payload = data_payload(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle_stream(stream_id):
                raise ProtocolViolation(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            # A closed stream: the bytes are dropped (and handed back to the window), and the stream
            # reset with STREAM_CLOSED; a stream error, as h2 treats it, not one that ends the connection.
            self._give_back(stream_id, length)
            self._reset(stream_id, STREAM_CLOSED, remember=False)
            return
        if stream.remote_done:
            # DATA after END_STREAM: a stream error (STREAM_CLOSED), as h2 treats it.
            self._give_back(stream_id, length)
            self._drop(stream)
            self._reset(stream_id, STREAM_CLOSED)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, f"DATA beyond the window of stream {stream_id}")
        if stream.closed:
            self._give_back(stream_id, length)  # answered already (waiting for window to send it): dropped
        elif not self._take_data(stream, payload, length):
            return
        if flags & END_STREAM:
            stream.remote_done = True
            self.ready.append(stream)

    def _idle_stream(self, stream_id: int) -> bool:
        """Never opened: above the highest the client opened, or even (this server pushes nothing)."""
        return stream_id > self.last_stream_id or not stream_id & 1

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "RST_STREAM must carry 4 bytes")
        stream = self.streams.get(stream_id)
        if stream is None:
            if not self.last_stream_id:
                # Before any stream was opened, as h2's connection state machine has it (and RFC 9113 §5.1).
                raise ProtocolViolation(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return  # closed already, or idle once streams are open: nothing to reset (h2 ignores it too)
        self._drop(stream)
        self._remember_closed(stream_id, by_reset=True)
        self._spend_reset()

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        values = settings_values(flags, stream_id, payload)
        if values is None:
            return  # our SETTINGS acknowledged: they were in force from the start
        for identifier, value in values:
            if identifier == INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolViolation(FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            elif identifier == MAX_FRAME_SIZE:
                self.peer_max_frame = value
            elif identifier == HEADER_TABLE_SIZE:
                # Our fields are literals without indexing; the size update is still signalled (RFC 7541).
                self.encoder.header_table_size = value
        self._send(frame(SETTINGS, ACK, 0))
        self.handshaken = True
        if self.blocked:
            self._release_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "WINDOW_UPDATE must carry 4 bytes")
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if increment == 0:
            # A stream error for a stream's window in RFC 9113 §6.9; treated as a connection error, as h2
            # does (§5.4.1 allows it).
            raise ProtocolViolation(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if stream_id == 0:
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                if self._idle_stream(stream_id):
                    raise ProtocolViolation(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
                return  # closed already
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._drop(stream)
                self._reset(stream_id, FLOW_CONTROL_ERROR)
                self._spend_reset()
                return
        if self.blocked:
            self._release_blocked()

    # --- streams -----------------------------------------------------------------------------------------

    def _request(self, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
        stream = CallStream(stream_id, self.peer_initial_window, self.limits.stream_window)
        self._open(stream, headers)  # method None: answered UNIMPLEMENTED by _dispatch
        stream.remote_done = end_stream
        if end_stream or stream.method is None:
            self.ready.append(stream)

    def _reset(self, stream_id: int, code: int, *, remember: bool = True) -> None:
        self._send(rst_stream(stream_id, code))
        if remember:  # not for a stream closed already: how it closed stays as it was
            self._remember_closed(stream_id, by_reset=True)

    def _remember_closed(self, stream_id: int, *, by_reset: bool) -> None:
        closed = self.closed_streams
        closed[stream_id] = by_reset
        if len(closed) > _REMEMBERED_CLOSED:
            del closed[next(iter(closed))]

    def _spend_reset(self) -> None:
        if not self.resets.spend(self.loop.time()):
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "too many reset or refused streams", REJECT_RESET_RATE)

    def _give_back(self, stream_id: int, length: int) -> None:
        # One window for the whole connection: the stream's own is never re-opened (one message each).
        if not length:
            return
        self.recv_unacked += length
        # Handed back in one WINDOW_UPDATE per half window in the usual case; at once while the window is
        # low (unfinished bodies hold it), so a consumed byte is never withheld from a waiting peer.
        if self.recv_window < self.reopen_below or self.recv_unacked >= self.reopen_below:
            self._send(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_unacked)))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0

    # --- calls -------------------------------------------------------------------------------------------

    def _start_unary(self, stream: CallStream, handler: Callable[[bytes], Any], message: bytes) -> None:
        # A task which answers as it ends: no done callback, so no extra loop turn between the result
        # and the answer.
        stream.task = start_task(self._call(stream, handler, message))

    async def _call(self, stream: CallStream, handler: Any, message: bytes) -> None:
        """Run a unary handler and answer its call; every outcome is handled here, none escapes the task."""
        try:
            result = await handler(message)
        except asyncio.CancelledError:
            # Reset by the client or lost with the connection (nothing to say, nothing to log), or
            # cancelled from elsewhere while the stream is open: CANCELLED.
            if not stream.closed and not self.closed:
                self._finish(stream, GrpcStatus.CANCELLED, "call cancelled")
            return
        except GrpcError as exc:
            outcome: tuple[int, str] | None = (exc.code, exc.message)
        except Exception as exc:
            log.error("handler failed", exc_info=exc)
            outcome = (GrpcStatus.INTERNAL, f"{type(exc).__name__}: {exc}")
        else:
            outcome = None
        if stream.closed or self.closed:
            return
        try:
            if outcome is None:
                self._answer(stream, result)
            else:
                self._finish(stream, *outcome)
        except Exception as exc:
            self._internal_error(exc)

    # --- bytes out ---------------------------------------------------------------------------------------

    def _answer(self, stream: CallStream, message: bytes) -> None:
        """A unary answer (HEADERS, DATA, trailers) as one piece of output when the windows take it whole.

        The usual case of every call: the same three frames ``ConnectionBase._answer`` queues through its
        hooks (the same HPACK blocks, in the same order), built in one go instead of a dozen calls. Anything
        else (a window too small, answer bytes already waiting, an HPACK table size update to signal)
        takes the general path.
        """
        size = len(message) + 5  # the gRPC message prefix
        if (
            size > self.send_window
            or size > stream.send_window
            or size > self.peer_max_frame
            or stream.pending
            or stream.closed
            or self.encoder.table_size_changes
        ):
            super()._answer(stream, message)
            return
        encode = self.encoder.encode
        headers = encode(RESPONSE_HEADERS)
        trailers = encode(OK_TRAILERS)
        stream_id = stream.stream_id
        pack = FRAME_HEADER.pack
        self.send_window -= size
        stream.send_window -= size
        stream.closed = True
        answer = b"".join(
            (
                pack(len(headers) >> 8, len(headers) & 0xFF, HEADERS, END_HEADERS, stream_id),
                headers,
                pack(size >> 8, size & 0xFF, DATA, 0, stream_id),
                MESSAGE_PREFIX.pack(0, len(message)),
                message,
                pack(len(trailers) >> 8, len(trailers) & 0xFF, HEADERS, LAST_FLAGS, stream_id),
                trailers,
            )
        )
        # Queued like every answer of this loop turn, for one write per turn. Writing a lone answer at once
        # (a loop turn sooner) was measured and not kept: the first answer of each turn leaving alone
        # splits the client's next requests, and with them every later batch (TRANSPORT.md).
        self._send(answer)
        if stream.remote_done:
            self._remember_closed(stream_id, by_reset=False)
        else:
            self._reset(stream_id, NO_ERROR)  # answered before the request ended, as _send_trailers does
        self._stream_done(stream)

    def _headers_frame(self, stream_id: int, fields: HeaderList, flags: int) -> bytes:
        block = self.encoder.encode(fields if type(fields) is tuple else tuple(fields))
        return frame(HEADERS, END_HEADERS | flags, stream_id, block)

    def _send_headers(self, stream_id: int, fields: HeaderList) -> None:
        self._send(self._headers_frame(stream_id, fields, 0))

    def _last_block(self, stream_id: int, fields: HeaderList) -> bytes:
        # Encoded at once, in the order the blocks are made, as the HPACK state wants.
        return self._headers_frame(stream_id, fields, END_STREAM)

    def _send_trailers(self, stream: CallStream, last: bytes) -> None:
        self._send(last)
        if stream.remote_done:
            self._remember_closed(stream.stream_id, by_reset=False)
        else:
            # Answered before the client finished sending (unknown method, too large): tell it to stop,
            # as RFC 9113 §8.1 asks.
            self._reset(stream.stream_id, NO_ERROR)
        self._stream_done(stream)

    def _can_send(self) -> bool:
        return self.send_window > 0  # no stream can send while the connection's window is shut

    def _write_data(self, stream: CallStream, data: bytes) -> int:
        """Frame as much of ``data`` as the windows allow; how many bytes went."""
        size = len(data)
        stream_id = stream.stream_id
        if size <= self.send_window and size <= stream.send_window and size <= self.peer_max_frame:
            self.send_window -= size
            stream.send_window -= size
            self._send(frame(DATA, 0, stream_id, data))
            return size
        sent = 0
        while sent < size:
            room = min(self.send_window, stream.send_window, self.peer_max_frame, size - sent)
            if room <= 0:
                break
            self.send_window -= room
            stream.send_window -= room
            self._send(frame(DATA, 0, stream_id, data[sent : sent + room]))
            sent += room
        return sent

    def _send(self, encoded: bytes) -> None:
        self.out.append(encoded)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            out.clear()
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    # --- ends of connections ----------------------------------------------------------------------------

    def _abort(self, code: int, message: str, reason: str) -> None:
        if self.closed:
            return
        self.server._rejected(reason)
        log.debug("closing an HTTP/2 connection: %s", message, extra={"reason": reason})
        self._send(goaway(self.last_stream_id, code, message.encode()))
        self._close_now()

    def _send_goaway(self) -> None:
        self._send(goaway(self.last_stream_id, NO_ERROR))
        self._flush()
