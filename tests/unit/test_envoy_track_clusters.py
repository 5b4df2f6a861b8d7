"""Per-track Envoy clusters: only sync canary Routes get them, backend copies, stat names the queries use."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from apx.controllers import names
from apx.controllers.canary.targets import target_for
from apx.controllers.ir import RouteIR
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.translate import translate
from tests.envoy_helpers import find_route, policy, product, render, route

TRACK_PREFIX = "track/"


def _canary(name: str, weight: int = 10, **canary: Any) -> dict[str, Any]:
    block = {
        "backend": {"service": {"name": f"{name}-v2", "port": 8080}},
        "stickiness": {"by": "none"},
        **canary,
    }
    return route(name, canary=block, status={"canary": {"phase": "Progressing", "step": 0, "weight": weight}})


def _ir_route(documents: list[dict[str, Any]], key: str) -> RouteIR:
    result = translate(copy.deepcopy(documents))
    return next(r for r in result.ir.routes if r.key == key)


def _clusters(*documents: dict[str, Any]) -> dict[str, Any]:
    return {c.name: c for c in render(*documents).clusters}


def _weighted_names(entry: Any) -> list[str]:
    return [c.name for c in entry.route.weighted_clusters.clusters]


def test_sync_canary_route_gets_one_cluster_per_track_with_a_dot_free_stat_name() -> None:
    clusters = _clusters(product(), policy(), _canary("checkout"))
    tracks = {name: c for name, c in clusters.items() if name.startswith(TRACK_PREFIX)}
    assert sorted(tracks) == [
        names.track_cluster("default", "checkout", "canary"),
        names.track_cluster("default", "checkout", "stable"),
    ]
    for track in ("stable", "canary"):
        cluster = tracks[names.track_cluster("default", "checkout", track)]
        assert cluster.alt_stat_name == names.track_stat_name("default", "checkout", track)
        assert cluster.load_assignment.cluster_name == cluster.name
        # Envoy's Prometheus tag extraction stops at the first dot; ':' becomes '_' in stat names.
        assert "." not in cluster.alt_stat_name and ":" not in cluster.alt_stat_name


def test_weighted_entries_point_at_the_track_clusters_which_copy_their_backends() -> None:
    output = render(product(), policy(), _canary("checkout", weight=25))
    clusters = {c.name: c for c in output.clusters}
    entry = find_route(output, "default/checkout")
    assert _weighted_names(entry) == [
        names.track_cluster("default", "checkout", "stable"),
        names.track_cluster("default", "checkout", "canary"),
    ]
    for track, service in (("stable", "checkout"), ("canary", "checkout-v2")):
        copied = copy.deepcopy(clusters[names.track_cluster("default", "checkout", track)])
        backend = clusters[names.service_cluster("default", service, 8080)]
        copied.name = copied.load_assignment.cluster_name = backend.name
        copied.ClearField("alt_stat_name")
        assert copied == backend


def test_https_url_canary_track_clusters_keep_tls_dns_type_and_host_rewrite() -> None:
    documents = [
        product(),
        policy(),
        route(
            "fx",
            backend={"url": "https://fx.example.net/"},
            canary={"backend": {"url": "https://fx-next.example.net/"}, "stickiness": {"by": "none"}},
            status={"canary": {"phase": "Progressing", "weight": 50}},
        ),
    ]
    output = render(*documents)
    clusters = {c.name: c for c in output.clusters}
    canary = clusters[names.track_cluster("default", "fx", "canary")]
    backend = clusters[names.url_cluster("https", "fx-next.example.net", 443)]
    assert canary.type == backend.type
    assert canary.transport_socket == backend.transport_socket
    assert canary.typed_extension_protocol_options == backend.typed_extension_protocol_options
    rewrites = [
        c.host_rewrite_literal for c in find_route(output, "default/fx").route.weighted_clusters.clusters
    ]
    assert rewrites == ["fx.example.net", "fx-next.example.net"]


def test_policy_only_canary_gets_two_distinct_clusters_to_one_backend() -> None:
    documents = [
        product(),
        policy(),
        policy(version="1.1.0"),
        route(
            "refunds",
            canary={"policyVersion": "1.1.0"},
            status={"canary": {"phase": "Progressing", "weight": 5}},
        ),
    ]
    clusters = _clusters(*documents)
    stable = clusters[names.track_cluster("default", "refunds", "stable")]
    canary = clusters[names.track_cluster("default", "refunds", "canary")]
    assert stable.alt_stat_name != canary.alt_stat_name
    assert stable.load_assignment.endpoints == canary.load_assignment.endpoints


def test_routes_without_a_canary_and_async_canaries_get_no_track_clusters() -> None:
    async_canary = route(
        "jobs",
        mode="async",
        worker={"image": "registry.example.com/w:1"},
        canary={"worker": {"image": "registry.example.com/w:2"}},
        status={"canary": {"phase": "Progressing", "weight": 10}},
    )
    clusters = _clusters(product(), policy(), route("plain"), async_canary)
    assert not [name for name in clusters if name.startswith(TRACK_PREFIX)]


def test_a_canary_elsewhere_leaves_other_routes_and_their_clusters_byte_identical() -> None:
    plain = [product(), policy(), route("plain"), route("other")]
    without = render(*plain)
    with_canary = render(*plain, _canary("checkout"))
    for name in ("default/plain", "default/other"):
        assert find_route(without, name).SerializeToString(deterministic=True) == find_route(
            with_canary, name
        ).SerializeToString(deterministic=True)
    before = {c.name: c.SerializeToString(deterministic=True) for c in without.clusters}
    after = {c.name: c.SerializeToString(deterministic=True) for c in with_canary.clusters}
    assert {name: after[name] for name in before} == before


def test_a_weight_change_leaves_the_track_clusters_unchanged() -> None:
    at_10 = {c.name: c for c in render(product(), policy(), _canary("checkout", weight=10)).clusters}
    at_50 = {c.name: c for c in render(product(), policy(), _canary("checkout", weight=50)).clusters}
    assert at_10 == at_50


def test_every_cluster_a_canary_route_names_exists_and_the_snapshot_validates() -> None:
    documents = [
        product(),
        policy(),
        policy(version="1.1.0"),
        _canary("checkout"),
        route(
            "refunds",
            canary={"policyVersion": "1.1.0"},
            status={"canary": {"phase": "Promoted", "weight": 100}},
        ),
    ]
    output = render(*documents)
    cluster_names = {c.name for c in output.clusters}
    for key in ("default/checkout", "default/refunds"):
        assert set(_weighted_names(find_route(output, key))) <= cluster_names
    assert output.validate_resources() == []


def test_sync_target_names_the_stat_names_the_renderer_gives_the_track_clusters() -> None:
    documents = [product(), policy(), _canary("checkout")]
    target = target_for(_ir_route(documents, "default/checkout"))
    assert (target.mode, target.route) == ("sync", "default/checkout")
    clusters = {c.name: c for c in render_envoy(translate(copy.deepcopy(documents)).ir).clusters}
    for track in ("stable", "canary"):
        assert (
            target.cluster(track) == clusters[names.track_cluster("default", "checkout", track)].alt_stat_name
        )


def test_async_target_has_the_route_key_and_no_clusters() -> None:
    documents = [
        product(),
        policy(),
        route("jobs", mode="async", worker={"image": "registry.example.com/w:1"}),
    ]
    target = target_for(_ir_route(documents, "default/jobs"))
    assert (target.mode, target.route, target.clusters) == ("async", "default/jobs", ())


@pytest.mark.parametrize(
    ("namespace", "route_name"), [("default", "checkout"), ("team-a", "a-b"), ("team", "a-b-stable")]
)
def test_stat_names_are_distinct_per_route_and_track(namespace: str, route_name: str) -> None:
    stable = names.track_stat_name(namespace, route_name, "stable")
    canary = names.track_stat_name(namespace, route_name, "canary")
    assert stable != canary
    assert stable != names.track_stat_name(f"{namespace}-x", route_name, "stable")
    assert all(char.isalnum() or char in "-_" for char in stable + canary)


# A model of what Envoy's /stats/prometheus does with a cluster stat (Envoy's
# well-known tag extractors and Stats::Utility::sanitizeStatsName): ':' becomes
# '_', the cluster name is cut at the first dot, the response class is a tag.
_CLUSTER_NAME = re.compile(r"^cluster\.(([^.]+)\.).*")
_RESPONSE_CODE_CLASS = re.compile(r"_rq_(\d)xx$")


def _prometheus_series(stat: str) -> tuple[str, dict[str, str]]:
    name = stat.replace(":", "_")
    labels: dict[str, str] = {}
    if match := _RESPONSE_CODE_CLASS.search(name):
        labels["envoy_response_code_class"] = match.group(1)
        name = name[: match.start(1)] + name[match.end(1) :]
    if match := _CLUSTER_NAME.match(name):
        labels["envoy_cluster_name"] = match.group(2)
        name = name[: match.start(1)] + name[match.end(1) :]
    return "envoy_" + name.replace(".", "_"), labels


def test_envoys_prometheus_series_of_the_track_clusters_are_what_the_sync_queries_select() -> None:
    documents = [
        product(),
        policy(),
        route(
            "fx",
            backend={"url": "https://fx.example.net/"},
            canary={"backend": {"url": "https://fx-next.example.net/"}, "stickiness": {"by": "none"}},
            status={"canary": {"phase": "Progressing", "weight": 50}},
        ),
    ]
    clusters = {c.name: c for c in render(*documents).clusters}
    target = target_for(_ir_route(documents, "default/fx"))
    for track in ("stable", "canary"):
        stat_name = clusters[names.track_cluster("default", "fx", track)].alt_stat_name
        assert _prometheus_series(f"cluster.{stat_name}.upstream_rq_5xx") == (
            "envoy_cluster_upstream_rq_xx",
            {"envoy_cluster_name": target.cluster(track), "envoy_response_code_class": "5"},
        )
        assert _prometheus_series(f"cluster.{stat_name}.upstream_rq_total") == (
            "envoy_cluster_upstream_rq_total",
            {"envoy_cluster_name": target.cluster(track)},
        )
    # Without the stat name, both tracks' backend clusters would be cut at the host's first dot.
    backend = names.url_cluster("https", "fx.example.net", 443)
    assert _prometheus_series(f"cluster.{backend}.upstream_rq_total")[1] == {
        "envoy_cluster_name": "url/https/fx"
    }
