"""Benchmark: the rate-limit service (``apx-ratelimit``) against raw EVALSHA of the same Lua script.

    python bench/bench_ratelimit.py [--seconds 5] [--streams 32] [--rate 5000]
        [--transports lean,h2] [--workers 1,2] [--baseline-path DIR]

Starts its own redis-server (``e2e.services.start_redis``), publishes a
Product the way the operator does, and measures in one run:

* baselines, the decision script (``scripts.DECIDE``) with the arguments the
  service sends for a plan with a rate limit, a quota and a concurrency cap:
  redis-py sequential ``EVALSHA`` (one call at a time, as a plain client
  does), redis-py pipelined (100 per round trip, Redis' own ceiling for this
  script), redis-py asyncio with ``--streams`` calls in flight, and the
  service's own pipelined connection (``pipe.PipelinedRedis``) the same way;
* three floors driven exactly like the service: an empty ``grpc.aio``
  servicer, and each of the service's two transports (``common.grpcserver``:
  ``lean``, its own framing, and ``h2``, the library) with a handler that
  parses the request and answers a constant;
* the service, one process (``python -m apx.dataplane.ratelimit``), once per
  transport (``--grpc-transport``) and, with ``--workers 1,2``, once per
  worker count too (``--workers N``: N processes on one port, SO_REUSEPORT;
  CPU is the whole process tree's): decisions per second with ``--streams``
  concurrent calls on one HTTP/2 connection (h2load, closed loop: what one
  Envoy worker's connection can carry) and server CPU per decision;
* latency at ``--rate`` (and at half and a fifth of it) under open-loop
  load: Poisson arrivals on 4 connections, each request sent at its time
  whatever is in flight (``openloop.py``, which says why not h2load's
  ``--rps``); the floors at ``--rate`` beside it;
* for comparison, h2load's ``--rps`` at ``--rate``, which sends every 10 ms
  what is due (bursts of 50 at 5,000 rps on 4 connections);
* with ``--baseline-path DIR`` (a ``PYTHONPATH`` under which ``apx`` is
  another tree, e.g. an older commit unpacked with ``git archive``), that
  tree's service too, driven the same way in the same run: before and after
  a change side by side, beside the same baselines.

Closed-loop load comes from h2load (Debian ``nghttp2-client``, installed when
missing), which sends Envoy's ``RateLimitRequest`` as raw gRPC frames at a
fraction of a Python client's CPU, leaving the machine to the service. After
the runs the service's own metrics are scraped to check every call was a
decision (no errors). Everything started is stopped by PID. Targets from the
issue: service ≥ 50 % of the raw sequential EVALSHA rate, p99 ≤ 2 ms at
5,000 rps; both transports' figures are printed beside the same baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import redis.asyncio as aioredis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client.parser import text_string_to_metric_families

from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys
from apx.controllers.renderers.redis_rules import render_redis
from apx.controllers.translate import translate
from apx.dataplane.common.grpcserver import TRANSPORTS
from apx.dataplane.common.pipe import PipelinedRedis, encode_args
from apx.dataplane.common.rulesets import RuleSetReader
from apx.dataplane.ratelimit import scripts
from apx.dataplane.ratelimit.limiter import DECIDE_SHA, DECIDE_SOURCE, build_plan
from e2e.services import Service, apt_install, free_port, start_redis, stop_pid, wait_for_port

PRODUCT = "bench/api"
PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
TENANTS = 1000

GRPC_AIO_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    class Constant(rls_pb2_grpc.RateLimitServiceServicer):
        async def ShouldRateLimit(self, request, context):
            return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)

    async def main():
        server = grpc.aio.server()
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Constant(), server)
        server.add_insecure_port(sys.argv[1])
        await server.start()
        await server.wait_for_termination()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    """
)

# The service's own transport (argv[3]: lean or h2) with a handler that only parses the request and
# answers a constant: what the transport costs, the floor under every decision.
TRANSPORT_FLOOR_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    import uvloop
    from envoy.service.ratelimit.v3 import rls_pb2
    from apx.dataplane.common.grpcserver import GrpcServer, Method, parse_listen

    ANSWER = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK).SerializeToString()

    async def should_rate_limit(message):
        rls_pb2.RateLimitRequest.FromString(message)
        return ANSWER

    async def main():
        server = GrpcServer({sys.argv[2]: Method(should_rate_limit)}, transport=sys.argv[3])
        await server.start(*parse_listen(sys.argv[1]))
        await asyncio.Event().wait()

    uvloop.run(main())
    """
)


def documents() -> list[dict[str, Any]]:
    """A Product whose plan has a rate limit, a quota and a concurrency cap, generous enough to admit all."""
    plan = {
        "name": "metered",
        "tier": "pro",
        "rateLimit": {"requestsPerSecond": 1_000_000, "burst": 1_000_000},
        "quota": {"requests": 10_000_000_000, "period": "month"},
        "concurrency": 100_000,
    }
    namespace, name = PRODUCT.split("/")
    return [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"residency": "GLOBAL", "regions": ["us-central1"], "plans": [plan]},
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "bench-policy", "namespace": namespace},
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
            "metadata": {"name": "bench-route", "namespace": namespace},
            "spec": {
                "productRef": {"name": name},
                "policyRef": {"name": "bench-policy", "version": "1.0.0"},
                "match": {"hosts": ["api.example"], "pathPrefix": "/"},
                "mode": "sync",
                "backend": {"url": "http://backend.example:8080"},
            },
        },
    ]


async def publish(url: str) -> dict[str, Any]:
    result = translate(documents())
    if result.stalled:
        raise SystemExit(f"benchmark workload rejected: {result.stalled[0].message}")
    output = render_redis(result.ir)
    applier = RedisApplier(url)
    try:
        for rule_set in output.rule_sets:
            keys = VersionedKeys(
                rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key
            )
            await applier.publish(keys, rule_set.version, dict(rule_set.fields))
    finally:
        await applier.close()
    client = aioredis.Redis.from_url(url)
    try:
        match = await RuleSetReader(client).lookup(PRODUCT, "t0", None)
    finally:
        await client.aclose()
    assert match is not None
    return {"meta": match.meta, "rule": match.rule}


# --- baselines: the same script from redis-py -------------------------------------------------------


def raw_sequential(url: str, rules: dict[str, Any], seconds: float) -> float:
    client = redis.Redis.from_url(url)
    script = client.register_script(scripts.DECIDE)
    calls = _raw_calls(rules)
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(50):
            keys, args = calls[done % TENANTS]
            script(keys=keys, args=[b"0", b"1", b"s%d" % done, *args])
            done += 1
    rate = done / (time.perf_counter() - started)
    client.close()
    return rate


def raw_pipelined(url: str, rules: dict[str, Any], seconds: float, depth: int = 100) -> float:
    client = redis.Redis.from_url(url)
    calls = _raw_calls(rules)
    client.register_script(scripts.DECIDE)(keys=calls[0][0], args=[b"0", b"0", b"warm", *calls[0][1]])
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        pipe = client.pipeline(transaction=False)
        for i in range(depth):
            keys, args = calls[(done + i) % TENANTS]
            pipe.evalsha(DECIDE_SHA.decode(), len(keys), *keys, b"0", b"1", b"p%d" % (done + i), *args)
        pipe.execute()
        done += depth
    rate = done / (time.perf_counter() - started)
    client.close()
    return rate


async def raw_async(url: str, rules: dict[str, Any], seconds: float, streams: int) -> float:
    client = aioredis.Redis.from_url(url, max_connections=streams + 4)
    script = client.register_script(scripts.DECIDE)
    calls = _raw_calls(rules)
    done = 0

    async def stream(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            keys, args = calls[i % TENANTS]
            await script(keys=keys, args=[b"0", b"1", b"a%d-%d" % (offset, i), *args])
            i += streams
            done += 1

    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(stream(k) for k in range(streams)))
    rate = done / (time.perf_counter() - started)
    await client.aclose()
    return rate


async def raw_pipe(url: str, rules: dict[str, Any], seconds: float, streams: int) -> float:
    """The service's own connection (``PipelinedRedis``) with the service's pre-encoded commands."""
    pipe = PipelinedRedis(url, timeout=5.0)  # a baseline on a busy machine: no call may time out
    plans = [build_plan(PRODUCT, f"t{i}", rules["meta"], rules["rule"], None) for i in range(TENANTS)]
    done = 0

    async def stream(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            plan = plans[i % TENANTS]
            command = plan.head + encode_args((b"0", b"1", b"q%d-%d" % (offset, i))) + plan.tail
            await pipe.evalsha(DECIDE_SHA, DECIDE_SOURCE, command)
            i += streams
            done += 1

    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(stream(k) for k in range(streams)))
    rate = done / (time.perf_counter() - started)
    await pipe.close()
    return rate


def _raw_calls(rules: dict[str, Any]) -> list[tuple[list[bytes], list[bytes]]]:
    """(KEYS, static ARGV) per tenant, as the service builds them (``build_plan``)."""
    calls = []
    for i in range(TENANTS):
        plan = build_plan(PRODUCT, f"t{i}", rules["meta"], rules["rule"], None)
        keys = [check.key.encode() for check in plan.checks]
        args: list[bytes] = []
        for check in plan.checks:
            args += [check.kind.encode(), b"%d" % check.limit, repr(check.param).encode()]
            args += [b"%d" % check.ttl_ms, b"%d" % check.flag]
        calls.append((keys, args))
    return calls


# --- gRPC load with h2load -------------------------------------------------------------------------------


def grpc_body(tenant: str) -> bytes:
    """One gRPC frame (uncompressed, length-prefixed) carrying Envoy's RateLimitRequest."""
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    request = rls_pb2.RateLimitRequest(
        domain="apx",
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key="product", value=PRODUCT), entry(key="tenant", value=tenant)]
            )
        ],
    )
    payload = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(payload)) + payload


def h2load(
    h2load_bin: str,
    port: int,
    body: Path,
    seconds: float,
    *,
    streams: int,
    clients: int = 1,
    rps: int = 0,
    log: Path | None = None,
) -> dict[str, float]:
    command = [
        h2load_bin,
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-D",
        f"{int(seconds * 1000)}ms",
        "--warm-up-time",
        "1",
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    if rps:
        command += ["--rps", str(rps)]
    if log is not None:
        command += ["--log-file", str(log)]
    command.append(f"http://127.0.0.1:{port}{PATH}")
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("finished in"):
            result["rate"] = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            fields = line.split()
            result["done"] = float(fields[fields.index("done,") - 1])
            result["failed"] = float(fields[fields.index("failed,") - 1]) + float(
                fields[fields.index("errored,") - 1]
            )
    return result


def latencies_ms(log: Path) -> list[float]:
    values = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200":
            values.append(int(fields[2]) / 1000)
    return sorted(values)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def scrape(port: int) -> dict[str, Any]:
    """Decision and failure totals, and the decision-time histogram buckets, from the service's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, Any] = {"buckets": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("apx_ratelimit_decisions_total", "apx_ratelimit_failures_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            elif sample.name == "apx_ratelimit_decision_seconds_bucket":
                # Summed over the ``worker`` label when the service runs several processes.
                le = float(sample.labels["le"])
                totals["buckets"][le] = totals["buckets"].get(le, 0.0) + sample.value
    return totals


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding quantile ``q`` of the observations in between."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    for le, cumulative in counts:
        if total and cumulative >= q * total:
            return le * 1000
    return float("nan")


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (the workers of ``--workers``)."""
    process = psutil.Process(pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@dataclass
class Driven:
    """What one gRPC server did: closed-loop rate and CPU per call (h2load), latency at open-loop rates."""

    rate: float
    cpu_us: float
    failed: float
    paced: dict[int, dict[str, Any]] = field(default_factory=dict)  # rate -> openloop.py's report + "ms"
    bursty: tuple[float, list[float]] = (0.0, [])  # h2load --rps at the target rate: achieved, ms


def open_loop(port: int, body: Path, rate: int, seconds: float, log: Path) -> dict[str, Any]:
    """``openloop.py`` at ``rate`` (Poisson arrivals, 4 connections); its report, latencies in ms."""
    command = [
        sys.executable, str(Path(__file__).with_name("openloop.py")), "--port", str(port), "--path", PATH,
        "--body", str(body), "--rate", str(rate), "--seconds", str(seconds), "--log", str(log),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    report["ms"] = sorted(float(line) / 1000 for line in log.read_text().split())
    return report


def drive(
    h2load_bin: str,
    port: int,
    pid: int,
    body: Path,
    work: Path,
    args: argparse.Namespace,
    name: str,
    rates: tuple[int, ...],
) -> Driven:
    cpu_before = cpu_seconds(pid)
    closed = h2load(h2load_bin, port, body, args.seconds, streams=args.streams)
    # h2load adds one second of warm-up to the measured time.
    cpu_us = (cpu_seconds(pid) - cpu_before) / max(closed.get("done", 0.0) * (1 + 1 / args.seconds), 1) * 1e6
    driven = Driven(closed["rate"], cpu_us, closed.get("failed", 0.0))
    for rate in rates:
        driven.paced[rate] = open_loop(port, body, rate, args.seconds, work / f"{name}-{rate}.txt")
    log = work / f"{name}-bursty.tsv"
    clients = 4
    run = h2load(
        h2load_bin, port, body, args.seconds, streams=args.streams, clients=clients, rps=args.rate // clients,
        log=log,
    )  # fmt: skip
    driven.bursty = (run["rate"], latencies_ms(log))
    return driven


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44}{value:>10}   {note}".rstrip())


def describe(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5):6.2f}  p99 {percentile(values, 0.99):6.2f}  "
        f"p99.9 {percentile(values, 0.999):6.2f}  max {max(values, default=float('nan')):6.2f} ms"
    )


@dataclass
class ServiceRun:
    """One run of the service on one transport: what was driven, and its metrics before and after."""

    transport: str
    driven: Driven
    before: dict[str, Any]
    after: dict[str, Any]
    workers: int = 1


def report_service(
    label: str,
    run: ServiceRun,
    sequential: float,
    in_flight: float,
    floors: dict[str, Driven],
    args: argparse.Namespace,
) -> bool:
    """Print one transport's service figures; True when the service reported failures."""
    before, after, driven, transport = run.before, run.after, run.driven, run.transport
    decided = after.get("apx_ratelimit_decisions_total", 0) - before.get("apx_ratelimit_decisions_total", 0)
    failures = after.get("apx_ratelimit_failures_total", 0) - before.get("apx_ratelimit_failures_total", 0)
    server_p99 = bucket_quantile(before["buckets"], after["buckets"], 0.99)
    rate = driven.rate
    processes = "one process" if run.workers == 1 else f"--workers {run.workers} (SO_REUSEPORT)"
    print(
        f"apx-ratelimit --grpc-transport {label}, {processes}, {args.streams} streams on one HTTP/2 "
        "connection (h2load, closed loop):"
    )
    row("decisions", f"{rate:.0f} /s", f"{driven.cpu_us:.0f} µs CPU per decision")
    row("", "", f"{decided:.0f} counted by the service, {failures:.0f} failures, {driven.failed:.0f} errors")
    row("/ raw sequential EVALSHA", f"{rate / sequential:.2f}", "target >= 0.50")
    row(f"/ redis-py asyncio, {args.streams} in flight", f"{rate / in_flight:.2f}")
    row("/ empty grpc.aio servicer", f"{rate / floors['grpc.aio'].rate:.2f}")
    print("  latency, open loop: Poisson arrivals on 4 HTTP/2 connections (bench/openloop.py), ms:")
    lines: list[tuple[str, int, dict[str, Any]]] = [("service", r, driven.paced[r]) for r in driven.paced]
    lines[1:1] = [(f"{n} floor", args.rate, floors[n].paced[args.rate]) for n in ("grpc.aio", transport)]
    for label, paced_rate, report in lines:
        target = "   (target p99 <= 2 ms)" if label == "service" and paced_rate == args.rate else ""
        print(
            f"  {paced_rate:5d} rps  {label:<16} achieved {report['achieved_per_second']:6.0f}/s  "
            f"{describe(report['ms'])}{target}"
        )
        if report["not_ok"] or report["lost"]:
            print(f"    {report['not_ok']} answers not OK, {report['lost']} lost", file=sys.stderr)
    late = driven.paced[args.rate]
    print(
        f"  (requests left up to {late['late_p99_ms']:.2f} ms after their arrival time at p99, "
        f"{late['late_p50_ms']:.2f} ms at p50: the generator's 1 ms timer; not counted in the latency)"
    )
    print(f"  bursty: h2load --rps, 4 connections, {args.streams} streams each, every 10 ms what is due:")
    for label, (achieved, values) in [("service", driven.bursty)] + [
        (f"{n} floor", floors[n].bursty) for n in ("grpc.aio", transport)
    ]:
        print(f"  {args.rate:5d} rps  {label:<16} achieved {achieved:6.0f}/s  {describe(values)}")
    print(f"  service-side decision time over the whole run (histogram): p99 <= {server_p99:.1f} ms")
    not_ok = sum(report["not_ok"] + report["lost"] for report in driven.paced.values())
    return bool(failures or driven.failed or not_ok)


# --- main ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--streams", type=int, default=32, help="concurrent calls (HTTP/2 streams)")
    parser.add_argument("--rate", type=int, default=5000, help="paced rate for the latency figure")
    parser.add_argument(
        "--transports",
        type=lambda text: tuple(text.split(",")),
        default=TRANSPORTS,
        help=f"comma-separated transports to measure (default {','.join(TRANSPORTS)})",
    )
    parser.add_argument(
        "--workers",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=(1,),
        help="comma-separated --workers values the service is run with, each on every transport "
        "(default 1: one process)",
    )
    parser.add_argument(
        "--baseline-path",
        help="PYTHONPATH under which `apx` is another tree (e.g. an older commit): its service is run "
        "and reported beside this one's, same Redis, same minutes",
    )
    args = parser.parse_args()

    h2load_bin = apt_install("nghttp2-client", "h2load", no_recommends=True)
    work = Path(tempfile.mkdtemp(prefix="apx-bench-ratelimit-"))
    started: list[int] = []
    service: Service | None = None
    try:
        service = start_redis(work / "redis")
        url = f"redis://{service.address}/0"
        rules = asyncio.run(publish(url))
        seconds = args.seconds

        sequential = raw_sequential(url, rules, seconds)
        pipelined = raw_pipelined(url, rules, seconds)
        in_flight = asyncio.run(raw_async(url, rules, seconds, args.streams))
        own_pipe = asyncio.run(raw_pipe(url, rules, seconds, args.streams))

        body = work / "request.grpc"
        body.write_bytes(grpc_body("t0"))

        floors: dict[str, Driven] = {}
        for name, source, extra in (
            ("grpc.aio", GRPC_AIO_SERVER, []),
            *((transport, TRANSPORT_FLOOR_SERVER, [transport]) for transport in args.transports),
        ):
            floor_port = free_port()
            floor_server = spawn(
                [sys.executable, "-c", source, f"127.0.0.1:{floor_port}", PATH, *extra], work / f"{name}.log"
            )
            started.append(floor_server.pid)
            wait_for_port(floor_port, 20, floor_server, f"{name} floor server")
            floors[name] = drive(
                h2load_bin, floor_port, floor_server.pid, body, work, args, name, (args.rate,)
            )
            stop_pid(floor_server.pid)

        services: dict[str, ServiceRun] = {}
        # The service under test, and (--baseline-path) the same service from another tree, e.g. an
        # older commit unpacked with `git archive`, driven the same way in the same minutes.
        runs: list[tuple[str, str, int, dict[str, str] | None]] = [
            (t if w == 1 else f"{t} x{w} workers", t, w, None) for w in args.workers for t in args.transports
        ]
        if args.baseline_path:
            baseline_env = {**os.environ, "PYTHONPATH": args.baseline_path}
            runs += [(f"{t} (baseline)", t, 1, baseline_env) for t in args.transports]
        for label, transport, workers, env in runs:
            port, metrics_port = free_port(), free_port()
            rls = spawn(
                [
                    sys.executable, "-m", "apx.dataplane.ratelimit", "--listen", f"127.0.0.1:{port}",
                    "--redis-url", url, "--metrics-port", str(metrics_port), "--log-level", "WARNING",
                    "--grpc-transport", transport, *(["--workers", str(workers)] if workers != 1 else []),
                ],
                work / f"ratelimit-{len(services)}.log",
                env,
            )  # fmt: skip
            started.append(rls.pid)
            wait_for_port(port, 20, rls, "apx-ratelimit")
            wait_for_port(metrics_port, 20, rls, "apx-ratelimit metrics")
            before = scrape(metrics_port)
            rates = (args.rate, args.rate // 2, args.rate // 5)
            driven = drive(h2load_bin, port, rls.pid, body, work, args, f"service-{len(services)}", rates)
            services[label] = ServiceRun(transport, driven, before, scrape(metrics_port), workers)
            stop_pid(rls.pid)
    finally:
        for pid in started:
            stop_pid(pid)
        if service is not None:
            service.stop()

    print(f"machine: {os.cpu_count()} CPUs, shared by Redis, the server under test and h2load")
    print("baselines, the decision script with 3 checks (sliding-window rate, quota, concurrency):")
    row("redis-py EVALSHA, sequential", f"{sequential:.0f} /s")
    row("redis-py EVALSHA, pipelined x100", f"{pipelined:.0f} /s", "Redis' ceiling for this script")
    row(f"redis-py asyncio, {args.streams} in flight", f"{in_flight:.0f} /s")
    row(f"service's PipelinedRedis, {args.streams} in flight", f"{own_pipe:.0f} /s")
    print("floors, a constant answer (h2load, closed loop):")
    row(
        "empty grpc.aio servicer",
        f"{floors['grpc.aio'].rate:.0f} /s",
        f"{floors['grpc.aio'].cpu_us:.0f} µs CPU per call",
    )
    for transport in args.transports:
        floor = floors[transport]
        row(f"service's {transport} transport", f"{floor.rate:.0f} /s", f"{floor.cpu_us:.0f} µs CPU per call")
    failed = False
    for label, run in services.items():
        failed |= report_service(label, run, sequential, in_flight, floors, args)
    print("latency, open loop at the target rate, side by side (p99 target <= 2 ms):")
    for label, run in services.items():
        paced = run.driven.paced[args.rate]
        floor_paced = floors[run.transport].paced[args.rate]
        print(
            f"  {label:<16} service p99 {percentile(paced['ms'], 0.99):8.2f} ms   "
            f"floor p99 {percentile(floor_paced['ms'], 0.99):8.2f} ms   "
            f"decisions {run.driven.rate / sequential:.2f}x sequential EVALSHA, "
            f"{run.driven.cpu_us:.0f} µs CPU each"
        )
    aio = floors["grpc.aio"].paced[args.rate]
    print(f"  grpc.aio floor p99 {percentile(aio['ms'], 0.99):.2f} ms")
    if failed:
        print("a service reported failures during the run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
