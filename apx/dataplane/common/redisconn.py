"""Redis clients of the dataplane services: pools that wait for a connection instead of failing.

Used by the async gateway and the worker (``connect``) and by the rate-limit
service (``bounded_pool``, for its rule-set and API-key reads).

redis-py's asyncio ``ConnectionPool`` raises ``MaxConnectionsError`` ("Too many
connections") the moment a burst needs more connections than its maximum:
many new tenants at once turned into UNAVAILABLE answers from the rate-limit
service and 503s from the gateway. Its ``BlockingConnectionPool`` waits
instead, but costs a condition round and a timeout context per checkout even
when a connection is free, which at a few thousand requests per second made
p50 latency tens of times worse. ``BoundedBlockingPool`` keeps the plain
pool's checkout while a connection is free (or may still be opened) and only
then queues, with two bounds:

* a deadline (``timeout``): a caller that waited that long gets
  ``PoolOverloaded``;
* a queue length (``max_waiting``): past it callers get ``PoolOverloaded`` at
  once, so a flood never piles up unbounded waiters (memory, and answers that
  arrive after the caller has given up anyway).

``PoolOverloaded`` is a ``redis.exceptions.ConnectionError``, so code that
treats any Redis failure alike still works; the rate-limit service tells it
apart to count overload separately from outages.

Redis Cluster: a URL with the scheme ``redis+cluster://`` (or
``rediss+cluster://``) names one seed node of a cluster; ``connect`` and
``cluster_client`` then return redis-py's ``redis.asyncio.cluster.RedisCluster``,
which discovers the other nodes and routes each command to the node owning its
key's slot (following ``MOVED``/``ASK``). Its pools are per node and fail at
once with ``MaxConnectionsError`` when full (redis-py offers no waiting pool for
clusters): callers see that as a Redis failure. The operator's applier, the
rate-limit service, the gateway and the worker all build clients here, so one
URL switches every one of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_POOL_TIMEOUT = 2.0
DEFAULT_MAX_WAITING = 10_000
# URL schemes that name a Redis Cluster seed node, and the plain scheme redis-py reads for each.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# What the services hold: one server's client or a cluster's; both take the same commands.
RedisClient = aioredis.Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    """True when ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def seed_url(url: str) -> str:
    """A cluster URL with its plain scheme (``redis+cluster://h:p/0`` → ``redis://h:p/0``), for redis-py."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if not sep or plain is None:
        raise ValueError("not a Redis Cluster URL (expected redis+cluster:// or rediss+cluster://)")
    return f"{plain}://{rest}"


def cluster_client(url: str, *, max_connections: int, **options: Any) -> RedisCluster:
    """redis-py's cluster client for a ``redis+cluster://`` URL, at most ``max_connections`` per node.

    A cluster has one database: a database number other than 0 in the URL is refused by redis-py.
    """
    return RedisCluster.from_url(seed_url(url), max_connections=max_connections, **options)


class PoolOverloaded(RedisConnectionError):
    """No pooled connection within the wait deadline, or too many callers already waiting."""


class BoundedBlockingPool(aioredis.BlockingConnectionPool):
    """A connection pool that queues callers (bounded, with a deadline) when every connection is busy."""

    def __init__(self, *, max_waiting: int = DEFAULT_MAX_WAITING, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_waiting = max_waiting
        self.waiting = 0

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if asyncio.current_task() is None:
            # A coroutine driven outside any task (the gRPC server runs a handler's first step
            # eagerly, before it needs a task): redis-py's connect and wait use timeouts, which
            # only work inside a task, so the checkout gets one of its own.
            return await asyncio.ensure_future(self._checkout())
        return await self._checkout()

    async def _checkout(self) -> Any:
        # Nobody queued (first come, first served) and a connection free or openable: the plain
        # pool's checkout, no condition and no timer.
        if not self.waiting and self.can_get_connection():
            try:
                return await aioredis.ConnectionPool.get_connection(self)  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                pass  # another task took the last slot while we waited for the lock: queue below
        return await self._wait()

    async def _wait(self) -> Any:
        if self.waiting >= self.max_waiting:
            raise PoolOverloaded(f"Redis pool overloaded: {self.waiting} callers already waiting")
        self.waiting += 1
        try:
            return await super().get_connection()  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolOverloaded(f"no Redis connection free within {self.timeout:.3g} s") from exc
            raise
        finally:
            self.waiting -= 1


def bounded_pool(
    url: str,
    *,
    max_connections: int,
    pool_timeout: float,
    max_waiting: int = DEFAULT_MAX_WAITING,
    **options: Any,
) -> BoundedBlockingPool:
    """A ``BoundedBlockingPool`` for ``url`` (``redis://``/``rediss://``, user, password, database)."""
    pool = BoundedBlockingPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, max_waiting=max_waiting, **options
    )
    assert isinstance(pool, BoundedBlockingPool)
    return pool


def connect(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    socket_timeout: float = 5.0,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    max_waiting: int = DEFAULT_MAX_WAITING,
) -> RedisClient:
    """A client for ``url`` with a pool of at most ``max_connections`` that waits up to ``pool_timeout``.

    For a cluster URL: a ``RedisCluster`` with ``max_connections`` per node (no waiting, see above).
    """
    if is_cluster_url(url):
        return cluster_client(
            url,
            max_connections=max_connections,
            socket_connect_timeout=2,
            socket_timeout=socket_timeout,
            health_check_interval=30,
        )
    pool = bounded_pool(
        url,
        max_connections=max_connections,
        pool_timeout=pool_timeout,
        max_waiting=max_waiting,
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)
