"""Canary routes: ``weighted_clusters`` splitting a route between its stable and canary tracks.

Called by ``route_config`` for every route that has a canary track. Pure.

* Two ``ClusterWeight``s, stable first, with the IR's weights (they sum to 100;
  the canary weight may be 0 — pending or rolled back — or 100 — promoted).
  A sync route's entries point at its per-track clusters
  (``track_clusters.py``: copies of the backends' clusters with their own
  stat names, so the canary analysis can tell the tracks apart even when
  both use one backend, as a policy-only canary does); an async route's
  both go to the async gateway.
* Each ClusterWeight carries its own ``x-apx-track`` and
  ``x-apx-policy-version`` and its policy's header transforms, so upstreams
  (and the async gateway, which picks the track's topic from ``x-apx-track``)
  see the track that was actually chosen.
* When the tracks' policies differ, each ClusterWeight also carries its own
  ``typed_per_filter_config`` for CORS, RBAC and both rate-limit instances
  (neutral configs where a policy has none), which override the route level.
  jwt_authn stays at route level with a requirement accepting either track's
  provider (see ``jwt.py`` for why).
* Tenant stickiness (``stickiness.by: tenant``): a ``hash_policy`` on
  ``x-apx-tenant`` and ``use_hash_policy: true``, so Envoy picks the cluster
  from the tenant's hash instead of a random number. The header is set only
  by jwt_authn from the verified token (client copies are deleted by the
  listener), and jwt_authn clears the route cache after setting it, so the
  choice is re-made with the tenant. Envoy walks the clusters in order with
  ``hash % 100``: stable takes ``[0, stable)``, canary ``[stable, 100)``, so as
  the canary weight grows, tenants already on the canary stay there. Callers
  without a verified tenant (API key, anonymous) are split per request.
* URL backends get ``host_rewrite_literal`` per ClusterWeight. A path rewrite
  is route-wide in Envoy (``prefix_rewrite``), so two URL backends with
  different paths cannot be split; that route is reported in ``errors``.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2 as route_pb

from ... import names
from ...ir import RouteIR, TrackIR
from .common import JWT_FILTER, TRUE, uint32
from .context import RenderContext
from .headers import product_header
from .track_clusters import track_cluster_name

TENANT_HASH_POLICY = route_pb.RouteAction.HashPolicy(
    header=route_pb.RouteAction.HashPolicy.Header(header_name=names.TENANT_HEADER)
)


def host_rewrite(track: TrackIR) -> str | None:
    """Host header an upstream URL backend expects, or None for Services."""
    backend = track.backend
    if backend.kind != "url":
        return None
    default_port = 443 if backend.tls else 80
    return backend.host if backend.port == default_port else f"{backend.host}:{backend.port}"


def weighted_route_kwargs(route: RouteIR, ctx: RenderContext, action: dict[str, Any]) -> dict[str, Any]:
    """Route fields (except name and match) of a canary route.

    ``action`` holds the track-independent ``RouteAction`` fields (timeout,
    retries, path rewrite) computed by ``route_config``.
    """
    assert route.canary is not None
    tracks = route.tracks
    product = route.product
    policies_differ = route.stable.policy.key != route.canary.policy.key
    is_async = route.mode == "async"
    per_track: list[dict[str, Any]] = []
    if policies_differ:
        per_track = [ctx.track_filter_configs(t.policy, product, per_cluster=True) for t in tracks]
        # A filter neither track configures needs no neutral override either.
        neutral = (ctx.cors.neutral, ctx.authz.neutral, ctx.ratelimits.neutral)
        needed = {n for c in per_track for n, v in c.items() if all(v is not x for x in neutral)}
        per_track = [{n: v for n, v in c.items() if n in needed} for c in per_track]
    clusters = []
    for index, track in enumerate(tracks):
        weight: dict[str, Any] = {
            "name": names.ASYNC_GATEWAY_CLUSTER if is_async else track_cluster_name(route, track),
            "weight": uint32(track.weight),
            **ctx.headers.track(track.name, track.policy).kwargs(),
        }
        rewrite = None if is_async else host_rewrite(track)
        if rewrite is not None:
            weight["host_rewrite_literal"] = rewrite
        if per_track:
            weight["typed_per_filter_config"] = per_track[index]
        clusters.append(route_pb.WeightedCluster.ClusterWeight(**weight))
    sticky = route.canary_state is not None and route.canary_state.sticky_by_tenant
    weighted: dict[str, Any] = {"clusters": clusters}
    route_action = dict(action)
    if sticky:
        weighted["use_hash_policy"] = TRUE
        route_action["hash_policy"] = [TENANT_HASH_POLICY]
    route_action["weighted_clusters"] = route_pb.WeightedCluster(**weighted)
    per_filter = {JWT_FILTER: ctx.jwt.per_route([t.policy for t in tracks])}
    if not policies_differ:
        per_filter.update(ctx.track_filter_configs(route.stable.policy, product, per_cluster=False))
    return {
        "route": route_pb.RouteAction(**route_action),
        "typed_per_filter_config": per_filter,
        "request_headers_to_add": [product_header(product)],
    }
