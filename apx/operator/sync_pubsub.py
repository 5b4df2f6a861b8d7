"""Pub/Sub sync: each async Route's topics and subscriptions, ensured when they changed.

Mixed into ``apx.operator.reconciler.Reconciler`` (``PubSubSync``). Per Route,
the documents the renderer built (the very tuples of the last pass when the
Route did not change, so their digest is kept too); a Route whose digest was
applied costs nothing; full passes verify every object (drift).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from apx.controllers.appliers.pubsub import PubSubUnavailable
from apx.controllers.pipeline import Compiled
from apx.controllers.renderers.pubsub_plan import cached_route_documents

from .reconcile_state import (
    DependencyProblem,
    PassReport,
    ReconcilerState,
    _digest,
)


class PubSubSync(ReconcilerState):
    """Pub/Sub sync of the reconciler (a mixin of ``Reconciler``)."""

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
