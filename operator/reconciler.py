"""The reconciler: keeps Redis, Pub/Sub and Kubernetes in the state the APX objects declare.

Fed by the kopf handlers in ``apx.operator.handlers`` (which only record what
they saw) and run as one background loop by ``apx.operator.main``.

Why one level-triggered loop over all objects instead of one handler per
object: everything APX renders is a function of *all* objects (a Product
change re-renders every Route that references it, the Envoy snapshot spans
every namespace, a Route created before its Product becomes Ready when the
Product appears). So each pass runs the pure pipeline over the whole store,
then hands each applier only what changed since the last successful apply.
A periodic full pass (``resync_seconds``) re-applies everything, which repairs
drift (a deleted topic, a flushed Redis, an edited Deployment).

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
import contextlib
import datetime
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from apx.controllers import names
from apx.controllers.appliers.kube import KINDS, Invalid, KubeClient, KubeError, Unavailable
from apx.controllers.appliers.pubsub import PubSubApplier, PubSubUnavailable
from apx.controllers.appliers.redis_rules import RedisApplier, RedisUnavailable, VersionedKeys
from apx.controllers.ir import IR
from apx.controllers.memo import Caches
from apx.controllers.pinned_versions import route_pins
from apx.controllers.pipeline import Compiled, FirstStage, compile_resources, finish, first_stage
from apx.controllers.renderers.envoy import EnvoyOutput
from apx.controllers.renderers.kubernetes.envoy_snapshot import render_envoy_snapshot
from apx.controllers.renderers.pubsub_plan import cached_route_documents
from apx.controllers.renderers.redis_rules import RedisOutput, RuleSet
from apx.controllers.status import ResourceStatus, with_rejection
from apx.controllers.translate import HISTORY_ANNOTATION
from apx.controllers.translation import summaries
from apx.dataplane.common.redact import redact_text, redact_url
from apx.runtime.process import HeapKeeper, release_free_memory

from .events import EventType, post_event
from .metrics import CONTROLLER_NAMES, OperatorMetrics, PendingChanges
from .settings import OperatorSettings
from .workers import WorkerAvailability

logger = logging.getLogger("apx.operator")

APX_KINDS = ("Product", "Route", "PolicyBundle")
MANAGED_BY = "app.kubernetes.io/managed-by=apx"
PRUNABLE_KINDS = ("Deployment", "Service", "ConfigMap")
# Summary keys the operator writes; a key missing from a new status is sent as
# null so a merge-patch removes it (e.g. topics of a Route that became sync).
SUMMARY_KEYS = summaries.SUMMARY_KEYS
CONTROLLERS = {"Product": "product", "Route": "route", "PolicyBundle": "policybundle"}


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def _resource_version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class InUse(Exception):
    """A Product or PolicyBundle being deleted is still referenced by Routes; its finalizer stays."""


@dataclass(slots=True)
class DependencyProblem:
    """Why an object is not Ready although its spec is fine."""

    reason: str
    message: str
    stalled: bool = False  # True when retrying cannot fix it (e.g. Pub/Sub forbids the change)

    def __post_init__(self) -> None:
        # Messages embed dependency errors (URLs); they reach status, Events, logs and /healthz.
        self.message = redact_text(self.message)


@dataclass(slots=True)
class PassReport:
    """What one pass did; used by tests, benchmarks and metrics."""

    duration: float = 0.0
    redis_published: int = 0
    pubsub_ensured: int = 0
    manifests_applied: int = 0
    manifests_pruned: int = 0
    statuses_written: int = 0
    problems: dict[tuple[str, str], DependencyProblem] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)


class Reconciler:
    """Owns the store of APX objects and the applied-state caches."""

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
        self.deleting: dict[tuple[str, str], dict[str, Any]] = {}
        self._cleaned: set[tuple[str, str]] = set()
        self._dirty = asyncio.Event()
        self._full_requested = True
        self._listed = False
        self._applied_rule_sets: dict[str, str] = {}
        self._applied_route_table: str | None = None
        self._applied_pubsub: set[str] = set()
        self._applied_manifests: dict[tuple[str, str, str], str] = {}
        # Envoy snapshot part ConfigMaps of the last pass (``_prune_snapshot_parts``).
        self._snapshot_parts: set[tuple[str, str, str]] = set()
        # The Envoy version the snapshot ConfigMaps hold, when they were written, and the timer of
        # the pass that writes a newer one once ``snapshot_configmap_seconds`` have gone by.
        self._snapshot_written: tuple[str, float] = ("", -math.inf)
        self._snapshot_timer: asyncio.TimerHandle | None = None
        self._written_status: dict[tuple[str, str], str] = {}
        self._last_phase: dict[tuple[str, str], str] = {}
        # Per object, the last status found already written, with the body it was checked against:
        # an equal status for the same body needs no document, no digest and no write.
        self._verified_status: dict[tuple[str, str], tuple[ResourceStatus, dict[str, Any]]] = {}
        # What ``apx_operator_object_ready`` holds per object (only changes are exported).
        self._ready_exported: dict[tuple[str, str], bool] = {}
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
        # The xDS server's NACKs per object (Programmed=False on them); set by apx.operator.xds.wiring.
        self.xds_rejections: Callable[[], Mapping[tuple[str, str], str]] | None = None
        self._rejections_now: Mapping[tuple[str, str], str] = {}
        self.last_pass: PassReport | None = None
        self.last_error: str | None = None
        self.passes = 0

    # --- inputs from kopf --------------------------------------------------------

    def observe(self, kind: str, body: Mapping[str, Any]) -> None:
        """Record the latest body of an object (from a watch event)."""
        key = (kind, _key(body))
        current = self.objects.get(key)
        if current is not None and _resource_version(current) >= _resource_version(body) > 0:
            return  # an older (or the same) version arriving after a newer LIST or our own write
        if current is not None and _significant(current) == _significant(body):
            # Only bookkeeping changed (kopf's own status fields, managedFields):
            # keep the newest body, but there is nothing to reconcile.
            self._replace_body(key, _stored(body))
            return
        if kind == "PolicyBundle" and current is not None:
            self._remember_policy_version(key, current, body)
        self._mark_products(kind, body, current)
        self.objects[key] = _stored(body)
        if (body.get("metadata") or {}).get("deletionTimestamp") is None:
            self.deleting.pop(key, None)
        self.metrics.workqueue_adds.labels(name=CONTROLLERS[kind]).inc()
        self._pending.add(CONTROLLERS[kind], key[1])
        self._dirty.set()
        for listener in self.listeners:
            listener(kind, self.objects[key])

    def _mark_products(self, kind: str, body: Mapping[str, Any], previous: Mapping[str, Any] | None) -> None:
        """Remember which products' rule sets a change can affect (for the fast path)."""
        before = set(self._dirty_products)
        self._mark_products_into(kind, body, previous)
        for product in self._dirty_products - before:
            self._epoch[product] = self._epoch.get(product, 0) + 1
        if self._dirty_products:
            self._fast_wanted.set()

    def _mark_products_into(
        self, kind: str, body: Mapping[str, Any], previous: Mapping[str, Any] | None
    ) -> None:
        namespace = (body.get("metadata") or {}).get("namespace") or "default"
        if kind == "Product":
            self._dirty_products.add(_key(body))
        elif kind == "Route":
            for source in (body, previous or {}):
                product = ((source.get("spec") or {}).get("productRef") or {}).get("name")
                if product:
                    self._dirty_products.add(f"{namespace}/{product}")
        else:
            bundle = (body.get("metadata") or {}).get("name")
            for (other_kind, _), other in self.objects.items():
                spec = other.get("spec") or {}
                if other_kind == "Route" and (spec.get("policyRef") or {}).get("name") == bundle:
                    other_namespace = (other.get("metadata") or {}).get("namespace") or "default"
                    if other_namespace == namespace:
                        self._dirty_products.add(f"{namespace}/{(spec.get('productRef') or {}).get('name')}")

    def _remember_policy_version(
        self, key: tuple[str, str], previous: Mapping[str, Any], body: Mapping[str, Any]
    ) -> None:
        """Keep a served version the spec just moved away from, so it stays N-1.

        The status also records served versions, but a new version can arrive
        before the status of the previous one was written (two applies in a
        row). Only versions that were actually served are kept: an invalid
        apply must not poison the history.
        """
        old_version = str((previous.get("spec") or {}).get("version", ""))
        new_version = str((body.get("spec") or {}).get("version", ""))
        if old_version and old_version != new_version and old_version in self._served_policies.get(key, ()):
            history = self._policy_history.setdefault(key, {})
            remembered = {k: v for k, v in previous.items() if k != "status"}
            meta = dict(remembered.get("metadata") or {})
            meta["annotations"] = {**(meta.get("annotations") or {}), HISTORY_ANNOTATION: "true"}
            remembered["metadata"] = meta
            history[old_version] = remembered
            # N and N-1 are what is served, plus older versions Routes still pin
            # (``apx.controllers.pinned_versions``); the rest only ordered applies.
            namespace, name = key[1].split("/", 1)
            pinned = self.pinned_versions(namespace, name)
            for stale in sorted(history, key=_version_key)[:-2]:
                if stale not in pinned:
                    history.pop(stale)

    def pinned_versions(self, namespace: str, bundle: str) -> dict[str, list[str]]:
        """Versions of a PolicyBundle that Routes in the store pin, each with those Routes' keys."""
        pins: dict[str, list[str]] = {}
        # A snapshot first: the admission webhook calls this from kopf's thread pool.
        for (kind, object_key), body in sorted(list(self.objects.items())):
            if kind != "Route" or not object_key.startswith(f"{namespace}/"):
                continue
            for version in route_pins(namespace, bundle, body.get("spec") or {}):
                pins.setdefault(version, []).append(object_key)
        return pins

    def _replace_body(self, key: tuple[str, str], body: dict[str, Any]) -> None:
        """Store a body whose spec is unchanged; a last-good reference to the old one follows it."""
        if self._last_good.get(key) is self.objects.get(key):
            self._last_good[key] = body
        failed = self._render_failures.get(key)
        if failed is not None and failed[0] is self.objects.get(key):
            self._render_failures[key] = (body, failed[1])
        self.objects[key] = body

    def forget(self, kind: str, key: str) -> None:
        """The object is gone from the API (after its finalizer was removed)."""
        self.objects.pop((kind, key), None)
        self._last_good.pop((kind, key), None)
        self._render_failures.pop((kind, key), None)
        self._in_use.pop((kind, key), None)
        self.deleting.pop((kind, key), None)
        self._policy_history.pop((kind, key), None)
        self._cleaned.discard((kind, key))
        self._written_status.pop((kind, key), None)
        self._verified_status.pop((kind, key), None)
        self._pending.add(CONTROLLERS[kind], key)
        self._dirty.set()

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
        self.deleting[key] = _stored(body)
        self.objects[key] = _stored(body)
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
            self._dirty.set()

    def users_of(self, kind: str, object_key: str) -> list[str]:
        """Keys of the Routes that reference a Product or PolicyBundle (empty for a Route)."""
        field_name = {"Product": "productRef", "PolicyBundle": "policyRef"}.get(kind)
        if field_name is None:
            return []
        namespace, name = object_key.split("/", 1)
        return sorted(
            route_key
            for (other, route_key), body in list(self.objects.items())
            if other == "Route"
            and route_key.startswith(f"{namespace}/")
            and ((body.get("spec") or {}).get(field_name) or {}).get("name") == name
        )

    @property
    def listed(self) -> bool:
        """True once the store holds a full LIST of every kind (it is complete)."""
        return self._listed

    def request_full_pass(self) -> None:
        self._full_requested = True
        self._dirty.set()

    def request_pass(self) -> None:
        """Schedule an ordinary pass (e.g. a proxy's NACK must show in status)."""
        self._dirty.set()

    # --- the loop -------------------------------------------------------------------

    async def list_all(self) -> None:
        """Seed the store with a full LIST of every APX kind (retries until the API answers)."""
        delay = 0.5
        while True:
            try:
                namespaces: list[str | None] = list(self.settings.namespaces) or [None]
                for kind in APX_KINDS:
                    for namespace in namespaces:
                        for body in await self.kube.list(kind, namespace):
                            body.setdefault("kind", kind)
                            body.setdefault("apiVersion", "apx.dev/v1alpha1")
                            self.observe(kind, body)
                self.metrics.dependency_up.labels(dependency="kubernetes").set(1)
                self._listed = True
                return
            except KubeError as exc:
                self.metrics.dependency_up.labels(dependency="kubernetes").set(0)
                self.last_error = redact_text(f"listing APX objects: {exc}")
                logger.warning("cannot list APX objects yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Reconcile until ``stop`` is set: on every change, and fully every ``resync_seconds``."""
        stop = stop or asyncio.Event()
        if not self._listed:
            await self.list_all()
        fast_path = asyncio.create_task(self._fast_path_loop(stop))
        try:
            await self._full_pass_loop(stop)
        finally:
            fast_path.cancel()
            await asyncio.gather(fast_path, return_exceptions=True)

    async def _fast_path_loop(self, stop: asyncio.Event) -> None:
        """Publish touched products' rule sets right away, even while a full pass is running."""
        while not stop.is_set():
            await self._fast_wanted.wait()
            if self.settings.debounce_seconds:
                await asyncio.sleep(self.settings.debounce_seconds)
            self._fast_wanted.clear()
            try:
                await self.publish_rule_sets_fast()
            except Exception:  # the next full pass reports and retries whatever failed
                logger.exception("fast rule-set publish failed")

    async def _full_pass_loop(self, stop: asyncio.Event) -> None:
        next_full = time.monotonic() + self.settings.resync_seconds
        while not stop.is_set():
            timeout = max(0.0, next_full - time.monotonic())
            if self._backoff:
                timeout = min(timeout, self._backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=timeout)
            if stop.is_set():
                return
            if self.settings.debounce_seconds:
                await asyncio.sleep(self.settings.debounce_seconds)
            self._dirty.clear()
            periodic = time.monotonic() >= next_full
            full = self._full_requested or periodic
            if periodic:
                self._rebuild_requested = True
            if full:
                next_full = time.monotonic() + self.settings.resync_seconds
            self._full_requested = False
            try:
                report = await self.reconcile_once(full=full)
            except Exception as exc:  # never crash-loop: report, back off, try again
                logger.exception("reconcile pass failed")
                self.last_error = redact_text(f"{type(exc).__name__}: {exc}")
                self._backoff = min(max(self._backoff * 2, 1.0), 30.0)
                self._full_requested = True
                continue
            if report.problems:
                self._backoff = min(max(self._backoff * 2, 1.0), 30.0)
                # A dependency failed: retry everything it touched on the next pass.
                self._full_requested = True
            else:
                self._backoff = 0.0

    # --- the fast path ---------------------------------------------------------------

    async def publish_rule_sets_fast(self) -> int:
        """Publish the rule sets of the products touched since the last pass, from their own objects only.

        A limit or Route change is waiting for exactly one product's rule set;
        translating that product with its Routes and their PolicyBundles takes
        milliseconds, where the full pass over every object takes much longer.
        The full pass that follows renders the same rule set from everything
        (and republishes only if it differs, e.g. when a Route of this product
        lost a match conflict to a Route of another product).
        """
        products = set(self._dirty_products)
        self._dirty_products.clear()
        epochs = {product: self._epoch.get(product, 0) for product in products}
        subset: list[dict[str, Any]] = []
        bundles: set[tuple[str, str]] = set()
        for (kind, object_key), body in self.objects.items():
            if (kind, object_key) in self.deleting:
                continue
            namespace = object_key.split("/", 1)[0]
            if kind == "Product" and object_key in products:
                subset.append(body)
            elif kind == "Route":
                spec = body.get("spec") or {}
                if f"{namespace}/{(spec.get('productRef') or {}).get('name')}" in products:
                    subset.append(body)
                    bundles.add(("PolicyBundle", f"{namespace}/{(spec.get('policyRef') or {}).get('name')}"))
        for key in bundles:
            if key in self.objects and key not in self.deleting:
                subset.append(self.objects[key])
                subset.extend((self._policy_history.get(key) or {}).values())
        stage = self._serving_stage(subset)
        published = 0
        for rule_set in stage.redis.rule_sets:
            if (
                rule_set.product not in products
                or self._applied_rule_sets.get(rule_set.product) == rule_set.version
            ):
                continue
            if self._epoch.get(rule_set.product, 0) != epochs[rule_set.product]:
                continue  # changed again meanwhile: the next fast run publishes the newer one
            await self.redis.publish(_rule_set_keys(rule_set), rule_set.version, dict(rule_set.fields))
            self._applied_rule_sets[rule_set.product] = rule_set.version
            published += 1
        return published

    def _serving_stage(self, documents: list[dict[str, Any]], caches: Caches | None = None) -> FirstStage:
        """Translate ``documents``; a Product or Route whose new spec fails is rendered as last good.

        Its status still comes from the failing spec (Stalled, the field
        named, the new generation observed), so users see the error while
        Envoy, Redis and Pub/Sub keep what was serving. Specs a later stage
        refused in an earlier pass (Envoy, manifests) are substituted up front,
        so even the fast path never publishes them. Runs in a worker thread
        during full passes: it reads the store but does not change it.
        """
        known = {
            key: status
            for key, (body, status) in list(self._render_failures.items())
            if (self.objects.get(key) or {}).get("spec") == body.get("spec")
        }
        return first_stage(documents, last_good=self._last_good, known_failures=known, caches=caches)

    def _remember_good(self, compiled: Compiled, documents: list[dict[str, Any]]) -> None:
        """Record the bodies of Products and Routes that rendered without error, and those that failed."""
        for key, document, status in _products_and_routes(compiled.statuses, documents):
            current = self.objects.get(key)
            # By spec, not identity: a status write may have replaced the stored body meanwhile.
            if (
                not status.stalled
                and current is not None
                and (current is document or current.get("spec") == document.get("spec"))
            ):
                self._last_good[key] = current
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
        objects = await self._pass(full, report)
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
            self._written_status.clear()
            self._verified_status.clear()
        if self._rebuild_requested:
            self._rebuild_requested = False
            self.caches.clear()
        self._pass_epochs = dict(self._epoch)
        live = [body for key, body in sorted(self.objects.items()) if key not in self.deleting]
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
            stage = await asyncio.to_thread(self.heap.build, self._serving_stage, live, self.caches)
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
            self._remember_good(compiled, live)
            for envoy_listener in self.envoy_listeners:
                envoy_listener(compiled.envoy)
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
            await self._write_statuses(compiled, report)
            self.metrics.set_object_phases(self._phase_counts(compiled, report))
            lap("status")
        for (kind, object_key), status in compiled.statuses.items():
            if kind == "PolicyBundle":
                served = status.summary.get("servedVersions") or []
                self._served_policies[(kind, object_key)] = {str(v["version"]) for v in served}
        # What this pass did not use (deleted objects, replaced bodies) leaves the caches now.
        self.caches.end_pass()
        return len(live)

    # --- Redis ---------------------------------------------------------------------

    async def _apply_redis(self, output: RedisOutput, ir: IR, report: PassReport, full: bool) -> None:
        try:
            for rule_set in output.rule_sets:
                if self._applied_rule_sets.get(rule_set.product) == rule_set.version:
                    continue
                if self._epoch.get(rule_set.product, 0) != self._pass_epochs.get(rule_set.product, 0):
                    continue  # changed since this pass took its snapshot: the fast path publishes it
                keys = _rule_set_keys(rule_set)
                if full or await self.redis.current_version(keys) != rule_set.version:
                    await self.redis.publish(keys, rule_set.version, dict(rule_set.fields))
                    report.redis_published += 1
                self._applied_rule_sets[rule_set.product] = rule_set.version
            table = output.route_table
            if self._applied_route_table != table.version:
                keys = VersionedKeys(
                    version_prefix=table.key[: -len(table.version)],
                    current=table.current_key,
                    versions=names.route_table_versions_key(),
                )
                await self.redis.publish(keys, table.version, dict(table.entries))
                self._applied_route_table = table.version
                report.redis_published += 1
            self.metrics.dependency_up.labels(dependency="redis").set(1)
        except RedisUnavailable as exc:
            self.metrics.dependency_up.labels(dependency="redis").set(0)
            self._applied_rule_sets.clear()
            self._applied_route_table = None
            problem = DependencyProblem("RedisUnavailable", f"{exc}; retrying")
            for product in ir.products:
                report.problems[("Product", product.key)] = problem
            for route in ir.routes:
                report.problems[("Route", route.key)] = problem

    # --- Pub/Sub ---------------------------------------------------------------------

    async def _apply_pubsub(self, compiled: Compiled, report: PassReport, full: bool) -> None:
        # Per async Route, its topics and subscriptions as the renderer built them: an unchanged
        # Route's are the very tuples of the last pass, so their digest is kept too.
        project = compiled.pubsub.project
        by_route: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        digests: dict[str, str] = {}
        for route in compiled.ir.routes:
            if route.mode != "async":
                continue
            _, topics, subscriptions = cached_route_documents(route, project, self.caches)
            by_route[route.key] = (list(topics), list(subscriptions))
            digests[route.key] = self.caches.digests.get(
                topics, functools.partial(_digest, [list(topics), list(subscriptions)])
            )
        semaphore = asyncio.Semaphore(8)
        unavailable: list[PubSubUnavailable] = []

        async def ensure_route(
            route_key: str, topics: list[dict[str, Any]], subscriptions: list[dict[str, Any]], digest: str
        ) -> None:
            async with semaphore:
                if unavailable:
                    return
                try:
                    # Ordinary passes trust the applier's memory; a full pass checks every object (drift).
                    problems = await self.pubsub.ensure(topics, subscriptions, verify=full)
                except PubSubUnavailable as exc:
                    unavailable.append(exc)
                    return
            report.pubsub_ensured += len(topics) + len(subscriptions)
            if problems:
                report.problems[("Route", route_key)] = DependencyProblem(
                    "PubSubChangeRejected",
                    "; ".join(f"{p.resource}: {p.message}" for p in problems),
                    stalled=True,
                )
            else:
                self._applied_pubsub.add(digest)

        digested = [(key, *docs, digests[key]) for key, docs in sorted(by_route.items())]
        await asyncio.gather(
            *(ensure_route(*item) for item in digested if item[3] not in self._applied_pubsub)
        )
        if unavailable:
            self.metrics.dependency_up.labels(dependency="pubsub").set(0)
            problem = DependencyProblem("PubSubUnavailable", f"{unavailable[0]}; retrying")
            for other in by_route:
                report.problems[("Route", other)] = problem
        else:
            self.metrics.dependency_up.labels(dependency="pubsub").set(1)

    # --- Kubernetes ------------------------------------------------------------------

    async def _apply_kubernetes(self, compiled: Compiled, report: PassReport, full: bool) -> None:
        manifests = [*compiled.kubernetes.manifests, *self._dataplane_settings(compiled)]
        desired = await self._apply_manifests(manifests, report)
        if full or self.deleting:
            await self._prune(desired, report)

    async def _apply_envoy_snapshot(self, compiled: Compiled, report: PassReport, full: bool) -> None:
        """Write the Envoy snapshot ConfigMaps after the xDS push, at most every few seconds.

        They are the readable and restart copy of what xDS serves, not the
        way Envoy gets a change, and at 10,000 Routes rendering them (JSON,
        gzip) costs more than the rest of a one-Route change: a burst of
        changes writes them once. A pass that finds them due too early leaves
        a timer that asks for one more pass when they are.
        """
        envoy = compiled.envoy
        version, written_at = self._snapshot_written
        if envoy.version == version and not full:
            return  # a full pass writes them again: that is how a deleted or edited part is repaired
        wait = written_at + self.settings.snapshot_configmap_seconds - time.monotonic()
        if wait > 0 and not full:
            if self._snapshot_timer is None:
                self._snapshot_timer = asyncio.get_running_loop().call_later(wait, self._snapshot_due)
            return
        manifests = await asyncio.to_thread(
            render_envoy_snapshot, envoy.snapshot_document(), self.settings.operator_namespace
        )
        desired = await self._apply_manifests(manifests, report)
        index = ("ConfigMap", self.settings.operator_namespace, names.envoy_snapshot_configmap())
        if index in self._applied_manifests:
            await self._prune_snapshot_parts(desired, report, full)
            self._snapshot_written = (envoy.version, time.monotonic())

    def _snapshot_due(self) -> None:
        self._snapshot_timer = None
        self.request_pass()

    async def _apply_manifests(
        self, manifests: list[dict[str, Any]], report: PassReport
    ) -> set[tuple[str, str, str]]:
        """Apply the manifests that differ from what was applied; returns every manifest's identity."""
        semaphore = asyncio.Semaphore(self.settings.worker_limit)

        async def apply_one(manifest: Mapping[str, Any], identity: tuple[str, str, str], digest: str) -> None:
            owner_kind = (_owner_key(manifest) or ("Route", ""))[0]
            async with semaphore, self._active(CONTROLLERS[owner_kind]):
                try:
                    await self.kube.apply(manifest)
                except Invalid as exc:
                    owner = _owner_key(manifest)
                    if owner is not None:
                        report.problems[owner] = DependencyProblem(
                            "ManifestRejected",
                            f"{identity[0]} {identity[1]}/{identity[2]}: {exc.message}",
                            True,
                        )
                    return
                except Unavailable as exc:
                    self.metrics.dependency_up.labels(dependency="kubernetes").set(0)
                    owner = _owner_key(manifest)
                    problem = DependencyProblem("KubernetesUnavailable", f"{exc}; retrying")
                    if owner is not None:
                        report.problems[owner] = problem
                    return
            self.metrics.dependency_up.labels(dependency="kubernetes").set(1)
            self._applied_manifests[identity] = digest
            report.manifests_applied += 1

        # Unchanged manifests are the very dicts of the last pass (the renderers' caches): their
        # digests are kept too, so an unchanged Route costs no JSON encoding here.
        digests = self.caches.digests
        digested = await asyncio.to_thread(
            lambda: [(m, _identity(m), digests.get(m, functools.partial(_digest, m))) for m in manifests]
        )
        await asyncio.gather(
            *(
                apply_one(manifest, identity, digest)
                for manifest, identity, digest in digested
                if self._applied_manifests.get(identity) != digest
            )
        )
        return {identity for _, identity, _ in digested}

    async def _prune_snapshot_parts(
        self, desired: set[tuple[str, str, str]], report: PassReport, full: bool
    ) -> None:
        """Delete Envoy snapshot parts the current index no longer names (the snapshot shrank).

        They have no ownerReference (the snapshot spans namespaces), so ``_prune``
        leaves them. Runs once the new index is applied (a reader following the
        old index finds an incomplete set and waits, rather than a mixed one), on
        full passes and whenever the number of parts went down.
        """
        namespace = self.settings.operator_namespace
        prefix = names.envoy_snapshot_configmap() + "-"
        parts = {i for i in desired if i[0] == "ConfigMap" and i[1] == namespace and i[2].startswith(prefix)}
        shrank = bool(self._snapshot_parts - parts)
        self._snapshot_parts = parts
        if not (full or shrank):
            return
        try:
            items = await self.kube.list("ConfigMap", namespace, label_selector="apx.dev/envoy-snapshot=part")
        except KubeError as exc:
            logger.warning("cannot list Envoy snapshot parts for pruning: %s", exc)
            return
        for item in items:
            meta = item.get("metadata") or {}
            identity = ("ConfigMap", namespace, str(meta.get("name")))
            # The label selector is checked here too: not every API (the emulated one) applies it.
            if (meta.get("labels") or {}).get("apx.dev/envoy-snapshot") != "part" or identity in desired:
                continue
            await self.kube.delete("ConfigMap", namespace, identity[2])
            self._applied_manifests.pop(identity, None)
            report.manifests_pruned += 1

    def _dataplane_settings(self, compiled: Compiled) -> list[dict[str, Any]]:
        """Per namespace with async Routes: where workers find Redis and Pub/Sub (a ConfigMap and a Secret).

        Not owned by any one Route (several share them), so they carry the
        managed-by label but no ownerReference and are never pruned.
        """
        labels = {"app.kubernetes.io/managed-by": "apx", "app.kubernetes.io/part-of": "apx"}
        data = {"pubsub-project": self.settings.pubsub_project}
        if self.settings.pubsub_emulator_host:
            # A ConfigMap is no place for a credential (the emulator has no authentication anyway).
            data["pubsub-emulator-host"] = redact_url(self.settings.pubsub_emulator_host)
        manifests: list[dict[str, Any]] = []
        for namespace in sorted({r.ref.namespace for r in compiled.ir.routes if r.mode == "async"}):
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": names.dataplane_configmap(),
                        "namespace": namespace,
                        "labels": labels,
                    },
                    "data": data,
                }
            )
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": names.dataplane_secret(), "namespace": namespace, "labels": labels},
                    "type": "Opaque",
                    "stringData": {"redis-url": self.settings.redis_url},
                }
            )
        return manifests

    async def _prune(self, desired: set[tuple[str, str, str]], report: PassReport) -> None:
        existing_owners = {
            str((body.get("metadata") or {}).get("uid"))
            for key, body in self.objects.items()
            if key not in self.deleting
        }
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        for kind in PRUNABLE_KINDS:
            for namespace in namespaces:
                try:
                    items = await self.kube.list(kind, namespace, label_selector=MANAGED_BY)
                except KubeError as exc:
                    logger.warning("cannot list %s for pruning: %s", kind, exc)
                    return
                for item in items:
                    meta = item.get("metadata") or {}
                    identity = (kind, str(meta.get("namespace", "")), str(meta.get("name")))
                    if identity in desired:
                        continue
                    owner_uids = {
                        str(ref.get("uid"))
                        for ref in meta.get("ownerReferences") or []
                        if str(ref.get("apiVersion", "")).startswith("apx.dev/")
                    }
                    # Only prune children of live owners; a deleted owner's children go by garbage collection.
                    if not owner_uids or not owner_uids <= existing_owners:
                        continue
                    await self.kube.delete(kind, identity[1], identity[2])
                    self._applied_manifests.pop(identity, None)
                    report.manifests_pruned += 1

    # --- deletion --------------------------------------------------------------------

    def _owners_of_deleting(self) -> dict[tuple[str, str], Compiled]:
        """Render once *with* the objects being deleted, to know what they own."""
        everything = [body for _, body in sorted(self.objects.items())]
        compiled = compile_resources(
            everything,
            project=self.settings.pubsub_project,
            operator_namespace=self.settings.operator_namespace,
        )
        return dict.fromkeys(self.deleting, compiled)

    async def _cleanup_deleted(self, owners: Mapping[tuple[str, str], Compiled], report: PassReport) -> None:
        for key, body in list(self.deleting.items()):
            if key in self._cleaned:
                continue
            kind, object_key = key
            policy = ((body.get("spec") or {}).get("deletionPolicy")) or "Retain"
            compiled = owners.get(key)
            try:
                if policy == "Delete" and compiled is not None:
                    if kind == "Product":
                        rule_set = next(
                            (r for r in compiled.redis.rule_sets if r.product == object_key), None
                        )
                        if rule_set is not None:
                            await self.redis.drop(_rule_set_keys(rule_set))
                            self._applied_rule_sets.pop(object_key, None)
                        await self.redis.delete_pattern(names.product_counters_pattern(object_key))
                    if kind in ("Route", "Product"):
                        plans = [
                            p
                            for p in compiled.pubsub.plans
                            if (p.route == object_key if kind == "Route" else p.product == object_key)
                        ]
                        project = compiled.pubsub.project
                        subscriptions = [
                            f"projects/{project}/subscriptions/{s}"
                            for p in plans
                            for s in (p.subscription, p.dead_letter_subscription)
                        ]
                        topics = [
                            f"projects/{project}/topics/{t}"
                            for p in plans
                            for t in (p.topic, p.dead_letter_topic)
                        ]
                        await self.pubsub.delete(topics, subscriptions)
                        self._applied_pubsub.clear()
                self._cleaned.add(key)
            except (RedisUnavailable, PubSubUnavailable) as exc:
                report.problems[key] = DependencyProblem("CleanupPending", f"{exc}; retrying")

    # --- status ------------------------------------------------------------------------

    def _statuses_to_write(
        self, compiled: Compiled, report: PassReport, now: str
    ) -> list[tuple[tuple[str, str], ResourceStatus, dict[str, Any], str, dict[str, Any]]]:
        """Return the status documents that differ from what the objects carry.

        Runs in a thread: it is a digest per object, and on the event loop it would hold off
        the watches and the fast path.
        """
        changed = []
        for key, status in sorted(compiled.statuses.items()):
            body = self.objects.get(key)
            if body is None or key in self.deleting:
                continue
            status = self._final_status(key, status, report)
            verified = self._verified_status.get(key)
            if verified is not None and verified[1] is body and verified[0] == status:
                continue  # the same status as last time, found written on this very body
            previous = (body.get("status") or {}) if isinstance(body.get("status"), dict) else {}
            document = status.to_dict(now, previous.get("conditions") or [])
            for summary_key in SUMMARY_KEYS:
                if summary_key not in document and summary_key in previous:
                    document[summary_key] = None
            _drop_stale_tracks(document, previous)
            comparable = {k: v for k, v in document.items() if v is not None}
            digest = _digest(_without_times(comparable))
            if self._written_status.get(key) == digest or _same_status(previous, comparable):
                self._written_status[key] = digest
                self._verified_status[key] = (status, body)
                continue
            changed.append((key, status, document, digest, body))
        return changed

    def _final_status(
        self, key: tuple[str, str], status: ResourceStatus, report: PassReport
    ) -> ResourceStatus:
        """The status as written: this pass's dependency problem, worker availability, in-use, NACKs.

        One function for the status document and for ``apx_operator_objects``,
        so the metric counts what the objects say (a Route waiting for its
        workers is Reconciling in both).
        """
        problem = report.problems.get(key)
        if problem is not None and not status.stalled:
            status = summaries.with_problem(status, problem.stalled, problem.reason, problem.message)
        if key[0] == "Route" and status.summary.get("deployments"):
            workers, waiting = self.workers.summary(key[1], list(status.summary["deployments"]))
            status = summaries.with_workers(status, workers, waiting)
        status = summaries.with_in_use(status, self._in_use.get(key))
        return with_rejection(status, self._rejections_now.get(key))

    async def _write_statuses(self, compiled: Compiled, report: PassReport) -> None:
        semaphore = asyncio.Semaphore(self.settings.worker_limit)
        self._rejections_now = _with_products(
            self.xds_rejections() if self.xds_rejections is not None else {}, compiled.ir
        )
        changed = await asyncio.to_thread(self._statuses_to_write, compiled, report, self.clock())

        async def write(
            key: tuple[str, str],
            status: ResourceStatus,
            document: dict[str, Any],
            digest: str,
            body: dict[str, Any],
        ) -> None:
            kind, object_key = key
            namespace, name = object_key.split("/", 1)
            controller = CONTROLLERS[kind]
            with self.tracer.start_as_current_span(f"apx.reconcile.{controller}") as span:
                span.set_attribute("k8s.namespace.name", namespace)
                span.set_attribute("apx.kind", kind)
                span.set_attribute("apx.name", name)
                span.set_attribute("apx.generation", status.generation)
                span.set_attribute("apx.phase", status.phase)
                async with semaphore, self._active(controller):
                    try:
                        updated = await self.kube.patch_status(kind, namespace, name, document)
                    except KubeError as exc:
                        self.metrics.reconcile_errors.labels(controller=controller).inc()
                        self.metrics.reconcile_total.labels(controller=controller, result="error").inc()
                        logger.warning("cannot write status of %s %s: %s", kind, object_key, exc)
                        return
            self._written_status[key] = digest
            if updated and _resource_version(updated) > _resource_version(self.objects.get(key) or {}):
                # Our own write: remember it without scheduling a pass (its watch
                # event will carry the same resourceVersion and be skipped too).
                self._replace_body(key, _stored({**updated, "kind": kind}))
            report.statuses_written += 1
            result = "success" if status.phase == "Ready" else ("error" if status.stalled else "requeue")
            self.metrics.reconcile_total.labels(controller=controller, result=result).inc()
            if status.phase != "Ready":
                self.metrics.reconcile_errors.labels(controller=controller).inc()
            await self._event_on_transition(key, body, status)

        await asyncio.gather(*(write(*item) for item in changed))

    async def _event_on_transition(
        self, key: tuple[str, str], body: Mapping[str, Any], status: ResourceStatus
    ) -> None:
        """Post a Kubernetes Event when the phase changes (not on every pass)."""
        previous = self._last_phase.get(key) or _phase_of(body.get("status") or {})
        self._last_phase[key] = status.phase
        if previous == status.phase and status.phase == "Ready":
            return
        if previous == status.phase and status.reason == (body.get("status") or {}).get("reason"):
            return
        event_type: EventType = "Normal" if status.phase == "Ready" else "Warning"
        await post_event(self.kube, key[0], body, event_type, status.reason, status.message, self.clock())

    @contextlib.asynccontextmanager
    async def _active(self, controller: str) -> AsyncIterator[None]:
        """Count one worker of ``controller`` as busy (``controller_runtime_active_workers``) meanwhile."""
        gauge = self.metrics.active_workers.labels(controller=controller)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def _phase_counts(self, compiled: Compiled, report: PassReport) -> dict[tuple[str, str], int]:
        """Objects per (kind, phase) as their statuses say after this pass (every overlay included).

        Also keeps ``apx_operator_object_ready`` per object, touching only the
        series whose value changed (and removing those of objects gone).
        """
        counts: dict[tuple[str, str], int] = {}
        ready: dict[tuple[str, str], bool] = {}
        for key, status in compiled.statuses.items():
            if key in self.deleting:
                continue
            phase = self._final_status(key, status, report).phase
            counts[(key[0], phase)] = counts.get((key[0], phase), 0) + 1
            ready[key] = phase == "Ready"
        for key, value in ready.items():
            if self._ready_exported.get(key) != value:
                self.metrics.set_object_ready(key[0], key[1], value)
        for key in self._ready_exported.keys() - ready.keys():
            self.metrics.set_object_ready(key[0], key[1], None)
        self._ready_exported = ready
        return counts

    def health(self) -> dict[str, Any]:
        """Liveness details for kopf's probe endpoint."""
        return {
            "listed": self._listed,
            "passes": self.passes,
            "objects": len(self.objects),
            "last_error": self.last_error,
        }


def _stored(body: Mapping[str, Any]) -> dict[str, Any]:
    """The copy of an object the store keeps: without ``managedFields``, which no pass reads.

    Field-manager records are often larger than the spec itself; with
    thousands of objects they were a sizeable share of the operator's memory.
    """
    stored = dict(body)
    meta = stored.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        stored["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return stored


def _products_and_routes(
    statuses: Mapping[tuple[str, str], ResourceStatus], documents: list[dict[str, Any]]
) -> Iterator[tuple[tuple[str, str], dict[str, Any], ResourceStatus]]:
    """The Products and Routes among ``documents``, with the status a pass gave them."""
    for document in documents:
        kind = str(document.get("kind"))
        if kind in ("Product", "Route"):
            key = (kind, _key(document))
            status = statuses.get(key)
            if status is not None:
                yield key, document, status


def _rule_set_keys(rule_set: RuleSet) -> VersionedKeys:
    """The Redis keys of a product's rule-set family, as the applier addresses them."""
    return VersionedKeys(rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key)


def _significant(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of an object a pass reads; a change elsewhere needs no pass."""
    meta = body.get("metadata") or {}
    status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    return (
        meta.get("generation"),
        meta.get("uid"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("deletionTimestamp"),
        body.get("spec"),
        status,
    )


def _version_key(version: str) -> tuple[int, ...]:
    core = version.split("-", 1)[0].split("+", 1)[0]
    return tuple(int(part) if part.isdigit() else 0 for part in core.split("."))


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = manifest["metadata"]
    return (str(manifest["kind"]), str(meta.get("namespace", "")), str(meta["name"]))


def _owner_key(manifest: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = manifest.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if str(ref.get("apiVersion", "")).startswith("apx.dev/") and ref.get("kind") in KINDS:
            return (str(ref["kind"]), f"{meta.get('namespace', 'default')}/{ref['name']}")
    return None


def _phase_of(status: Mapping[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Stalled"
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return "Ready"
    return "Reconciling" if status.get("conditions") else None


def _without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    cleaned = dict(status)
    cleaned["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
    ]
    return cleaned


def _same_status(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    comparable_previous = {k: v for k, v in previous.items() if k in new and v is not None}
    return _without_times(comparable_previous) == _without_times(new) and set(new) <= set(previous)


def _drop_stale_tracks(document: dict[str, Any], previous: Mapping[str, Any]) -> None:
    """Remove worker tracks the new status no longer has (a merge patch would keep them forever).

    ``workers: {stable, canary}`` followed by ``workers: {stable}`` (a
    promoted or rolled-back canary) must clear ``canary``: sent as null.
    """
    old = previous.get("workers")
    new = document.get("workers")
    if isinstance(old, Mapping) and isinstance(new, dict):
        for track in old:
            if track not in new:
                new[track] = None


def _with_products(rejections: Mapping[tuple[str, str], str], ir: IR) -> Mapping[tuple[str, str], str]:
    """A proxy's NACK of Routes also marks their Products (``Programmed=False``), naming the first Route."""
    if not rejections:
        return rejections
    marked = dict(rejections)
    for route in ir.routes:
        message = rejections.get(("Route", route.key))
        if message is not None:
            marked.setdefault(("Product", route.product.key), f"Route {route.key}: {message}")
    return marked
