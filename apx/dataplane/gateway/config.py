"""Settings of ``apx-gateway``: command-line flags, each defaulting to an environment variable.

Parsed by ``apx.dataplane.gateway.main``; tests build ``GatewayConfig``
directly. The variables are those the Helm chart sets for the gateway
Deployment (``APX_HTTP_PORT``, ``APX_METRICS_PORT``, ``APX_REDIS_URL``,
``APX_PUBSUB_PROJECT``, ``PUBSUB_EMULATOR_HOST``, ``APX_LOG_LEVEL``,
``APX_JSON_LOGS``, ``APX_OTLP_ENDPOINT``) plus optional tuning ones; a flag
given on the command line wins over its variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from apx.contracts import redis_keys
from apx.dataplane.common.flags import (
    DEFAULT_PROJECT,
    HelpFormatter,
    add_pubsub_flags,
    add_service_flags,
    env_value,
)

from .limits import HttpLimits


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    redis_url: str
    instance: str = ""  # the operator instance whose route table this gateway serves ("" = default)
    pubsub_project: str = DEFAULT_PROJECT
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 9090  # 0: no separate metrics listener
    metrics_host: str | None = None  # None: the same address as ``host``
    region: str | None = None
    max_body_bytes: int = 1024 * 1024
    backlog_retry_after_seconds: int = 5
    status_retry_after_seconds: int = 1
    publish_max_latency_ms: float = 5.0
    route_refresh_seconds: float = 1.0
    sse_max_seconds: float = 300.0
    sse_heartbeat_seconds: float = 15.0
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    json_logs: bool = True
    otlp_endpoint: str | None = None
    event_loop: str = "auto"
    # Limits on slow and oversized clients (see ``limits``); defaults safe behind Envoy and on their own.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    idle_timeout_seconds: float = 60.0
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_connections: int = 10_000

    def limits(self) -> HttpLimits:
        return HttpLimits(
            max_body_bytes=self.max_body_bytes,
            header_timeout=self.header_timeout_seconds,
            body_timeout=self.body_timeout_seconds,
            idle_timeout=self.idle_timeout_seconds,
            max_line_bytes=min(self.max_header_bytes, 8190),
            max_field_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            max_connections=self.max_connections,
        )


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="apx-gateway",
        description=(
            "APX async gateway: authenticates requests of mode: async Routes, publishes them to the "
            "Route's Pub/Sub topic and answers 202 with Location: /status/{request_id}. Reads the route "
            "table and rule sets the operator writes to Redis."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--host", default=env_value(env, "APX_HTTP_HOST", "0.0.0.0"), help="listen address (APX_HTTP_HOST)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env_value(env, "APX_HTTP_PORT", "8080") or 8080),
        help="HTTP port (APX_HTTP_PORT)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env_value(env, "APX_METRICS_PORT", "9090") or 9090),
        help="port of /metrics, /healthz, /readyz; 0 disables it (APX_METRICS_PORT)",
    )
    parser.add_argument(
        "--metrics-host",
        default=env_value(env, "APX_METRICS_HOST"),
        help="address of /metrics, /healthz, /readyz; unset: the --host address (APX_METRICS_HOST)",
    )
    parser.add_argument(
        "--redis-url", default=env_value(env, "APX_REDIS_URL"), help="Redis URL (APX_REDIS_URL)"
    )
    add_pubsub_flags(parser, env, "Google Cloud project of the request topics")
    parser.add_argument(
        "--instance",
        default=env_value(env, "APX_INSTANCE", "") or "",
        help="operator instance whose route table to serve, as given to its apx-operator --instance; "
        "empty: the default instance (APX_INSTANCE)",
    )
    parser.add_argument(
        "--region",
        default=env_value(env, "APX_REGION"),
        help="region this gateway runs in; preferred for tenants without a home region (APX_REGION)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(env_value(env, "APX_MAX_BODY_BYTES", str(1024 * 1024)) or 0),
        help="largest request body accepted, 413 above (APX_MAX_BODY_BYTES)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=float(env_value(env, "APX_HTTP_HEADER_TIMEOUT_SECONDS", "10") or 10),
        help="seconds a client gets to send a complete request head, else the connection is closed "
        "(APX_HTTP_HEADER_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=float(env_value(env, "APX_HTTP_BODY_TIMEOUT_SECONDS", "30") or 30),
        help="seconds a client gets to send a request body once its head is in, else the connection is "
        "closed (APX_HTTP_BODY_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=float(env_value(env, "APX_HTTP_IDLE_TIMEOUT_SECONDS", "60") or 60),
        help="seconds a keep-alive connection may stay idle before it is closed "
        "(APX_HTTP_IDLE_TIMEOUT_SECONDS)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=int(env_value(env, "APX_HTTP_MAX_HEADER_BYTES", "16384") or 16384),
        help="largest request header (name and value; the request line is capped at 8190), 431 above "
        "(APX_HTTP_MAX_HEADER_BYTES)",
    )
    parser.add_argument(
        "--max-headers",
        type=int,
        default=int(env_value(env, "APX_HTTP_MAX_HEADERS", "100") or 100),
        help="most headers in one request (APX_HTTP_MAX_HEADERS)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=int(env_value(env, "APX_HTTP_MAX_CONNECTIONS", "10000") or 10000),
        help="open client connections above which new ones get 503 and are closed (APX_HTTP_MAX_CONNECTIONS)",
    )
    parser.add_argument(
        "--backlog-retry-after",
        type=int,
        default=int(env_value(env, "APX_BACKLOG_RETRY_AFTER_SECONDS", "5") or 5),
        help="Retry-After of a 503 under backlog, seconds (APX_BACKLOG_RETRY_AFTER_SECONDS)",
    )
    parser.add_argument(
        "--publish-max-latency-ms",
        type=float,
        default=float(env_value(env, "APX_PUBLISH_MAX_LATENCY_MS", "5") or 5),
        help="longest a message waits for its Pub/Sub batch (APX_PUBLISH_MAX_LATENCY_MS)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=float(env_value(env, "APX_SHUTDOWN_GRACE_SECONDS", "10") or 10),
        help="on SIGTERM, seconds in-flight requests get to finish (APX_SHUTDOWN_GRACE_SECONDS)",
    )
    add_service_flags(parser, env)
    return parser


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("--redis-url (or APX_REDIS_URL) is required")
    for name in ("header_timeout", "body_timeout", "idle_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("max_header_bytes", "max_headers", "max_connections", "max_body_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        redis_keys.check_instance(args.instance)
    except ValueError as exc:
        parser.error(f"--instance: {exc}")
    if args.pubsub_emulator_host:
        # The Pub/Sub client reads the emulator address from the environment only.
        os.environ["PUBSUB_EMULATOR_HOST"] = args.pubsub_emulator_host
    return GatewayConfig(
        redis_url=args.redis_url,
        instance=args.instance,
        pubsub_project=args.pubsub_project,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        region=args.region,
        max_body_bytes=args.max_body_bytes,
        backlog_retry_after_seconds=args.backlog_retry_after,
        publish_max_latency_ms=args.publish_max_latency_ms,
        shutdown_grace_seconds=args.shutdown_grace,
        log_level=args.log_level,
        json_logs=args.json_logs,
        otlp_endpoint=args.otlp_endpoint,
        event_loop=args.event_loop,
        header_timeout_seconds=args.header_timeout,
        body_timeout_seconds=args.body_timeout,
        idle_timeout_seconds=args.idle_timeout,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        max_connections=args.max_connections,
    )
