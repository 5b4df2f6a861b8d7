"""Settings of ``apx-worker``: command-line flags, each defaulting to an environment variable.

Parsed by ``apx.dataplane.worker.main``; tests and the benchmark build
``WorkerConfig`` directly. The variables are exactly those rendered by
``apx.controllers.renderers.kubernetes.workers`` (``APX_SUBSCRIPTIONS``,
``APX_PUBSUB_PROJECT``, ``APX_ROUTE``, ``APX_PRODUCT``, ``APX_TRACK``,
``APX_POOL``, ``APX_UPSTREAM_URL``, ``APX_TIMEOUT_MS``, ``APX_RESULT_TTL_MS``,
``APX_MAX_OUTSTANDING_MESSAGES``, ``APX_DRAIN_SECONDS``, ``APX_METRICS_PORT``,
``APX_REDIS_URL``, ``PUBSUB_EMULATOR_HOST``), plus logging and tracing ones
shared with the other services; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from apx.dataplane.common.flags import (
    DEFAULT_PROJECT,
    HelpFormatter,
    add_pubsub_flags,
    add_service_flags,
    env_value,
)

DEFAULT_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    subscriptions: tuple[str, ...]  # subscription ids in ``pubsub_project``
    upstream_url: str
    redis_url: str
    pubsub_project: str = DEFAULT_PROJECT
    route: str = ""  # "<ns>/<name>"; empty: taken from each message
    product: str = ""
    track: str = ""  # empty: taken from each message
    pool: str = "shared"
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    result_ttl_ms: int = 3_600_000
    max_outstanding_messages: int = 100
    max_pull_batch: int = 1000
    drain_seconds: float = 30.0
    max_result_bytes: int = 4 * 1024 * 1024
    max_response_head_bytes: int = 64 * 1024
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090  # 0: no metrics listener
    log_level: str = "INFO"
    json_logs: bool = True
    otlp_endpoint: str | None = None
    event_loop: str = "auto"

    def subscription_path(self, subscription: str) -> str:
        if subscription.startswith("projects/"):
            return subscription
        return f"projects/{self.pubsub_project}/subscriptions/{subscription}"


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="apx-worker",
        description=(
            "APX worker: pulls an async Route's Pub/Sub subscriptions, calls the upstream for each "
            "request, stores the result in Redis for /status and acks; failures are retried by Pub/Sub "
            "and dead-lettered after the subscription's max delivery attempts."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--subscriptions",
        default=env_value(env, "APX_SUBSCRIPTIONS"),
        help="comma-separated subscription ids (or full paths) to consume (APX_SUBSCRIPTIONS)",
    )
    add_pubsub_flags(parser, env, "Google Cloud project of the subscriptions")
    parser.add_argument(
        "--upstream-url",
        default=env_value(env, "APX_UPSTREAM_URL"),
        help="upstream base URL (APX_UPSTREAM_URL)",
    )
    parser.add_argument(
        "--redis-url", default=env_value(env, "APX_REDIS_URL"), help="Redis URL for results (APX_REDIS_URL)"
    )
    parser.add_argument(
        "--route",
        default=env_value(env, "APX_ROUTE", ""),
        help="Route key <ns>/<name>, a metric label (APX_ROUTE)",
    )
    parser.add_argument(
        "--product", default=env_value(env, "APX_PRODUCT", ""), help="Product key <ns>/<name> (APX_PRODUCT)"
    )
    parser.add_argument(
        "--track",
        default=env_value(env, "APX_TRACK", ""),
        help="stable or canary, a metric label (APX_TRACK)",
    )
    parser.add_argument(
        "--pool", default=env_value(env, "APX_POOL", "shared"), help="worker pool name (APX_POOL)"
    )
    parser.add_argument(
        "--timeout-ms",
        type=int,
        default=int(env_value(env, "APX_TIMEOUT_MS", str(DEFAULT_TIMEOUT_MS)) or DEFAULT_TIMEOUT_MS),
        help="timeout of one upstream call (APX_TIMEOUT_MS)",
    )
    parser.add_argument(
        "--result-ttl-ms",
        type=int,
        default=int(env_value(env, "APX_RESULT_TTL_MS", "3600000") or 3_600_000),
        help="how long results stay readable at /status (APX_RESULT_TTL_MS)",
    )
    parser.add_argument(
        "--max-outstanding-messages",
        type=int,
        default=int(env_value(env, "APX_MAX_OUTSTANDING_MESSAGES", "100") or 100),
        help="flow control: most messages held at once (APX_MAX_OUTSTANDING_MESSAGES)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=float(env_value(env, "APX_DRAIN_SECONDS", "30") or 30),
        help="on SIGTERM, how long work in flight may finish before it is nacked (APX_DRAIN_SECONDS)",
    )
    parser.add_argument(
        "--max-result-bytes",
        type=int,
        default=int(env_value(env, "APX_MAX_RESULT_BYTES", str(4 * 1024 * 1024)) or 0),
        help="largest upstream response stored as a result (APX_MAX_RESULT_BYTES)",
    )
    parser.add_argument(
        "--max-response-head-bytes",
        type=int,
        default=int(env_value(env, "APX_MAX_RESPONSE_HEAD_BYTES", str(64 * 1024)) or 0),
        help="largest upstream response head (status line, headers, trailers); a larger one fails the "
        "call with 502 (APX_MAX_RESPONSE_HEAD_BYTES)",
    )
    parser.add_argument(
        "--metrics-host",
        default=env_value(env, "APX_METRICS_HOST", "0.0.0.0"),
        help="address of /metrics, /healthz, /readyz (APX_METRICS_HOST)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env_value(env, "APX_METRICS_PORT", "9090") or 0),
        help="port of /metrics, /healthz, /readyz; 0 disables it (APX_METRICS_PORT)",
    )
    add_service_flags(parser, env)
    return parser


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    subscriptions = tuple(s.strip() for s in (args.subscriptions or "").split(",") if s.strip())
    for name, value in (
        ("--subscriptions", subscriptions),
        ("--upstream-url", args.upstream_url),
        ("--redis-url", args.redis_url),
    ):
        if not value:
            parser.error(f"{name} is required")
    if args.max_outstanding_messages < 1:
        parser.error("--max-outstanding-messages must be at least 1")
    if args.pubsub_emulator_host:
        # The Pub/Sub client reads the emulator address from the environment only.
        os.environ["PUBSUB_EMULATOR_HOST"] = args.pubsub_emulator_host
    return WorkerConfig(
        subscriptions=subscriptions,
        upstream_url=args.upstream_url,
        redis_url=args.redis_url,
        pubsub_project=args.pubsub_project,
        route=args.route,
        product=args.product,
        track=args.track,
        pool=args.pool,
        timeout_ms=args.timeout_ms,
        result_ttl_ms=args.result_ttl_ms,
        max_outstanding_messages=args.max_outstanding_messages,
        drain_seconds=args.drain_seconds,
        max_result_bytes=args.max_result_bytes,
        max_response_head_bytes=args.max_response_head_bytes,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
        json_logs=args.json_logs,
        otlp_endpoint=args.otlp_endpoint,
        event_loop=args.event_loop,
    )
