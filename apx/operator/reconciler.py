"""The reconciler: keeps Redis, Pub/Sub and Kubernetes in the state the APX objects declare.

Fed by the kopf handlers in ``apx.operator.handlers`` (which only record what
they saw) and run as one background loop by ``apx.operator.main``.

Why one level-triggered loop over all objects instead of one handler per
object: everything APX renders is a function of *all* objects (a Product
change re-renders every Route that references it, the Envoy snapshot spans
every namespace, a Route created before its Product becomes Ready when the
Product appears). So each pass runs the pure pipeline over the whole store —
incrementally: per-object results are kept between passes
(``apx.controllers.memo``), so only objects whose inputs changed are
recomputed — then hands each applier only what changed since the last
successful apply.
A periodic full pass (``resync_seconds``) re-applies everything, which repairs
drift (a deleted topic, a flushed Redis, an edited Deployment).

Where each concern lives (the parts are mixins of the one ``Reconciler``
over the state ``reconcile_state.ReconcilerState`` declares):

* ``store``: the objects seen, pins, users, served PolicyBundle versions;
* ``scheduler``: the full LIST, the change loop, back-off, resync, fast path;
* ``sync_redis``, ``sync_pubsub``, ``sync_kubernetes``: one target each;
* ``deletion``: what a finalized object owns, per ``deletionPolicy``;
* ``sync_status``: statuses, Events and readiness metrics;
* this module: construction, one pass (``reconcile_once``) and finalizers.

Safety rules:
* the loop starts only after a full LIST of all three kinds, so it never
  renders from a partial store (which would prune what is serving);
* a failing dependency marks the affected objects ``Reconciling`` with the
  dependency named, retries with back-off, and never deletes anything;
* a Product or Route whose new spec fails (translation, Redis rules, Envoy
  rendering, Kubernetes manifests: ``apx.controllers.last_good``) is reported
  ``Stalled`` but rendered from its last good spec, so a wrong spec never
  removes what was serving;
* a Product or PolicyBundle deleted while Routes reference it keeps serving
  until none does (``finalize`` raises ``InUse``; its status names the Routes);
* only objects labelled ``app.kubernetes.io/managed-by: apx`` are pruned, and
  only while their APX owner still exists (deleted owners are left to
  Kubernetes' garbage collector);
* deletion of Redis keys and Pub/Sub topics follows ``deletionPolicy`` and
  happens only from a finalizer (``finalize``).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from opentelemetry import trace

from apx.controllers.appliers.kube import KubeClient
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.controllers.ir import RouteIR
from apx.controllers.last_good import SUBSTITUTABLE
from apx.controllers.memo import Caches
from apx.controllers.pipeline import Compiled, FirstStage, finish, first_stage
from apx.controllers.renderers.envoy import EnvoyOutput
from apx.controllers.renderers.redis_rules import RuleSet
from apx.controllers.status import ResourceStatus
from apx.runtime.process import HeapKeeper, release_free_memory

from .deletion import Deletion
from .events import post_event
from .metrics import CONTROLLER_NAMES, OperatorMetrics, PendingChanges
from .positions import EntryRows, PositionMemo
from .reconcile_state import (
    APX_KINDS,
    CONTROLLERS,
    MANAGED_BY,
    PRUNABLE_KINDS,
    SUMMARY_KEYS,
    DependencyProblem,
    InUse,
    PassReport,
    _key,
    logger,
    utc_now,
)
from .scheduler import Scheduler
from .settings import OperatorSettings
from .store import Store, _stored
from .sync_kubernetes import KubernetesSync
from .sync_pubsub import PubSubSync
from .sync_redis import RedisSync
from .sync_status import StatusSync, _drop_stale_tracks
from .workers import WorkerAvailability

__all__ = [
    "APX_KINDS",
    "CONTROLLERS",
    "MANAGED_BY",
    "PRUNABLE_KINDS",
    "SUMMARY_KEYS",
    "DependencyProblem",
    "InUse",
    "PassReport",
    "Reconciler",
    "_drop_stale_tracks",
    "utc_now",
]


class Reconciler(Store, Scheduler, RedisSync, PubSubSync, KubernetesSync, Deletion, StatusSync):
    """Owns the store of APX objects and the applied-state caches; runs passes (see the module doc)."""

    def __init__(
        self,
        settings: OperatorSettings,
        kube: KubeClient,
        redis: RedisApplier,
        pubsub: PubSubApplier,
        metrics: OperatorMetrics | None = None,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], str] = utc_now,
        heap: HeapKeeper | None = None,
    ) -> None:
        self.settings = settings
        self.heap = heap or HeapKeeper()
        self.kube = kube
        self.redis = redis
        self.pubsub = pubsub
        self.metrics = metrics or OperatorMetrics()
        self._pending = PendingChanges(self.metrics)
        self.tracer = tracer or trace.get_tracer("apx.operator")
        self.clock = clock
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        # Per object, (body, the document a pass translates for it): see ``Store.translation_document``.
        self._documents: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
        # What changed since ``translation_documents`` last ran: bodies replaced, objects come or gone.
        self._touched: set[tuple[str, str]] = set()
        self._membership_changed = True
        self._documents_renewed: set[tuple[str, str]] | None = None
        self._document_list: list[dict[str, Any]] = []
        self._document_index: dict[tuple[str, str], int] = {}
        self.deleting: dict[tuple[str, str], dict[str, Any]] = {}
        self._cleaned: set[tuple[str, str]] = set()
        self._dirty = asyncio.Event()
        self._full_requested = True
        self._listed = False
        self._applied_rule_sets: dict[str, str] = {}
        self._rule_sets_settled: tuple[tuple[RuleSet, ...], int] | None = None
        self._rule_set_moves = 0
        self._applied_route_table: str | None = None
        self._applied_route_table_entries: EntryRows | None = None
        self._applied_pubsub: set[str] = set()
        self._pubsub_rows: tuple[str, dict[str, Any]] = ("", {})
        self._pubsub_routes: tuple[RouteIR, ...] | None = None
        self._pubsub_unsettled: set[str] | None = None
        self._route_positions = PositionMemo()
        self._applied_manifests: dict[tuple[str, str, str], str] = {}
        self._manifest_list: list[dict[str, Any]] | None = None
        self._manifest_row_list: list[tuple[dict[str, Any], tuple[str, str, str], str]] = []
        self._manifest_moves = 0
        self._manifests_settled: int | None = None
        self._dataplane_manifests: tuple[tuple[tuple[str, ...], Any], list[dict[str, Any]]] | None = None
        self._async_routes: tuple[RouteIR, ...] | None = None
        self._async_counts: Counter[str] = Counter()
        # Envoy snapshot part ConfigMaps of the last pass (``_prune_snapshot_parts``).
        self._snapshot_parts: set[tuple[str, str, str]] = set()
        # The Envoy version the snapshot ConfigMaps hold, when they were written, and the timer of
        # the pass that writes a newer one once ``_snapshot_spacing()`` has gone by.
        self._snapshot_written: tuple[str, float] = ("", -math.inf)
        self._snapshot_write_seconds = 0.0  # how long the last write took (``_snapshot_spacing``)
        self._snapshot_timer: asyncio.TimerHandle | None = None
        self._snapshot_latest: EnvoyOutput | None = None
        self._snapshot_writer: asyncio.Task[None] | None = None
        self._background_snapshots = False
        self._written_status: dict[tuple[str, str], str] = {}
        self._last_phase: dict[tuple[str, str], str] = {}
        # Per object, the last status found already written, with the body it was checked against:
        # an equal status for the same body needs no document, no digest and no write.
        self._verified_status: dict[tuple[str, str], tuple[ResourceStatus, dict[str, Any]]] = {}
        # Per object, its translated status, the overlays put on it and the result
        # (``StatusSync._final_status``); and each object's final status of this pass.
        self._final_memo: dict[tuple[str, str], tuple[ResourceStatus, tuple[Any, ...], ResourceStatus]] = {}
        self._finals: dict[tuple[str, str], ResourceStatus] = {}
        # What a pass looks at for statuses (``StatusSync._status_candidates``): the translated
        # statuses of the last pass, bodies replaced since, keys with overlays, failed writes.
        self._status_seen: dict[tuple[str, str], ResourceStatus] = {}
        self._status_gone: set[tuple[str, str]] = set()
        self._status_touched: set[tuple[str, str]] = set()
        self._status_everything = True
        self._overlaid_before: set[tuple[str, str]] = set()
        self._status_retry: set[tuple[str, str]] = set()
        self._candidates_now: set[tuple[str, str]] | None = None
        # Each object's phase as exported (``apx_operator_object_ready``) and the counts per (kind, phase).
        self._phases: dict[tuple[str, str], str] = {}
        self._phase_totals: dict[tuple[str, str], int] = {}
        # What translation and rendering reuse between passes (``apx.controllers.memo``): a pass
        # redoes only the objects whose inputs changed. Cleared by the periodic resync, which
        # therefore compiles from scratch (and must, and does, give the same bytes).
        self.caches = Caches()
        self._rebuild_requested = True
        self._policy_history: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._dirty_products: set[str] = set()
        # Per product, a counter bumped by every change that can affect its
        # rule set; a pass publishes a rule set only if no change arrived
        # since it took its snapshot (a newer one is on its way).
        self._epoch: dict[str, int] = {}
        self._fast_wanted = asyncio.Event()
        self._pass_epochs: dict[str, int] = {}
        # Per product, the epoch up to which its rule set is published (``RedisSync.rules_covered``),
        # and the event that wakes the fast path's wait for the passes: set when a pass's Redis
        # phase covers products, when a pass begins or ends, and on every change.
        self._rules_covered: dict[str, int] = {}
        self._fast_path_recheck = asyncio.Event()
        self._pass_running = self._full_pass_running = False
        self._served_policies: dict[tuple[str, str], set[str]] = {}
        # Per Product and Route, the body whose spec last translated without
        # error (usually the very dict in ``objects``). When a new spec is
        # wrong, passes render this one in its place: what is serving keeps
        # serving while the status reports the error.
        self._last_good: dict[tuple[str, str], dict[str, Any]] = {}
        # Per Product and Route whose current body failed a stage after
        # translation (Envoy, Redis, manifests): that body and its status.
        self._render_failures: dict[tuple[str, str], tuple[dict[str, Any], ResourceStatus]] = {}
        # Worker Deployments' availability (from their watch): async Routes are Ready only when served.
        self.workers = WorkerAvailability()
        # Products and PolicyBundles being deleted while Routes still use them: those Routes.
        self._in_use: dict[tuple[str, str], list[str]] = {}
        self._backoff = 0.0
        # Called with (kind, stored body) after each significant change is
        # recorded; the canary controller listens to act on a new canary block
        # or an `apx rollout` request without waiting for its next check.
        self.listeners: list[Callable[[str, Mapping[str, Any]], None]] = []
        # Called with each pass's full EnvoyOutput (the xDS server); while one is registered
        # the pass keeps the Envoy messages instead of dropping them once packed.
        self.envoy_listeners: list[Callable[[EnvoyOutput], None]] = []
        # Awaited after the listeners by the pass (the xDS server's build of the snapshot they
        # were handed): the rest of the pass does not run beside that build.
        self.envoy_waits: list[Callable[[], Awaitable[None]]] = []
        # The xDS server's NACKs per object (Programmed=False on them); set by apx.operator.xds.wiring.
        self.xds_rejections: Callable[[], Mapping[tuple[str, str], str]] | None = None
        self._rejections_now: Mapping[tuple[str, str], str] = {}
        self.last_pass: PassReport | None = None
        self.last_error: str | None = None
        self.passes = 0

    async def finalize(self, kind: str, body: Mapping[str, Any], timeout: float = 30.0) -> None:
        """Clean up what a deleted object owns (per deletionPolicy); raises TimeoutError if not done yet.

        A Product or PolicyBundle that Routes still reference is protected
        like a PersistentVolumeClaim in use: the deletion is accepted (the
        finalizer holds it), the object keeps serving and reports which Routes
        use it, and ``InUse`` is raised until none does.
        """
        key = (kind, _key(body))
        users = self.users_of(kind, key[1])
        if users:
            message = f"deletion waits until no Route uses it: in use by Route {', '.join(users)}"
            if self._in_use.get(key) != users:
                self._in_use[key] = users
                self._written_status.pop(key, None)
                self._verified_status.pop(key, None)
                self._dirty.set()
                await post_event(self.kube, kind, body, "Warning", "InUse", message, self.clock())
            raise InUse(f"{kind} {key[1]}: {message}")
        self._in_use.pop(key, None)
        self._status_touched.add(key)
        self.deleting[key] = _stored(body)
        self.objects[key] = _stored(body)
        self._membership_changed = True
        self._cleaned.discard(key)
        self._dirty.set()
        deadline = time.monotonic() + timeout
        while key not in self._cleaned:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"cleanup of {kind} {key[1]} not finished: {self.last_error or 'still working'}"
                )
            await asyncio.sleep(0.05)

    def observe_worker(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """Record a worker Deployment's availability (from its watch); a change rewrites the status."""
        changed = self.workers.forget(body) if deleted else self.workers.observe(body)
        if changed:
            self._status_everything = True
            self._dirty.set()

    def _serving_stage(
        self,
        documents: list[dict[str, Any]],
        caches: Caches | None = None,
        keyed: Mapping[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] | None = None,
        last_good: Mapping[tuple[str, str], dict[str, Any]] | None = None,
    ) -> FirstStage:
        """Translate ``documents``; a Product or Route whose new spec fails is rendered as last good.

        Its status still comes from the failing spec (Stalled, the field
        named, the new generation observed), so users see the error while
        Envoy, Redis and Pub/Sub keep what was serving. Specs a later stage
        refused in an earlier pass (Envoy, manifests) are substituted up front,
        so even the fast path never publishes them. Runs in a worker thread
        during full passes: it reads the store but does not change it.
        ``keyed``: the store's (body, document) per key when ``documents`` are
        the pass's (``translation_documents``), so no document's key is computed.
        ``last_good``: a copy of the store's last good bodies, for a caller
        running beside a pass (the fast path), which may change them meanwhile.
        """
        known = {
            key: status
            for key, (body, status) in list(self._render_failures.items())
            if (self.objects.get(key) or {}).get("spec") == body.get("spec")
        }
        return first_stage(
            documents,
            last_good=self._last_good if last_good is None else last_good,
            known_failures=known,
            caches=caches,
            keyed=_Translated(keyed) if keyed is not None else None,
        )

    def _remember_good(
        self,
        compiled: Compiled,
        documents: Mapping[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]],
        keys: set[tuple[str, str]] | None,
    ) -> None:
        """Record the bodies of Products and Routes that rendered without error, and those that failed.

        ``documents``: per object, its body and the document the pass translated
        (``translation_documents``); ``keys``: the objects whose status or document
        is new this pass (``None``: every object). Any other object's last good body
        is what it was (a status write moves it along: ``Store._replace_body``).
        """
        statuses, objects, last_good = compiled.statuses, self.objects, self._last_good
        for key in documents if keys is None else keys:
            if key[0] not in SUBSTITUTABLE or key not in documents:
                continue
            document = documents[key][1]
            current = objects.get(key)
            if current is None or last_good.get(key) is current:
                continue
            status = statuses.get(key)
            if status is None or status.stalled:
                continue
            # By spec, not identity: a status write may have replaced the stored body meanwhile
            # (sharing the spec object: ``Store._replace_body``).
            spec = current.get("spec")
            if current is document or spec is document.get("spec") or spec == document.get("spec"):
                last_good[key] = current
        self._render_failures = {
            key: (self.objects[key], status)
            for key, status in compiled.failures.items()
            if status.reason == "RenderError" and key in self.objects
        }

    # --- one pass -----------------------------------------------------------------

    async def reconcile_once(self, full: bool = False) -> PassReport:
        started = time.perf_counter()
        report = PassReport()
        # A full pass reconciles every controller's objects, changed or not.
        taken = self._pending.take()
        reconciled = list(CONTROLLER_NAMES) if full else taken
        self._pass_running, self._full_pass_running = True, full
        if full:
            self._fast_path_recheck.set()  # the fast path stops leaving rule sets to the passes
        try:
            objects = await self._pass(full, report)
        finally:
            self._pass_running = self._full_pass_running = False
            self._fast_path_recheck.set()  # the fast path looks again at what this pass left
        # The pass's outputs died with ``_pass`` (by reference counting); what
        # survived is frozen so later collections do not rescan it.
        settled = self.heap.settle()
        # Give the pages the pass freed back, so the resident size between
        # passes is the store's, not the pass's peak.
        await asyncio.to_thread(release_free_memory)
        report.duration = time.perf_counter() - started
        self.metrics.pass_duration.observe(report.duration)
        for controller in reconciled:
            self.metrics.reconcile_time.labels(controller=controller).observe(report.duration)
        self.last_pass = report
        self.passes += 1
        logger.info(
            "pass %d (%s) over %d objects in %.0f ms %s: %d rule sets, %d Pub/Sub objects, "
            "%d manifests applied, %d pruned, %d statuses written, %d problems; collector: %s",
            self.passes, "full" if full else "changes", objects, report.duration * 1000, report.phases,
            report.redis_published, report.pubsub_ensured, report.manifests_applied, report.manifests_pruned,
            report.statuses_written, len(report.problems), settled,
        )  # fmt: skip
        self.last_error = next(iter(p.message for p in report.problems.values()), None)
        return report

    async def _pass(self, full: bool, report: PassReport) -> int:
        """Translate, render and apply everything; returns how many objects went in."""
        if full:
            self._applied_rule_sets.clear()
            self._applied_route_table = None
            self._applied_pubsub.clear()
            self._applied_manifests.clear()
            self._manifest_moves += 1
            self._written_status.clear()
            self._verified_status.clear()
        if self._rebuild_requested:
            self._rebuild_requested = False
            self.caches.clear()
        self._pass_epochs = dict(self._epoch)
        live = self.translation_documents()
        documents = self._documents
        live += [
            document
            for key, history in sorted(self._policy_history.items())
            if key in self.objects and key not in self.deleting
            for document in history.values()
        ]
        with self.tracer.start_as_current_span("apx.reconcile.pass") as span:
            span.set_attribute("apx.objects", len(live))
            span.set_attribute("apx.full", full)
            phases = report.phases
            mark = time.perf_counter()

            def lap(name: str) -> None:
                nonlocal mark
                now = time.perf_counter()
                phases[name] = round((now - mark) * 1000, 1)
                mark = now

            # The pure pipeline runs in a thread so the event loop (kopf's
            # watches, the fast path, status writes) stays responsive meanwhile.
            # What a stage builds lives until the pass ends: built with the
            # collector paused and then frozen, it is not rescanned by the
            # collections the I/O phases trigger.
            stage = await asyncio.to_thread(
                self.heap.build, self._serving_stage, live, self.caches, documents
            )
            lap("translate")
            # Rules first: a limit change should not wait for Envoy and Kubernetes rendering.
            await self._apply_redis(stage.redis, stage.result.ir, report, full)
            lap("redis")
            compiled = await asyncio.to_thread(
                self.heap.build,
                functools.partial(
                    finish,
                    stage,
                    project=self.settings.pubsub_project,
                    operator_namespace=self.settings.operator_namespace,
                    keep_envoy_resources=True,
                    snapshot_configmaps=False,
                ),
            )
            lap("render")
            # The objects whose translated status is another object than last pass's: what a
            # pass can have changed about them (last good body, status) is looked at again.
            changed = None if full else self._statuses_changed(compiled)
            renewed = self._documents_renewed
            self._remember_good(
                compiled, documents, None if changed is None or renewed is None else changed | renewed
            )
            for envoy_listener in self.envoy_listeners:
                envoy_listener(compiled.envoy)
            # The xDS snapshot is built in a thread. The rest of the pass (Pub/Sub, Kubernetes,
            # status writes, on the event loop) waits for it: run beside it, they took the
            # interpreter from it, and a one-Route change reached Envoy later (10,000 Routes,
            # p50: the build 35 -> 22 ms of wall time, update -> Envoy 133-150 -> 118 ms).
            for envoy_wait in self.envoy_waits:
                await envoy_wait()
            if compiled.redis is not stage.redis:
                await self._apply_redis(compiled.redis, compiled.ir, report, full)
            owners = self._owners_of_deleting() if self.deleting else None
            await self._apply_pubsub(compiled, report, full)
            lap("pubsub")
            await self._apply_kubernetes(compiled, report, full)
            await self._apply_envoy_snapshot(compiled, report, full)
            lap("kubernetes")
            if self.deleting:
                await self._cleanup_deleted(owners or {}, report)
            await self._write_statuses(compiled, report, changed)
            self.metrics.set_object_phases(self._phase_counts(compiled, report))
            lap("status")
        # The versions each PolicyBundle serves. A status that is the very object of the last
        # pass serves what it served then (recorded then, as every status of a full pass and
        # every new one of an ordinary pass is): only the new ones are read again.
        statuses = compiled.statuses
        for key in statuses if changed is None else changed:
            if key[0] == "PolicyBundle" and key in statuses:
                served = statuses[key].summary.get("servedVersions") or []
                self._served_policies[key] = {str(v["version"]) for v in served}
        # What this pass did not use (deleted objects, replaced bodies) leaves the caches now.
        self.caches.end_pass()
        self._route_positions.clear()
        return len(live)

    def health(self) -> dict[str, Any]:
        """Liveness details for kopf's probe endpoint."""
        return {
            "listed": self._listed,
            "passes": self.passes,
            "objects": len(self.objects),
            "last_error": self.last_error,
        }


class _Translated(Mapping[tuple[str, str], dict[str, Any]]):
    """The document a pass translates per key, read from the store's (body, document) pairs."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Mapping[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self._pairs = pairs

    def __getitem__(self, key: tuple[str, str]) -> dict[str, Any]:
        return self._pairs[key][1]

    def __contains__(self, key: object) -> bool:
        return key in self._pairs

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)
