"""Envoy canaries: weighted clusters, per-track headers and configs, tenant-sticky hashing."""

from __future__ import annotations

from typing import Any

import pytest

from apx.controllers import names
from apx.controllers.renderers.envoy.common import JWT_FILTER, RATELIMIT_FAIL_CLOSED_FILTER, RBAC_FILTER
from tests.envoy_helpers import find_route, policy, product, render, route


def _canary_route(weight: int, phase: str = "Progressing", **canary: Any) -> dict[str, Any]:
    block = {"backend": {"service": {"name": "checkout-v2", "port": 8080}}, **canary}
    return route("checkout", canary=block, status={"canary": {"phase": phase, "step": 1, "weight": weight}})


def _clusters(entry: Any) -> list[Any]:
    assert entry.route.HasField("weighted_clusters")
    return list(entry.route.weighted_clusters.clusters)


def _headers(cluster: Any) -> dict[str, str]:
    return {h.header.key: h.header.value for h in cluster.request_headers_to_add}


def test_canary_at_25_percent_splits_75_25_stable_first() -> None:
    entry = find_route(render(product(), policy(), _canary_route(25)), "default/checkout")
    clusters = _clusters(entry)
    # Each track goes through its own cluster (a copy of its backend's; see test_envoy_track_clusters).
    assert [(c.name, c.weight.value) for c in clusters] == [
        (names.track_cluster("default", "checkout", "stable"), 75),
        (names.track_cluster("default", "checkout", "canary"), 25),
    ]
    assert sum(c.weight.value for c in clusters) == 100


@pytest.mark.parametrize(
    ("phase", "weight", "expected"), [("Pending", 0, (100, 0)), ("Promoted", 100, (0, 100))]
)
def test_canary_weight_may_be_0_or_100(phase: str, weight: int, expected: tuple[int, int]) -> None:
    entry = find_route(render(product(), policy(), _canary_route(weight, phase)), "default/checkout")
    assert tuple(c.weight.value for c in _clusters(entry)) == expected


def test_each_weighted_cluster_names_its_track_and_policy_version() -> None:
    documents = [product(), policy(), policy(version="1.1.0"), _canary_route(10, policyVersion="1.1.0")]
    stable, canary = _clusters(find_route(render(*documents), "default/checkout"))
    assert _headers(stable)[names.TRACK_HEADER] == "stable"
    assert _headers(stable)[names.POLICY_VERSION_HEADER] == "1.0.0"
    assert _headers(canary)[names.TRACK_HEADER] == "canary"
    assert _headers(canary)[names.POLICY_VERSION_HEADER] == "1.1.0"


def test_tenant_sticky_canary_hashes_on_the_verified_tenant_header() -> None:
    entry = find_route(render(product(), policy(), _canary_route(25)), "default/checkout")
    assert entry.route.weighted_clusters.use_hash_policy.value is True
    (hash_policy,) = entry.route.hash_policy
    assert hash_policy.header.header_name == names.TENANT_HEADER


def test_non_sticky_canary_has_no_hash_policy() -> None:
    entry = find_route(
        render(product(), policy(), _canary_route(25, stickiness={"by": "none"})), "default/checkout"
    )
    assert not entry.route.weighted_clusters.HasField("use_hash_policy")
    assert len(entry.route.hash_policy) == 0


def test_policy_only_canary_gives_each_track_its_own_cluster_and_configs() -> None:
    canary_policy = policy(
        version="1.1.0",
        authz={"defaultAction": "deny", "rules": [{"name": "r", "paths": ["/"]}]},
        rateLimit={"failureMode": "closed"},
    )
    documents = [
        product(),
        policy(),
        canary_policy,
        route(
            "checkout",
            canary={"policyVersion": "1.1.0"},
            status={"canary": {"phase": "Progressing", "weight": 50}},
        ),
    ]
    output = render(*documents)
    entry = find_route(output, "default/checkout")
    stable, canary = _clusters(entry)
    # One backend, two clusters: Envoy's per-cluster stats tell the tracks apart.
    assert (stable.name, canary.name) == (
        names.track_cluster("default", "checkout", "stable"),
        names.track_cluster("default", "checkout", "canary"),
    )
    by_name = {c.name: c for c in output.clusters}
    backend = names.service_cluster("default", "checkout", 8080)
    for track in (stable, canary):
        endpoint = by_name[track.name].load_assignment.endpoints[0].lb_endpoints[0].endpoint
        assert (
            endpoint.address == by_name[backend].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
        )
    # Policies differ: each cluster overrides RBAC and both rate-limit instances;
    # jwt_authn stays on the route (the tracks share one provider).
    assert RBAC_FILTER in canary.typed_per_filter_config
    assert RATELIMIT_FAIL_CLOSED_FILTER in stable.typed_per_filter_config  # neutral: silences fail-closed
    assert set(entry.typed_per_filter_config) == {JWT_FILTER}


def test_async_canary_sends_both_tracks_to_the_gateway() -> None:
    async_route = route(
        "jobs",
        mode="async",
        worker={"image": "registry.example.com/w:1"},
        canary={"worker": {"image": "registry.example.com/w:2"}},
        status={"canary": {"phase": "Progressing", "weight": 10}},
    )
    entry = find_route(render(product(), policy(), async_route), "default/jobs")
    clusters = _clusters(entry)
    assert [c.name for c in clusters] == [names.ASYNC_GATEWAY_CLUSTER] * 2
    assert [_headers(c)[names.TRACK_HEADER] for c in clusters] == ["stable", "canary"]
