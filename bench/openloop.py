"""Open-loop gRPC load: unary calls at Poisson arrival times on a few HTTP/2 connections, like Envoy's.

    python bench/openloop.py --port P --path /pkg.Service/Method --body FILE \
        --rate 5000 --seconds 5 [--connections 4] [--warm-up 1] [--log FILE]

Used by ``bench_ratelimit.py`` for the latency figures. Why not h2load's
``--rps``: it wakes every 10 ms and sends that tick's requests at once (a
burst of 50 at 5,000 rps, queued behind each other), and with ``-m 1`` it
waits for each answer before the next request (coordinated omission);
its timing scripts drift (each delay counts from the previous send, so
5 s of script take 7-8 s). Here arrival times are drawn up front
(exponential gaps, fixed seed) and each is sent at its time whatever is in
flight, spread round-robin over the connections (Envoy opens one per worker
thread); a connection at the server's SETTINGS_MAX_CONCURRENT_STREAMS holds
further requests until a stream ends, as Envoy's pool does, and their latency
counts from their arrival. The loop sleeps in ``select`` (1 ms granularity), so a request can
leave up to about 1 ms after its arrival time; latency is measured from when
it left to when its trailers arrived, and how late requests left is
reported beside it.

Prints one JSON object: requests sent and answered in the measured window,
achieved rate, non-OK answers, how late requests left (p50/p99), and writes
each latency (µs) to ``--log``. Responses are decoded with ``hpack`` so any
gRPC server (``grpc.aio`` included, which indexes headers) can be driven.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import selectors
import socket
import struct
import sys
import time
from pathlib import Path

import hpack
from hpack.hpack import encode_integer

# Raw RFC 9113 framing, a few lines of it: the client must cost the machine as little as possible, so it
# writes frames itself instead of going through an HTTP/2 library's state machine.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
FRAME_HEADER = struct.Struct(">HBBBL")


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id) + payload


def literal_field(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, with a literal name (no decoder state needed)."""
    return b"\x00" + bytes(encode_integer(len(name), 7)) + name + bytes(encode_integer(len(value), 7)) + value


class Connection:
    def __init__(self, port: int, path: bytes, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.block = b"".join(
            literal_field(n, v)
            for n, v in (
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path),
                (b":authority", b"127.0.0.1:%d" % port),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"grpc-timeout", b"1S"),
            )
        )
        self.body = body
        self.next_stream = 1
        self.sent: dict[int, tuple[float, bool]] = {}
        self.waiting: collections.deque[tuple[float, bool]] = collections.deque()
        self.max_streams = 1 << 31
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.out = bytearray()
        self.send_window = 65_535
        # A wide receive window, so the server never waits for us.
        settings = struct.pack(">HL", 0x4, 1 << 24)
        self.out += (
            PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1 << 30))
        )

    def request(self, now: float, measured: bool) -> None:
        if len(self.sent) >= self.max_streams:
            # At the server's SETTINGS_MAX_CONCURRENT_STREAMS: wait, as Envoy's connection pool does;
            # the latency still counts from the arrival.
            self.waiting.append((now, measured))
            return
        if self.send_window < len(self.body):
            raise RuntimeError("the server's connection window is closed; it does not read")
        stream = self.next_stream
        self.next_stream += 2
        self.sent[stream] = (now, measured)
        self.send_window -= len(self.body)
        self.out += frame(HEADERS, END_HEADERS, stream, self.block) + frame(
            DATA, END_STREAM, stream, self.body
        )

    def _send_waiting(self) -> None:
        while self.waiting and len(self.sent) < self.max_streams:
            self.request(*self.waiting.popleft())

    def flush(self) -> None:
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return
            del self.out[:sent]

    def receive(self, now: float, done: list[tuple[float, float, bool, bool]]) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except BlockingIOError:
                break
            if not data:
                raise RuntimeError("the server closed the connection")
            self.buffer += data
        buffer, position = self.buffer, 0
        while len(buffer) - position >= 9:
            high, low, kind, flags, stream = FRAME_HEADER.unpack_from(buffer, position)
            end = position + 9 + ((high << 8) | low)
            if end > len(buffer):
                break
            payload = buffer[position + 9 : end]
            position = end
            if kind == HEADERS:
                headers = dict(self.decoder.decode(payload, raw=True))
                if flags & END_STREAM:
                    started = self.sent.pop(stream, None)
                    if started is not None:
                        done.append((started[0], now, headers.get(b"grpc-status") == b"0", started[1]))
            elif kind == RST_STREAM:
                started = self.sent.pop(stream, None)
                if started is not None:
                    done.append((started[0], now, False, started[1]))
            elif kind == SETTINGS and not flags & ACK:
                for offset in range(0, len(payload) - 5, 6):
                    identifier, value = struct.unpack_from(">HL", payload, offset)
                    if identifier == SETTINGS_MAX_CONCURRENT_STREAMS:
                        self.max_streams = value
                self.out += frame(SETTINGS, ACK, 0)
            elif kind == PING and not flags & ACK:
                self.out += frame(PING, ACK, 0, payload)
            elif kind == WINDOW_UPDATE and stream == 0:
                self.send_window += struct.unpack(">L", payload)[0] & 0x7FFFFFFF
            elif kind == GOAWAY:
                raise RuntimeError(f"GOAWAY from the server: {payload[8:]!r}")
        self.buffer = buffer[position:]
        self._send_waiting()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", type=Path, required=True, help="one gRPC frame (prefix + message)")
    parser.add_argument("--rate", type=float, required=True, help="arrivals per second, all connections")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window")
    parser.add_argument("--warm-up", type=float, default=1.0, help="seconds of load before the window")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", type=Path, help="write each latency in the window, in µs, one per line")
    args = parser.parse_args()

    body = args.body.read_bytes()
    connections = [Connection(args.port, args.path.encode(), body) for _ in range(args.connections)]
    selector = selectors.DefaultSelector()
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
        connection.flush()

    rng = random.Random(args.seed)
    total = args.warm_up + args.seconds
    arrivals: list[float] = []
    at = 0.0
    while True:
        at += rng.expovariate(args.rate)
        if at >= total:
            break
        arrivals.append(at)

    done: list[tuple[float, float, bool, bool]] = []
    lateness: list[float] = []
    start = time.perf_counter()
    window_start = start + args.warm_up
    index = 0
    while index < len(arrivals) or any(c.sent or c.waiting for c in connections):
        now = time.perf_counter()
        while index < len(arrivals) and start + arrivals[index] <= now:
            connection = connections[index % len(connections)]
            measured = start + arrivals[index] >= window_start
            connection.request(now, measured)
            if measured:
                lateness.append(now - start - arrivals[index])
            index += 1
        for connection in connections:
            connection.flush()
        if now - start > total + 10:
            break  # answers still missing 10 s after the last arrival: counted as lost
        timeout = max(0.0, start + arrivals[index] - time.perf_counter()) if index < len(arrivals) else 0.05
        for key, _ in selector.select(timeout):
            key.data.receive(time.perf_counter(), done)

    measured = [(sent, answered, ok) for sent, answered, ok, counted in done if counted]
    latencies = [(answered - sent) * 1e6 for sent, answered, _ in measured]
    sent_in_window = len(lateness)
    if args.log is not None:
        args.log.write_text("".join(f"{value:.0f}\n" for value in latencies))
    print(
        json.dumps(
            {
                "sent": sent_in_window,
                "answered": len(measured),
                "not_ok": sum(1 for *_, ok in measured if not ok),
                "lost": sum(
                    1 for c in connections for _, counted in [*c.sent.values(), *c.waiting] if counted
                ),
                "achieved_per_second": len(measured) / args.seconds,
                "late_p50_ms": percentile(lateness, 0.5) * 1e3,
                "late_p99_ms": percentile(lateness, 0.99) * 1e3,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
