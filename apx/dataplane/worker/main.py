"""``apx-worker``: the worker's console script (and the container entry point of worker Deployments).

Parses flags/environment (``config``; the worker Deployment sets the
variables), sets up JSON logging and tracing, serves ``/metrics``,
``/healthz`` and ``/readyz`` on ``--metrics-port`` (the Deployment's probes),
and runs the ``processor`` until SIGTERM. Then: readiness turns 503, pulling
stops, work in flight gets ``--drain-seconds`` to finish, the rest is nacked
for redelivery, pending acks are flushed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from apx.dataplane.common import eventloop, redisconn
from apx.dataplane.common.clusterpipe import open_pipe
from apx.dataplane.common.jsonlog import configure_logging
from apx.dataplane.common.probes import probes_app, start_site
from apx.dataplane.common.requeststate import ScriptRunner
from apx.dataplane.common.shutdown import stop_event
from apx.dataplane.common.tracecontext import configure_tracing
from apx.runtime.process import HeapKeeper, frozen_objects

from .config import WorkerConfig, parse_config
from .metrics import WorkerMetrics
from .processor import Processor
from .upstream import UpstreamClient

log = logging.getLogger("apx.worker")
SERVICE = "apx-worker"


async def run(config: WorkerConfig, stop: asyncio.Event | None = None) -> None:
    """Consume until ``stop`` is set (by default: SIGTERM/SIGINT), then drain."""
    stop = stop or stop_event()
    provider = configure_tracing(SERVICE, config.otlp_endpoint)
    tracer = provider.get_tracer("apx.worker") if provider is not None else None
    redis_client = redisconn.connect(config.redis_url, socket_timeout=10)
    redis_pipe = open_pipe(config.redis_url, timeout=10)
    upstream = UpstreamClient(
        config.upstream_url,
        max_connections=config.max_outstanding_messages,
        max_body=config.max_result_bytes,
        max_head=config.max_response_head_bytes,
    )
    metrics = WorkerMetrics()
    processor = Processor(
        config, ScriptRunner(redis_client, redis_pipe), upstream, metrics=metrics, tracer=tracer
    )
    probes = None
    if config.metrics_port:
        probes = await start_site(
            probes_app(metrics.registry, processor.healthy, processor.ready),
            config.metrics_host,
            config.metrics_port,
        )
    try:
        await processor.start()
        log.info("started", extra={"route": config.route, "track": config.track, "pool": config.pool})
        HeapKeeper().settle()
        log.info("startup heap frozen", extra={"objects": frozen_objects()})
        await stop.wait()
        await processor.drain()
    finally:
        if probes is not None:
            await probes.cleanup()
        await upstream.close()
        await redis_pipe.close()
        await redis_client.aclose()
        if provider is not None:
            provider.shutdown()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(SERVICE, config.log_level, config.json_logs)
    try:
        eventloop.run(run(config), config.event_loop)
    except Exception as exc:
        # The traceback stays in the log line (redacted by the formatter), never on the terminal as is.
        log.error("worker failed: %s", exc, exc_info=exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
