"""The gateway's HTTP listener with limits against slow and oversized clients.

``start_listener`` is what ``apx.dataplane.gateway.main`` (and the tests) use
to serve the gateway application. aiohttp covers part of the ground with its
own settings, passed as handler arguments:

* ``keepalive_timeout`` = ``idle_timeout``: a keep-alive connection with no
  request for that long is closed (aiohttp also closes a connection whose first
  request head has not arrived by then);
* ``max_line_size`` / ``max_field_size`` / ``max_headers``: an oversized
  request line, header or too many headers is answered 400/431 and closed;
* ``lingering_time``: after an early answer, the unread rest of a body is
  drained for at most ``lingering_seconds`` (aiohttp's 10 s default would hold
  a connection that announced 10 GB and sent nothing more);
* ``client_max_size`` (set by the application) bounds a body while it is read.

What aiohttp has no setting for is added here, in a thin front layer:

* a **header timeout**: from the first byte of a request (or the connection's
  opening) to its complete head, at most ``header_timeout`` seconds, else the
  connection is closed (slowloris); each connection gets a ``_Guard``, a
  forwarding protocol around aiohttp's handler that keeps this one timer;
* a **body timeout**: once a head is in, its body must be complete within
  ``body_timeout`` seconds whether or not the handler reads it, else the
  connection is closed;
* an **early 413**: a ``Content-Length`` above ``max_body_bytes`` is answered
  413 before any byte of the body is read, and the connection is closed;
* a **connection cap**: above ``max_connections`` open connections a new one
  gets a bare 503 and is closed, so slow clients cannot exhaust file
  descriptors and memory.

Connections cut by a timeout or the cap are counted in
``apx_gateway_connections_refused_total{reason}``, and so are requests aiohttp's
parser refuses (``malformed_request``: oversized line or header, bad syntax).
aiohttp logs each of those at ERROR with a traceback; a client's malformed
request is not a server error, and a flood of them must not flood the logs,
so they are counted instead of logged (real server errors still are).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
CONNECTION_LIMIT = "connection_limit"
BODY_TOO_LARGE = "body_too_large"
MALFORMED_REQUEST = "malformed_request"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b'Content-Length: 56\r\nRetry-After: 1\r\n\r\n{"error":"overloaded","message":"too many connections"}\n'
)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one client may hold; ``GatewayConfig.limits()`` fills them from flags."""

    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_line_bytes: int = 8190
    max_field_bytes: int = 16384
    max_headers: int = 100
    max_connections: int = 10_000
    lingering_seconds: float = 1.0

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's own per-connection settings (``AppRunner(**handler_args)``)."""
        return {
            "keepalive_timeout": self.idle_timeout,
            "max_line_size": self.max_line_bytes,
            "max_field_size": self.max_field_bytes,
            "max_headers": self.max_headers,
            "lingering_time": self.lingering_seconds,
        }


class _Guard(asyncio.Protocol):
    """Forwards to aiohttp's protocol and closes the connection when a head or body is late."""

    def __init__(self, inner: asyncio.Protocol, listener: Listener) -> None:
        self.inner = inner
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.in_request = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_reason = ""

    # --- asyncio.Protocol, forwarded -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.guards[transport] = self
        self._arm(self.listener.limits.header_timeout, HEADER_TIMEOUT)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_request and self.timer is None:
            # The first byte of the next request head: its header deadline starts now.
            self._arm(self.listener.limits.header_timeout, HEADER_TIMEOUT)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is not None:
            self.listener.guards.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # --- request boundaries (told by the middleware) -----------------------------------------

    def request_started(self, request: web.BaseRequest) -> None:
        self.in_request = True
        self._disarm()
        if not request.content.is_eof():
            self._arm(self.listener.limits.body_timeout, BODY_TIMEOUT, request)

    def request_finished(self, request: web.BaseRequest) -> None:
        self.in_request = False
        if self.timer_reason == BODY_TIMEOUT and not request.content.is_eof():
            return  # answered early: aiohttp drains the rest (lingering), still within the body deadline
        self._disarm()

    # --- timers ---------------------------------------------------------------------------

    def _arm(self, seconds: float, reason: str, request: web.BaseRequest | None = None) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(seconds, self._expired, reason, request)
        self.timer_reason = reason

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self, reason: str, request: web.BaseRequest | None) -> None:
        self.timer = None
        if reason == BODY_TIMEOUT and request is not None and request.content.is_eof():
            return  # the body was complete in time; the handler may take as long as it needs
        if reason == HEADER_TIMEOUT and self.in_request:
            return
        self.listener.refused(reason)
        if self.transport is not None:
            self.transport.abort()


class _ClientErrors(logging.Filter):
    """Counts, instead of logging, the requests aiohttp's parser refused (the client's fault)."""

    def __init__(self, listener: Listener) -> None:
        super().__init__()
        self.listener = listener

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            self.listener.refused(MALFORMED_REQUEST)
            return False
        return True


class _Busy(asyncio.Protocol):
    """The answer to a connection above the cap: a 503 and close, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class Listener:
    """One gateway listener: aiohttp's runner behind the guards, on ``host:port``."""

    def __init__(self, runner: web.AppRunner, limits: HttpLimits, refusals: Counter | None) -> None:
        self.runner = runner
        self.limits = limits
        self.guards: dict[asyncio.BaseTransport, _Guard] = {}
        self.refusals = refusals
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    def refused(self, reason: str) -> None:
        if self.refusals is not None:
            self.refusals.labels(reason).inc()

    def protocol(self) -> asyncio.Protocol:
        if len(self.guards) >= self.limits.max_connections:
            self.refused(CONNECTION_LIMIT)
            return _Busy()
        server = self.runner.server
        assert server is not None
        return _Guard(server(), self)

    async def start(self, host: str, port: int, backlog: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.protocol, host, port, backlog=backlog, reuse_address=True)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def cleanup(self) -> None:
        """Stop accepting, let requests in flight finish (the runner's shutdown timeout), close."""
        self.stop_accepting()
        await self.runner.cleanup()
        if self.server is not None:
            await self.server.wait_closed()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def limits_middleware(listener: Listener) -> Middleware:
    """Tells each connection's guard where requests begin and end; answers 413 from Content-Length."""

    @web.middleware
    async def guard_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = listener.guards.get(request.transport) if request.transport is not None else None
        if guard is not None:
            guard.request_started(request)
        try:
            length = request.content_length
            if length is not None and length > listener.limits.max_body_bytes:
                listener.refused(BODY_TOO_LARGE)
                response = web.json_response(
                    {
                        "error": "too_large",
                        "message": f"the body exceeds {listener.limits.max_body_bytes} bytes",
                    },
                    status=413,
                )
                response.force_close()  # the announced body is never read
                return response
            return await handler(request)
        finally:
            if guard is not None:
                guard.request_finished(request)

    return guard_requests


async def start_listener(
    app: web.Application,
    host: str,
    port: int,
    limits: HttpLimits,
    *,
    refusals: Counter | None = None,
    shutdown_timeout: float = 10.0,
    backlog: int = 1024,
) -> Listener:
    """Serve ``app`` on ``host:port`` (0: a free port) with ``limits``; ``listener.port`` is the port."""
    # A logger of this listener's own (not registered, so tests can start many): aiohttp's
    # per-request errors go through it, and its filter holds back the clients' malformed requests.
    server_log = logging.Logger("apx.gateway.http")
    server_log.parent = logging.getLogger("apx.gateway")
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        logger=server_log,
        **limits.handler_args(),
    )
    listener = Listener(runner, limits, refusals)
    server_log.addFilter(_ClientErrors(listener))
    # Before setup(): the application's middleware list freezes with it.
    app.middlewares.insert(0, limits_middleware(listener))
    await runner.setup()
    await listener.start(host, port, backlog)
    return listener
