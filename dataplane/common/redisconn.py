"""The Redis client of the async gateway and the worker: one pool sized for bursts.

redis-py's asyncio pool raises "Too many connections" the moment a burst needs
more connections than its maximum; under load that became 503s from the
gateway. Its ``BlockingConnectionPool`` waits instead, but costs a task and a
condition round per checkout, which at a few thousand requests per second
made p50 latency tens of times worse. So the pool stays the plain one with a
generous maximum (``DEFAULT_MAX_CONNECTIONS``): a burst opens a few more
sockets, which are then reused, and the total stays far below Redis's own
client limit (10,000 by default).
"""

from __future__ import annotations

import redis.asyncio as aioredis

DEFAULT_MAX_CONNECTIONS = 1024


def connect(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    socket_timeout: float = 5.0,
) -> aioredis.Redis:
    """A client for ``url`` (``redis://`` or ``rediss://``) with a pool of at most ``max_connections``."""
    pool = aioredis.ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)
