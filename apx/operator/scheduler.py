"""When passes run: the full-LIST start, the change-driven loop with back-off and resync, the fast path.

Mixed into ``apx.operator.reconciler.Reconciler`` (``Scheduler``) and run by
``apx.operator.main``. A change (``_dirty``) wakes a pass after a short
debounce; a failed pass or a dependency problem backs off (1 s doubling to
30 s) and asks for a full pass; every ``resync_seconds`` a full pass
compiles from scratch (the caches are cleared) and re-applies everything,
which repairs drift; never more often than keeps resyncs under
``RESYNC_SHARE`` of the time. Rule-set changes are also published by the fast
path when a pass is not about to do it: at once when the change arrived during
a pass (it would wait for that pass to end), else after
``FAST_PATH_GRACE_SECONDS`` for what the next pass did not publish meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from apx.controllers.appliers.kube import KubeError
from apx.dataplane.common.redact import redact_text

from .reconcile_state import (
    APX_KINDS,
    ReconcilerState,
    logger,
)

# The most of the operator's time periodic resyncs may take: the next one waits at least
# (1 / RESYNC_SHARE - 1) times as long as the last full pass took. At 10,000 Routes a full pass
# takes 15-30 s; with the 60 s default period it would take a third of a core, and every change
# arriving meanwhile would wait for it.
RESYNC_SHARE = 0.1
# How long a changed product's rule set is left to the passes before the fast path publishes it.
# A change arriving between passes reaches Redis through the next ordinary pass within tens of
# milliseconds (its Redis phase comes first), so translating the product again beside it was
# duplicated work: at 2,000 Routes, with canaries stepping, a third of the operator's CPU, on the
# event loop. A change that would wait for the pass running now does not wait (it is not in that
# pass); one whose pass turns out long (a wave of changes) waits at most this long.
FAST_PATH_GRACE_SECONDS = 0.15


class Scheduler(ReconcilerState):
    """When passes run of the reconciler (a mixin of ``Reconciler``)."""

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
        # Ordinary passes hand the snapshot ConfigMaps to a background write (``KubernetesSync``).
        self._background_snapshots = True
        try:
            await self._full_pass_loop(stop)
        finally:
            self._background_snapshots = False
            fast_path.cancel()
            writer = self._snapshot_writer
            if writer is not None:
                writer.cancel()
            await asyncio.gather(fast_path, *([writer] if writer else []), return_exceptions=True)

    async def _fast_path_loop(self, stop: asyncio.Event) -> None:
        """Publish touched products' rule sets right away, even while a full pass is running."""
        while not stop.is_set():
            await self._fast_wanted.wait()
            if self.settings.debounce_seconds:
                await asyncio.sleep(self.settings.debounce_seconds)
            self._fast_wanted.clear()
            await self._rules_left_to_passes(FAST_PATH_GRACE_SECONDS)
            try:
                await self.publish_rule_sets_fast()
            except Exception:  # the next full pass reports and retries whatever failed
                logger.exception("fast rule-set publish failed")

    async def _rules_left_to_passes(self, grace: float) -> None:
        """Wait until the passes published every changed product's rule set, or ``grace`` is over.

        Returns at once when a change would wait for the pass running now to
        end: that pass took its snapshot before the change, or is a full pass
        (it reaches Redis only after translating everything).
        """
        deadline = time.monotonic() + grace
        while not self._full_pass_running:
            self._fast_path_recheck.clear()
            waiting = [product for product in self._dirty_products if not self.rules_covered(product)]
            if not waiting:
                return
            if self._pass_running and any(
                self._pass_epochs.get(product, 0) != self._epoch.get(product, 0) for product in waiting
            ):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fast_path_recheck.wait(), left)

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
                if full:
                    spacing = report.duration * (1 / RESYNC_SHARE - 1)
                    next_full = max(next_full, time.monotonic() + spacing)
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
