"""Rate-limit decisions on a Redis Cluster: the ``ClusterPipe`` against redis-py's ``RedisCluster``.

Run alone: ``python bench/bench_redis_cluster.py [--seconds 3] [--streams 64] [--tenants 300] [--rounds 5]``.
Starts a private Redis and a private 3-primary Redis Cluster (``e2e.services``),
publishes a Product the way the operator does (a plan with a rate limit, a
quota and a concurrency cap: three counters per decision) and drives the
service's ``Limiter`` (rule-set cache, plan, one ``EVALSHA`` of
``scripts.DECIDE``) with ``--streams`` decisions in flight over ``--tenants``
tenants, whose counters spread over the cluster's slots. Four figures in one run:

* one Redis server, the service's ``PipelinedRedis`` (the baseline: what a
  single-server installation runs);
* one Redis server, redis-py's asyncio client for the ``EVALSHA`` (the
  second baseline);
* the cluster, ``ClusterPipe`` (one pipelined socket per primary, routed by
  slot: what ``open_pipe`` picks for a ``redis+cluster://`` URL);
* the cluster, redis-py's ``RedisCluster`` for the ``EVALSHA`` (the
  alternative: its routing, retries and per-node pools).

Figures are decisions per second of this one process (client-bound on 2
cores: the Redis processes share the machine); read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis
from redis.exceptions import NoScriptError

from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys
from apx.controllers.renderers.redis_rules import render_redis
from apx.controllers.translate import translate
from apx.dataplane.common import redisconn
from apx.dataplane.common.clusterpipe import open_pipe
from apx.dataplane.common.pipe import PipelinedRedis
from apx.dataplane.common.rulesets import RuleSetReader
from apx.dataplane.ratelimit.limiter import Limiter, LimitRequest
from e2e.services import start_redis, start_redis_cluster

NAMESPACE = "bench"
PRODUCT = f"{NAMESPACE}/cluster"


def documents() -> list[dict[str, Any]]:
    plan = {
        "name": "pro",
        "tier": "pro",
        "rateLimit": {"requestsPerSecond": 1_000_000, "burst": 1_000_000},
        "quota": {"requests": 1_000_000_000, "period": "day"},
        "concurrency": 1_000,
    }
    return [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": "cluster", "namespace": NAMESPACE},
            "spec": {"residency": "GLOBAL", "regions": ["us-central1"], "plans": [plan]},
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "bench-policy", "namespace": NAMESPACE},
            "spec": {
                "version": "1.0.0",
                "auth": {
                    "jwt": {
                        "issuer": "https://id.example/",
                        "jwksUri": "https://id.example/jwks",
                        "tenantClaim": "tenant",
                    }
                },
                "authz": {"defaultAction": "allow"},
                "rateLimit": {"algorithm": "sliding-window", "failureMode": "open"},
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": "bench-route", "namespace": NAMESPACE},
            "spec": {
                "productRef": {"name": "cluster"},
                "policyRef": {"name": "bench-policy", "version": "1.0.0"},
                "match": {"hosts": ["api.example"], "pathPrefix": "/"},
                "mode": "sync",
                "backend": {"url": "http://backend.example:8080"},
            },
        },
    ]


async def publish(url: str) -> None:
    """What the operator writes for ``documents()``, through its applier."""
    result = translate(documents())
    if result.stalled:
        raise SystemExit(f"benchmark workload rejected: {result.stalled[0].message}")
    applier = RedisApplier(url)
    try:
        for rule_set in render_redis(result.ir).rule_sets:
            keys = VersionedKeys(
                rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key
            )
            await applier.publish(keys, rule_set.version, dict(rule_set.fields))
    finally:
        await applier.close()


class RedisPyPipe(PipelinedRedis):
    """The ``Limiter``'s pipe interface on a redis-py client: each encoded command parsed and sent by it."""

    def __init__(self, client: Any) -> None:
        super().__init__("redis://127.0.0.1:1/0")
        self._client = client
        self._reader = hiredis.Reader()

    async def execute(self, command: bytes) -> Any:
        self._reader.feed(command)
        name, *args = self._reader.gets()
        # redis-py wants the command name as text (its cluster client looks it up in a table).
        return await self._client.execute_command(name.decode(), *args)

    async def evalsha(self, sha: bytes, source: bytes, command: bytes) -> Any:
        try:
            return await self.execute(command)
        except NoScriptError:
            await self._client.script_load(source)
            return await self.execute(command)

    async def close(self) -> None:
        await self._client.aclose()


async def drive(limiter: Limiter, seconds: float, streams: int, tenants: int) -> float:
    """Decisions per second with ``streams`` in flight; every one must be admitted (no error)."""
    requests = [
        LimitRequest("apx", ((("product", PRODUCT), ("tenant", f"t{i}")),), 1) for i in range(tenants)
    ]
    for request in requests:  # warm the rule-set cache and the plans, load the script on every node
        assert (await limiter.decide(request)).allowed
    done = 0
    deadline = time.perf_counter() + seconds

    async def stream(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            decision = await limiter.decide(requests[i % tenants])
            assert decision.allowed
            i += streams
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(stream(k) for k in range(streams)))
    return done / (time.perf_counter() - started)


async def measure(
    url: str, make_pipe: Callable[[], PipelinedRedis], seconds: float, streams: int, tenants: int
) -> float:
    client = redisconn.connect(url)
    pipe = make_pipe()
    try:
        limiter = Limiter(RuleSetReader(client), pipe)
        return await drive(limiter, seconds, streams, tenants)
    finally:
        await pipe.close()
        await client.aclose()


async def run(args: argparse.Namespace, single_url: str, cluster_url: str) -> list[tuple[str, float]]:
    await publish(single_url)
    await publish(cluster_url)
    common = (args.seconds / args.rounds, args.streams, args.tenants)
    rows: list[tuple[str, Callable[[], Awaitable[float]]]] = [
        (
            "one server, PipelinedRedis (baseline)",
            lambda: measure(single_url, lambda: open_pipe(single_url, 5.0), *common),
        ),
        (
            "one server, redis-py asyncio EVALSHA",
            lambda: measure(single_url, lambda: RedisPyPipe(redisconn.connect(single_url)), *common),
        ),
        (
            "cluster of 3, ClusterPipe (what APX runs)",
            lambda: measure(cluster_url, lambda: open_pipe(cluster_url, 5.0), *common),
        ),
        (
            "cluster of 3, redis-py RedisCluster EVALSHA",
            lambda: measure(
                cluster_url,
                lambda: RedisPyPipe(redisconn.cluster_client(cluster_url, max_connections=args.streams + 4)),
                *common,
            ),
        ),
    ]
    # Rows take turns, ``--rounds`` times, and each reports its median: load from elsewhere on a
    # shared machine then falls on every row alike instead of on whichever ran during it.
    figures: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(args.rounds):
        for label, run_one in rows:
            figures[label].append(await run_one())
    return [(label, statistics.median(values)) for label, values in figures.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5, help="turns per row (the median is shown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="apx-bench-cluster-") as tmp:
        single = start_redis(Path(tmp) / "redis")
        try:
            cluster = start_redis_cluster(Path(tmp) / "cluster")
            try:
                rows = asyncio.run(run(args, f"redis://{single.address}/0", cluster.url))
            finally:
                cluster.stop()
        finally:
            single.stop()
    baseline = rows[0][1]
    print(
        f"rate-limit decisions (Limiter, 3 counters each), {args.streams} in flight, "
        f"{args.tenants} tenants, {args.seconds:g} s per figure (median of {args.rounds} turns)"
    )
    for label, rate in rows:
        print(f"  {label:<46} {rate:>9.0f} /s   {rate / baseline:5.2f} x baseline")
    print(
        "the cluster's three Redis processes share the machine's cores with this client: compare the two "
        "cluster rows with each other, and each with its single-server row"
    )


if __name__ == "__main__":
    main()
