"""What a waiting Redis pool costs: ``BoundedBlockingPool`` against redis-py's plain and blocking pools.

Run alone: ``python bench/bench_redis_pool.py [--seconds 2]``. Starts a private
Redis and measures ``GET`` through ``redis.asyncio`` three ways in the same
run: the plain ``ConnectionPool`` (the baseline: what the services used, and
what fails with "Too many connections" past its size), redis-py's
``BlockingConnectionPool`` (waits, but with a condition and a timer on every
checkout) and ``common.redisconn.BoundedBlockingPool`` (the plain checkout while
a connection is free, a bounded wait only when none is). Two loads: one
caller at a time (checkout overhead), and 256 concurrent callers on a pool of
16 (the plain pool cannot run it: it raises; the waiting pools queue).
Figures are operations per second; the target is the bounded pool within 10 %
of the plain pool when nobody has to wait.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from apx.dataplane.common.redisconn import bounded_pool
from e2e.services import start_redis

POOL_SIZE = 16
CONCURRENT = 256


def _pools(url: str) -> dict[str, Callable[[], aioredis.ConnectionPool]]:
    return {
        "plain ConnectionPool (baseline)": lambda: aioredis.ConnectionPool.from_url(
            url, max_connections=POOL_SIZE
        ),
        "redis-py BlockingConnectionPool": lambda: aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=5
        ),
        "BoundedBlockingPool": lambda: bounded_pool(url, max_connections=POOL_SIZE, pool_timeout=5),
    }


async def _sequential(client: aioredis.Redis, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            await client.get("bench:key")
        done += 100
    return done / (time.perf_counter() - started)


async def _concurrent(client: aioredis.Redis, seconds: float) -> tuple[float, int]:
    done = 0
    failed = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def caller() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            try:
                await client.get("bench:key")
                done += 1
            except RedisConnectionError:
                failed += 1
                await asyncio.sleep(0)

    await asyncio.gather(*(caller() for _ in range(CONCURRENT)))
    return done / (time.perf_counter() - started), failed


async def run(url: str, seconds: float) -> None:
    print(f"GET through redis.asyncio, pool of {POOL_SIZE}, {seconds:g} s per figure")
    print(f"{'pool':36} {'1 caller ops/s':>16} {f'{CONCURRENT} callers ops/s':>20} {'failed calls':>14}")
    for name, make in _pools(url).items():
        client = aioredis.Redis(connection_pool=make())
        try:
            await client.set("bench:key", "x")
            await _sequential(client, 0.3)  # warm-up
            sequential = await _sequential(client, seconds)
            concurrent, failed = await _concurrent(client, seconds)
        finally:
            await client.aclose()
            await client.connection_pool.disconnect()
        print(f"{name:36} {sequential:16,.0f} {concurrent:20,.0f} {failed:14,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    service = start_redis(Path(tempfile.mkdtemp(prefix="bench-redis-pool-")))
    try:
        asyncio.run(run(f"redis://{service.address}/0", args.seconds))
    finally:
        service.stop()


if __name__ == "__main__":
    main()
