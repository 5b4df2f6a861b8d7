"""Benchmark: async gateway 202 responses/s and latency at a fixed load, beside raw publish to the emulator.

    python bench/bench_gateway.py [--seconds 8] [--concurrency 32] [--tenants 100]

Starts its own redis-server and Pub/Sub emulator (``e2e.services``) and a
local JWKS server, deploys an async Route with the operator's renderers and
appliers (JWT policy, ordering by tenant, EU residency), runs the real
``apx-gateway`` console script in its own process, and in the same run:

* baseline: raw publish rate — a ``PublisherClient`` with the gateway's
  settings (ordering enabled, 5 ms batches) publishing the same messages
  (same body, attributes and ordering keys) as fast as it can, all futures
  awaited;
* gateway, closed loop: ``--concurrency`` clients posting back to back for
  ``--seconds`` (each request: JWT check, route match, rule lookup, Redis
  request record + backlog admission, publish, 202) → 202/s, p50, p99;
* gateway, open loop: requests sent at a fixed rate (half the closed-loop
  throughput) → p50 and p99 at that load.

The load generator shares the 2-core machine with the gateway, the emulator
and Redis; compare ratios, not absolute rates, between runs. Everything it
started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import pubsub_v1

from apx.controllers import names
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys
from apx.controllers.pipeline import compile_resources
from e2e.services import free_port, start_pubsub_emulator, start_redis, stop_pid, wait_for_port

PROJECT = "apx-bench"
HOST = "jobs.bench.example"
ISSUER = "https://id.bench.example/"
BODY = b'{"report": "monthly", "rows": 1000}'


def jwks_server() -> tuple[ThreadingHTTPServer, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="bench", use="sig", alg="RS256")
    body = json.dumps({"keys": [public]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, key


def documents(jwks_uri: str) -> list[dict[str, Any]]:
    meta = {"namespace": "bench"}
    return [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": "jobs", **meta},
            "spec": {
                "residency": "EU",
                "regions": ["europe-west1"],
                "plans": [{"name": "pro", "tier": "pro", "rateLimit": {"requestsPerSecond": 100000}}],
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "policy", **meta},
            "spec": {
                "version": "1.0.0",
                "auth": {"jwt": {"issuer": ISSUER, "jwksUri": jwks_uri, "audiences": ["jobs"]}},
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": "export", **meta},
            "spec": {
                "productRef": {"name": "jobs"},
                "policyRef": {"name": "policy", "version": "1.0.0"},
                "match": {"hosts": [HOST], "pathPrefix": "/v1/export", "methods": ["POST"]},
                "mode": "async",
                "backend": {"url": "http://127.0.0.1:9"},
                "worker": {"image": "example.com/worker:1"},
                "async": {"backlogLimit": 100_000_000, "resultTtl": "10m"},
            },
        },
    ]


async def deploy(docs: list[dict[str, Any]], redis_url: str) -> Any:
    compiled = compile_resources(docs, project=PROJECT)
    assert not compiled.stalled_messages(), compiled.stalled_messages()
    applier = RedisApplier(redis_url)
    for rule_set in compiled.redis.rule_sets:
        keys = VersionedKeys(
            rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key
        )
        await applier.publish(keys, rule_set.version, dict(rule_set.fields))
    table = compiled.redis.route_table
    keys = VersionedKeys(
        table.key[: -len(table.version)], table.current_key, names.route_table_versions_key()
    )
    await applier.publish(keys, table.version, dict(table.entries))
    await applier.close()
    pubsub = PubSubApplier()
    await pubsub.ensure(compiled.pubsub.topics, compiled.pubsub.subscriptions)
    pubsub.close()
    return compiled


def raw_publish(topic: str, count: int, tenants: int, ordered: bool) -> float:
    """Messages/s of a bare PublisherClient (5 ms batches) publishing the gateway's messages."""
    client = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.005, max_messages=1000),
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered),
    )
    started = time.perf_counter()
    pending = []
    for index in range(count):
        tenant = f"tenant-{index % tenants:04d}"
        attributes = {
            "request_id": str(uuid.uuid4()),
            "tenant_id": tenant,
            "tenant_tier": "pro",
            "policy_version": "1.0.0",
            "residency": "EU",
            "track": "stable",
            "route": "bench/export",
            "region": "europe-west1",
            "method": "POST",
            "path": "/v1/export/report",
            "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
        }
        pending.append(client.publish(topic, BODY, ordering_key=tenant if ordered else "", **attributes))
    futures.wait(pending)
    elapsed = time.perf_counter() - started
    client.stop()
    return count / elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def closed_loop(
    url: str, tokens: list[str], seconds: float, concurrency: int
) -> tuple[int, dict[int, int], list[float]]:
    """``concurrency`` clients back to back for ``seconds``: (202s, other answers, latencies)."""
    accepted = 0
    other: dict[int, int] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(index: int) -> None:
            nonlocal accepted
            n = index
            while time.perf_counter() < deadline:
                headers = {"Host": HOST, "authorization": f"Bearer {tokens[n % len(tokens)]}"}
                n += concurrency
                started = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    latencies.append(time.perf_counter() - started)
                    if response.status == 202:
                        accepted += 1
                    else:
                        other[response.status] = other.get(response.status, 0) + 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return accepted, other, latencies


async def open_loop(
    url: str, tokens: list[str], seconds: float, rate: float
) -> tuple[int, dict[int, int], list[float]]:
    """Requests started at a fixed ``rate`` for ``seconds``, whatever the answers.

    Returns (202s, other answers by status, latencies).
    """
    accepted = 0
    other: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:

        async def one(n: int) -> None:
            nonlocal accepted
            headers = {"Host": HOST, "authorization": f"Bearer {tokens[n % len(tokens)]}"}
            started = time.perf_counter()
            try:
                async with session.post(url, data=BODY, headers=headers) as response:
                    text = await response.text()
                    status = response.status
                    if status != 202 and len(errors) < 5:
                        errors.append(text[:200])
            except aiohttp.ClientError as exc:
                status = 0  # no answer at all
                errors.append(repr(exc)[:200])
            latencies.append(time.perf_counter() - started)
            if status == 202:
                accepted += 1
            else:
                other[status] = other.get(status, 0) + 1

        tasks = []
        begin = time.perf_counter()
        total = int(seconds * rate)
        for n in range(total):
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    for error in errors:
        print(f"   non-202 answer: {error}", file=sys.stderr)
    return accepted, other, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--baseline-messages", type=int, default=10_000)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="apx-bench-gateway-"))
    redis = start_redis(workdir / "redis")
    emulator = start_pubsub_emulator(workdir / "pubsub")
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
    server, key = jwks_server()
    gateway: subprocess.Popen[bytes] | None = None
    try:
        redis_url = f"redis://{redis.address}/0"
        jwks_uri = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        compiled = asyncio.run(deploy(documents(jwks_uri), redis_url))
        plan = compiled.pubsub.plans[0]
        topic = f"projects/{PROJECT}/topics/{plan.topic}"
        raw = raw_publish(topic, args.baseline_messages, args.tenants, ordered=True)
        raw_unordered = raw_publish(topic, args.baseline_messages, args.tenants, ordered=False)

        port = free_port()
        gateway = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "apx-gateway"),
                "--host=127.0.0.1",
                f"--port={port}",
                "--metrics-port=0",
                f"--redis-url={redis_url}",
                f"--pubsub-project={PROJECT}",
                f"--pubsub-emulator-host={emulator.address}",
                "--log-level=WARNING",
            ],
            start_new_session=True,
        )
        wait_for_port(port, 30, None, "apx-gateway")
        now = int(time.time())
        tokens = [
            jwt.encode(
                {"iss": ISSUER, "aud": "jobs", "tenant": f"tenant-{i:04d}", "iat": now, "exp": now + 3600},
                key,
                algorithm="RS256",
                headers={"kid": "bench"},
            )
            for i in range(args.tenants)
        ]
        url = f"http://127.0.0.1:{port}/v1/export/report"
        # Warm up: JWKS, route table, rule sets, connections.
        asyncio.run(closed_loop(url, tokens, 1.5, args.concurrency))
        accepted, other, latencies = asyncio.run(closed_loop(url, tokens, args.seconds, args.concurrency))
        throughput = accepted / args.seconds
        rate = max(50.0, throughput / 2)
        open_accepted, open_other, open_latencies = asyncio.run(
            open_loop(url, tokens, args.seconds / 2, rate)
        )

        closed_p50, closed_p99 = statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000
        open_p50, open_p99 = statistics.median(open_latencies) * 1000, percentile(open_latencies, 0.99) * 1000
        print(f"tenants (ordering keys): {args.tenants}; JWT (RS256) on every request; EU route, one region")
        print(f"baseline raw publish, ordered keys:   {raw:7.0f} msg/s   (PublisherClient, 5 ms batches)")
        print(f"baseline raw publish, no keys:        {raw_unordered:7.0f} msg/s")
        print(
            f"gateway, {args.concurrency} clients closed loop:    {throughput:7.0f} 202/s   "
            f"p50 {closed_p50:6.1f} ms   p99 {closed_p99:6.1f} ms   non-202: {other or 'none'}"
        )
        print(
            f"gateway / baselines:                  {throughput / raw * 100:7.1f} % of ordered, "
            f"{throughput / raw_unordered * 100:.1f} % of unordered"
        )
        print(
            f"gateway, open loop at {rate:5.0f} req/s:   {open_accepted / (args.seconds / 2):7.0f} 202/s   "
            f"p50 {open_p50:6.1f} ms   p99 {open_p99:6.1f} ms   non-202: {open_other or 'none'}"
        )
        return 0 if not other and not open_other else 1
    finally:
        if gateway is not None:
            stop_pid(gateway.pid)
        server.shutdown()
        emulator.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
