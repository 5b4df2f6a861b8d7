"""The ``h2`` protocol state of one server connection, with the guards a hostile peer needs beyond ``h2``'s.

Used by ``grpcserver._Connection``: ``new_connection`` builds the
``H2Connection`` with the server's settings, ``HeaderBlockGuard`` looks at
the raw bytes before ``h2`` does. What is added to ``h2`` 4.x, and why:

* **Header blocks are bounded by frames and by bytes.** ``h2`` buffers a
  header block until END_HEADERS and only refuses it after 64 CONTINUATION
  frames (up to 1 MiB of encoded block per connection before anything is
  decoded). The guard walks the 9-byte frame headers of the input (no
  payload is copied) and ends the connection as soon as an open block has
  more CONTINUATION frames or more bytes than allowed. Its cost is linear
  in the frames received.
* **Streams beyond the advertised limit are refused, not fatal.** ``h2``
  treats one stream too many as a connection error; RFC 9113 §5.1.2 also
  allows REFUSED_STREAM, which lets a well-meaning client that raced the
  SETTINGS retry. The stream is still opened inside ``h2`` (so its header
  block goes through the HPACK decoder and the tables stay in step) and
  reset at once; ``StreamRefused`` tells the transport, which counts it
  toward the peer's reset budget.
* **A malformed request is a stream error.** ``h2``'s validator checks each
  header block (uppercase names, connection-specific fields, pseudo-headers
  after regular ones, a ``te`` other than ``trailers``, missing or repeated
  pseudo-headers, RFC 9113 §8.2-8.3); run inside ``h2`` it fails the whole
  connection, run here it resets only that request with PROTOCOL_ERROR, as
  §8.1.1 asks. A block already validated is not checked again while the
  HPACK table is unchanged (``hpackcache``).

These overrides lean on internals of ``h2`` (``_receive_headers_frame``,
``open_inbound_streams``, the ``encoder``/``decoder`` attributes), which is
why the dependency is pinned to 4.x.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import Event, RequestReceived, StreamEnded, TrailersReceived
from h2.exceptions import ProtocolError, TooManyStreamsError
from h2.settings import SettingCodes
from h2.utilities import HeaderValidationFlags, validate_headers

from .grpclimits import TransportLimits
from .hpackcache import CachingDecoder, LiteralEncoder

PREFACE_BYTES = 24
_FRAME_HEADER = struct.Struct(">HBBBL")
_HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x1, 0x5, 0x9
_END_HEADERS = 0x4

_REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_TRAILERS = _REQUEST._replace(is_trailer=True)

CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,  # bytes in and out: no decoding of every name and value
    # Validated by ServerH2Connection with h2's own validator, once per distinct header block.
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    # Our own response headers are constants, already lowercase and valid.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    split_outbound_cookies=False,
)


class StreamRefused(Event):
    """A stream was reset by the server as it opened (too many streams, or a malformed request)."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code


class ServerH2Connection(H2Connection):
    """``H2Connection`` (server side) that refuses excess streams and resets malformed requests."""

    _admitting = False

    @property
    def open_inbound_streams(self) -> int:
        # h2 checks this before opening a stream and fails the connection when it is at the limit;
        # while a stream over the limit is being admitted (to be refused), the check must pass.
        return 0 if self._admitting else int(super().open_inbound_streams)

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Any], list[Event]]:
        stream_id = int(frame.stream_id)
        try:
            frames, events = super()._receive_headers_frame(frame)
        except TooManyStreamsError:
            self._admitting = True
            try:
                frames, events = super()._receive_headers_frame(frame)
            finally:
                self._admitting = False
            return frames, self._refuse(stream_id, ErrorCodes.REFUSED_STREAM, events)
        for event in events:
            if isinstance(event, RequestReceived | TrailersReceived) and not self._valid(frame.data, event):
                return frames, self._refuse(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
        return frames, events

    def _valid(self, block: bytes, event: RequestReceived | TrailersReceived) -> bool:
        """RFC 9113 §8 checks by h2's validator, remembered for a request block seen before."""
        decoder = self.decoder
        request = isinstance(event, RequestReceived)
        if request and isinstance(decoder, CachingDecoder) and decoder.known_valid(block):
            return True
        try:
            for _ in validate_headers(event.headers or (), _REQUEST if request else _TRAILERS):
                pass
        except ProtocolError:
            return False
        if request and isinstance(decoder, CachingDecoder):
            decoder.remember_valid(block)
        return True

    def _refuse(self, stream_id: int, code: ErrorCodes, events: list[Event]) -> list[Event]:
        self.reset_stream(stream_id, code)
        kept = [e for e in events if not isinstance(e, RequestReceived | StreamEnded)]
        kept.append(StreamRefused(stream_id, int(code)))
        return kept


def new_connection(limits: TransportLimits) -> ServerH2Connection:
    """A server connection whose first SETTINGS advertise ``limits``; nothing sent yet."""
    connection = ServerH2Connection(config=CONFIG)
    settings: dict[SettingCodes | int, int] = {
        SettingCodes.ENABLE_PUSH: 0,
        SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
        SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
    }
    # Applied before the first SETTINGS leave and acknowledged at once on our side too: h2 enforces
    # what it advertised from the first frame on, not from the peer's ACK.
    connection.local_settings.update(settings)
    connection.local_settings.acknowledge()
    decoder = CachingDecoder(limits.max_header_list_bytes)
    decoder.max_allowed_table_size = connection.local_settings.header_table_size
    connection.decoder = decoder
    connection.encoder = LiteralEncoder()
    return connection


class HeaderBlockGuard:
    """Counts header-block frames and bytes in the raw input, before ``h2`` buffers them."""

    __slots__ = ("block_bytes", "continuations", "header", "in_block", "max_bytes", "max_frames", "skip")

    def __init__(self, max_bytes: int, max_frames: int) -> None:
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.skip = PREFACE_BYTES  # payload bytes (or preface) still to pass over
        self.header = b""  # an incomplete 9-byte frame header carried to the next chunk
        self.in_block = False
        self.block_bytes = 0
        self.continuations = 0

    def feed(self, data: bytes) -> str | None:
        """Walk ``data``'s frame headers; a reason when a header block goes over its bounds."""
        position = 0
        size = len(data)
        if self.header:
            need = 9 - len(self.header)
            self.header += data[:need]
            if len(self.header) < 9:
                return None
            position = need
            reason = self._frame(*_FRAME_HEADER.unpack(self.header))
            self.header = b""
            if reason:
                return reason
        unpack = _FRAME_HEADER.unpack_from
        while True:
            position += self.skip
            if position > size:
                self.skip = position - size
                return None
            self.skip = 0
            if size - position < 9:
                self.header = data[position:]
                return None
            reason = self._frame(*unpack(data, position))
            if reason:
                return reason
            position += 9

    def _frame(self, high: int, low: int, kind: int, flags: int, _stream: int) -> str | None:
        length = (high << 8) | low
        self.skip = length
        if kind == _CONTINUATION and self.in_block:
            self.continuations += 1
            self.block_bytes += length
            if self.continuations > self.max_frames:
                return f"header block of more than {self.max_frames} CONTINUATION frames"
        elif kind in (_HEADERS, _PUSH_PROMISE):
            self.in_block = True
            self.continuations = 0
            self.block_bytes = length
        else:
            return None  # h2 itself refuses any other frame inside a header block
        if self.block_bytes > self.max_bytes:
            return f"header block larger than {self.max_bytes} bytes"
        if flags & _END_HEADERS:
            self.in_block = False
        return None
