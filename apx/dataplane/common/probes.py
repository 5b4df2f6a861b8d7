"""The metrics-and-probes HTTP endpoint of a dataplane service: ``/metrics``, ``/healthz``, ``/readyz``.

Started by the async gateway and the worker on ``--metrics-port`` (the worker
Deployment's liveness and readiness probes call it there). ``/metrics`` is the
service's own Prometheus registry in the text exposition format; the two
probes call the service's checks and answer 200 or 503 with the reason
(redacted: a reason may quote a Redis error that names the URL).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .redact import redact_text

# A check returns None when fine, or the reason it is not.
Check = Callable[[], str | None]


def probe_handler(check: Check) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        reason = check()
        if reason is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=redact_text(reason) + "\n")

    return handle


def probes_app(registry: CollectorRegistry, healthy: Check, ready: Check) -> web.Application:
    """An aiohttp application serving metrics from ``registry`` and the two probes."""

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", probe_handler(healthy))
    app.router.add_get("/readyz", probe_handler(ready))
    return app


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; the caller awaits ``runner.cleanup()`` to stop."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
