"""The Pub/Sub plan of a pass, updated from last pass's for the few Routes that changed.

Called by the pure pipeline (``apx.controllers.pipeline``) when it has the
operator's ``Caches``; the output equals ``render_pubsub`` of the same IR
(``tests/unit/test_incremental.py``). Last pass's Routes, output and sorted
rows stay in ``caches.assembled``; when only a few Routes are other objects
(``delta.route_changes``) and none of them is or was async, last pass's output
is returned as is, and otherwise the changed Routes' topics, subscriptions
and plans are removed and inserted in the sorted rows. Added or removed
Routes, a new project or a name two Routes share fall back to the full
render. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..delta import SortedRows, async_route_changes
from ..ir import IR, RouteIR
from ..memo import Caches
from .pubsub_plan import PubSubOutput, TopicPlan, cached_route_documents, render_pubsub

_STAGE = "pubsub"


@dataclass(slots=True)
class _Assembled:
    routes: tuple[RouteIR, ...]
    project: str
    output: PubSubOutput
    topics: SortedRows[dict[str, Any]]
    subscriptions: SortedRows[dict[str, Any]]
    plans: SortedRows[TopicPlan]


def render_pubsub_cached(ir: IR, project: str, caches: Caches) -> PubSubOutput:
    """``render_pubsub(ir, project, caches)``, from last pass's output when few Routes changed."""
    state = caches.assembled.get(_STAGE)
    if isinstance(state, _Assembled) and state.project == project:
        output = _delta(state, ir, caches)
        if output is not None:
            return output
    output = render_pubsub(ir, project=project, caches=caches)
    caches.assembled[_STAGE] = _assembled(ir.routes, project, output)
    return output


def _assembled(routes: tuple[RouteIR, ...], project: str, output: PubSubOutput) -> _Assembled | None:
    plan_keys = [(plan.route, plan.topic) for plan in output.plans]
    # Every plan makes two topics and two subscriptions: fewer means two Routes share a name, and
    # the full render decides which wins; rows keyed by name cannot, so no delta from this pass.
    if len(set(plan_keys)) != len(plan_keys) or not (
        len(output.topics) == len(output.subscriptions) == 2 * len(plan_keys)
    ):
        return None
    return _Assembled(
        routes,
        project,
        output,
        SortedRows([(document["name"], document) for document in output.topics]),
        SortedRows([(document["name"], document) for document in output.subscriptions]),
        SortedRows(list(zip(plan_keys, output.plans, strict=True))),
    )


def _delta(state: _Assembled, ir: IR, caches: Caches) -> PubSubOutput | None:
    changes = async_route_changes(state.routes, ir.routes)
    if changes is None:
        return None
    caches.pubsub_routes.carry()
    if not changes:
        state.routes = ir.routes
        return state.output
    topics, subscriptions, plans = state.topics.copy(), state.subscriptions.copy(), state.plans.copy()
    project = state.project
    for before, _ in changes:
        if before.mode == "async":
            old_plans, old_topics, old_subscriptions = cached_route_documents(before, project, caches)
            caches.pubsub_routes.forget(before)
            for document in old_topics:
                topics.remove(document["name"])
            for document in old_subscriptions:
                subscriptions.remove(document["name"])
            for plan in old_plans:
                plans.remove((plan.route, plan.topic))
    for _, after in changes:
        if after.mode != "async":
            continue
        new_plans, new_topics, new_subscriptions = cached_route_documents(after, project, caches)
        inserted = all(topics.insert(d["name"], d) for d in new_topics)
        inserted = inserted and all(subscriptions.insert(d["name"], d) for d in new_subscriptions)
        inserted = inserted and all(plans.insert((p.route, p.topic), p) for p in new_plans)
        if not inserted:
            return None  # a name another Route has too: the full render decides which wins
    output = PubSubOutput(
        project=project, plans=plans.values(), topics=topics.values(), subscriptions=subscriptions.values()
    )
    caches.assembled[_STAGE] = _Assembled(ir.routes, project, output, topics, subscriptions, plans)
    return output
