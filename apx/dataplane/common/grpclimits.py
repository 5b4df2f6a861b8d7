"""The limits the gRPC transport enforces against hostile or broken peers, and the reset-rate budget.

Used by ``grpcserver.GrpcServer`` and both its transports (one
``TransportLimits`` per server, one ``ResetBudget`` per connection; the
rejection reasons of the ``apx_ratelimit_grpc_rejected_total`` metric), and
filled from ``apx-ratelimit``'s flags by ``ratelimit.main``. Every default is
safe on its own: a peer that keeps to the protocol and to what a gRPC client
(Envoy, ``grpcio``) does never meets one of them; a peer that floods meets
one quickly and loses its connection or its stream, never the process or the
other connections. Why each exists is in ``apx/dataplane/common/TRANSPORT.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_WINDOW = 2**31 - 1
MESSAGE_PREFIX_BYTES = 5  # gRPC's compressed flag and 4-byte length in front of every message

# Why a peer was refused something: the label of apx_ratelimit_grpc_rejected_total (a closed set),
# shared by both transports.
REJECT_CONNECTIONS = "max_connections"
REJECT_HANDSHAKE = "handshake_timeout"
REJECT_IDLE = "idle_timeout"
REJECT_REFUSED_STREAM = "refused_stream"
REJECT_MALFORMED = "malformed_request"
REJECT_RESET_RATE = "reset_rate"
REJECT_HEADER_BLOCK = "header_block"
REJECT_MESSAGE_SIZE = "message_size"
REJECT_PROTOCOL = "protocol_error"
REJECT_INTERNAL = "internal_error"
REJECT_REASONS = (
    REJECT_CONNECTIONS,
    REJECT_HANDSHAKE,
    REJECT_IDLE,
    REJECT_REFUSED_STREAM,
    REJECT_MALFORMED,
    REJECT_RESET_RATE,
    REJECT_HEADER_BLOCK,
    REJECT_MESSAGE_SIZE,
    REJECT_PROTOCOL,
    REJECT_INTERNAL,
)


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Bounds on what one peer may make the server hold or do."""

    # Connections open at once; beyond it a new one is accepted and closed at once, so the file
    # descriptors stay below the process limit and the connections already served are unaffected.
    max_connections: int = 1024
    # From accept to the client's preface and SETTINGS (slowloris at the handshake).
    handshake_timeout: float = 10.0
    # No call running for this long: GOAWAY and close (a half-sent request does not count as a call).
    idle_timeout: float = 300.0
    # Streams open per connection (advertised in SETTINGS); one more is refused with REFUSED_STREAM.
    max_concurrent_streams: int = 256
    # One request message, after decompression (gRPC's default limit on both ends).
    max_message_bytes: int = 4 * 1024 * 1024
    # Request bytes one connection may have buffered: its flow-control window, re-opened only as
    # messages are handed to their handlers.
    connection_buffer_bytes: int = 8 * 1024 * 1024
    # Decoded header list (advertised as SETTINGS_MAX_HEADER_LIST_SIZE) and the encoded block it
    # arrives in, counted frame by frame before the HTTP/2 library sees them.
    max_header_list_bytes: int = 16 * 1024
    # CONTINUATION frames one header block may have (Envoy and grpcio send none for a request).
    max_continuation_frames: int = 16
    # Streams the client resets, and streams refused, per second on one connection (token bucket of
    # twice this size); beyond it GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
    max_resets_per_second: float = 200.0
    # Bytes of one connection's input handled per event-loop turn; the rest waits for the next turn,
    # so a connection that sends much cannot keep the loop from the others.
    read_chunk_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_concurrent_streams",
            "max_message_bytes",
            "max_header_list_bytes",
            "read_chunk_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.handshake_timeout <= 0 or self.idle_timeout <= 0 or self.max_resets_per_second <= 0:
            raise ValueError("timeouts and the reset rate must be positive")
        if self.max_continuation_frames < 0:
            raise ValueError("max_continuation_frames must not be negative")
        if self.stream_window > MAX_WINDOW:
            raise ValueError(f"max_message_bytes must be below {MAX_WINDOW - MESSAGE_PREFIX_BYTES}")
        if self.connection_window < self.stream_window:
            raise ValueError("connection_buffer_bytes must hold at least one whole message")

    @property
    def stream_window(self) -> int:
        """A whole message (with its prefix) fits the stream's window: unary requests never wait."""
        return self.max_message_bytes + MESSAGE_PREFIX_BYTES

    @property
    def connection_window(self) -> int:
        return min(self.connection_buffer_bytes, MAX_WINDOW)


class ResetBudget:
    """A token bucket of resets: ``rate`` per second, bursts up to twice that."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = 2 * rate
        self.tokens = self.capacity
        self.updated = now

    def spend(self, now: float) -> bool:
        """Take one token; False when the bucket is empty (the peer resets faster than allowed)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
