"""Where a Route's canary metrics are: the ``RouteTarget`` a metrics provider queries.

Called by the operator's canary loop (``apx.operator.canary``) for each Route
it checks, and by tests and benchmarks. Pure.

An async Route is measured by its workers, whose metrics carry ``route``
(``<namespace>/<name>``) and ``track`` labels. A sync Route is measured by
Envoy per cluster: its canary tracks go through their own clusters
(``apx.controllers.renderers.envoy.track_clusters``) whose stat names
(``names.track_stat_name``) are what the sync queries select on.
"""

from __future__ import annotations

from .. import names
from ..ir import RouteIR
from ..models.route import RouteSpec
from .types import TRACKS, RouteTarget


def target_for(route: RouteIR) -> RouteTarget:
    """The provider's view of a resolved Route: key, mode and, for sync Routes, each track's stat name."""
    return _target(route.ref.namespace, route.ref.name, route.mode)


def target_for_spec(namespace: str, name: str, spec: RouteSpec) -> RouteTarget:
    """The same from a Route's parsed spec (what the canary loop holds; no translation needed)."""
    return _target(namespace, name, spec.mode)


def _target(namespace: str, name: str, mode: str) -> RouteTarget:
    if mode == "async":
        return RouteTarget(namespace=namespace, name=name, mode="async")
    if mode != "sync":
        raise ValueError(f"Route {namespace}/{name}: unknown mode {mode!r}")
    clusters = tuple((track, names.track_stat_name(namespace, name, track)) for track in TRACKS)
    return RouteTarget(namespace=namespace, name=name, mode="sync", clusters=clusters)
