"""The Kubernetes manifests of a pass, updated from last pass's for the few Routes that changed.

Called by the pure pipeline (``apx.controllers.pipeline``) when it has the
operator's ``Caches`` and writes the Envoy snapshot ConfigMaps on their own
schedule (``envoy_snapshot=None``, as the operator does); the output equals
``render_kubernetes`` of the same IR (``tests/unit/test_incremental.py``).
Last pass's Routes, policies and manifests sorted by (namespace, kind, name)
stay in ``caches.assembled``: while the policies are the same objects and
only a few Routes are other objects (``delta.route_changes``), a changed async
Route's Deployments and Services are removed and its new ones inserted; a
name that is already taken falls back to the full render, which raises the
``ManifestConflict``. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...delta import SortedRows, async_route_changes
from ...ir import IR, PolicyIR, RouteIR
from ...memo import Caches, same
from . import KubernetesOutput, render_kubernetes, route_manifests
from .common import sort_key

_STAGE = "kubernetes"


@dataclass(slots=True)
class _Assembled:
    routes: tuple[RouteIR, ...]
    policies: tuple[PolicyIR, ...]
    namespace: str
    output: KubernetesOutput
    rows: SortedRows[dict[str, Any]]


def render_kubernetes_cached(ir: IR, operator_namespace: str, caches: Caches) -> KubernetesOutput:
    """``render_kubernetes(ir, None, operator_namespace, caches)``, from last pass's when few changed."""
    state = caches.assembled.get(_STAGE)
    if (
        isinstance(state, _Assembled)
        and state.namespace == operator_namespace
        and same(state.policies, ir.policies)
    ):
        output = _delta(state, ir, caches)
        if output is not None:
            return output
    caches.assembled.pop(_STAGE, None)  # a conflict raised below must not leave the old state behind
    output = render_kubernetes(ir, None, operator_namespace, caches)
    rows = SortedRows([(sort_key(manifest), manifest) for manifest in output.manifests])
    caches.assembled[_STAGE] = _Assembled(ir.routes, ir.policies, operator_namespace, output, rows)
    return output


def _manifests(route: RouteIR, caches: Caches) -> list[dict[str, Any]]:
    deployments, services = caches.kubernetes_routes.get(route, lambda: route_manifests(route))
    return [*deployments, *services]


def _delta(state: _Assembled, ir: IR, caches: Caches) -> KubernetesOutput | None:
    changes = async_route_changes(state.routes, ir.routes)
    if changes is None:
        return None
    caches.kubernetes_routes.carry()
    caches.kubernetes_policies.carry()
    if not changes:
        state.routes = ir.routes
        return state.output
    rows = state.rows.copy()
    for before, _ in changes:
        if before.mode == "async":
            for manifest in _manifests(before, caches):
                rows.remove(sort_key(manifest))
            caches.kubernetes_routes.forget(before)
    for _, after in changes:
        if after.mode == "async":
            for manifest in _manifests(after, caches):
                if not rows.insert(sort_key(manifest), manifest):
                    return None  # the full render names the conflict
    output = KubernetesOutput(manifests=rows.values())
    caches.assembled[_STAGE] = _Assembled(ir.routes, ir.policies, state.namespace, output, rows)
    return output
