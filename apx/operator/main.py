"""Start the APX operator: ``apx-operator`` (also ``apx operator run``).

Parses flags over ``APX_*`` environment variables, sets up logging, metrics,
tracing and the appliers, registers the kopf handlers and runs kopf with the
reconciler loop beside it. Exits cleanly on SIGTERM/SIGINT (kopf handles the
signals); never exits because a dependency is down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

import kopf
import pydantic
from prometheus_client import start_http_server

from apx.controllers.appliers.kube import KubeClient, discover_connection
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.controllers.canary.types import MetricsProvider
from apx.controllers.providers import DISABLED_MESSAGE, ProviderConfigError, provider_for
from apx.dataplane.common.redact import RedactingFormatter, redact_url
from apx.runtime import process as runtime

from . import tracing
from .admission import ServiceWebhookServer
from .canary import CanaryController
from .flags import build_parser, settings_from_args, url_host
from .handlers import FINALIZER, register
from .leader import LeaseElector, lease_settings
from .leader_run import STANDBY_FINALIZER, run_elected
from .metrics import OperatorMetrics
from .reconciler import Reconciler
from .settings import OperatorSettings
from .xds.wiring import start_xds

# How long kopf keeps an object's worker (and its last event's body) after the event; see ``configure_kopf``.
KOPF_WORKER_IDLE_SECONDS = 0.5


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and kopf's object reference if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)
        if isinstance(k8s, dict):
            entry["object"] = k8s
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: OperatorSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = (
        JsonFormatter()
        if settings.json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    # Every line (kopf's and the clients' included) is redacted last: no password leaves the process.
    handler.setFormatter(RedactingFormatter(formatter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # The emulator and Pub/Sub client are chatty at INFO.
    for noisy in ("aiohttp.access", "google", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kopf logs every handled event at INFO; with thousands of objects that is
    # noise and CPU. Our reconciler logs what matters.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, root.level))


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff base that is never kept: APX registers no create/update/resume handlers.

    The reconciler is level-triggered over every object, and the only changing
    handler is ``on.delete``, which reads no diff. kopf's default stores the
    last-handled spec in every object after every change: one extra API write
    per change (and its watch event back to us) plus a copy of the spec per
    object in the store, for a value nothing reads.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        # kopf builds the essence (a deep copy of the object) on every event
        # only to compare it with the diff base; with no diff base it is waste.
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings, leader: bool) -> None:
    """kopf's settings for an APX operator run (its startup handler); ``leader``: this run finalizes."""
    settings.persistence.finalizer = FINALIZER if leader else STANDBY_FINALIZER
    # Handler progress goes to status (declared in the CRDs), never to
    # annotations of the user's object: GitOps tools see no drift.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # kopf keeps a worker per object alive this long after its last event, and the
    # worker holds that event's whole decoded body meanwhile (5 s by default). The
    # store keeps its own compact copy at once (``store._stored``), so those bodies are
    # duplicates: while objects load at ~1,000 events/s, about 5,000 of them at a time,
    # and the heap's high-water mark is what the process keeps resident afterwards.
    settings.queueing.idle_timeout = KOPF_WORKER_IDLE_SECONDS


async def run_operator(settings: OperatorSettings, stop_flag: asyncio.Event | None = None) -> None:
    """Run kopf and the reconciler until stopped."""
    if settings.pubsub_emulator_host:
        os.environ["PUBSUB_EMULATOR_HOST"] = settings.pubsub_emulator_host
    metrics = OperatorMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)
    tracing.configure(otlp_endpoint=settings.otlp_endpoint)
    kube = KubeClient(discover_connection())
    redis = RedisApplier(settings.redis_url, keep_versions=3)
    pubsub = PubSubApplier()
    reconciler = Reconciler(settings, kube, redis, pubsub, metrics=metrics, tracer=tracing.tracer())
    # Every replica serves xDS: the stored snapshot at once, then its own passes' (xds/XDS.md).
    xds = None
    if settings.xds_port:
        xds = await start_xds(settings, reconciler, kube, metrics.registry)
    provider = provider_for(settings)
    if provider is None:
        logging.getLogger("apx.operator").warning(DISABLED_MESSAGE)
    canary = CanaryController(reconciler, kube, provider, metrics, concurrency=settings.worker_limit)
    managed = settings.admission == "managed"

    # The reconciler and canary loops of the current leader run (or of the only run).
    background = BackgroundWork()

    def build_registry(leader: bool, stop: asyncio.Event | None) -> kopf.OperatorRegistry:
        # A standby (leader election) gets the watch, validation and probe handlers only.
        registry = kopf.OperatorRegistry()
        register(registry, reconciler, admission=managed, finalize=leader)

        @kopf.on.cleanup(registry=registry)
        async def exiting(**_: Any) -> None:
            # kopf's exit waits 5 s for every task created during its run before cancelling
            # them: the loops' own tasks, and kopf's waiter of ``stop`` when a signal, not the
            # flag, ended the run. Ending both here, during kopf's cleanup, lets a SIGTERM end
            # the process in well under a second.
            if leader:
                await background.stop()
            if stop is not None:
                stop.set()

        @kopf.on.probe(id="leadership", registry=registry)
        def leadership(**_: Any) -> str:
            return metrics.role  # /healthz says which replica leads

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            # The same discovery the appliers use: service account in a pod, else KUBECONFIG.
            return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

        @kopf.on.startup(registry=registry)
        def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            configure_kopf(settings, leader)

        if managed:
            admission_settings = ServiceWebhookServer(
                service_name=settings.webhook_service,
                service_namespace=settings.operator_namespace,
                port=settings.webhook_port,
                certfile=settings.webhook_cert,
                pkeyfile=settings.webhook_key,
                cafile=settings.webhook_ca,
            )
            # One configuration per operator instance: two instances never overwrite each other's.
            configuration_name = settings.webhook_configuration

            @kopf.on.startup(registry=registry)
            def configure_admission(settings: kopf.OperatorSettings, **_: Any) -> None:
                # Every replica validates; only the leader registers the webhook configuration.
                settings.admission.server = admission_settings
                settings.admission.managed = configuration_name if leader else None

        return registry

    async def run_kopf(leader: bool, stop: asyncio.Event | None) -> None:
        await kopf.operator(
            registry=build_registry(leader, stop),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://{url_host(settings.liveness_host)}:{settings.liveness_port}/healthz"
            if settings.liveness_port
            else None,
            stop_flag=stop,
            standalone=True,
        )

    try:
        if settings.leader_election:
            await run_elected(
                LeaseElector(kube, lease_settings(settings)),
                run_kopf,
                lambda: [
                    background.track(_reconcile_forever(reconciler, full=True)),
                    background.track(canary.run()),
                ],
                metrics.set_role,
                stop_flag,
            )
        else:
            loop_task = asyncio.create_task(background.track(_reconcile_forever(reconciler)))
            canary_task = asyncio.create_task(background.track(canary.run()))
            try:
                await run_kopf(True, stop_flag)
            finally:
                loop_task.cancel()
                canary_task.cancel()
                await asyncio.gather(loop_task, canary_task, return_exceptions=True)
    finally:
        if xds is not None:
            await xds.close()
        await _close_provider(provider)
        await kube.close()
        await redis.close()
        pubsub.close()


class BackgroundWork:
    """The operator's long-running loops (reconciler, canary): stopped together at exit."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    async def track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as one of the loops (the caller wraps this in a task)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await work
        finally:
            self._tasks.discard(task)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close_provider(provider: MetricsProvider | None) -> None:
    close = getattr(provider, "close", None)
    if close is not None:
        await close()


async def _reconcile_forever(reconciler: Reconciler, full: bool = False) -> None:
    # kopf cancels tasks created during its run on exit; this one is ours and
    # is cancelled by run_operator itself.
    if full:  # a new leader: the previous one may have written since this process last did
        reconciler.request_full_pass()
    await reconciler.run()


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"apx-operator: cannot start: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        provider_for(settings)  # every metrics setting checked before anything starts
    except ProviderConfigError as exc:
        print(f"apx-operator: cannot start: {exc}", file=sys.stderr)
        return 2
    # Before any thread exists: arenas are created by the first allocation of each thread.
    tuned = runtime.tune_process()
    logging.getLogger("apx.operator").info(
        "starting APX operator (namespaces: %s, redis: %s, pubsub project: %s)",
        ",".join(settings.namespaces) or "all",
        redact_url(settings.redis_url),
        settings.pubsub_project,
    )
    logging.getLogger("apx.operator").info("runtime: %s", tuned)
    asyncio.run(run_operator(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
