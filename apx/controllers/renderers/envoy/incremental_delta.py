"""The Envoy render of a pass in which a few Routes changed: last render's assembly, updated.

Called by ``render_envoy`` (with the operator's ``Caches``) before the
incremental render (``incremental.py``), which it falls back to when it
returns ``None``. The output equals the from-scratch render
(``tests/unit/test_incremental.py``). It applies while the render context is
the one last render used (same policies, products and settings) and only a
few Routes are other objects (``delta.route_changes``). Then, instead of
every Route:

* the changed Routes leave and re-enter the order (``route_config.order``) and
  their hosts' Route lists, and are planned again;
* only the virtual hosts of their old and new hosts are assembled again; the
  RouteConfiguration is the concatenation of the kept ones';
* the listener is built again only when a changed Route has a canary (the JWT
  requirements), and the clusters only when a changed Route's clusters may
  differ (its backends, its rendering, a sync canary's track clusters).

What stays O(Routes), in bytes and in calls run in C, not in Python work:
joining the RouteConfiguration (which is parsed only when read,
``on_demand.ParsedOnUse``) and the kept rows into the encodings
(``incremental.encodings``). The version hashes the changed virtual hosts and
one digest per other resource (``incremental.version_of``). Pure.
"""

from __future__ import annotations

import bisect

from envoy.config.route.v3 import route_pb2

from ...delta import route_changes
from ...ir import IR, BackendIR, RouteIR
from ...memo import Caches
from .clusters import refused_cluster_names, route_refusals
from .common import EnvoySettings
from .incremental import (
    STAGE,
    Assembled,
    Rendered,
    _listener,
    _plan,
    _state,
    all_clusters,
    cluster_digests,
    cluster_messages,
    digest,
    encodings,
    host_row,
)
from .on_demand import ParsedOnUse
from .route_config import order
from .track_clusters import has_track_clusters


def render_delta(ir: IR, port: int, settings: EnvoySettings, caches: Caches) -> Rendered | None:
    """Listener, RouteConfiguration, clusters, errors and encodings, or ``None`` (see module doc)."""
    kept = caches.assembled.get(STAGE)
    if not isinstance(kept, Assembled):
        return None
    state = _state(ir, port, settings, caches)
    if state is not kept.state:
        return None
    changes = route_changes(kept.routes, ir.routes)
    if changes is None:
        return None
    for memo in (caches.envoy_routes, caches.envoy_hosts, caches.envoy_clusters):
        memo.carry()
    ordered = kept.ordered.copy()
    plans = dict(kept.plans)
    plan_errors = dict(kept.plan_errors)
    by_host = dict(kept.by_host)
    hosts: set[str] = set()
    new_listener = new_clusters = False
    for before, after in changes:
        ordered.remove(order(before))
        ordered.insert(order(after), after)
        caches.envoy_routes.forget(before)
        planned = _plan(after, state, caches)
        plans[after.key] = planned
        plan_errors.pop(after.key, None)
        if isinstance(planned, str):
            plan_errors[after.key] = planned
        was_rendered = not isinstance(kept.plans[before.key], str)
        new_listener = new_listener or before.canary is not None or after.canary is not None
        old_clusters = _clusters_of(before, was_rendered)
        new_clusters_of = _clusters_of(after, not isinstance(planned, str))
        new_clusters = new_clusters or old_clusters is None or old_clusters != new_clusters_of
        for host in before.match.hosts:
            by_host[host] = [route for route in by_host.get(host, ()) if route is not before]
        for host in after.match.hosts:
            routes = list(by_host.get(host, ()))
            position = bisect.bisect_right([order(route) for route in routes], order(after))
            routes.insert(position, after)
            by_host[host] = routes
        hosts.update(before.match.hosts, after.match.hosts)
    rows = kept.hosts.copy()
    for host in hosts:
        routes = by_host.get(host) or []
        if not routes:
            by_host.pop(host, None)
            rows.remove(host)
            continue
        row = host_row(host, routes, plans, caches)
        if row is None:
            rows.remove(host)
        elif not rows.replace(host, row):
            rows.insert(host, row)
    rendered: list[RouteIR] | None = None
    listener, listener_digest = kept.listener, kept.listener_digest
    if new_listener:
        rendered = [route for route in ordered.values() if route.key not in plan_errors]
        listener = _listener(rendered, state)
        if listener is not kept.listener:
            listener_digest = digest(listener[1])
    clusters, refused, digests = kept.clusters, kept.refused, kept.cluster_digests
    if new_listener or new_clusters:
        rendered = rendered or [route for route in ordered.values() if route.key not in plan_errors]
        clusters = all_clusters(rendered, state, caches, listener[2])
        refused = refused_cluster_names((name, encoded) for name, _, encoded in clusters)
        digests = cluster_digests(clusters)
    errors = dict(plan_errors)
    if refused:
        rendered = rendered or [route for route in ordered.values() if route.key not in plan_errors]
        errors.update(route_refusals(rendered, refused))
    assembled = Assembled(
        ir.routes, state, ordered, plans, by_host, rows, plan_errors, listener, clusters, refused, kept.head,
        listener_digest, digests,
    )  # fmt: skip
    caches.assembled[STAGE] = assembled
    config_bytes, encoded_all = encodings(assembled)
    route_configurations = ParsedOnUse(route_pb2.RouteConfiguration.FromString, config_bytes)
    return listener[0], route_configurations, cluster_messages(clusters), errors, encoded_all


def _clusters_of(route: RouteIR, rendered: bool) -> tuple[BackendIR, ...] | None:
    # Two backends with one cluster name build the same cluster (the name holds what it is built
    # from), so which Route comes first does not matter: only which backends are used.
    """What a Route adds to the clusters; ``None`` when that is more than its backends (track clusters)."""
    if not rendered or route.mode == "async":
        return ()
    if has_track_clusters(route):
        return None
    return tuple(track.backend for track in route.tracks)
