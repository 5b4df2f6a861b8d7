"""The canary controller loop: schedules analysis checks, queries metrics, applies each decision at once.

Started by ``apx.operator.main`` beside the reconciler; fed by the
reconciler's store (``Reconciler.objects``) and woken by its change listener.
Everything it decides comes from the pure ``apx.controllers.canary.decide``;
this module only does the I/O around it:

* every Route with a ``canary`` block gets a check when ``decide.due_in``
  says one is due (``analysis.checkInterval``), and at once when its canary
  block changes (a new ``revision``) or a person asks through ``apx rollout``
  (``status.canary.request`` with an id not handled yet);
* a check queries both tracks over ``analysis.window`` from the metrics
  provider, concurrently and with bounded concurrency across Routes; a
  provider that cannot answer is handed to ``decide`` as ``metrics_error``
  (it holds and, in time, halts; it never rolls back);
* the next ``status.canary`` (never the spec: GitOps sees no drift) is written
  with one merge patch through the status subresource, and the written object
  goes straight into the reconciler's store, so the pass it triggers renders
  the new weight into the Redis route table and the Envoy snapshot without
  waiting for a resync;
* Events, logs and the ``apx_canary_*`` metrics carry the numbers behind each
  decision;
* what it costs stays proportional to what changes: each Route's body is
  parsed once (``Plan``), a round looks only at the Routes whose check is due
  or whose body changed (a heap of due times), a failed
  write is retried after a growing back-off, a halted canary's repeated
  inconclusive checks are written only as a heartbeat
  (``HALTED_HEARTBEAT_SECONDS``), and a written check that moves no weight
  runs no reconcile pass (``apx.operator.store``).

``status.canary`` has one writer, this loop (the reconciler reads it and
never writes it back), except ``request``, which only ``apx rollout`` writes:
the loop never sends that key, so a command given while a check runs is not
lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from apx.controllers.appliers.kube import KubeClient, KubeError
from apx.controllers.canary import timefmt
from apx.controllers.canary.decide import CheckTime, Outcome, decide, next_check
from apx.controllers.canary.state import parse_status
from apx.controllers.canary.targets import target_for_spec
from apx.controllers.canary.types import (
    TRACKS,
    Command,
    MetricsProvider,
    MetricsUnavailable,
    RouteTarget,
    TrackWindow,
)
from apx.controllers.models.common import duration_ms
from apx.controllers.models.route import CanaryStatus, RouteSpec
from apx.controllers.translate import canary_revision

from .events import post_event
from .metrics import OperatorMetrics
from .reconcile_state import _key
from .reconciler import Reconciler

logger = logging.getLogger("apx.operator.canary")

NO_PROVIDER_MESSAGE = "no canary metrics backend is configured: set --prometheus-url (APX_PROMETHEUS_URL)"


def rfc3339(epoch_seconds: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Work:
    """What one Route needs now: a check, a command or a new revision to handle."""

    key: str
    body: Mapping[str, Any]
    spec: RouteSpec | None  # None: the canary block was removed, its progress is cleared
    revision: str
    status: CanaryStatus | None
    command: Command | None
    run_check: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """What one recorded Route body means for the loop, worked out once per body.

    ``work``: needed now whatever the time (a new revision, a command, a
    removed block); else ``check`` says when the next check is due (``None``:
    never, e.g. a spec the reconciler reports as wrong).
    """

    body: Mapping[str, Any]  # the body it was made from (compared by identity)
    work: Work | None
    spec: RouteSpec | None = None
    revision: str = ""
    status: CanaryStatus | None = None
    check: CheckTime | None = None


# A failed status write is retried after this long, doubling per failure up to the cap: an
# API that times out must not see every canary's write again on every round of the loop.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# A halted canary whose checks stay inconclusive (no metrics yet, no backend configured) writes
# that repeat at most this often: its state does not change, and a thousand halted canaries
# writing every check interval would be a steady load on the API server for nothing. The checks
# still run on time (``apx_canary_checks_total{result="no-data"}`` counts them); ``lastCheckAt``
# is at most this old while halted; the first conclusive check is written at once.
HALTED_HEARTBEAT_SECONDS = 300.0
# Status fields a repeated inconclusive check changes without changing the canary's state.
_CHECK_BOOKKEEPING = frozenset({"checks", "lastCheckAt", "noDataChecks", "lastDecision"})
# How often the Routes with a canary are found again from the whole store (the change
# listener keeps the set between; this repairs anything it could have missed).
RESCAN_SECONDS = 60.0


class CanaryController:
    """Walks every Route's canary through its steps; one instance per operator process."""

    def __init__(
        self,
        reconciler: Reconciler,
        kube: KubeClient,
        provider: MetricsProvider | None,
        metrics: OperatorMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        tick_seconds: float = 1.0,
        concurrency: int = 8,
    ) -> None:
        self.reconciler = reconciler
        self.kube = kube
        self.provider = provider
        self.metrics = metrics or reconciler.metrics
        self.clock = clock
        self.tick_seconds = tick_seconds
        self._queries = asyncio.Semaphore(concurrency)
        # Routes handled at once: each round starts at most this many (commands and new revisions
        # first, then the most overdue checks), so a thousand checks falling due together never
        # queue a thousand status writes behind the API client's connections (where they would
        # time out) nor hold off the reconciler's own writes.
        self._in_flight = max(1, concurrency)
        self._wake = asyncio.Event()
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # The Routes with a canary block or canary progress (kept by the change listener, and
        # found again from the whole store every RESCAN_SECONDS): a round looks at these only.
        self._candidates: set[str] = set()
        self._rescan_at = -math.inf
        # A round looks only at the candidates that may need something: those in ``_look``
        # (a changed body, finished work, work that found no free slot, everything after a
        # rescan) and those whose time has come. The others wait in ``_due``, a heap of
        # (time, Route) whose entry counts only while it is the Route's time in ``_due_at``
        # (an older one is skipped when it comes up). At 10,000 Routes with 1,000 canaries
        # a round over every candidate took ~3 ms, and every finished check starts a round:
        # ~7 % of a core, on the event loop, before this.
        self._look: set[str] = set()
        self._due: list[tuple[float, str]] = []
        self._due_at: dict[str, float] = {}
        # Per Route, what its current body means (``Plan``), remade only when the body changes.
        self._plans: dict[str, Plan] = {}
        # Per Route whose last status write failed: (not before, current delay).
        self._retry: dict[str, tuple[float, float]] = {}
        # Per halted Route whose last inconclusive check was not written (HALTED_HEARTBEAT_SECONDS):
        # the body it ran against and when the next check is due.
        self._unwritten_checks: dict[str, tuple[Mapping[str, Any], CheckTime]] = {}
        reconciler.listeners.append(self._on_change)

    # --- scheduling ------------------------------------------------------------------

    def _on_change(self, kind: str, body: Mapping[str, Any]) -> None:
        if kind != "Route":
            return
        key = _key(body)
        # A candidate's every change is looked at (a removed canary block is forgotten then).
        if key in self._candidates or (body.get("spec") or {}).get("canary") or _canary_status(body):
            self._candidates.add(key)
            self._look.add(key)
            self._wake.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Check Routes until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                wait = self.tick_seconds
                if self.reconciler.listed:
                    # Only from a complete store: a partial one could look like a
                    # removed canary block and clear progress that is still valid.
                    wait = min(wait, self.schedule(self.clock()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.05))
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def schedule(self, now: float) -> float:
        """Start the work that is due; return seconds until the next check is due."""
        if now >= self._rescan_at or now < self._rescan_at - RESCAN_SECONDS:
            # Also after the clock went back: every candidate is looked at again.
            self._rescan_at = now + RESCAN_SECONDS
            self._candidates |= {
                key
                for (kind, key), body in list(self.reconciler.objects.items())
                if kind == "Route" and ((body.get("spec") or {}).get("canary") or _canary_status(body))
            }
            self._look |= self._candidates
        due = self._due
        while due and due[0][0] <= now:
            at, key = heapq.heappop(due)
            if self._due_at.get(key) == at:
                del self._due_at[key]
                self._look.add(key)
        look, self._look = self._look, set()
        ready: list[tuple[bool, float, str, Work]] = []
        for key in sorted(look & self._candidates):
            body = self.reconciler.objects.get(("Route", key))
            if body is None or ("Route", key) in self.reconciler.deleting:
                self._forget(key)
                continue
            if key in self._running:
                continue  # its end looks at it again
            retry = self._retry.get(key)
            if retry is not None and now < retry[0]:
                self._wait(key, retry[0])
                continue
            work, due_in = self._work_for(key, body, now)
            if work is not None:
                plan = self._plans.get(key)
                overdue = plan.check.due_at if plan is not None and plan.check is not None else -math.inf
                ready.append((work.run_check, overdue, key, work))
            elif due_in is not None:
                self._wait(key, now + due_in)
            elif not (body.get("spec") or {}).get("canary") and not _canary_status(body):
                self._forget(key)  # no canary left to walk or to clear
            # else: nothing until its body changes (a paused or finished canary, a wrong spec)
        free = max(self._in_flight - len(self._running), 0)
        ready.sort(key=lambda item: item[:3])
        for _, _, _, work in ready[:free]:
            self._start(work)
        if len(ready) > free:
            self._look.update(key for _, _, key, _ in ready[free:])
            return 0.0  # the rest start as running work finishes (its end wakes the loop)
        while due and self._due_at.get(due[0][1]) != due[0][0]:
            heapq.heappop(due)  # entries no longer any Route's time
        return due[0][0] - now if due else float("inf")

    def _wait(self, key: str, at: float) -> None:
        """Look at ``key`` again at ``at`` (and not before, unless its body changes)."""
        if self._due_at.get(key) != at:
            self._due_at[key] = at
            heapq.heappush(self._due, (at, key))

    def _forget(self, key: str) -> None:
        self._candidates.discard(key)
        self._plans.pop(key, None)
        self._retry.pop(key, None)
        self._unwritten_checks.pop(key, None)
        self._due_at.pop(key, None)

    async def settle(self) -> None:
        """Wait for the work started so far (tests, and a clean shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _start(self, work: Work) -> None:
        self._running.add(work.key)
        task = asyncio.create_task(self._handle(work), name=f"canary {work.key}")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._running.discard(work.key)
            self._look.add(work.key)
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("canary work for %s failed: %s", work.key, finished.exception())
            self._wake.set()

        task.add_done_callback(done)

    def _work_for(self, key: str, body: Mapping[str, Any], now: float) -> tuple[Work | None, float | None]:
        """The work a Route needs now (or None) and, when none, seconds until its next check."""
        plan = self._plans.get(key)
        if plan is None or plan.body is not body:
            plan = self._plan(key, body)
            self._plans[key] = plan
        if plan.work is not None:
            return plan.work, None
        check = plan.check
        unwritten = self._unwritten_checks.get(key)
        if unwritten is not None:
            if unwritten[0] is body:
                check = unwritten[1]
            else:
                del self._unwritten_checks[key]  # a newer body: its own status says when
        if check is None:
            return None, None
        due = check.due_in(now)
        if due <= 0:
            return Work(key, body, plan.spec, plan.revision, plan.status, None, run_check=True), None
        return None, due

    def _plan(self, key: str, body: Mapping[str, Any]) -> Plan:
        """What ``body`` means for the loop (parsed once per body: see ``Plan``)."""
        current = _canary_status(body)
        if not (body.get("spec") or {}).get("canary"):
            if current:
                # The canary block is gone (promoted and folded into the spec, or
                # withdrawn): its progress no longer describes anything.
                return Plan(body, Work(key, body, None, "", None, None, run_check=False))
            return Plan(body, None)
        try:
            spec = RouteSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return Plan(body, None)  # the reconciler reports the spec error; the canary stays as it is
        if spec.canary is None:
            return Plan(body, None)
        revision = canary_revision(spec.canary)
        status = self._status(current)
        command = _pending_command(current)
        if status is None or status.revision != revision or command is not None:
            return Plan(body, Work(key, body, spec, revision, status, command, run_check=False))
        return Plan(body, None, spec, revision, status, next_check(spec.canary, status))

    @staticmethod
    def _status(current: Mapping[str, Any] | None) -> CanaryStatus | None:
        # Lenient: a field mistyped by hand or written by an older version is
        # dropped (its default applies), so valid progress is never thrown away.
        return parse_status(current) if current else None

    # --- one Route ---------------------------------------------------------------------

    async def _handle(self, work: Work) -> None:
        namespace, name = work.key.split("/", 1)
        if work.spec is None or work.spec.canary is None:
            await self._write(work, {"canary": None})
            for gauge in (self.metrics.canary_weight, self.metrics.canary_frozen):
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, name)
            return
        stable = canary = None
        metrics_error: str | None = None
        if work.run_check:
            window_seconds = max(1, duration_ms(work.spec.canary.analysis.window) // 1000)
            target = target_for_spec(namespace, name, work.spec)
            try:
                stable, canary = await self._windows(target, window_seconds)
            except MetricsUnavailable as exc:
                metrics_error = str(exc)
        now = self.clock()
        outcome = decide(
            work.spec.canary,
            work.revision,
            work.status,
            stable,
            canary,
            now,
            command=work.command,
            metrics_error=metrics_error,
        )
        await self._apply(work, outcome, now)

    async def _windows(self, target: RouteTarget, window_seconds: int) -> tuple[TrackWindow, TrackWindow]:
        provider = self.provider
        if provider is None:
            raise MetricsUnavailable(NO_PROVIDER_MESSAGE)

        async def one(track: Any) -> TrackWindow:
            async with self._queries:
                return await provider.query(target, track, window_seconds)

        try:
            stable, canary = await asyncio.gather(*(one(track) for track in TRACKS))
        except MetricsUnavailable:
            self.metrics.canary_metrics_up.labels(provider=provider.name).set(0)
            raise
        self.metrics.canary_metrics_up.labels(provider=provider.name).set(1)
        return stable, canary

    async def _apply(self, work: Work, outcome: Outcome, now: float) -> None:
        namespace, name = work.key.split("/", 1)
        previous = dict(_canary_status(work.body) or {})
        previous.pop("request", None)
        written = outcome.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        # The request is the CLI's to write: echoing it back could overwrite a
        # newer command given while this check ran.
        written.pop("request", None)
        if outcome.check_ran:
            self.metrics.canary_checks.labels(result=outcome.decision.result).inc()
        if written != previous and _repeats_halt(previous, written, outcome, now):
            assert work.spec is not None and work.spec.canary is not None
            self._unwritten_checks[work.key] = (work.body, next_check(work.spec.canary, outcome.status))
        elif written != previous:
            patch: dict[str, Any] = {k: None for k in previous if k not in written}
            patch.update(written)
            await self._write(work, {"canary": patch, "canaryWeight": outcome.status.weight})
        self.metrics.canary_weight.labels(namespace=namespace, route=name).set(outcome.status.weight)
        self.metrics.canary_frozen.labels(namespace=namespace, route=name).set(
            1 if outcome.status.frozen else 0
        )
        if outcome.rolled_back and outcome.decision.result == "rollback":  # not a person's abort
            self.metrics.canary_rollbacks.labels(namespace=namespace, route=name).inc()
        for event in outcome.events:
            log = logger.warning if event.type == "Warning" else logger.info
            log("Route %s: %s: %s", work.key, event.reason, event.message)
            await post_event(
                self.kube, "Route", work.body, event.type, event.reason, event.message, rfc3339(now)
            )

    async def _write(self, work: Work, status: dict[str, Any]) -> None:
        namespace, name = work.key.split("/", 1)
        try:
            updated = await self.kube.patch_status("Route", namespace, name, status)
        except KubeError as exc:
            # Nothing changed: the same work is due again, after a back-off per Route.
            previous = self._retry.get(work.key)
            delay = min(previous[1] * 2, RETRY_MAX_SECONDS) if previous else RETRY_FIRST_SECONDS
            self._retry[work.key] = (self.clock() + delay, delay)
            logger.warning(
                "cannot write status.canary of Route %s (again in %.0f s): %s", work.key, delay, exc
            )
            return
        self._retry.pop(work.key, None)
        if updated:
            # Into the store at once: the pass this triggers renders the new
            # weight into Redis and the Envoy snapshot.
            self.reconciler.observe("Route", {**updated, "kind": "Route"})


def _repeats_halt(
    previous: Mapping[str, Any], written: Mapping[str, Any], outcome: Outcome, now: float
) -> bool:
    """A halted canary's inconclusive check that changes only bookkeeping, recorded recently enough."""
    if not outcome.check_ran or outcome.events or outcome.decision.result != "no-data":
        return False
    if previous.get("phase") != "Halted" or written.get("phase") != "Halted":
        return False
    if {k: v for k, v in previous.items() if k not in _CHECK_BOOKKEEPING} != {
        k: v for k, v in written.items() if k not in _CHECK_BOOKKEEPING
    }:
        return False
    recorded = timefmt.parse_rfc3339(previous.get("lastCheckAt"))
    return recorded is not None and 0 <= now - recorded < HALTED_HEARTBEAT_SECONDS


def _canary_status(body: Mapping[str, Any]) -> dict[str, Any] | None:
    status = body.get("status")
    if not isinstance(status, Mapping):
        return None
    canary = status.get("canary")
    return dict(canary) if isinstance(canary, Mapping) else None


def _pending_command(current: Mapping[str, Any] | None) -> Command | None:
    """The ``apx rollout`` request not handled yet, if any (malformed requests are ignored)."""
    request = (current or {}).get("request")
    if not isinstance(request, Mapping):
        return None
    action, request_id = request.get("action"), request.get("id")
    if action not in ("promote", "abort", "retry", "pause", "resume") or not isinstance(request_id, str):
        return None
    handled = (current or {}).get("handledRequest")
    if request_id == handled:
        return None
    return Command(action=action, id=request_id, full=bool(request.get("full")))
