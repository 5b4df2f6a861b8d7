"""Envoy per-route policy: JWT requirements, RBAC, rate-limit descriptors and failure modes, CORS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb

from apx.controllers.renderers.envoy import ratelimit
from apx.controllers.renderers.envoy.common import (
    CORS_FILTER,
    JWT_FILTER,
    RATELIMIT_FAIL_CLOSED_FILTER,
    RATELIMIT_FAIL_OPEN_FILTER,
    RBAC_FILTER,
)
from tests.envoy_helpers import (
    JWT,
    find_route,
    jwt_config,
    policy,
    product,
    rate_limit_descriptors,
    render,
    route,
    routes_of,
    unpack,
)

DESCRIPTORS_MD = (
    Path(__file__).resolve().parents[2] / "apx" / "controllers" / "renderers" / "envoy" / "DESCRIPTORS.md"
)


def _jwt_per_route(entry: Any) -> Any:
    return unpack(entry.typed_per_filter_config[JWT_FILTER], jwt_pb.PerRouteConfig)


def _rbac(entry: Any) -> Any:
    return unpack(entry.typed_per_filter_config[RBAC_FILTER], rbac_filter_pb.RBACPerRoute).rbac.rules


# --- JWT ---------------------------------------------------------------------------


def test_policy_without_jwt_does_not_require_a_token() -> None:
    documents = [product(), policy(auth={"apiKey": {}}), route("r")]
    assert _jwt_per_route(find_route(render(*documents), "default/r")).disabled


def test_jwt_policy_requires_its_provider_and_the_listener_defines_it() -> None:
    output = render(product(), policy(), route("r"))
    name = _jwt_per_route(find_route(output, "default/r")).requirement_name
    config = jwt_config(output)
    (provider_name,) = config.providers
    assert config.requirement_map[name].provider_name == provider_name
    provider = config.providers[provider_name]
    assert provider.issuer == JWT["issuer"]
    assert provider.payload_in_metadata == provider_name
    assert provider.remote_jwks.http_uri.cluster in {c.name for c in output.clusters}


def test_jwt_with_api_key_or_anonymous_allows_a_missing_token_but_not_a_bad_one() -> None:
    for auth in ({"jwt": JWT, "apiKey": {}}, {"jwt": JWT, "allowAnonymous": True}):
        output = render(product(), policy(auth=auth), route("r"))
        requirement = jwt_config(output).requirement_map[
            _jwt_per_route(find_route(output, "default/r")).requirement_name
        ]
        alternatives = list(requirement.requires_any.requirements)
        assert [a.WhichOneof("requires_type") for a in alternatives] == ["provider_name", "allow_missing"]


def test_versions_with_identical_jwt_settings_share_one_provider() -> None:
    documents = [product(), policy(), policy(version="1.1.0"), route("a"), route("b", version="1.1.0")]
    assert len(jwt_config(render(*documents)).providers) == 1


# --- RBAC --------------------------------------------------------------------------


def _scope_regex(rbac: Any, rule: str) -> str:
    principal = rbac.policies[rule].principals[0]
    ids = principal.and_ids.ids if principal.HasField("and_ids") else [principal]
    matchers = [
        p.metadata.value.or_match.value_matchers[0] for p in ids if p.metadata.value.HasField("or_match")
    ]
    (matcher,) = matchers
    return str(matcher.string_match.safe_regex.regex)


def test_scope_regex_matches_a_whole_word_in_a_space_separated_claim() -> None:
    rules = [{"name": "write", "methods": ["POST"], "paths": ["/r/"], "scopes": ["orders:write"]}]
    documents = [product(), policy(authz={"defaultAction": "deny", "rules": rules}), route("r")]
    pattern = _scope_regex(_rbac(find_route(render(*documents), "default/r")), "rule/write")
    # Envoy's RE2 string matchers match the whole value, like re.fullmatch.
    assert re.fullmatch(pattern, "orders:write")
    assert re.fullmatch(pattern, "profile orders:write email")
    assert not re.fullmatch(pattern, "orders:writer")
    assert not re.fullmatch(pattern, "xorders:write")


def test_deny_by_default_allows_only_matching_rules_for_authenticated_callers() -> None:
    rules = [{"name": "read", "methods": ["GET"], "paths": ["/a", "/b"], "scopes": ["s"]}]
    documents = [
        product(),
        policy(authz={"defaultAction": "deny", "rules": rules}, ipAllowlist=["10.0.0.0/8"]),
        route("r"),
    ]
    rbac = _rbac(find_route(render(*documents), "default/r"))
    assert rbac.action == rbac_pb2.RBAC.ALLOW
    assert set(rbac.policies) == {"rule/read"}
    ids = rbac.policies["rule/read"].principals[0].and_ids.ids
    assert ids[0].remote_ip.address_prefix == "10.0.0.0" and ids[0].remote_ip.prefix_len.value == 8
    assert ids[1].metadata.value.present_match  # a payload from this policy's provider


def test_allow_by_default_gates_only_the_paths_of_its_rules() -> None:
    rules = [{"name": "pay", "paths": ["/salaries"], "scopes": ["payroll"]}]
    documents = [product(), policy(authz={"defaultAction": "allow", "rules": rules}), route("r")]
    rbac = _rbac(find_route(render(*documents), "default/r"))
    assert set(rbac.policies) == {"rule/pay", "default-allow"}
    unmatched = rbac.policies["default-allow"].permissions[0]
    assert unmatched.not_rule.url_path.path.prefix == "/salaries"


def test_scoped_rule_of_a_policy_without_jwt_never_matches() -> None:
    rules = [{"name": "export", "paths": ["/"], "scopes": ["export"]}]
    documents = [
        product(),
        policy(auth={"apiKey": {}}, authz={"defaultAction": "deny", "rules": rules}),
        route("r"),
    ]
    principal = _rbac(find_route(render(*documents), "default/r")).policies["rule/export"].principals[0]
    assert principal.not_id.any


def test_anonymous_policy_with_nothing_to_enforce_has_no_rbac() -> None:
    documents = [product(), policy(auth={"allowAnonymous": True}), route("r")]
    assert RBAC_FILTER not in find_route(render(*documents), "default/r").typed_per_filter_config


# --- rate limits ---------------------------------------------------------------------


def test_descriptors_are_product_plan_tenant_then_api_keys() -> None:
    auth = {"jwt": JWT, "apiKey": {"header": "X-Key", "queryParameter": "key"}}
    entry = find_route(render(product(), policy(auth=auth), route("r")), "default/r")
    config = entry.typed_per_filter_config[RATELIMIT_FAIL_OPEN_FILTER]
    headers = {"x-apx-plan": "pro", "x-apx-tenant": "acme", "x-key": "k1"}
    assert rate_limit_descriptors(config, headers, {"key": "k2"}) == [
        [("product", "default/shop"), ("plan", "pro"), ("tenant", "acme")],
        [("product", "default/shop"), ("api_key", "k1")],
        [("product", "default/shop"), ("api_key", "k2")],
    ]
    # No key sent: no api_key descriptor at all (never an empty value).
    assert rate_limit_descriptors(config, {}) == [[("product", "default/shop")]]


def test_failure_mode_closed_sends_descriptors_to_the_fail_closed_filter() -> None:
    documents = [product(), policy(rateLimit={"failureMode": "closed"}), route("r")]
    entry = find_route(render(*documents), "default/r")
    assert RATELIMIT_FAIL_CLOSED_FILTER in entry.typed_per_filter_config
    assert RATELIMIT_FAIL_OPEN_FILTER not in entry.typed_per_filter_config


def test_descriptor_contract_is_written_down_with_the_keys_the_code_uses() -> None:
    text = DESCRIPTORS_MD.read_text()
    for key in (ratelimit.PRODUCT_KEY, ratelimit.PLAN_KEY, ratelimit.TENANT_KEY, ratelimit.API_KEY_KEY):
        assert f"`{key}`" in text


# --- CORS ---------------------------------------------------------------------------


def test_cors_policy_and_preflight_route_for_method_restricted_routes() -> None:
    cors = {
        "allowOrigins": ["https://app.example.com"],
        "allowMethods": ["GET", "POST"],
        "allowHeaders": ["authorization"],
        "exposeHeaders": ["x-request-id"],
        "maxAgeSeconds": 120,
        "allowCredentials": True,
    }
    match = {"hosts": ["api.example.com"], "pathPrefix": "/r/", "methods": ["POST"]}
    output = render(product(), policy(cors=cors), route("r", match=match))
    preflight, main = routes_of(output)
    assert preflight.name == "default/r/cors-preflight"
    assert {h.name for h in preflight.match.headers} == {":method", "origin", "access-control-request-method"}
    assert preflight.direct_response.status == 204
    assert _jwt_per_route(preflight).disabled
    policy_ = unpack(main.typed_per_filter_config[CORS_FILTER], cors_pb2.CorsPolicy)
    assert [m.exact for m in policy_.allow_origin_string_match] == ["https://app.example.com"]
    assert policy_.allow_methods == "GET,POST"
    assert policy_.expose_headers == "x-request-id"
    assert policy_.max_age == "120"
    assert policy_.allow_credentials.value


def test_routes_matching_any_method_need_no_preflight_route() -> None:
    output = render(product(), policy(cors={"allowOrigins": ["*"]}), route("r"))
    (main,) = routes_of(output)
    policy_ = unpack(main.typed_per_filter_config[CORS_FILTER], cors_pb2.CorsPolicy)
    assert policy_.allow_origin_string_match[0].safe_regex.regex == ".*"
