"""Benchmark: worker throughput end to end, beside raw synchronous pull + ack from the emulator.

    python bench/bench_worker.py [--messages 10000] [--tenants 1000] [--max-outstanding 1000]

Starts its own redis-server and Pub/Sub emulator (``e2e.services``) and an
upstream stub (a minimal keep-alive HTTP server in its own process, on
loopback). Deploys two async Routes with the operator's renderers and
appliers, one ordered (the default: ordering key = tenant) and one not, and
for each, in the same run:

* baseline: ``pull`` (up to 1,000 at a time; the emulator returns at most
  100) + ``acknowledge`` of N messages from a subscription with the same
  settings and the same messages, nothing else (the emulator pulls ordered
  subscriptions several times slower);
* worker: the real ``Processor`` (on uvloop, with the Redis pipe, as
  ``apx-worker`` runs by default) consuming N messages as the gateway
  publishes them (same attributes; ordering key = tenant on the ordered Route,
  none on the other): pull → claim in Redis → HTTP call to the stub → result
  in Redis → backlog counter → ack.

Prints both rates and their ratio. Target: worker ≥ 30 % of the raw rate.
Everything it started is stopped at the end. The machine is shared: compare
the ratio, not the absolute rates, between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1

from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys
from apx.controllers.pipeline import compile_resources
from apx.controllers.renderers.kubernetes.workers import upstream_url
from apx.dataplane.common import eventloop, redisconn
from apx.dataplane.common.pipe import PipelinedRedis
from apx.dataplane.common.requeststate import ScriptRunner
from apx.dataplane.worker.config import WorkerConfig
from apx.dataplane.worker.processor import Processor
from apx.dataplane.worker.upstream import UpstreamClient
from e2e.services import free_port, start_pubsub_emulator, start_redis, stop_pid

PROJECT = "apx-bench"

# A keep-alive HTTP/1.1 server that answers every request 200 with a small JSON body.
UPSTREAM_STUB = r"""
import asyncio, sys
BODY = b'{"ok":true}'
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
RESPONSE = HEAD % len(BODY) + BODY

class Stub(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(RESPONSE)

async def main():
    server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def documents(upstream: str, max_outstanding: int) -> list[dict[str, Any]]:
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
            "spec": {"version": "1.0.0", "auth": {"allowAnonymous": True}},
        },
        *(
            {
                "apiVersion": "apx.dev/v1alpha1",
                "kind": "Route",
                "metadata": {"name": f"export-{kind}", **meta},
                "spec": {
                    "productRef": {"name": "jobs"},
                    "policyRef": {"name": "policy", "version": "1.0.0"},
                    "match": {
                        "hosts": [f"{kind}.bench.example"],
                        "pathPrefix": "/v1/export",
                        "methods": ["POST"],
                    },
                    "mode": "async",
                    "backend": {"url": upstream},
                    "worker": {"image": "example.com/worker:1", "maxOutstandingMessages": max_outstanding},
                    "timeout": "30s",
                    "async": {"backlogLimit": 10_000_000, "resultTtl": "10m", "ordering": kind == "ordered"},
                },
            }
            for kind in ("ordered", "unordered")
        ),
    ]


def attributes(index: int, tenants: int, route: str) -> tuple[str, dict[str, str]]:
    """What the gateway publishes with a request (see apx.dataplane.gateway.app)."""
    tenant = f"tenant-{index % tenants:05d}"
    return tenant, {
        "request_id": str(uuid.uuid4()),
        "tenant_id": tenant,
        "tenant_tier": "pro",
        "policy_version": "1.0.0",
        "residency": "EU",
        "track": "stable",
        "route": route,
        "product": "bench/jobs",
        "region": "europe-west1",
        "method": "POST",
        "path": "/v1/export/report",
        "route_base": "/v1/export",
        "content_type": "application/json",
        "enqueued_ms": str(int(time.time() * 1000)),
        "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    }


def publish(topic: str, count: int, tenants: int, route: str, ordered: bool) -> None:
    """As the gateway publishes: the tenant is the ordering key on ordered Routes only."""
    client = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_latency=0.05),
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
    )
    pending = []
    body = b'{"report": "monthly", "rows": 1000}'
    for index in range(count):
        tenant, attrs = attributes(index, tenants, route)
        pending.append(client.publish(topic, body, ordering_key=tenant if ordered else "", **attrs))
    futures.wait(pending)
    client.stop()


def raw_pull_ack(subscription: str, count: int) -> float:
    client = pubsub_v1.SubscriberClient()
    done = 0
    started = time.perf_counter()
    while done < count:
        response = client.pull(request={"subscription": subscription, "max_messages": 1000}, timeout=30)
        ack_ids = [m.ack_id for m in response.received_messages]
        if ack_ids:
            client.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
        done += len(ack_ids)
    elapsed = time.perf_counter() - started
    client.close()
    return count / elapsed


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
    keys = VersionedKeys(table.key[: -len(table.version)], table.current_key, table.versions_key)
    await applier.publish(keys, table.version, dict(table.entries))
    await applier.close()
    # Each baseline subscription: a worker subscription's settings, on a topic of its own.
    baseline_topics = [
        dict(t, name=t["name"] + "-baseline") for t in compiled.pubsub.topics if ".dlq" not in t["name"]
    ]
    baseline_subs = [
        dict(sub, name=sub["name"] + "-baseline", topic=sub["topic"] + "-baseline")
        for sub in compiled.pubsub.subscriptions
        if sub["name"].endswith(".workers")
    ]
    pubsub = PubSubApplier()
    await pubsub.ensure(
        [*compiled.pubsub.topics, *baseline_topics], [*compiled.pubsub.subscriptions, *baseline_subs]
    )
    pubsub.close()
    return compiled


async def run_worker(
    compiled: Any, route_key: str, redis_url: str, count: int, max_outstanding: int
) -> tuple[float, float]:
    """Messages/s of the real Processor on ``route_key``'s subscription, and the upstream 200s it counted."""
    route = next(r for r in compiled.ir.routes if r.key == route_key)
    plan = next(p for p in compiled.pubsub.plans if p.route == route_key and p.track == "stable")
    config = WorkerConfig(
        subscriptions=(plan.subscription,),
        upstream_url=upstream_url(route.stable.backend),
        redis_url=redis_url,
        pubsub_project=PROJECT,
        route=route.key,
        product=route.product.key,
        track="stable",
        timeout_ms=route.timeout_ms,
        result_ttl_ms=route.delivery.result_ttl_ms,
        max_outstanding_messages=max_outstanding,
        metrics_port=0,
    )
    client = redisconn.connect(redis_url)
    upstream = UpstreamClient(
        config.upstream_url, max_connections=max_outstanding, max_body=config.max_result_bytes
    )
    pipe = PipelinedRedis(redis_url, timeout=10)
    processor = Processor(config, ScriptRunner(client, pipe), upstream)
    registry = processor.metrics.registry
    labels = {"route": route.key, "track": "stable", "outcome": "acked"}
    started = time.perf_counter()
    await processor.start()
    while (registry.get_sample_value("apx_worker_messages_total", labels) or 0) < count:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await processor.drain()
    ok = registry.get_sample_value(
        "apx_requests_total", {"route": route.key, "track": "stable", "tenant_tier": "pro", "code": "200"}
    )
    await upstream.close()
    await pipe.close()
    await client.aclose()
    return count / elapsed, float(ok or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--max-outstanding", type=int, default=1000)
    parser.add_argument("--event-loop", choices=eventloop.CHOICES, default="auto")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="apx-bench-worker-"))
    redis = start_redis(workdir / "redis")
    emulator = start_pubsub_emulator(workdir / "pubsub")
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
    port = free_port()
    stub = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM_STUB, str(port)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert stub.stdout is not None and stub.stdout.readline().strip() == b"ready"
        redis_url = f"redis://{redis.address}/0"
        compiled = asyncio.run(deploy(documents(f"http://127.0.0.1:{port}", args.max_outstanding), redis_url))
        print(f"messages per run: {args.messages}, ordering keys (tenants): {args.tenants}")
        print(f"worker: max outstanding messages {args.max_outstanding}, event loop {args.event_loop}")
        ratios = []
        for kind in ("ordered", "unordered"):
            route = f"bench/export-{kind}"
            plan = next(p for p in compiled.pubsub.plans if p.route == route and p.track == "stable")
            topic = f"projects/{PROJECT}/topics/{plan.topic}"
            ordered = kind == "ordered"
            publish(topic + "-baseline", args.messages, args.tenants, route, ordered)
            raw = raw_pull_ack(
                f"projects/{PROJECT}/subscriptions/{plan.subscription}-baseline", args.messages
            )
            publish(topic, args.messages, args.tenants, route, ordered)
            rate, ok = eventloop.run(
                run_worker(compiled, route, redis_url, args.messages, args.max_outstanding), args.event_loop
            )
            ratios.append(rate / raw)
            print(f"-- {kind} subscription (route async.ordering: {ordered})")
            print(f"   baseline raw pull+ack:    {raw:8.0f} msg/s")
            print(
                f"   worker end to end:        {rate:8.0f} msg/s   "
                f"(pull, claim, upstream HTTP, result, ack; {int(ok)} upstream 200s)"
            )
            print(f"   worker / baseline:        {rate / raw * 100:8.1f} %      (target >= 30 %)")
        return 0 if min(ratios) > 0 else 1
    finally:
        stop_pid(stub.pid)
        emulator.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
