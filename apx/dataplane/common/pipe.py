"""A pipelined Redis connection for hot paths: one socket, many requests in flight.

Used by the rate-limit service's ``limiter.Limiter`` for its one ``EVALSHA``
per request, and by ``requeststate.ScriptRunner`` for the worker's batches of
request-state scripts (``execute_many``: one write, one wait for all the
replies). Everything else (rule sets, API keys, leases, health) goes through
redis-py's ``redis.asyncio`` client. Why a connection of our own on hot paths:
redis-py's asyncio client costs 80-115 µs of CPU per command (pool checkout,
retry wrapper, a timeout task per write, one read per command), more than
the rest of a decision. Here a command is a few pre-encoded RESP byte
strings joined and queued, the commands of one event-loop turn leave in one
write, and replies come back in order on the same socket
and ``hiredis`` parses them as they arrive, resolving the callers' futures
first in, first out. The benchmark (``bench/bench_ratelimit.py``) measures
both against the same script.

Behaviour the service relies on:

* Connects lazily and again after any failure; callers waiting on a lost
  connection get ``redis.exceptions.ConnectionError`` at once, so the failure
  mode applies and the next request reconnects (Redis restarts need no
  service restart).
* A reply slower than ``timeout`` fails every request in flight with
  ``redis.exceptions.TimeoutError`` and drops the connection: on one socket,
  later replies cannot overtake an earlier one. "Slower" means not there
  when the socket is next read after the deadline: a reply that arrived while
  the loop was busy elsewhere is delivered, not failed.
* ``evalsha`` reloads the script on ``NOSCRIPT`` (after a Redis restart or
  ``SCRIPT FLUSH``) and retries once. ``execute_many`` returns error replies
  (``NOSCRIPT`` as ``NoScriptError``) in place of their results, so the
  caller decides per command.
* ``redis://`` and ``rediss://`` URLs with user, password and database, as
  redis-py reads them.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def encode_command(args: Sequence[bytes]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def encode_args(args: Sequence[bytes]) -> bytes:
    """Bulk strings of ``args`` without the array header, to splice into a command encoded later."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis) -> None:
        self._owner = owner
        self._reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def flush(self) -> None:
        """Write every command queued during this turn of the event loop in one send."""
        self.flush_scheduled = False
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(data)
            except (OSError, RuntimeError) as exc:
                self._owner._fail(self, RedisConnectionError(f"cannot write to Redis: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._owner._pending
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not pending:
                self._owner._fail(self, RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future, _, batch = pending[0]
            if batch is None:
                pending.popleft()
                if not future.done():
                    if isinstance(reply, ResponseError):
                        future.set_exception(_classify(reply))
                    else:
                        future.set_result(reply)
                continue
            batch.replies.append(_classify(reply) if isinstance(reply, ResponseError) else reply)
            if len(batch.replies) == batch.expected:
                pending.popleft()
                if not future.done():
                    future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._fail(self, RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))


def _classify(error: ResponseError) -> ResponseError:
    message = str(error)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return error


class _Batch:
    """Replies collected for one ``execute_many`` call."""

    __slots__ = ("expected", "replies")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.replies: list[Any] = []


class PipelinedRedis:
    """One pipelined connection to the Redis of a URL."""

    def __init__(self, url: str, timeout: float = 0.25) -> None:
        options = parse_url(url)
        self._host = str(options.get("host") or "127.0.0.1")
        self._port = int(options.get("port") or 6379)
        self._path = options.get("path")
        self._db = int(options.get("db") or 0)
        self._username = options.get("username")
        self._password = options.get("password")
        self._ssl = url.startswith("rediss://")
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        # In reply order: the caller's future, its deadline, and the batch its replies fill (None: one reply).
        self._pending: collections.deque[tuple[asyncio.Future[Any], float, _Batch | None]] = (
            collections.deque()
        )
        self._watchdog: asyncio.TimerHandle | None = None
        # The oldest call once seen past its deadline: failed if still unanswered one poll later.
        self._overdue: asyncio.Future[Any] | None = None
        self._closed = False

    async def execute(self, command: bytes) -> Any:
        """Send one RESP-encoded command; its reply (errors raised as redis-py exceptions)."""
        return await self._queue(command, None)

    async def execute_many(self, commands: Sequence[bytes]) -> list[Any]:
        """Send RESP-encoded commands in one write; their replies in order, error replies as exceptions."""
        if not commands:
            return []
        replies: list[Any] = await self._queue(b"".join(commands), _Batch(len(commands)))
        return replies

    async def _queue(self, data: bytes, batch: _Batch | None) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            protocol = await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # Calls made during one turn of the loop leave in one write (one syscall, not one each).
        protocol.outgoing.append(data)
        if not protocol.flush_scheduled:
            protocol.flush_scheduled = True
            loop.call_soon(protocol.flush)
        self._pending.append((future, loop.time() + self.timeout, batch))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check_deadline)
        return await future

    async def evalsha(self, sha: bytes, source: bytes, command: bytes) -> Any:
        """Run an ``EVALSHA`` command; on ``NOSCRIPT`` load ``source`` and run it once more."""
        try:
            # ``_queue`` rather than ``execute``: one coroutine less per decision on the hot path.
            return await self._queue(command, None)
        except NoScriptError:
            await self.execute(encode_command([b"SCRIPT", b"LOAD", source]))
            return await self.execute(command)

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._pending:
            self._overdue = None
            return
        loop = asyncio.get_running_loop()
        oldest, deadline, _ = self._pending[0]
        if loop.time() >= deadline:
            if self._overdue is oldest:
                self._overdue = None
                if self._protocol is not None:
                    self._fail(
                        self._protocol, RedisTimeoutError(f"no reply from Redis within {self.timeout:.3f}s")
                    )
                return
            # Past its deadline, but the reply may already be here, unread behind a busy loop (uvloop
            # runs due timers before it polls sockets): judge after one more poll. Failing it now
            # would fail every call in flight and reconnect, more work exactly when the process
            # is short of CPU: the "Redis exceptions and reconnects under load" of a saturated run.
            # A timer of a millisecond, not 0: one of 0 may run in the same timer pass, before the poll.
            self._overdue = oldest
            self._watchdog = loop.call_later(0.001, self._check_deadline)
            return
        self._overdue = None
        self._watchdog = loop.call_later(deadline - loop.time(), self._check_deadline)

    def _fail(self, protocol: _Protocol, error: Exception) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        if protocol.transport is not None:
            protocol.transport.abort()
        pending, self._pending = self._pending, collections.deque()
        for future, _, _ in pending:
            if not future.done():
                future.set_exception(error)

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise RedisConnectionError("connection closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if self._path:
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), str(self._path))
                else:
                    context = ssl.create_default_context() if self._ssl else None
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self), self._host, self._port, ssl=context
                    )
        except OSError as exc:  # TimeoutError included
            raise RedisConnectionError(
                f"cannot connect to Redis at {self._host}:{self._port}: {exc}"
            ) from exc
        self._protocol = protocol
        try:
            if self._password is not None:
                auth = [b"AUTH", str(self._password).encode()]
                if self._username:
                    auth.insert(1, str(self._username).encode())
                await self.execute(encode_command(auth))
            if self._db:
                await self.execute(encode_command([b"SELECT", b"%d" % self._db]))
        except BaseException:
            self._fail(protocol, RedisConnectionError("Redis handshake failed"))
            raise
        return protocol

    async def close(self) -> None:
        """Close the socket; requests still in flight fail."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None:
            self._fail(self._protocol, RedisConnectionError("connection closed"))
