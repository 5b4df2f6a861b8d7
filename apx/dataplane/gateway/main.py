"""``apx-gateway``: the async gateway's console script (and the container entry point).

Parses flags/environment (``config``), sets up JSON logging and tracing,
serves the gateway (``app``) on ``--port`` and metrics/probes on
``--metrics-port``, and stops cleanly on SIGTERM: readiness turns 503 at
once, the listener stops accepting, requests in flight get
``--shutdown-grace`` seconds, batches still in the Pub/Sub client are sent,
then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import aiohttp

from apx.dataplane.common import eventloop, redisconn
from apx.dataplane.common.jsonlog import configure_logging
from apx.dataplane.common.probes import probes_app, start_site
from apx.dataplane.common.redact import redact_text, redact_url
from apx.dataplane.common.routetable import RouteTableUnavailable
from apx.dataplane.common.shutdown import stop_event
from apx.dataplane.common.tracecontext import configure_tracing
from apx.runtime.process import HeapKeeper, frozen_objects

from .app import Gateway
from .config import GatewayConfig, parse_config
from .limits import start_listener
from .metrics import GatewayMetrics
from .publisher import Publisher

log = logging.getLogger("apx.gateway")
SERVICE = "apx-gateway"


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (by default: SIGTERM/SIGINT), then shut down gracefully."""
    stop = stop or stop_event()
    provider = configure_tracing(SERVICE, config.otlp_endpoint)
    tracer = provider.get_tracer("apx.gateway") if provider is not None else None
    redis_client = redisconn.connect(config.redis_url)
    session = aiohttp.ClientSession()
    publisher = Publisher(config.pubsub_project, max_latency=config.publish_max_latency_ms / 1000)
    metrics = GatewayMetrics()
    gateway = Gateway(
        config,
        redis_client,
        publisher,
        session,
        metrics=metrics,
        tracer=tracer,
    )
    # A deep accept queue: Envoy opens connections in bursts, and a dropped SYN costs the caller 1 s.
    listener = await start_listener(
        gateway.application(),
        config.host,
        config.port,
        config.limits(),
        refusals=metrics.connections_refused,
        shutdown_timeout=config.shutdown_grace_seconds,
        backlog=1024,
    )
    probes = None
    if config.metrics_port:
        probes = await start_site(
            probes_app(metrics.registry, gateway.healthy, gateway.ready),
            config.metrics_host or config.host,
            config.metrics_port,
        )
    log.info(
        "listening",
        extra={
            "address": f"{config.host}:{config.port}",
            "metrics_port": config.metrics_port,
            "pubsub_project": config.pubsub_project,
            "region": config.region,
            "redis": redact_url(config.redis_url),
            "limits": repr(config.limits()),
        },
    )
    try:
        await gateway.routes.snapshot()
    except RouteTableUnavailable as exc:
        log.warning(
            "route table not readable yet; requests will retry", extra={"error": redact_text(str(exc))}
        )
    HeapKeeper().settle()
    log.info("startup heap frozen", extra={"objects": frozen_objects()})
    await stop.wait()
    log.info("stopping: draining requests in flight", extra={"grace_seconds": config.shutdown_grace_seconds})
    gateway.stopping = True
    await listener.cleanup()
    await publisher.close()
    if probes is not None:
        await probes.cleanup()
    await gateway.close()
    await session.close()
    await redis_client.aclose()
    if provider is not None:
        provider.shutdown()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(SERVICE, config.log_level, config.json_logs)
    try:
        eventloop.run(serve(config), config.event_loop)
    except OSError as exc:
        log.error("cannot start", extra={"error": redact_text(str(exc))})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
