"""Render the Kubernetes manifests APX owns: workers, their Services and ConfigMaps.

Pure. Called through ``apx.controllers.renderers.registry`` (golden files,
``apx translate``) and by the Kubernetes applier, which server-side-applies
each manifest. One feature per module:

* ``workers``: worker Deployments of async Routes (stable, canary, dedicated pools);
* ``services``: a metrics Service per worker Deployment;
* ``envoy_snapshot``: the Envoy snapshot ConfigMaps (index and parts) in the operator namespace;
* ``policy_artifacts``: one immutable ConfigMap per served PolicyBundle version.

Manifests come out sorted by (namespace, kind, name). Validation against the
Kubernetes schemas happens in tests, not here: rendering stays cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ...ir import IR, RouteIR
from ...memo import Caches
from .common import sort_key
from .envoy_snapshot import render_envoy_snapshot
from .policy_artifacts import ArtifactMismatch, render_policy_artifacts
from .services import render_services
from .workers import WorkerPool, deployments_for_route, render_deployment, worker_pools

DEFAULT_OPERATOR_NAMESPACE = "apx-system"


class ManifestConflict(ValueError):
    """Two rendered objects would have the same kind, namespace and name.

    ``sources`` names the Routes (``namespace/name``) the two objects were
    rendered for, so the pipeline can blame one of them instead of failing
    the whole render.
    """

    def __init__(self, message: str, sources: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.sources = sources


@dataclass(frozen=True, slots=True)
class KubernetesOutput:
    """Every manifest, sorted by (namespace, kind, name)."""

    manifests: tuple[dict[str, Any], ...]

    def to_json(self) -> list[dict[str, Any]]:
        return list(self.manifests)


def route_manifests(route: RouteIR) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One Route's worker Deployments and their Services (none for a sync Route)."""
    pools = worker_pools(route)
    return [render_deployment(pool) for pool in pools], render_services(pools)


def render_kubernetes(
    ir: IR,
    envoy_snapshot: dict[str, Any] | None,
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE,
    caches: Caches | None = None,
) -> KubernetesOutput:
    """Manifests for the IR's async Routes and PolicyBundles, plus the Envoy snapshot ConfigMap.

    Raises ``ManifestConflict`` when two objects would share a name (their
    applies would overwrite each other) rather than render either silently.
    With ``caches``, a Route's manifests are rendered again only when its
    RouteIR is another object than last time (the manifests are the very
    same dicts otherwise, which lets the applier skip them by identity).
    """
    deployments: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for route in sorted(ir.routes, key=lambda r: r.key):
        if route.mode != "async":
            continue
        if caches is None:
            route_deployments, route_services = route_manifests(route)
        else:
            route_deployments, route_services = caches.kubernetes_routes.get(
                route, functools.partial(route_manifests, route)
            )
        deployments += route_deployments
        services += route_services
    manifests = deployments + services
    if envoy_snapshot is not None:  # None: the caller writes the snapshot ConfigMaps on its own schedule
        manifests += render_envoy_snapshot(envoy_snapshot, operator_namespace)
    manifests += render_policy_artifacts(ir.policies, caches)
    seen: dict[tuple[str, str, str], str] = {}
    for manifest in manifests:
        identity = sort_key(manifest)
        source = manifest["metadata"].get("annotations", {}).get("apx.dev/route-key", "")
        if identity in seen:
            raise ManifestConflict(
                f"{identity[1]} {identity[0]}/{identity[2]} would be rendered twice "
                f"(for {seen[identity] or 'another object'} and {source or 'another object'})",
                tuple(s for s in (seen[identity], source) if s),
            )
        seen[identity] = source
    return KubernetesOutput(manifests=tuple(sorted(manifests, key=sort_key)))


__all__ = [
    "DEFAULT_OPERATOR_NAMESPACE",
    "ArtifactMismatch",
    "KubernetesOutput",
    "ManifestConflict",
    "WorkerPool",
    "deployments_for_route",
    "render_kubernetes",
    "worker_pools",
]
