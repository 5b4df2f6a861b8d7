"""Envoy route configuration: virtual hosts, ordering, matching, actions, and per-route errors."""

from __future__ import annotations

import random

from apx.controllers import names
from apx.controllers.renderers.envoy import EnvoyOutput, render_envoy
from apx.controllers.translate import translate
from tests.envoy_helpers import find_route, policy, product, render, route, routes_of


def _names(output: EnvoyOutput, host: str = "api.example.com") -> list[str]:
    return [r.name for r in routes_of(output, host)]


def test_routes_are_ordered_most_specific_first() -> None:
    documents = [
        product(),
        policy(),
        route("short", match={"hosts": ["api.example.com"], "pathPrefix": "/v1/"}),
        route("long", match={"hosts": ["api.example.com"], "pathPrefix": "/v1/orders/"}),
        route("exact", match={"hosts": ["api.example.com"], "path": "/v1"}),
        route(
            "with-header",
            match={
                "hosts": ["api.example.com"],
                "pathPrefix": "/v1/",
                "headers": [{"name": "x-v", "exact": "2"}],
            },
        ),
        route("with-method", match={"hosts": ["api.example.com"], "pathPrefix": "/v1/", "methods": ["GET"]}),
    ]
    assert _names(render(*documents)) == [
        "default/exact",
        "default/long",
        "default/with-header",
        "default/with-method",
        "default/short",
    ]


def test_output_is_the_same_whatever_the_input_order() -> None:
    documents = [product(), policy(), *(route(f"r{i}", hosts=(f"h{i % 3}.example.com",)) for i in range(12))]
    expected = render(*documents)
    shuffled = list(documents)
    random.Random(7).shuffle(shuffled)
    again = render(*shuffled)
    assert again.version == expected.version
    assert again.serialize() == expected.serialize()
    assert again.to_json() == expected.to_json()


def test_a_route_with_several_hosts_appears_in_each_virtual_host_in_host_order() -> None:
    output = render(product(), policy(), route("multi", hosts=("b.example.com", "*.a.example.com")))
    (config,) = output.route_configurations
    assert [v.name for v in config.virtual_hosts] == ["vh/*.a.example.com", "vh/b.example.com"]
    assert [list(v.domains) for v in config.virtual_hosts] == [["*.a.example.com"], ["b.example.com"]]
    assert [r.name for v in config.virtual_hosts for r in v.routes] == ["default/multi", "default/multi"]


def test_methods_and_header_matchers_become_envoy_header_matchers() -> None:
    match = {
        "hosts": ["api.example.com"],
        "path": "/pay",
        "methods": ["POST", "GET"],
        "headers": [
            {"name": "X-Exact", "exact": "1"},
            {"name": "x-prefix", "prefix": "ab"},
            {"name": "x-regex", "regex": "v[0-9]+"},
            {"name": "x-present", "present": True},
            {"name": "x-absent", "present": False},
        ],
    }
    entry = find_route(render(product(), policy(), route("pay", match=match)), "default/pay")
    assert entry.match.path == "/pay"
    headers = {h.name: h for h in entry.match.headers}
    assert headers[":method"].string_match.safe_regex.regex == "GET|POST"
    assert headers["x-exact"].string_match.exact == "1"
    assert headers["x-prefix"].string_match.prefix == "ab"
    assert headers["x-regex"].string_match.safe_regex.regex == "v[0-9]+"
    assert headers["x-present"].present_match and not headers["x-present"].invert_match
    assert headers["x-absent"].present_match and headers["x-absent"].invert_match


def test_sync_route_action_carries_timeout_and_retry_policy() -> None:
    retries = {
        "attempts": 3,
        "perTryTimeout": "2s",
        "retryOn": ["5xx", "retriable-status-codes"],
        "retriableStatusCodes": [503],
        "backoff": {"baseInterval": "100ms", "maxInterval": "1s"},
    }
    entry = find_route(render(product(), policy(), route("r", timeout="7s", retries=retries)), "default/r")
    action = entry.route
    assert action.cluster == names.service_cluster("default", "r", 8080)
    assert action.timeout.seconds == 7
    policy_ = action.retry_policy
    assert policy_.retry_on == "5xx,retriable-status-codes"
    assert policy_.num_retries.value == 3
    assert policy_.per_try_timeout.seconds == 2
    assert list(policy_.retriable_status_codes) == [503]
    assert policy_.retry_back_off.base_interval.ToMilliseconds() == 100
    assert policy_.retry_back_off.max_interval.ToMilliseconds() == 1000


def test_zero_attempts_means_no_retry_policy() -> None:
    entry = find_route(render(product(), policy(), route("r", retries={"attempts": 0})), "default/r")
    assert not entry.route.HasField("retry_policy")


def test_async_route_targets_the_gateway_cluster_never_its_backend() -> None:
    async_route = route("jobs", mode="async", worker={"image": "registry.example.com/w:1"}, timeout="120s")
    output = render(product(), policy(), async_route)
    entry = find_route(output, "default/jobs")
    assert entry.route.cluster == names.ASYNC_GATEWAY_CLUSTER
    headers = {h.header.key: h.header.value for h in entry.request_headers_to_add}
    assert headers[names.ROUTE_HEADER] == "default/jobs"
    assert headers[names.TRACK_HEADER] == "stable"
    assert headers[names.POLICY_VERSION_HEADER] == "1.0.0"
    # The backend is only called by workers: Envoy gets no cluster for it.
    assert names.service_cluster("default", "jobs", 8080) not in {c.name for c in output.clusters}


def test_url_backend_with_a_path_rewrites_the_prefix_and_the_host() -> None:
    documents = [
        product(),
        policy(),
        route("legacy", backend={"url": "https://legacy.example.net/api"}),
        route(
            "exact",
            match={"hosts": ["api.example.com"], "path": "/ping"},
            backend={"url": "http://h.example.net:81/p"},
        ),
        route("plain", backend={"url": "https://plain.example.net"}),
    ]
    output = render(*documents)
    legacy = find_route(output, "default/legacy").route
    assert legacy.prefix_rewrite == "/api/"  # prefix /legacy/ → /api/
    assert legacy.host_rewrite_literal == "legacy.example.net"
    exact = find_route(output, "default/exact").route
    assert exact.prefix_rewrite == "/p"
    assert exact.host_rewrite_literal == "h.example.net:81"
    assert find_route(output, "default/plain").route.prefix_rewrite == ""


def test_identity_headers_are_set_and_overwrite_client_values() -> None:
    entry = find_route(render(product(), policy(), route("r")), "default/r")
    headers = {h.header.key: h for h in entry.request_headers_to_add}
    assert headers[names.ROUTE_HEADER].header.value == "default/r"
    assert headers[names.PRODUCT_HEADER].header.value == "default/shop"
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in headers.values())


def test_regex_rejected_by_re2_lands_in_errors_and_other_routes_still_render() -> None:
    bad = route(
        "bad",
        match={
            "hosts": ["api.example.com"],
            "pathPrefix": "/bad/",
            "headers": [{"name": "x", "regex": "(?=a)b"}],
        },
    )
    output = render(product(), policy(), bad, route("good"))
    assert set(output.errors) == {"default/bad"}
    assert output.errors["default/bad"].startswith("spec.match.headers[0].regex: RE2 does not support")
    assert _names(output) == ["default/good"]
    assert output.validate_resources() == []


def test_invalid_values_are_reported_with_their_field() -> None:
    cases = {
        "query": route("query", match={"hosts": ["api.example.com"], "pathPrefix": "/a?b=1"}),
        "backoff": route("backoff", retries={"attempts": 1, "backoff": {"baseInterval": "0s"}}),
        "order": route(
            "order", retries={"attempts": 1, "backoff": {"baseInterval": "2s", "maxInterval": "1s"}}
        ),
        "rewrite": route(
            "rewrite",
            backend={"url": "https://a.example.net/v1"},
            canary={"backend": {"url": "https://b.example.net/v2"}},
        ),
    }
    output = render(product(), policy(), *cases.values(), route("fine"))
    assert output.errors["default/query"].startswith("spec.match.pathPrefix: must not contain '?'")
    assert output.errors["default/backoff"].startswith("spec.retries.backoff.baseInterval:")
    assert output.errors["default/order"].startswith("spec.retries.backoff.maxInterval:")
    assert output.errors["default/rewrite"].startswith("spec.canary.backend.url:")
    assert _names(output) == ["default/fine"]


def test_a_host_whose_only_route_failed_gets_no_virtual_host() -> None:
    bad = route(
        "bad",
        hosts=("lonely.example.com",),
        match={"hosts": ["lonely.example.com"], "path": "/x", "headers": [{"name": "x", "regex": "(a)\\1"}]},
    )
    output = render(product(), policy(), bad, route("good"))
    (config,) = output.route_configurations
    assert [v.name for v in config.virtual_hosts] == ["vh/api.example.com"]
    assert "backreferences" in output.errors["default/bad"]


def test_render_is_pure_and_the_version_is_a_content_hash() -> None:
    result = translate([product(), policy(), route("r")])
    first, second = render_envoy(result.ir), render_envoy(result.ir)
    assert first.version == second.version and first.version.startswith("sha256:")
    other = render_envoy(result.ir, port=9090)
    assert other.version != first.version


def test_async_hosts_route_status_requests_to_the_gateway_first() -> None:
    from pathlib import Path

    import yaml

    from apx.controllers import names
    from apx.controllers.renderers.envoy import render_envoy
    from apx.controllers.translate import translate

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "samples").glob("*.yaml"))
    documents = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    output = render_envoy(translate(documents).ir)
    assert not output.validate_resources()
    hosts = {vh.domains[0]: vh for rc in output.route_configurations for vh in rc.virtual_hosts}
    first = hosts["api.ledger.example.eu"].routes[0]
    assert first.match.prefix == "/status/"
    assert first.route.cluster == names.ASYNC_GATEWAY_CLUSTER
    assert first.route.timeout.seconds == 0
    assert all(r.match.prefix != "/status/" for r in hosts["api.payments.example.com"].routes)
