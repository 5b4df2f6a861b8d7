"""gRPC's message framing and status codes over HTTP/2: request bodies in, response headers and trailers out.

Used by both transports (``grpcserver``, ``grpclean``) and by the handlers they serve
(``GrpcError``, ``GrpcStatus``). A request body is one length-prefixed
message, ``identity`` or ``gzip``; a gzip message is inflated in a stream
with its output capped at the message limit, so a small compressed body
cannot inflate to more than the limit (a decompression bomb gets
RESOURCE_EXHAUSTED after at most ``limit`` bytes of work).
"""

from __future__ import annotations

import struct
import urllib.parse
import zlib

from .grpclimits import MESSAGE_PREFIX_BYTES

_PREFIX = struct.Struct(">BL")
GZIP_WBITS = 31  # zlib's window bits for a gzip header and trailer

# Headers as the HTTP/2 library takes them (bytes, already lowercase: no normalisation needed).
RESPONSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
)
OK_TRAILERS: tuple[tuple[bytes, bytes], ...] = ((b"grpc-status", b"0"),)
# grpc-message is percent-encoded: everything outside printable ASCII, and '%' itself.
_MESSAGE_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"


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
    """Raised by a handler (or the transport) to end a call with ``code`` and ``message``."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_trailers(code: int, message: str) -> list[tuple[bytes, bytes]]:
    """``grpc-status`` and, when there is one, the percent-encoded ``grpc-message``."""
    fields = [(b"grpc-status", b"%d" % code)]
    if message:
        quoted = urllib.parse.quote(message[:1024], safe=_MESSAGE_SAFE)
        fields.append((b"grpc-message", quoted.encode("ascii")))
    return fields


def frame_message(message: bytes) -> bytes:
    """One uncompressed length-prefixed message."""
    return _PREFIX.pack(0, len(message)) + message


def decode_request(body: bytes, encoding: bytes, limit: int) -> bytes:
    """The one message of a unary request body; ``GrpcError`` when it is not one or is too large."""
    if len(body) < MESSAGE_PREFIX_BYTES:
        raise GrpcError(GrpcStatus.INTERNAL, "a call must carry one length-prefixed message")
    compressed, length = _PREFIX.unpack_from(body)
    if length != len(body) - MESSAGE_PREFIX_BYTES:
        raise GrpcError(GrpcStatus.INTERNAL, "a unary call must carry exactly one message")
    message = body[MESSAGE_PREFIX_BYTES:]
    if not compressed:
        if length > limit:
            raise GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, f"request message larger than {limit} bytes")
        return message
    if encoding != b"gzip":
        raise GrpcError(
            GrpcStatus.UNIMPLEMENTED,
            f"message compressed with {encoding.decode('latin-1')!r}; only gzip is accepted",
        )
    return inflate(message, limit)


def inflate(compressed: bytes, limit: int) -> bytes:
    """Gunzip ``compressed``, stopping as soon as the output would pass ``limit`` bytes."""
    inflater = zlib.decompressobj(wbits=GZIP_WBITS)
    try:
        # max_length bounds the work and the memory: one byte over the limit is enough to know.
        message = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise GrpcError(GrpcStatus.INTERNAL, f"cannot gunzip the message: {exc}") from exc
    if len(message) > limit:
        raise GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, f"request message inflates past {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise GrpcError(GrpcStatus.INTERNAL, "cannot gunzip the message: truncated or trailing data")
    return message
