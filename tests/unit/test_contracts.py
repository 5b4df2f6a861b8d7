"""The operator/dataplane contracts: encoders and decoders round-trip and match what the operator renders."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apx.contracts import pubsub_attributes, redis_keys, route_table, rule_set
from apx.contracts.documents import canonical_json
from apx.contracts.errors import ContractError
from apx.contracts.pubsub_attributes import RequestAttributes, decode_attributes, encode_attributes
from apx.contracts.route_table import RouteEntry, decode_route_entry, encode_route_entry
from apx.contracts.rule_set import Rule, decode_field
from apx.controllers.models.policy import ApiKey, Jwt, RateLimitPolicy
from apx.controllers.models.route import AsyncDelivery
from apx.controllers.pipeline import compile_resources
from apx.controllers.renderers.redis_rules import (
    meta_record,
    plan_record,
    render_redis,
    route_record,
    route_rule_record,
    tenant_record,
)
from apx.controllers.translate import translate
from tests.strategies import worlds

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "redis"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORLDS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cases() -> list[list[dict[str, Any]]]:
    cases = [
        [d for d in yaml.safe_load_all((case / "input.yaml").read_text()) if d]
        for case in sorted(GOLDEN.iterdir())
        if case.is_dir()
    ]
    samples = [
        d
        for path in sorted((ROOT / "samples").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    return [*cases, samples]


def _redis(documents: list[dict[str, Any]]) -> Any:
    result = translate(documents)
    assert not result.stalled, [s.message for s in result.stalled]
    return result.ir, render_redis(result.ir)


# --- what the operator writes, read back --------------------------------------------------------


@pytest.mark.parametrize("documents", _cases(), ids=lambda docs: f"{len(docs)}-documents")
def test_every_rendered_record_decodes_and_encodes_back_to_the_same_bytes(
    documents: list[dict[str, Any]],
) -> None:
    _, output = _redis(documents)
    assert output.route_table.entries
    for _, text in output.route_table.entries:
        assert canonical_json(encode_route_entry(route_table.decode_route_entry_text(text))) == text
    for rendered in output.rule_sets:
        for name, text in rendered.fields:
            record = decode_field(name, text)
            if isinstance(record, rule_set.RuleSetMeta):
                again = rule_set.encode_meta(record)
            elif isinstance(record, Rule):
                again = rule_set.encode_rule(record)
            else:
                again = rule_set.encode_route_rule(record)
            assert canonical_json(again) == text, name


@pytest.mark.parametrize("documents", _cases(), ids=lambda docs: f"{len(docs)}-documents")
def test_the_dataplane_decodes_the_records_the_operator_built(documents: list[dict[str, Any]]) -> None:
    ir, output = _redis(documents)
    entries = dict(output.route_table.entries)
    for route in ir.routes:
        assert route_table.decode_route_entry_text(entries[route.key]) == route_record(route)
    for product in ir.products:
        fields = dict(output.rule_set(product.key).fields)
        routes = tuple(sorted((r for r in ir.routes if r.product.key == product.key), key=lambda r: r.key))
        meta = decode_field("meta", fields["meta"])
        assert meta == dataclasses.replace(
            meta_record(product, routes), version=output.rule_set(product.key).version
        )
        plans = {plan.name: plan for plan in product.plans}
        for plan in product.plans:
            assert decode_field(f"plan:{plan.name}", fields[f"plan:{plan.name}"]) == plan_record(plan)
        assert decode_field("default", fields["default"]) == plan_record(plans[product.default_plan])
        for tenant in product.tenants:
            got = decode_field(f"tenant:{tenant.id}", fields[f"tenant:{tenant.id}"])
            assert got == tenant_record(tenant, plans[tenant.plan])
        for route in routes:
            assert decode_field(f"route:{route.key}", fields[f"route:{route.key}"]) == route_rule_record(
                route
            )


@WORLDS
@given(worlds())
def test_generated_worlds_round_trip_through_the_contract(documents: list[dict[str, Any]]) -> None:
    ir, output = _redis(documents)
    for route in ir.routes:
        record = route_record(route)
        assert decode_route_entry(json.loads(canonical_json(encode_route_entry(record)))) == record
    for rendered in output.rule_sets:
        for name, text in rendered.fields:
            decode_field(name, text)  # raises ContractError on anything the decoder would refuse


def test_reader_defaults_are_the_models_defaults() -> None:
    # A Route and policy that set nothing optional: the entry the operator writes must decode the same
    # with every defaultable field removed, i.e. a reader's defaults are the operator's.
    docs = [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": "shop", "namespace": "ns"},
            "spec": {
                "regions": ["us-central1"],
                "plans": [{"name": "basic", "tier": "free", "rateLimit": {"requestsPerSecond": 5}}],
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "version": "1.0.0",
                "auth": {
                    "jwt": {"issuer": "https://id.example/", "jwksUri": "https://id.example/k"},
                    "apiKey": {},
                },
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": "jobs", "namespace": "ns"},
            "spec": {
                "productRef": {"name": "shop"},
                "policyRef": {"name": "p", "version": "1.0.0"},
                "match": {"hosts": ["api.example.com"], "pathPrefix": "/"},
                "mode": "async",
                "backend": {"url": "http://backend.example"},
                "worker": {"image": "example.com/w:1"},
            },
        },
    ]
    compiled = compile_resources(docs)
    assert not compiled.stalled_messages(), compiled.stalled_messages()
    (text,) = (value for _, value in compiled.redis.route_table.entries)
    full = json.loads(text)
    sparse = {k: v for k, v in copy.deepcopy(full).items() if k not in _ENTRY_DEFAULTS}
    for track in sparse["tracks"]:
        track["auth"]["jwt"] = {k: v for k, v in track["auth"]["jwt"].items() if k in ("issuer", "jwks_uri")}
        track["auth"]["api_key"] = {"query_parameter": None}
    assert decode_route_entry(sparse) == decode_route_entry(full)
    # And the constants are the models' own defaults, field by field.
    delivery = AsyncDelivery()
    assert (delivery.backlog_limit, delivery.ordering) == (
        route_table.DEFAULT_BACKLOG_LIMIT,
        route_table.DEFAULT_ORDERING,
    )
    assert full["timeout_ms"] == route_table.DEFAULT_TIMEOUT_MS
    assert full["result_ttl_ms"] == route_table.DEFAULT_RESULT_TTL_MS
    jwt = Jwt(issuer="https://id.example/", jwks_uri="https://id.example/k")
    assert (jwt.tenant_claim, jwt.clock_skew_seconds) == (
        route_table.DEFAULT_TENANT_CLAIM,
        route_table.DEFAULT_CLOCK_SKEW_SECONDS,
    )
    assert full["tracks"][0]["auth"]["jwt"]["jwks_cache_ms"] == route_table.DEFAULT_JWKS_CACHE_MS
    assert ApiKey().header == route_table.DEFAULT_API_KEY_HEADER
    policy = RateLimitPolicy()
    assert (policy.algorithm, policy.failure_mode) == (
        rule_set.DEFAULT_ALGORITHM,
        rule_set.DEFAULT_FAILURE_MODE,
    )


# Fields of a route entry a reader may find missing (an older operator) and fill with its defaults.
_ENTRY_DEFAULTS = (
    "path",
    "methods",
    "residency",
    "timeout_ms",
    "backlog_limit",
    "result_ttl_ms",
    "ordering",
    "sticky_by_tenant",
    "canary_phase",
    "tenant_topics",
)


# --- round trips on generated records -------------------------------------------------------------

_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)
_name = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
_positive = st.integers(1, 10**9)


@st.composite
def route_entries(draw: st.DrawFn) -> RouteEntry:
    jwt = draw(
        st.none()
        | st.builds(
            route_table.JwtSettings,
            issuer=_text,
            jwks_uri=_text,
            audiences=st.lists(_text, max_size=3).map(tuple),
            tenant_claim=_name,
            tier_claim=st.none() | _name,
            clock_skew_seconds=st.integers(0, 600),
            jwks_cache_ms=_positive,
        )
    )
    api_key = draw(
        st.none() | st.builds(route_table.ApiKeySettings, header=_name, query_parameter=st.none() | _name)
    )
    auth = route_table.AuthSettings(jwt=jwt, api_key=api_key, allow_anonymous=draw(st.booleans()))
    tracks = tuple(
        route_table.TrackEntry(
            name=name,
            weight=draw(st.integers(0, 100)),
            policy_version=draw(_text),
            policy_artifact=draw(_text),
            auth=auth,
        )
        for name in draw(st.sampled_from([("stable",), ("stable", "canary")]))
    )
    regions = st.dictionaries(_name, _name, max_size=2)
    exact = draw(st.booleans())
    return RouteEntry(
        key=f"{draw(_name)}/{draw(_name)}",
        mode=draw(st.sampled_from(["sync", "async"])),
        product=f"{draw(_name)}/{draw(_name)}",
        tracks=tracks,
        hosts=tuple(draw(st.lists(_name.map(lambda h: h + ".example"), max_size=3))),
        path=draw(_text.map(lambda p: "/" + p)) if exact else None,
        path_prefix=None if exact else draw(_text.map(lambda p: "/" + p)),
        methods=tuple(draw(st.lists(st.sampled_from(["GET", "POST", "PUT"]), unique=True))),
        residency=draw(st.sampled_from(["US", "EU", "ASIA", "GLOBAL"])),
        regions=tuple(draw(st.lists(_name, max_size=3))),
        timeout_ms=draw(_positive),
        backlog_limit=draw(_positive),
        result_ttl_ms=draw(_positive),
        ordering=draw(st.booleans()),
        sticky_by_tenant=draw(st.booleans()),
        canary_phase=draw(st.none() | _name),
        topics=draw(st.dictionaries(st.sampled_from(["stable", "canary"]), regions, max_size=2)),
        tenant_topics=draw(
            st.dictionaries(
                _name, st.dictionaries(st.sampled_from(["stable", "canary"]), regions, max_size=2), max_size=2
            )
        ),
    )


_rates = st.builds(rule_set.Rate.of, st.integers(1, 10_000), st.integers(1, 10_000))


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    tenant = draw(st.booleans())
    return Rule(
        kind="tenant" if tenant else "plan",
        plan=draw(_name),
        tier=draw(_name),
        isolation=draw(st.sampled_from(["shared", "namespace", "dedicated"])),
        rate=draw(_rates),
        api_key_rate=draw(st.none() | _rates),
        quota=draw(st.none() | st.builds(rule_set.Quota, _positive, st.integers(60, 2_592_000))),
        concurrency=draw(st.none() | _positive),
        credits_cost=draw(st.none() | _positive),
        tenant=draw(_name) if tenant else None,
        region=draw(st.none() | _name) if tenant else None,
    )


_algorithms = st.sampled_from(rule_set.ALGORITHMS)
_modes = st.sampled_from(rule_set.FAILURE_MODES)
metas = st.builds(
    rule_set.RuleSetMeta,
    product=_name,
    residency=_name,
    regions=st.lists(_name, max_size=3).map(tuple),
    default_plan=_name,
    plans=st.lists(_name, max_size=3).map(tuple),
    algorithm=_algorithms,
    failure_mode=_modes,
    conflicts=st.lists(st.sampled_from(["algorithm", "failure_mode"]), unique=True).map(tuple),
    policies=st.dictionaries(
        _text, st.builds(rule_set.PolicyLimits, _name, _name, _algorithms, _modes), max_size=3
    ),
    routes=st.lists(_name, max_size=3).map(tuple),
    lease_ms=_positive,
    schema=st.just(rule_set.RULES_SCHEMA),
    version=st.none() | _name,
)
route_rules = st.builds(
    rule_set.RouteRule,
    route=_name,
    mode=st.sampled_from(["sync", "async"]),
    timeout_ms=_positive,
    algorithm=_algorithms,
    failure_mode=_modes,
    conflicts=st.lists(_name, max_size=2).map(tuple),
    policy_artifact=_text,
    tracks=st.lists(
        st.builds(rule_set.RouteRuleTrack, _name, _name, _text, _algorithms, _modes), max_size=2
    ).map(tuple),
)
attribute_sets = st.builds(
    RequestAttributes,
    request_id=_name,
    tenant_id=_text,
    tenant_tier=_name,
    policy_version=_text,
    residency=_name,
    track=_name,
    route=_name,
    product=_name,
    region=_name,
    method=st.sampled_from(["GET", "POST"]),
    path=_text,
    route_base=_text,
    enqueued_ms=st.none() | st.integers(0, 2**53),
    query=_text,
    content_type=_text,
    accept=_text,
    lease=st.booleans(),
    trace_context=st.dictionaries(st.sampled_from(pubsub_attributes.TRACE_ATTRIBUTES), _text.filter(bool)),
)


@FAST
@given(route_entries())
def test_route_entries_round_trip_through_canonical_json(entry: RouteEntry) -> None:
    assert route_table.decode_route_entry_text(canonical_json(encode_route_entry(entry))) == entry


@FAST
@given(rules())
def test_rules_round_trip(rule: Rule) -> None:
    name = rule_set.tenant_field(rule.tenant) if rule.tenant else rule_set.plan_field(rule.plan)
    assert decode_field(name, canonical_json(rule_set.encode_rule(rule))) == rule


@FAST
@given(metas)
def test_rule_set_meta_round_trips(meta: rule_set.RuleSetMeta) -> None:
    assert decode_field("meta", canonical_json(rule_set.encode_meta(meta))) == meta


@FAST
@given(route_rules)
def test_route_rules_round_trip(rule: rule_set.RouteRule) -> None:
    assert (
        decode_field(rule_set.route_field(rule.route), canonical_json(rule_set.encode_route_rule(rule)))
        == rule
    )


@FAST
@given(attribute_sets)
def test_pubsub_attributes_round_trip_as_strings(message: RequestAttributes) -> None:
    attributes = encode_attributes(message)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())
    assert decode_attributes(attributes) == message


def test_api_key_entries_round_trip_and_refuse_entries_without_a_tenant() -> None:
    assert rule_set.decode_api_key_entry(rule_set.encode_api_key_entry("acme")) == "acme"
    for bad in ("{}", '{"tenant": ""}', '{"tenant": 3}', "[]", "not json"):
        with pytest.raises(ContractError):
            rule_set.decode_api_key_entry(bad)


# --- what decoders refuse, and what they tolerate -------------------------------------------------


def _entry() -> dict[str, Any]:
    return {
        "route": "ns/r",
        "mode": "async",
        "product": "ns/p",
        "tracks": [{"track": "stable", "weight": 100}],
    }


@pytest.mark.parametrize(
    "change",
    [
        {"tracks": []},
        {"tracks": None},
        {"route": None},
        {"timeout_ms": "30s"},
        {"ordering": "yes"},
        {"methods": "GET"},
        {"topics": {"stable": {"us-east1": 3}}},
        {"tracks": [{"track": "stable", "weight": True}]},
        {"tracks": [{"track": "stable", "weight": 100, "auth": {"jwt": {"issuer": "x"}}}]},
    ],
)
def test_malformed_route_entries_raise_contract_errors(change: dict[str, Any]) -> None:
    with pytest.raises(ContractError):
        decode_route_entry({**_entry(), **change})


def test_a_minimal_entry_gets_the_defaults_and_a_track_without_auth_admits_nobody() -> None:
    entry = decode_route_entry({**_entry(), "hosts": ["API.Example.com"], "methods": ["get"]})
    assert entry.hosts == ("api.example.com",) and entry.methods == ("GET",)
    assert (entry.timeout_ms, entry.backlog_limit, entry.result_ttl_ms, entry.ordering) == (
        route_table.DEFAULT_TIMEOUT_MS,
        route_table.DEFAULT_BACKLOG_LIMIT,
        route_table.DEFAULT_RESULT_TTL_MS,
        route_table.DEFAULT_ORDERING,
    )
    assert entry.tracks[0].auth == route_table.AuthSettings(jwt=None, api_key=None, allow_anonymous=False)
    with pytest.raises(ContractError):
        route_table.decode_route_entry_text(b"{not json")


@pytest.mark.parametrize(
    ("name", "document"),
    [
        ("meta", {"product": "ns/p", "algorithm": "leaky-bucket"}),
        ("meta", {"product": "ns/p", "failure_mode": "maybe"}),
        ("meta", {"kind": "plan", "product": "ns/p"}),
        ("plan:x", {"kind": "plan", "plan": "x", "rate": None}),
        (
            "plan:x",
            {"kind": "plan", "plan": "x", "rate": {"requests_per_second": 0, "burst": 1, "window_ms": 1}},
        ),
        ("plan:x", {"kind": "route", "plan": "x"}),
        (
            "tenant:t",
            {"kind": "tenant", "plan": "x", "rate": {"requests_per_second": 1, "burst": 1, "window_ms": 1}},
        ),
        (
            "route:ns/r",
            {"route": "ns/r", "mode": "sync", "timeout_ms": 1, "policy_artifact": "a", "algorithm": "?"},
        ),
    ],
)
def test_malformed_rule_set_fields_raise_contract_errors(name: str, document: Any) -> None:
    with pytest.raises(ContractError):
        decode_field(name, json.dumps(document))


def test_attributes_of_an_older_gateway_decode_with_empty_values() -> None:
    message = decode_attributes({"request_id": "r-12345678", "TraceParent": "00-abc", "enqueued_ms": "soon"})
    assert message.request_id == "r-12345678"
    assert (message.tenant_id, message.route, message.lease, message.enqueued_ms) == ("", "", False, None)
    assert message.trace_context == {"traceparent": "00-abc"}
    assert "query" not in encode_attributes(RequestAttributes(request_id="r"))


# --- Redis keys ----------------------------------------------------------------------------------


def _tag(key: str) -> str:
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_keys_one_script_touches_share_one_hash_tag() -> None:
    product = "ns/shop"
    family = [
        redis_keys.ruleset_key(product, "v1"),
        redis_keys.ruleset_current_key(product),
        redis_keys.ruleset_versions_key(product),
        redis_keys.sequence_key(redis_keys.ruleset_versions_key(product)),
        redis_keys.api_key_table_key(product),
    ]
    assert {_tag(key) for key in family} == {product}
    table = [
        redis_keys.route_table_key("v1"),
        redis_keys.route_table_current_key(),
        redis_keys.route_table_versions_key(),
        redis_keys.sequence_key(redis_keys.route_table_versions_key()),
    ]
    assert {_tag(key) for key in table} == {"routes"}
    assert redis_keys.ruleset_key(product, "v1") == redis_keys.ruleset_version_prefix(product) + "v1"
    assert redis_keys.route_table_key("v1") == redis_keys.route_table_version_prefix() + "v1"


@FAST
@given(tenant=_text.filter(bool), api_key=st.none() | _text, now_ms=st.integers(0, 2**45), rule=rules())
def test_counter_keys_of_a_request_share_a_tag_match_the_product_pattern_and_the_lease_keys(
    tenant: str, api_key: str | None, now_ms: int, rule: Rule
) -> None:
    product = "ns/shop"
    for algorithm in redis_keys.ALGORITHM_CODES:
        keys = redis_keys.request_counter_keys(product, tenant, rule, algorithm, now_ms, api_key=api_key)
        assert {_tag(key) for key in keys.values()} == {f"{product}/{redis_keys.counter_tenant(tenant)}"}
        assert all(
            fnmatch.fnmatchcase(key, redis_keys.product_counters_pattern(product)) for key in keys.values()
        )
        assert keys.get(
            "concurrency", redis_keys.concurrency_key(product, tenant)
        ) == redis_keys.concurrency_key(product, tenant)
        assert keys.get("credits", redis_keys.credits_key(product, tenant)) == redis_keys.credits_key(
            product, tenant
        )
        ttls = rule_set.request_counter_ttls_ms(rule, now_ms, 1000)
        # Every key has a lifetime; only the API-key rate waits for a request that carries a key.
        assert set(keys) <= set(ttls) and set(ttls) - set(keys) <= (
            {"api_key_rate"} if api_key is None else set()
        )
    # Another product's counters are not matched by this product's pattern.
    other = redis_keys.counter_key("ns/shop2", "t", "credits")
    assert not fnmatch.fnmatchcase(other, redis_keys.product_counters_pattern(product))


def test_request_state_and_backlog_keys_are_tagged_by_request_and_route() -> None:
    assert redis_keys.request_key("abc") == "apx:req:{abc}"
    assert fnmatch.fnmatchcase(redis_keys.request_key("abc"), redis_keys.request_keys_pattern())
    assert _tag(redis_keys.backlog_key("ns/route", "canary")) == "ns/route"
