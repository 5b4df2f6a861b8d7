"""Status summaries: the one module that decides what each object's status says beyond its conditions.

Users look for these fields (``kubectl get -o yaml``, printer columns): a
Product's plans, Routes, topics and rule-set version; a Route's policy
artifact, canary weight, topics, subscriptions and worker Deployments; a
PolicyBundle's artifact and served versions. They are written in three
stages, each by a function here:

* translation (``translation.policybundles``, ``.products``, ``.routes``)
  builds the summaries that depend on the models and the IR only;
* the pure pipeline (``apx.controllers.pipeline``) adds what the renderers
  produced (``add_output_summaries``);
* the operator overlays what only it knows: a dependency that failed this
  pass, worker availability, deletion waiting on users (``with_problem``,
  ``with_workers``, ``with_in_use``).

Pure: no clock, no I/O; every function either builds a new summary or
``ResourceStatus``, or (the ``add_*`` / ``count_*`` ones) fills the summaries
of statuses the caller owns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ..ir import IR, RouteIR
from ..models.resources import Product
from ..policy_artifacts import CompiledPolicy, ServedPolicies
from ..status import ResourceStatus

# Summary keys the operator writes; a key missing from a new status is sent as
# null so a merge-patch removes it (e.g. topics of a Route that became sync).
SUMMARY_KEYS = (
    "ruleSetVersion",
    "topics",
    "subscriptions",
    "deployments",
    "routes",
    "plans",
    "policyArtifact",
    "canaryWeight",
    "canaryPolicyArtifact",
    "artifact",
    "servedVersions",
    "inUseBy",
    "workers",
)

PRODUCT_READY_MESSAGE = "rules and topics are up to date"

StatusKey = tuple[str, str]


# --- translation -------------------------------------------------------------------


def served_versions_text(served: ServedPolicies) -> str:
    """``2.0.0 (N), 1.4.0 (N-1)``: how messages name what a PolicyBundle serves."""
    return ", ".join(f"{c.version} ({'N' if c is served.current else 'N-1'})" for c in served.versions)


def policy_bundle_summary(
    served: ServedPolicies, kept: Sequence[tuple[CompiledPolicy, list[str]]]
) -> dict[str, Any]:
    """A PolicyBundle's current artifact and every served version, pinned ones with their Routes."""
    served_versions: list[dict[str, Any]] = [
        c.served_version().model_dump(by_alias=True, exclude_none=True) for c in served.versions
    ]
    for compiled, pinned_by in kept:
        entry = compiled.served_version().model_dump(by_alias=True, exclude_none=True)
        served_versions.append({**entry, "pinnedBy": pinned_by})
    return {"artifact": served.current.artifact, "servedVersions": served_versions}


def product_summary(product: Product) -> dict[str, Any]:
    """What a Product's status says before rendering: its plans (``routes`` is counted later)."""
    return {"plans": [p.name for p in product.spec.plans]}


def count_routes(
    statuses: Mapping[StatusKey, ResourceStatus],
    product_keys: Iterable[str],
    routes_by_product: Mapping[str, Sequence[RouteIR]],
) -> None:
    """Each translated Product's status counts the Routes that serve through it."""
    for key in product_keys:
        statuses[("Product", key)].summary["routes"] = len(routes_by_product.get(key, ()))


def route_message(route: RouteIR) -> str:
    """A Ready Route's message: mode, hosts, policy version and canary progress."""
    policy = route.stable.policy
    hosts = ", ".join(route.match.hosts)
    text = f"{route.mode} route on {hosts} with policy {policy.bundle.name}@{policy.version}"
    if route.canary is not None and route.canary_state is not None:
        text += f"; canary {route.canary_state.phase} at {route.canary.weight}%"
    return text


def route_summary(route: RouteIR) -> dict[str, Any]:
    """A Ready Route's summary before rendering: policy artifacts and canary weight."""
    summary: dict[str, Any] = {
        "policyArtifact": route.stable.policy.artifact,
        "canaryWeight": route.canary.weight if route.canary is not None else 0,
    }
    # ``status.canary`` belongs to the canary controller (``apx.operator.canary``),
    # its only writer: translation reads it and never writes it back, so a pass
    # that started before a controller decision cannot revert it.
    if route.canary is not None and route.canary.policy is not route.stable.policy:
        summary["canaryPolicyArtifact"] = route.canary.policy.artifact
    return summary


# --- rendering (the pipeline) ---------------------------------------------------------


class AsyncRouteOutputs(NamedTuple):
    """What the renderers made for one async Route, as its status names them."""

    topics: list[str]
    subscriptions: list[str]
    deployments: list[str]


def add_output_summaries(
    statuses: Mapping[StatusKey, ResourceStatus],
    ir: IR,
    rule_set_version: Callable[[str], str],
    async_outputs: Callable[[RouteIR], AsyncRouteOutputs],
) -> None:
    """Add the rendered names to the statuses of every translated Product and Route.

    ``rule_set_version`` gives a Product's Redis rule-set version by Product
    key; ``async_outputs`` the topics, subscriptions and worker Deployments of
    an async Route (the pipeline reuses what the renderers cached).
    """
    topics_by_product: dict[str, list[str]] = {}
    for route in ir.routes:
        # The rule-set version lives on the Product only: a limit change would
        # otherwise rewrite the status of every Route of the product.
        if route.mode != "async":
            continue
        outputs = async_outputs(route)
        add_route_outputs(statuses[("Route", route.key)].summary, outputs)
        topics_by_product.setdefault(route.product.key, []).extend(outputs.topics)
    for product in ir.products:
        add_product_outputs(
            statuses[("Product", product.key)].summary,
            rule_set_version(product.key),
            topics_by_product.get(product.key, []),
            len(ir.routes_by_product.get(product.key, ())),
        )


def add_route_outputs(summary: dict[str, Any], outputs: AsyncRouteOutputs) -> None:
    """One async Route's part of ``add_output_summaries`` (the pipeline's delta calls it alone)."""
    summary["topics"] = outputs.topics
    summary["subscriptions"] = outputs.subscriptions
    summary["deployments"] = outputs.deployments


def add_product_outputs(
    summary: dict[str, Any], rule_set_version: str, topics: list[str], routes: int
) -> None:
    """One Product's part of ``add_output_summaries``: ``topics`` are its async Routes', in any order."""
    summary["ruleSetVersion"] = rule_set_version
    summary["topics"] = sorted(topics)
    summary["routes"] = routes


# --- the operator's overlays ------------------------------------------------------------


def with_problem(status: ResourceStatus, stalled: bool, reason: str, message: str) -> ResourceStatus:
    """A status whose object translated but whose target failed this pass (Redis, Pub/Sub, Kubernetes).

    The caller applies it only to statuses that are not already stalled; the
    summary is kept, since what it names is still what is meant to be served.
    """
    return ResourceStatus(
        status.kind,
        status.key,
        status.generation,
        "Stalled" if stalled else "Reconciling",
        reason,
        message,
        status.summary,
    )


def with_workers(status: ResourceStatus, workers: dict[str, Any], waiting: str | None) -> ResourceStatus:
    """An async Route's status with ``workers``; not Ready while a worker Deployment has none available."""
    summary = {**status.summary, "workers": workers} if workers else dict(status.summary)
    if waiting is not None and status.phase == "Ready":
        return ResourceStatus(
            status.kind, status.key, status.generation, "Reconciling", "WorkersUnavailable", waiting, summary
        )
    return ResourceStatus(
        status.kind, status.key, status.generation, status.phase, status.reason, status.message, summary
    )


def with_in_use(status: ResourceStatus, users: list[str] | None) -> ResourceStatus:
    """A Product or PolicyBundle being deleted while Routes use it: still Ready, and names them.

    Only a Ready status changes (an object that is not Ready says why first).
    """
    if not users or status.phase != "Ready":
        return status
    return ResourceStatus(
        status.kind,
        status.key,
        status.generation,
        "Ready",
        "InUse",
        f"being deleted, still serving: in use by Route {', '.join(users)}",
        {**status.summary, "inUseBy": users},
    )
