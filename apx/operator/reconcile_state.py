"""What the reconciler's parts share: its state, the pass report, and small helpers.

Imported by ``apx.operator.reconciler`` and by each of its parts (``store``,
``scheduler``, ``sync_redis``, ``sync_pubsub``, ``sync_kubernetes``,
``deletion``, ``sync_status``), which are mixins of one ``Reconciler``:
``ReconcilerState`` declares the attributes ``Reconciler.__init__`` sets (and,
for the type checker, the methods one part calls on another), so each part
reads as a plain class over the same state. No logic here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from apx.controllers.appliers.kube import KubeClient
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.controllers.ir import RouteIR
from apx.controllers.memo import Caches
from apx.controllers.pipeline import FirstStage
from apx.controllers.renderers.envoy import EnvoyOutput
from apx.controllers.renderers.redis_rules import RuleSet
from apx.controllers.status import ResourceStatus
from apx.controllers.translation import summaries
from apx.dataplane.common.redact import redact_text
from apx.runtime.process import HeapKeeper

from .metrics import OperatorMetrics, PendingChanges
from .positions import EntryRows, PositionMemo
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

Key = tuple[str, str]


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


class ReconcilerState:
    """The state every part of the reconciler reads and writes (set by ``Reconciler.__init__``)."""

    settings: OperatorSettings
    heap: HeapKeeper
    kube: KubeClient
    redis: RedisApplier
    pubsub: PubSubApplier
    metrics: OperatorMetrics
    tracer: trace.Tracer
    clock: Callable[[], str]
    caches: Caches
    workers: WorkerAvailability
    # the store
    objects: dict[Key, dict[str, Any]]
    _documents: dict[Key, tuple[dict[str, Any], dict[str, Any]]]
    _touched: set[Key]
    _membership_changed: bool
    _documents_renewed: set[Key] | None
    # The documents in key order (what ``translation_documents`` returns a copy of), and each key's place.
    _document_list: list[dict[str, Any]]
    _document_index: dict[Key, int]
    deleting: dict[Key, dict[str, Any]]
    listeners: list[Callable[[str, Mapping[str, Any]], None]]
    envoy_listeners: list[Callable[[EnvoyOutput], None]]
    envoy_waits: list[Callable[[], Awaitable[None]]]
    xds_rejections: Callable[[], Mapping[Key, str]] | None
    _pending: PendingChanges
    _cleaned: set[Key]
    _policy_history: dict[Key, dict[str, dict[str, Any]]]
    _served_policies: dict[Key, set[str]]
    _last_good: dict[Key, dict[str, Any]]
    _render_failures: dict[Key, tuple[dict[str, Any], ResourceStatus]]
    _in_use: dict[Key, list[str]]
    # the scheduler
    _dirty: asyncio.Event
    _full_requested: bool
    _rebuild_requested: bool
    _listed: bool
    _backoff: float
    _dirty_products: set[str]
    _epoch: dict[str, int]
    _pass_epochs: dict[str, int]
    _fast_wanted: asyncio.Event
    _rules_covered: dict[str, int]
    _fast_path_recheck: asyncio.Event
    _pass_running: bool
    _full_pass_running: bool
    last_pass: PassReport | None
    last_error: str | None
    passes: int
    # what was applied
    _applied_rule_sets: dict[str, str]
    # The rule sets the last ``_apply_redis`` left applied, every one, with ``_rule_set_moves`` then
    # (``None``: look at all next time); the counter is bumped whenever anything else changes
    # ``_applied_rule_sets``: whatever writes to it outside ``_apply_redis`` must bump it, or the
    # next pass may trust a stale entry.
    _rule_sets_settled: tuple[tuple[RuleSet, ...], int] | None
    _rule_set_moves: int
    _applied_route_table: str | None
    # The entries of that table, for publishing the next one as its changes.
    _applied_route_table_entries: EntryRows | None
    _applied_pubsub: set[str]
    # (project, per async Route key: its RouteIR, topics, subscriptions, digest) of the last pass.
    _pubsub_rows: tuple[str, dict[str, Any]]
    # The IR's Routes those rows were built from, and the rows that may not be applied (``None``:
    # any row may not be; see ``PubSubSync._apply_pubsub``).
    _pubsub_routes: tuple[RouteIR, ...] | None
    # ``changed_positions`` of the IR's Routes, shared by the Pub/Sub sync and the dataplane settings.
    _route_positions: PositionMemo
    _pubsub_unsettled: set[str] | None
    _applied_manifests: dict[tuple[str, str, str], str]
    # The dataplane settings manifests (per namespaces with async Routes and settings).
    # The last pass's Route and Product manifests and their rows with identity and digest
    # (``KubernetesSync._digested``); a counter bumped by every change of ``_applied_manifests``
    # other than theirs, and its value when their last apply left every one applied.
    _manifest_list: list[dict[str, Any]] | None
    _manifest_row_list: list[tuple[dict[str, Any], tuple[str, str, str], str]]
    _manifest_moves: int
    _manifests_settled: int | None
    _dataplane_manifests: tuple[tuple[tuple[str, ...], Any], list[dict[str, Any]]] | None
    # The IR's Routes the async Routes were last counted from, and the count per namespace.
    _async_routes: tuple[RouteIR, ...] | None
    _async_counts: Counter[str]
    _snapshot_parts: set[tuple[str, str, str]]
    _snapshot_written: tuple[str, float]
    _snapshot_write_seconds: float
    _snapshot_timer: asyncio.TimerHandle | None
    # The Envoy output the last pass served; the background ConfigMap write in flight; whether
    # ordinary passes write in the background (set by ``Scheduler.run``).
    _snapshot_latest: EnvoyOutput | None
    _snapshot_writer: asyncio.Task[None] | None
    _background_snapshots: bool
    # statuses
    _written_status: dict[Key, str]
    _verified_status: dict[Key, tuple[ResourceStatus, dict[str, Any]]]
    _last_phase: dict[Key, str]
    _final_memo: dict[Key, tuple[ResourceStatus, tuple[Any, ...], ResourceStatus]]
    _finals: dict[Key, ResourceStatus]
    _status_seen: dict[Key, ResourceStatus]
    # The objects with a status in ``_status_seen`` and none in this pass (``_statuses_changed``).
    _status_gone: set[Key]
    _status_touched: set[Key]
    _status_everything: bool
    _overlaid_before: set[Key]
    _status_retry: set[Key]
    _candidates_now: set[Key] | None
    _phases: dict[Key, str]
    _phase_totals: dict[tuple[str, str], int]
    _rejections_now: Mapping[Key, str]

    if TYPE_CHECKING:
        # Methods one part calls on another (defined in the part named).

        def observe(self, kind: str, body: Mapping[str, Any]) -> None: ...  # store

        def _replace_body(self, key: Key, body: dict[str, Any]) -> None: ...  # store

        def request_pass(self) -> None: ...  # scheduler

        async def publish_rule_sets_fast(self) -> int: ...  # sync_redis

        def rules_covered(self, product: str) -> bool: ...  # sync_redis

        # sync_kubernetes
        def _active(self, controller: str) -> contextlib.AbstractAsyncContextManager[None]: ...

        async def reconcile_once(self, full: bool = False) -> PassReport: ...  # reconciler

        def _serving_stage(  # reconciler
            self,
            documents: list[dict[str, Any]],
            caches: Caches | None = None,
            keyed: Mapping[Key, tuple[dict[str, Any], dict[str, Any]]] | None = None,
            last_good: Mapping[Key, dict[str, Any]] | None = None,
        ) -> FirstStage: ...
