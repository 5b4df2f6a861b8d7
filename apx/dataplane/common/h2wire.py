"""RFC 9113 on the wire for the lean transport: frame types, flags, settings, error codes, a few parsers.

Used by ``grpclean.LeanConnection`` (the only user): building frames, and
taking apart the payloads whose layout has rules of its own (HEADERS padding
and priority fields, DATA padding, SETTINGS with the checks of §6.5.2).
Everything here is pure: bytes in, values out, ``ProtocolViolation`` (the
error code to send in GOAWAY) when the peer broke a rule.
"""

from __future__ import annotations

import struct

from .grpclimits import MAX_WINDOW, REJECT_PROTOCOL

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 0x1, 0x2, 0x3, 0x4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, ENABLE_CONNECT_PROTOCOL = 0x5, 0x6, 0x8

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
OUR_MAX_FRAME_SIZE = 16_384  # the protocol's default: never advertised otherwise

FRAME_HEADER = struct.Struct(">HBBBL")
U32 = struct.Struct(">L")
SETTING = struct.Struct(">HL")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame on the wire."""
    length = len(payload)
    return FRAME_HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


class ProtocolViolation(Exception):
    """The peer broke the protocol or a limit: GOAWAY with ``code`` and close."""

    def __init__(self, code: int, message: str, reason: str = REJECT_PROTOCOL) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def header_fragment(flags: int, stream_id: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame's payload: padding and priority fields taken off."""
    start, end = 0, len(payload)
    pad = 0
    if flags & PADDED:
        if not payload:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "PADDED HEADERS without a pad length")
        pad = payload[0]
        start = 1
    rest = end - start  # what follows the pad length: priority fields, fragment and padding
    if flags & PRIORITY_FLAG:
        if rest < 5:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
        if U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, f"stream {stream_id} depends on itself")
        start += 5
    # Padding as long as what follows the pad length (or longer) is refused, as hyperframe refuses it
    # for the h2 transport (RFC 9113 §6.2 leaves that exact length in a grey zone).
    if pad and (pad >= rest or pad > end - start):
        raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[start : end - pad]


def data_payload(flags: int, payload: bytes) -> bytes:
    """A DATA frame's data: padding taken off (flow control counts the whole payload still)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def settings_values(flags: int, stream_id: int, payload: bytes) -> list[tuple[int, int]] | None:
    """A SETTINGS frame's (identifier, value) pairs, all checked; None for an acknowledgement."""
    if stream_id:
        raise ProtocolViolation(PROTOCOL_ERROR, "SETTINGS on a stream")
    if flags & ACK:
        if payload:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")  # RFC 9113 §6.5
        return None
    if len(payload) % 6:
        raise ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
    values: list[tuple[int, int]] = [
        SETTING.unpack_from(payload, offset) for offset in range(0, len(payload), 6)
    ]
    for identifier, value in values:  # all checked before any is applied
        if identifier in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL) and value > 1:
            raise ProtocolViolation(PROTOCOL_ERROR, f"SETTINGS {identifier} of {value}")
        if identifier == INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
        if identifier == MAX_FRAME_SIZE and not OUR_MAX_FRAME_SIZE <= value <= 16_777_215:
            raise ProtocolViolation(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE of {value}")
    return values


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame (``debug`` cut to 256 bytes)."""
    return frame(GOAWAY, 0, 0, U32.pack(last_stream_id) + U32.pack(code) + debug[:256])


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, U32.pack(code))
