"""``apx-ratelimit``: run the APX rate-limit service (Envoy RLS) until SIGTERM.

The console script of the distribution (``[project.scripts]``) and
``python -m apx.dataplane.ratelimit``; a container runs it as its entry point
with no arguments, configured by the ``APX_*`` variables the Helm chart sets
(``APX_REDIS_URL``, ``APX_GRPC_PORT``, ``APX_METRICS_PORT``, ``APX_LOG_LEVEL``,
``APX_JSON_LOGS``, and ``APX_GRPC_*`` for the transport and its limits against
hostile peers, ``common.grpcflags``). Flags override variables. Logs are JSON lines on stderr.
On SIGTERM it reports NOT_SERVING, lets in-flight calls finish (``--grace-seconds``)
and exits 0; it never exits because Redis is down. ``--workers N`` runs N such
processes on the same port under a supervisor (``workers.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from opentelemetry import trace
from prometheus_client import start_http_server

from apx.dataplane.common.flags import add_version_flag
from apx.dataplane.common.grpcflags import add_transport_flags, limits_from_args
from apx.dataplane.common.grpcserver import parse_listen
from apx.dataplane.common.jsonlog import configure_logging, env_flag
from apx.dataplane.common.redact import redact_text
from apx.dataplane.common.shutdown import stop_event
from apx.dataplane.common.tracecontext import configure_tracing
from apx.runtime.process import HeapKeeper, frozen_objects

from .metrics import RateLimitMetrics
from .server import FAILURE_MODES, ServiceSettings, start_service
from .workers import WORKER_INDEX_FLAG, supervise, tag_worker_logs, watch_parent, worker_count

# Envoy calls the service once per request: with tracing on, 1% of the calls get a span unless
# OTEL_TRACES_SAMPLER(_ARG) says otherwise. The service draws that 1% itself before touching the
# tracer (``RateLimitService.trace_ratio``), so the other 99% create no span object at all; the SDK's
# sampler then records every span it is given. With OTEL_TRACES_SAMPLER set, every call goes to the
# tracer and that sampler decides.
TRACE_RATIO = 0.01

log = logging.getLogger("apx.dataplane.ratelimit")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def build_parser() -> argparse.ArgumentParser:
    grpc_port = _env("APX_GRPC_PORT", "8081")
    parser = argparse.ArgumentParser(
        prog="apx-ratelimit",
        description=(
            "APX rate-limit service: Envoy's global rate limit gRPC API "
            "(envoy.service.ratelimit.v3.RateLimitService, domain 'apx') "
            "over the operator's Redis rule sets. "
            "Flags override the APX_* environment variables named in each help."
        ),
    )
    add_version_flag(parser)
    parser.add_argument(
        "--listen",
        default=_env("APX_RATELIMIT_LISTEN", f"0.0.0.0:{grpc_port}"),
        help="gRPC address host:port "
        "(APX_RATELIMIT_LISTEN, else 0.0.0.0:$APX_GRPC_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=_env("APX_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL (APX_REDIS_URL; default redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--metrics-host",
        default=_env("APX_METRICS_HOST", "0.0.0.0"),
        help="address of the Prometheus /metrics endpoint (APX_METRICS_HOST; default %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("APX_METRICS_PORT", "9090")),
        help="port of the Prometheus /metrics endpoint, 0 disables (APX_METRICS_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=_env("APX_OTLP_ENDPOINT", "") or None,
        help="OTLP/HTTP endpoint for traces of a sampled share of the calls (APX_OTLP_ENDPOINT, or the "
        "standard OTEL_EXPORTER_OTLP_ENDPOINT; sampler OTEL_TRACES_SAMPLER, default 1%% of calls)",
    )
    parser.add_argument(
        "--failure-mode",
        choices=FAILURE_MODES,
        default=_env("APX_RATELIMIT_FAILURE_MODE", "envoy"),
        help=(
            "who decides when the service cannot (Redis down, no rule set): 'envoy' answers UNAVAILABLE and "
            "Envoy's per-Route fail-open/fail-closed filter decides; 'service' answers from the product's "
            "failureMode itself (APX_RATELIMIT_FAILURE_MODE; default %(default)s)"
        ),
    )
    parser.add_argument(
        "--rules-cache-seconds",
        type=float,
        default=float(_env("APX_RATELIMIT_RULES_CACHE_SECONDS", "1.0")),
        help="how long a product's live rule-set version is cached (APX_RATELIMIT_RULES_CACHE_SECONDS; "
        "default %(default)s, the contract's maximum)",
    )
    parser.add_argument(
        "--redis-timeout-ms",
        type=int,
        default=int(_env("APX_RATELIMIT_REDIS_TIMEOUT_MS", "250")),
        help="connect and read timeout of Redis calls (APX_RATELIMIT_REDIS_TIMEOUT_MS; default %(default)s)",
    )
    parser.add_argument(
        "--redis-max-connections",
        type=int,
        default=int(_env("APX_RATELIMIT_REDIS_MAX_CONNECTIONS", "128")),
        help="size of the Redis connection pool (APX_RATELIMIT_REDIS_MAX_CONNECTIONS; default %(default)s)",
    )
    parser.add_argument(
        "--redis-pool-timeout-ms",
        type=int,
        default=int(_env("APX_RATELIMIT_REDIS_POOL_TIMEOUT_MS", "250")),
        help="how long a call waits for a free pooled Redis connection before the failure mode answers it "
        "(APX_RATELIMIT_REDIS_POOL_TIMEOUT_MS; default %(default)s)",
    )
    parser.add_argument(
        "--redis-pool-max-waiting",
        type=int,
        default=int(_env("APX_RATELIMIT_REDIS_POOL_MAX_WAITING", "10000")),
        help="calls that may wait for a pooled Redis connection at once; more are answered by the failure "
        "mode at once (APX_RATELIMIT_REDIS_POOL_MAX_WAITING; default %(default)s)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("APX_RATELIMIT_GRACE_SECONDS", "5")),
        help="time in-flight calls get to finish on SIGTERM "
        "(APX_RATELIMIT_GRACE_SECONDS; default %(default)s)",
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default=_env("APX_RATELIMIT_EVENT_LOOP", "auto"),
        help="asyncio event loop: uvloop (about a third less CPU per decision), asyncio, or auto: uvloop "
        "when installed (APX_RATELIMIT_EVENT_LOOP; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("APX_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR (APX_LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument(
        "--json-logs",
        action=argparse.BooleanOptionalAction,
        default=env_flag(os.environ.get("APX_JSON_LOGS"), True),
        help="log JSON lines; --no-json-logs for plain text (APX_JSON_LOGS; default on)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(_env("APX_RATELIMIT_WORKERS", "1")),
        help="service processes sharing the gRPC port (SO_REUSEPORT), started, restarted and stopped by this "
        "one; /metrics then carries each worker's series with a 'worker' label; 0: one per CPU "
        "(APX_RATELIMIT_WORKERS; default %(default)s)",
    )
    # Set by the supervisor of --workers on the processes it starts (workers.py), never by hand.
    parser.add_argument(WORKER_INDEX_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    add_transport_flags(parser, os.environ)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    return ServiceSettings(
        listen=args.listen,
        redis_url=args.redis_url,
        failure_mode=args.failure_mode,
        pointer_ttl=args.rules_cache_seconds,
        redis_timeout_ms=args.redis_timeout_ms,
        redis_max_connections=args.redis_max_connections,
        redis_pool_timeout_ms=args.redis_pool_timeout_ms,
        redis_pool_max_waiting=args.redis_pool_max_waiting,
        grace_seconds=args.grace_seconds,
        transport=limits_from_args(args),
        grpc_transport=args.grpc_transport,
        reuse_port=args.worker_index is not None,
    )


async def run(
    settings: ServiceSettings,
    metrics_port: int,
    metrics_host: str = "0.0.0.0",
    tracer: trace.Tracer | None = None,
    trace_ratio: float = 1.0,
    supervisor: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or, for a worker, until its ``supervisor`` pid is gone); the exit code."""
    stopping = stop_event()
    watching = asyncio.create_task(watch_parent(stopping, supervisor)) if supervisor is not None else None
    metrics = RateLimitMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
    try:
        running = await start_service(settings, metrics=metrics)
    except (OSError, RuntimeError, ValueError) as exc:  # port taken, bad --listen, bad --redis-url
        log.error("cannot start: %s", redact_text(str(exc)))
        return 1
    running.service.tracer = tracer
    running.service.trace_ratio = trace_ratio
    HeapKeeper().settle()
    log.info("startup heap frozen", extra={"objects": frozen_objects()})
    await stopping.wait()
    if watching is not None:
        watching.cancel()
    await running.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.failure_mode not in FAILURE_MODES:
        parser.error(f"--failure-mode must be one of {', '.join(FAILURE_MODES)}")
    if not 0 < args.rules_cache_seconds <= 1:
        # REDIS_KEYS.md: readers cache a product's `current` pointer for at most one second.
        parser.error("--rules-cache-seconds must be in (0, 1]")
    try:
        limits_from_args(args)
    except ValueError as exc:
        parser.error(f"gRPC transport limits: {exc}")
    try:
        workers = worker_count(args.workers)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging("apx-ratelimit", args.log_level, args.json_logs)
    if args.worker_index is not None:
        tag_worker_logs(args.worker_index)
    elif workers > 1:
        try:
            host, port = parse_listen(args.listen)
        except ValueError as exc:
            log.error("cannot start: %s", exc)
            return 1
        # The supervisor only starts and stops processes: the standard loop (subprocesses, signals).
        return asyncio.run(
            supervise(
                sys.argv[1:] if argv is None else argv,
                workers,
                host,
                port,
                metrics_host=args.metrics_host,
                metrics_port=args.metrics_port,
                grace_seconds=args.grace_seconds,
            )
        )
    # No default ratio for the SDK: without OTEL_TRACES_SAMPLER its sampler records every span it is
    # given, and the service hands it TRACE_RATIO of the calls.
    provider = configure_tracing("apx-ratelimit", args.otlp_endpoint)
    tracer = provider.get_tracer("apx.ratelimit") if provider is not None else None
    trace_ratio = 1.0 if os.environ.get("OTEL_TRACES_SAMPLER") else TRACE_RATIO
    supervisor = os.getppid() if args.worker_index is not None else None
    coroutine = run(
        settings_from_args(args), args.metrics_port, args.metrics_host, tracer, trace_ratio, supervisor
    )
    if args.event_loop == "asyncio":
        return asyncio.run(coroutine)
    try:
        import uvloop
    except ImportError:
        if args.event_loop == "uvloop":
            coroutine.close()
            parser.error("--event-loop uvloop: the uvloop package is not installed")
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())
