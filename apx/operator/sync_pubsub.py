"""Pub/Sub sync: each async Route's topics and subscriptions, ensured when they changed.

Mixed into ``apx.operator.reconciler.Reconciler`` (``PubSubSync``). Per Route,
the documents the renderer built (the very tuples of the last pass when the
Route did not change, so their digest is kept too); a Route whose digest was
applied costs nothing, and an ordinary pass looks only at the Routes that are
other objects than last pass's at their place (``positions``) and those left
due; full passes verify every object (drift).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from apx.controllers.appliers.pubsub import PubSubUnavailable
from apx.controllers.ir import RouteIR
from apx.controllers.pipeline import Compiled
from apx.controllers.renderers.pubsub_plan import cached_route_documents

from .reconcile_state import (
    DependencyProblem,
    PassReport,
    ReconcilerState,
    _digest,
)

# Per async Route: its RouteIR, topics, subscriptions and their digest (``_pubsub_rows``).
PubSubRow = tuple[RouteIR, Sequence[dict[str, Any]], Sequence[dict[str, Any]], str]


class PubSubSync(ReconcilerState):
    """Pub/Sub sync of the reconciler (a mixin of ``Reconciler``)."""

    async def _apply_pubsub(self, compiled: Compiled, report: PassReport, full: bool) -> None:
        # Per async Route, its topics and subscriptions as the renderer built them: an unchanged
        # Route's are the very tuples of the last pass, so their digest is kept too, and a Route
        # that is the very RouteIR of the last pass keeps its row (``_pubsub_rows``) whole.
        project = compiled.pubsub.project
        kept = self._pubsub_rows if self._pubsub_rows[0] == project else (project, {})
        routes, before, unsettled = compiled.ir.routes, self._pubsub_routes, self._pubsub_unsettled
        # The IR keeps an unchanged Route's very RouteIR at its place (sorted by key): when no
        # Route came or went, only the Routes at the positions holding another object are looked
        # at and last pass's rows updated for them (an edited Route keeps its key and place).
        # Otherwise (another project, Routes came or went) every Route is, as before.
        positions = self._route_positions(before, routes) if kept is self._pubsub_rows else None
        self._pubsub_routes, self._pubsub_unsettled = None, None  # until this call is done
        if (
            before is not None
            and positions is not None
            and all(before[i].key == routes[i].key for i in positions)
        ):
            rows, looked_at = kept[1], [routes[i] for i in positions]
        else:
            rows, looked_at, unsettled = {}, list(routes), None
        for route in looked_at:
            if route.mode != "async":
                rows.pop(route.key, None)
                continue
            row = kept[1].get(route.key)
            if row is None or row[0] is not route:
                _, topics, subscriptions = cached_route_documents(route, project, self.caches)
                digest = self.caches.digests.get(
                    topics, functools.partial(_digest, [list(topics), list(subscriptions)])
                )
                row = (route, topics, subscriptions, digest)
            rows[route.key] = row
        self._pubsub_rows = (project, rows)
        # The rows that may not be applied: those looked at, and those left due by the last call
        # (refused, Pub/Sub away); any other row's digest was applied then, and what is applied
        # only grows until it is forgotten (a full pass, a deletion: ``_pubsub_unsettled`` is
        # then ``None``, and every row is checked, as before).
        if full or unsettled is None:
            candidates: Iterable[str] = rows
        else:
            candidates = {route.key for route in looked_at if route.key in rows} | (unsettled & rows.keys())
        semaphore = asyncio.Semaphore(8)
        unavailable: list[PubSubUnavailable] = []

        async def ensure_route(
            route_key: str,
            topics: Sequence[dict[str, Any]],
            subscriptions: Sequence[dict[str, Any]],
            digest: str,
        ) -> None:
            async with semaphore:
                if unavailable:
                    return
                try:
                    # Ordinary passes trust the applier's memory; a full pass checks every object (drift).
                    problems = await self.pubsub.ensure(list(topics), list(subscriptions), verify=full)
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

        applied = self._applied_pubsub
        due = sorted((key, rows[key]) for key in candidates if rows[key][3] not in applied)
        await asyncio.gather(*(ensure_route(key, *row[1:]) for key, row in due))
        self._pubsub_routes = routes
        self._pubsub_unsettled = {key for key, row in due if row[3] not in self._applied_pubsub}
        if unavailable:
            self.metrics.dependency_up.labels(dependency="pubsub").set(0)
            problem = DependencyProblem("PubSubUnavailable", f"{unavailable[0]}; retrying")
            for other in rows:
                report.problems[("Route", other)] = problem
        else:
            self.metrics.dependency_up.labels(dependency="pubsub").set(1)
