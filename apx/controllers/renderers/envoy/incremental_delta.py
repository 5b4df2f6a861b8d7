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

What stays O(Routes) in bytes, not in Python work: joining and hashing (the
version) the RouteConfiguration; it is parsed only when read
(``on_demand.ParsedOnUse``). Pure.
"""

from __future__ import annotations

import bisect

from envoy.config.route.v3 import route_pb2

from ...delta import route_changes
from ...ir import IR, BackendIR, RouteIR
from ...memo import Caches, same
from .clusters import refused_cluster_names, route_refusals
from .common import EnvoySettings
from .incremental import (
    STAGE,
    Assembled,
    Encoded,
    Rendered,
    _listener,
    _plan,
    _state,
    _tag,
    _virtual_host,
    all_clusters,
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
        inputs = tuple(routes)
        cached = caches.envoy_hosts.get(host)
        if cached is not None and same(cached[0], inputs):
            encoded: bytes = cached[1]
        else:
            encoded = _virtual_host(host, routes, plans)
            caches.envoy_hosts.put(host, (inputs, encoded))
        if not encoded:
            rows.remove(host)
        elif not rows.replace(host, (host, encoded, _tag(encoded))):
            rows.insert(host, (host, encoded, _tag(encoded)))
    virtual_hosts = rows.values()
    config_bytes = kept.head + b"".join(part for _, encoded, tag in virtual_hosts for part in (tag, encoded))
    route_configurations = ParsedOnUse(route_pb2.RouteConfiguration.FromString, (config_bytes,))
    rendered: list[RouteIR] | None = None
    listener = kept.listener
    if new_listener:
        rendered = [route for route in ordered.values() if route.key not in plan_errors]
        listener = _listener(rendered, state)
    clusters, refused = kept.clusters, kept.refused
    if new_listener or new_clusters:
        rendered = rendered or [route for route in ordered.values() if route.key not in plan_errors]
        clusters = all_clusters(rendered, state, caches, listener[2])
        refused = refused_cluster_names((name, encoded) for name, _, encoded in clusters)
    errors = dict(plan_errors)
    if refused:
        rendered = rendered or [route for route in ordered.values() if route.key not in plan_errors]
        errors.update(route_refusals(rendered, refused))
    encoded_all = Encoded(
        listeners=(listener[1],),
        route_configurations=(config_bytes,),
        clusters=tuple(encoded for _, _, encoded in clusters),
        virtual_hosts=tuple((host, encoded) for host, encoded, _ in virtual_hosts),
        route_head=kept.head,
    )
    caches.assembled[STAGE] = Assembled(
        ir.routes, state, ordered, plans, by_host, rows, plan_errors, listener, clusters, refused, kept.head
    )
    return listener[0], route_configurations, [cluster for _, cluster, _ in clusters], errors, encoded_all


def _clusters_of(route: RouteIR, rendered: bool) -> tuple[BackendIR, ...] | None:
    # Two backends with one cluster name build the same cluster (the name holds what it is built
    # from), so which Route comes first does not matter: only which backends are used.
    """What a Route adds to the clusters; ``None`` when that is more than its backends (track clusters)."""
    if not rendered or route.mode == "async":
        return ()
    if has_track_clusters(route):
        return None
    return tuple(track.backend for track in route.tracks)
