"""The worker's HTTP/1.1 client for upstream calls: keep-alive pool, per-call timeout, bounded responses.

Used by ``apx.dataplane.worker.processor`` for every message. Why not
aiohttp's client: measured on the benchmark machine it costs about 230 µs of
CPU per call (request object, cookie, redirect, proxy and tracing machinery),
more than everything else the worker does per message together; this client
costs about 70 µs, and that difference is most of the worker's throughput
(``bench/bench_worker.py``). It implements exactly what the worker needs:

* one upstream origin (``http://`` or ``https://`` with the system trust
  store and SNI), connections reused (LIFO) up to ``max_connections``;
* one request at a time per connection, body with ``Content-Length``;
* responses framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or
  connection close; ``Connection: close`` honoured; no body for HEAD, 1xx,
  204 and 304; interim ``100 Continue`` skipped;
* a total timeout per call (waiting for a connection slot, connect, send,
  response) → ``UpstreamTimeout``; a response body larger than ``max_body`` →
  ``ResponseTooLarge``; heads (status line and headers, interim ``1xx``
  answers and chunked trailers included) larger than ``max_head`` in total →
  ``ResponseHeadTooLarge``; and whatever the framing (chunk-size lines with
  huge extensions, endless trailers), a call never receives more than
  ``max_body + max_head`` bytes before it fails, so a hostile upstream cannot
  make the worker buffer without bound. The response phase is not timed by an
  ``asyncio.timeout`` per call (a timer handle, a context manager and a
  reschedule per call were a tenth of the worker's CPU): the client keeps the
  deadline of every connection awaiting an answer and one sweep every
  ``SWEEP_SECONDS`` fails those past it, so a timeout fires up to that much late;
* a pooled connection that turns out closed before any byte of the answer
  arrived (the server dropped an idle keep-alive connection) is retried once on
  a new connection, as HTTP clients commonly do; any other failure is
  ``UpstreamError`` and the connection is discarded;
* header values and the target are refused if they contain CR or LF (no
  header injection from message attributes).

No redirects are followed (the answer is the result), no cookies are kept (a
cookie from one tenant's answer must never reach another tenant's call), and
no ``Accept-Encoding`` is offered, so bodies arrive as they are stored.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from apx.dataplane.common.redact import redact_url

MAX_HEAD_BYTES = 64 * 1024
# How often the deadlines of calls awaiting an answer are checked (the timeouts' resolution).
SWEEP_SECONDS = 0.05
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamError(Exception):
    """The call failed before a complete answer arrived (connection refused, reset, malformed answer)."""


class UpstreamTimeout(UpstreamError):
    """No complete answer within the timeout."""


class ResponseTooLarge(UpstreamError):
    """The answer's body exceeds the configured maximum."""

    part = "body"  # metric label


class ResponseHeadTooLarge(ResponseTooLarge):
    """The answer's status line and headers (interim answers and trailers included) exceed the maximum."""

    part = "head"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: collects bytes and parses one response at a time."""

    def __init__(self, max_body: int, max_head: int = MAX_HEAD_BYTES) -> None:
        self.max_body = max_body
        self.max_head = max_head
        # Bytes of the current exchange: everything received, and head bytes parsed (reset per call).
        self.received = 0
        self.head_bytes = 0
        self.in_head = False  # parsing a head or trailers: an overflow then is the head's fault
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.received_any = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    # --- protocol callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received_any = True
        self.received += len(data)
        if self.received > self.max_body + self.max_head and not self.in_head and self._error is None:
            # Counted over the whole exchange, not the buffer (which parsing drains): framing
            # and trailers cannot stretch a response past its bound either. While a head or
            # trailers are parsed, the parser's own head bound applies (and names the right part).
            self._error = ResponseTooLarge(f"response exceeds {self.max_body + self.max_head} bytes")
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def start_exchange(self) -> None:
        """Reset the per-response counters before a request is sent on this connection."""
        self.received_any = False
        self.received = len(self.buffer)
        self.head_bytes = 0
        self.in_head = False

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > self.max_head:
            raise ResponseHeadTooLarge(f"response head exceeds {self.max_head} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- reading ----------------------------------------------------------------------------

    async def _more(self) -> None:
        """Wait for more bytes (or the close); raises on a recorded error."""
        if self._error is not None:
            raise self._error
        if self.closed:
            raise UpstreamError("connection closed before the response was complete")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def _head(self) -> tuple[int, dict[str, str]]:
        self.in_head = True
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if self.head_bytes + len(self.buffer) > self.max_head:
                raise ResponseHeadTooLarge(f"response head exceeds {self.max_head} bytes")
            await self._more()
        self._count_head(end + 4)
        self.in_head = False
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise UpstreamError(f"malformed status line {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return int(parts[1]), headers

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > self.max_head:
                raise ResponseHeadTooLarge(f"chunk header exceeds {self.max_head} bytes")
            await self._more()

    async def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = (await self._line()).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise UpstreamError(f"malformed chunk size {size_text[:20]!r}") from exc
            if size == 0:
                self.in_head = True
                while trailer := await self._line():  # trailers, up to the empty line
                    self._count_head(len(trailer) + 2)
                self.in_head = False
                return bytes(body)
            if len(body) + size > self.max_body:
                raise ResponseTooLarge(f"response exceeds {self.max_body} bytes")
            body += await self._exactly(size)
            await self._exactly(2)  # CRLF after the chunk

    async def _until_close(self) -> bytes:
        while not self.closed:
            if len(self.buffer) > self.max_body:
                raise ResponseTooLarge(f"response exceeds {self.max_body} bytes")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if self._error is not None:
                raise self._error
        return bytes(self.buffer)

    async def response(self, method: str) -> tuple[Response, bool]:
        """Read one response; returns it and whether the connection may be reused."""
        while True:
            status, headers = await self._head()
            if not 100 <= status < 200 or status == 101:
                break  # 1xx interim answers (100 Continue) precede the real one
        reusable = headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunked()
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as exc:
                raise UpstreamError("malformed Content-Length") from exc
            if length > self.max_body:
                raise ResponseTooLarge(f"response of {length} bytes exceeds {self.max_body} bytes")
            body = await self._exactly(length)
        else:
            body = await self._until_close()
            reusable = False
        return Response(status, headers.get("content-type", ""), body), reusable and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def fail(self, error: UpstreamError) -> None:
        """End the exchange in progress with ``error`` (``response`` raises it) and drop the connection."""
        if self._error is None:
            self._error = error
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._wake()


def _clean(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("CR or LF in a request line or header value")
    return value


class UpstreamClient:
    """Calls one upstream origin; ``request`` is safe to call from many tasks at once."""

    def __init__(
        self, base_url: str, *, max_connections: int, max_body: int, max_head: int = MAX_HEAD_BYTES
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"upstream URL must be http(s)://host[:port][/path], not {redact_url(base_url)!r}"
            )
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = 443 if self.tls else 80
        self.host_header = parts.netloc.rsplit("@", 1)[-1] if self.port != default_port else self.host
        self.base_path = parts.path.rstrip("/")
        self.max_body = max_body
        self.max_head = max_head
        self._ssl = ssl.create_default_context() if self.tls else None
        self._idle: list[_Connection] = []
        self.max_connections = max_connections
        self._in_use = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        # Connections awaiting an answer → the loop time their call must be answered by.
        self._deadlines: dict[_Connection, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.connections_opened = 0

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: _Connection(self.max_body, self.max_head),
            self.host,
            self.port,
            ssl=self._ssl,
            server_hostname=self.host if self.tls else None,
        )
        self.connections_opened += 1
        return protocol

    def _encode(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = [f"{_clean(method)} {_clean(target)} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers.items():
            lines.append(f"{_clean(name)}: {_clean(value)}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(lines).encode("latin-1") + body

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> Response:
        """Send ``method target`` (an origin-form path with query) and return the complete response.

        Raises ``ValueError`` for a target or header with CR/LF, ``UpstreamTimeout``,
        ``ResponseTooLarge`` or ``UpstreamError``.
        """
        payload = self._encode(method, target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._in_use >= self.max_connections:
            await self._wait_for_slot(deadline, timeout)
        self._in_use += 1
        try:
            return await self._send(method, payload, deadline, timeout)
        finally:
            self._in_use -= 1
            while self._slot_waiters:
                waiter = self._slot_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    async def _wait_for_slot(self, deadline: float, timeout: float) -> None:
        """Wait (first come, first served) until fewer than ``max_connections`` calls are in progress."""
        loop = asyncio.get_running_loop()
        while self._in_use >= self.max_connections:
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError as exc:
                raise UpstreamTimeout(f"no free connection within {timeout:.3g} s") from exc
            except BaseException:
                # Cancelled after being woken: pass the slot on to the next in line.
                if waiter.done() and not waiter.cancelled() and self._slot_waiters:
                    self._slot_waiters.popleft().set_result(None)
                raise

    def _watch(self, connection: _Connection, deadline: float) -> None:
        self._deadlines[connection] = deadline
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Fail the calls past their deadline; runs while any call awaits an answer."""
        self._sweeper = None
        if not self._deadlines:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = [connection for connection, deadline in self._deadlines.items() if deadline <= now]
        for connection in late:
            del self._deadlines[connection]
            connection.fail(UpstreamTimeout("no complete response in time"))
        if self._deadlines:
            self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    async def _open(self, deadline: float, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(self._connect(), max(0.0, deadline - loop.time()))
        except TimeoutError as exc:
            raise UpstreamTimeout(f"could not connect within {timeout:.3g} s") from exc

    async def _send(self, method: str, payload: bytes, deadline: float, timeout: float) -> Response:
        for attempt in range(2):
            reused = False
            connection: _Connection | None = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    connection, reused = candidate, True
                    break
            try:
                if connection is None:
                    connection = await self._open(deadline, timeout)
                connection.start_exchange()
                assert connection.transport is not None
                self._watch(connection, deadline)
                connection.transport.write(payload)
                response, reusable = await connection.response(method)
            except UpstreamTimeout as exc:
                if connection is not None:
                    connection.close()
                raise UpstreamTimeout(f"no complete response within {timeout:.3g} s") from exc
            except OSError as exc:
                if connection is not None:
                    connection.close()
                raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
            except UpstreamError:
                assert connection is not None
                stale = reused and not connection.received_any and connection.closed
                connection.close()
                if stale and attempt == 0:
                    continue  # the server had closed this idle connection: try a fresh one
                raise
            except BaseException:
                # Cancelled mid-response: the connection's state is unknown.
                if connection is not None:
                    connection.close()
                raise
            finally:
                if connection is not None:
                    self._deadlines.pop(connection, None)
            if reusable and not connection.buffer:
                self._idle.append(connection)
            else:
                connection.close()
            return response
        raise UpstreamError("unreachable")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
