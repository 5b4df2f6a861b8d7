"""Envoy trust boundaries: tenant identity only from a verified JWT, filter order, header hygiene."""

from __future__ import annotations

from envoy.config.core.v3 import protocol_pb2

from apx.controllers import names
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.renderers.envoy.common import (
    CORS_FILTER,
    JWT_FILTER,
    RATELIMIT_FAIL_CLOSED_FILTER,
    RATELIMIT_FAIL_OPEN_FILTER,
    RBAC_FILTER,
    ROUTER_FILTER,
)
from apx.controllers.translate import translate
from tests.envoy_helpers import (
    apply_claim_to_headers,
    apply_early_header_mutation,
    connection_manager,
    find_route,
    jwt_config,
    policy,
    product,
    rate_limit_descriptors,
    render,
    route,
)

SPOOFED = {names.TENANT_HEADER: "victim", names.PLAN_HEADER: "enterprise", "x-apx-track": "canary"}


def test_http_filters_run_cors_jwt_rbac_ratelimit_router_in_that_order() -> None:
    output = render(product(), policy(), route("r"))
    assert [f.name for f in connection_manager(output).http_filters] == [
        CORS_FILTER,
        JWT_FILTER,
        RBAC_FILTER,
        RATELIMIT_FAIL_OPEN_FILTER,
        RATELIMIT_FAIL_CLOSED_FILTER,
        ROUTER_FILTER,
    ]


def test_client_supplied_tenant_header_cannot_reach_the_rate_limit_descriptor() -> None:
    output = render(product(), policy(), route("r"))
    entry = find_route(output, "default/r")
    config = entry.typed_per_filter_config[RATELIMIT_FAIL_OPEN_FILTER]
    # 1. The client sends its own identity headers; the connection manager drops them before any filter.
    request = apply_early_header_mutation(output, {":path": "/r/x", **SPOOFED})
    assert not any(k.startswith("x-apx-") for k in request)
    # 2. Without a (verified) token nothing puts them back: the descriptor carries no tenant.
    assert rate_limit_descriptors(config, request) == [[("product", "default/shop")]]
    # 3. With a verified token, jwt_authn copies the claims and only those reach the descriptor.
    (provider,) = jwt_config(output).providers.values()
    verified = apply_claim_to_headers(provider, {"tenant": "acme", "plan": "pro"}, request)
    assert rate_limit_descriptors(config, verified) == [
        [("product", "default/shop"), ("plan", "pro"), ("tenant", "acme")]
    ]


def test_jwt_claims_are_copied_into_the_tenant_and_plan_headers_and_rehash_the_route() -> None:
    (provider,) = jwt_config(render(product(), policy(), route("r"))).providers.values()
    assert [(c.claim_name, c.header_name) for c in provider.claim_to_headers] == [
        ("tenant", names.TENANT_HEADER),
        ("plan", names.PLAN_HEADER),
    ]
    assert provider.clear_route_cache


def test_routes_never_remove_the_verified_identity_headers() -> None:
    # Route-level removal runs in the router, after jwt_authn: it would drop the verified values.
    documents = [product(), policy(headers={"request": {"remove": ["cookie"]}}), route("r")]
    entry = find_route(render(*documents), "default/r")
    assert list(entry.request_headers_to_remove) == ["cookie"]
    assert names.TENANT_HEADER not in entry.request_headers_to_remove


def test_edge_hygiene_of_the_connection_manager() -> None:
    manager = connection_manager(render(product(), policy(), route("r")))
    assert manager.use_remote_address.value
    assert manager.generate_request_id.value and manager.preserve_external_request_id
    assert manager.normalize_path.value and manager.merge_slashes
    assert (
        manager.common_http_protocol_options.headers_with_underscores_action
        == protocol_pb2.HttpProtocolOptions.DROP_HEADER
    )
    assert manager.rds.route_config_name == names.ROUTE_CONFIG_NAME
    assert manager.rds.config_source.HasField("ads")


def test_listener_listens_on_the_requested_port() -> None:
    output = render_envoy(translate([product(), policy(), route("r")]).ir, port=10000)
    (listener,) = output.listeners
    assert listener.name == names.LISTENER_NAME
    assert listener.address.socket_address.port_value == 10000
    assert listener.address.socket_address.address == "0.0.0.0"
