"""Route matching, placement and residency of the async gateway (pure), on entries the operator renders."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from apx.contracts.route_table import decode_route_entry_text
from apx.controllers.pipeline import compile_resources
from apx.dataplane.common.routetable import RouteTable
from apx.dataplane.gateway.placement import NoTopic, ResidencyRefused, place


def _route(name: str, match: dict[str, Any], mode: str = "async") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "productRef": {"name": "shop"},
        "policyRef": {"name": "p", "version": "1.0.0"},
        "match": match,
        "mode": mode,
        "backend": {"url": "http://backend.example"},
        "timeout": "10s",
    }
    if mode == "async":
        spec["worker"] = {"image": "example.com/w:1"}
    return {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    }


def _table() -> RouteTable:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": "shop", "namespace": "ns"},
            "spec": {
                "residency": "EU",
                "regions": ["europe-west1", "europe-west4"],
                "plans": [
                    {"name": "basic", "tier": "free", "rateLimit": {"requestsPerSecond": 1}},
                    {
                        "name": "iso",
                        "tier": "enterprise",
                        "rateLimit": {"requestsPerSecond": 1},
                        "isolation": "namespace",
                    },
                ],
                "tenants": [
                    {"id": "home4", "plan": "basic", "region": "europe-west4"},
                    {"id": "isolated", "plan": "iso"},
                ],
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"version": "1.0.0", "auth": {"allowAnonymous": True}},
        },
        _route("exact", {"hosts": ["api.shop.example"], "path": "/v1/orders/export", "methods": ["POST"]}),
        _route(
            "prefix", {"hosts": ["api.shop.example"], "pathPrefix": "/v1/orders", "methods": ["POST", "PUT"]}
        ),
        _route("wild", {"hosts": ["*.shop.example"], "pathPrefix": "/"}),
        _route("sync", {"hosts": ["sync.shop.example"], "pathPrefix": "/"}, mode="sync"),
    ]
    compiled = compile_resources(docs)
    assert not compiled.stalled_messages(), compiled.stalled_messages()
    entries = {k: decode_route_entry_text(v) for k, v in compiled.redis.route_table.entries}
    return RouteTable.build(compiled.redis.route_table.version, entries)


def test_match_follows_envoy_exact_path_then_longest_prefix_then_wildcard_hosts() -> None:
    table = _table()

    def key(host: str, path: str, method: str = "POST", hint: str | None = None) -> str | None:
        entry = table.match(host, path, method, hint).entry
        return entry.key if entry else None

    assert key("api.shop.example", "/v1/orders/export") == "ns/exact"
    assert key("api.shop.example:8443", "/v1/orders/export") == "ns/exact"
    assert key("api.shop.example", "/v1/orders/123") == "ns/prefix"
    assert key("api.shop.example", "/v1/orders/export", "PUT") == "ns/prefix"
    assert key("eu.shop.example", "/anything") == "ns/wild"
    assert key("shop.example", "/anything") is None
    assert key("sync.shop.example", "/x") == "ns/sync"  # the gateway then refuses it: not async
    refused = table.match("api.shop.example", "/v1/orders/1", "DELETE")
    assert refused.entry is None and refused.allowed_methods == {"POST", "PUT"}
    # The x-apx-route hint is used only when the request really matches it.
    assert key("api.shop.example", "/v1/orders/export", hint="ns/prefix") == "ns/prefix"
    assert key("other.example", "/v1/orders/export", hint="ns/prefix") is None


def test_placement_prefers_home_region_then_local_region_then_product_order() -> None:
    entry = _table().entries["ns/prefix"]
    assert place(entry, "stable", "home4", "europe-west4", None).region == "europe-west4"
    assert place(entry, "stable", "someone", None, None).region == "europe-west1"
    assert place(entry, "stable", "someone", None, "europe-west4").region == "europe-west4"
    assert place(entry, "stable", "someone", None, "us-central1").region == "europe-west1"
    isolated = place(entry, "stable", "isolated", None, None)
    assert (
        isolated.tenant_topic and isolated.topic == entry.tenant_topics["isolated"]["stable"]["europe-west1"]
    )
    with pytest.raises(NoTopic):
        place(entry, "canary", "someone", None, None)


def test_residency_is_checked_on_the_final_region_whatever_produced_it() -> None:
    entry = _table().entries["ns/prefix"]
    with pytest.raises(ResidencyRefused) as refused:
        place(entry, "stable", "t", "us-central1", None)
    assert (refused.value.residency, refused.value.region) == ("EU", "us-central1")
    # A route table that lists a topic outside the residency (stale or hand-edited) is refused too.
    topics = {"stable": {"us-central1": "apx-ns-shop-prefix-us-central1", **entry.topics["stable"]}}
    doctored = dataclasses.replace(entry, topics=topics, regions=("us-central1", *entry.regions))
    with pytest.raises(ResidencyRefused):
        place(doctored, "stable", "t", None, None)
