"""A raw HTTP/2 peer for conformance and hostile-peer tests: any bytes out, every frame back, parsed.

Built on ``hyperframe`` (parsing what the server sends) and ``hpack`` (the
request header blocks); what it sends is written byte by byte with ``raw``,
so it can send what no client library would: frames on the wrong stream,
bad lengths, floods. Blocking sockets, meant to run in the test's thread
or in helper threads.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB


def raw(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame exactly as given (no check of any kind)."""
    return struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, kind, flags, stream) + payload


def grpc_message(message: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BL", int(compressed), len(message)) + message


def request_headers(path: str, *extra: tuple[str, str], port: int = 0) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra]  # fmt: skip


class Closed(Exception):
    """The server closed the connection."""


class RawPeer:
    """One client connection; the preface and SETTINGS are sent on connecting (unless told not)."""

    def __init__(
        self, port: int, *, handshake: bool = True, timeout: float = 5.0, window: int = 2**31 - 1
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Any] = []  # every frame received, in order
        self.closed = False
        self.handshake = handshake
        if handshake:
            # Windows opened all the way by default, so the server never waits for this peer to read.
            settings = struct.pack(">HL", 0x4, window)
            opened = raw(WINDOW_UPDATE, 0, 0, struct.pack(">L", window - 65_535)) if window > 65_535 else b""
            self.send(PREFACE + raw(SETTINGS, 0, 0, settings) + opened)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the server had already closed (a flood cut short)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def block(self, headers: Iterable[tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(list(headers)))

    def request(self, stream: int, headers: list[tuple[str, str]], body: bytes | None) -> bytes:
        """HEADERS (and DATA with END_STREAM) of one call, as bytes to send."""
        if body is None:
            return raw(HEADERS, END_HEADERS | END_STREAM, stream, self.block(headers))
        frames = raw(HEADERS, END_HEADERS, stream, self.block(headers))
        for offset in range(0, max(len(body), 1), 16_384):
            last = offset + 16_384 >= len(body)
            frames += raw(DATA, END_STREAM if last else 0, stream, body[offset : offset + 16_384])
        return frames

    def read_until(self, stop: Callable[[Any], bool], timeout: float = 3.0) -> Any | None:
        """Frames until one makes ``stop`` true (returned); None on timeout; ``Closed`` at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._next_frame()
            while frame is not None:
                if self.handshake and isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self.send(raw(SETTINGS, ACK, 0))
                if stop(frame):
                    return frame
                frame = self._next_frame()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            except OSError as exc:  # reset by the server
                self.closed = True
                raise Closed(str(exc)) from exc
            if not data:
                self.closed = True
                raise Closed("EOF")
            self.buffer += data

    def _next_frame(self) -> Any | None:
        if len(self.buffer) < 9:
            return None
        frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
        if len(self.buffer) < 9 + length:
            return None
        frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
        self.buffer = self.buffer[9 + length :]
        if isinstance(frame, HeadersFrame | ContinuationFrame) and "END_HEADERS" in frame.flags:
            frame.headers = dict(self.decoder.decode(frame.data))  # every block, in order: the table
        self.frames.append(frame)
        return frame

    # --- what the tests wait for ---------------------------------------------------------------------

    def goaway(self, timeout: float = 3.0) -> GoAwayFrame | None:
        """The server's GOAWAY (None when the connection closed without one, or nothing came)."""
        try:
            frame = self.read_until(lambda f: isinstance(f, GoAwayFrame), timeout)
        except Closed:
            return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)
        return frame

    def reset_of(self, stream: int, timeout: float = 3.0) -> RstStreamFrame | None:
        frame = self.read_until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == stream, timeout)
        return frame

    def trailers_of(self, stream: int, timeout: float = 5.0) -> dict[str, str] | None:
        """The trailers (or RST_STREAM as ``{"reset": code}``) that end ``stream``."""

        def ends(frame: Any) -> bool:
            if frame.stream_id != stream:
                return False
            return isinstance(frame, RstStreamFrame) or (
                isinstance(frame, HeadersFrame) and "END_STREAM" in frame.flags
            )

        frame = self.read_until(ends, timeout)
        if frame is None:
            return None
        if isinstance(frame, RstStreamFrame):
            return {"reset": str(frame.error_code)}
        return dict(frame.headers)

    def ping(self, timeout: float = 3.0) -> bool:
        """Whether a PING is answered (the connection is alive and served)."""
        opaque = struct.pack(">Q", time.monotonic_ns())
        if not self.send(raw(PING, 0, 0, opaque)):
            return False
        try:
            answer = self.read_until(
                lambda f: isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == opaque, timeout
            )
        except Closed:
            return False
        return answer is not None

    def data_of(self, stream: int) -> bytes:
        return b"".join(f.data for f in self.frames if isinstance(f, DataFrame) and f.stream_id == stream)

    def eof(self, timeout: float = 3.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (whatever it sends first)."""
        try:
            self.read_until(lambda f: False, timeout)
        except Closed:
            return True
        return False
