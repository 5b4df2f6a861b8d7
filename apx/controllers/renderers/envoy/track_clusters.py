"""Per-track clusters of sync canary Routes, so Envoy's stats tell the two tracks apart.

Called by ``clusters.build_clusters`` (the clusters) and by ``canary.py`` (the
names its ``weighted_clusters`` entries point at). Pure.

Envoy counts requests, response classes and latency per *cluster*. Both tracks
of a sync canary may name the same backend cluster (a policy-only canary), and
backend clusters are shared by every Route with that upstream, so those
stats cannot say which Route or track a request took. Each sync Route with a
canary therefore gets one cluster per track:

* named ``names.track_cluster(namespace, route, track)``;
* a copy of the track's backend cluster (same endpoints, DNS type, TLS
  transport socket and HTTP protocol options), so traffic goes exactly where
  it went before;
* with ``alt_stat_name`` = ``names.track_stat_name(…)``, ``<ns>_<route>_<track>``:
  Envoy's Prometheus output cuts ``envoy_cluster_name`` at the first dot of
  the stat name, so the stat name must never hold one, and a name made only
  of ``[a-z0-9_-]`` is a plain label value whatever the cluster naming
  becomes. The canary analysis' sync queries select on it (``$cluster`` in
  ``apx.controllers.providers.queries``).

The clusters exist as long as the Route has a canary block, whatever its phase
(the weights change, the clusters do not), so a step change touches only the
RouteConfiguration. Routes without a canary and async Routes (both tracks go
to the async gateway; their workers report per-track metrics themselves) get
none: a 10,000-Route snapshot without canaries renders as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ... import names
from ...ir import RouteIR, TrackIR


def has_track_clusters(route: RouteIR) -> bool:
    """True for a sync Route with a canary block: its tracks go through their own clusters."""
    return route.mode == "sync" and route.canary is not None


def track_cluster_name(route: RouteIR, track: TrackIR) -> str:
    """The cluster a weighted-cluster entry of a sync canary Route points at."""
    return names.track_cluster(route.ref.namespace, route.ref.name, track.name)


def build_track_clusters(routes: Iterable[RouteIR], backend_clusters: Mapping[str, Any]) -> dict[str, Any]:
    """Cluster name → cluster, one per track of every sync canary Route in ``routes``.

    ``backend_clusters`` holds the backend clusters already built (by backend
    cluster name); each track cluster is a copy of its track's.
    """
    built: dict[str, Any] = {}
    for route in routes:
        if not has_track_clusters(route):
            continue
        for track in route.tracks:
            name = track_cluster_name(route, track)
            cluster = type(backend_clusters[track.backend.cluster])()
            cluster.CopyFrom(backend_clusters[track.backend.cluster])
            cluster.name = name
            cluster.load_assignment.cluster_name = name
            cluster.alt_stat_name = names.track_stat_name(route.ref.namespace, route.ref.name, track.name)
            built[name] = cluster
    return built
