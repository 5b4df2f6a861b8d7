"""The Redis renderer: rule sets per product, the route table, versions and counter keys."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from apx.contracts.rule_set import Rate, Rule, decode_rule
from apx.controllers import names
from apx.controllers.renderers.redis_rules import (
    api_key_id,
    counter_tenant,
    render_redis,
    request_counter_keys,
    request_counter_ttls_ms,
)
from apx.controllers.translate import translate

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "redis"


def _documents(case: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((GOLDEN / case / "input.yaml").read_text()) if d]


def _render(documents: list[dict[str, Any]]) -> Any:
    result = translate(documents)
    assert not result.stalled, [s.message for s in result.stalled]
    return render_redis(result.ir)


def _hash_tag(key: str) -> str:
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_rule_set_has_meta_default_plan_tenant_and_route_fields() -> None:
    rule_set = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments")
    fields = rule_set.documents()
    assert sorted(fields) == [
        "default",
        "meta",
        "plan:enterprise",
        "plan:free",
        "plan:pro",
        "route:shop/charges",
        "tenant:Umbrella.Corp",
        "tenant:acme",
        "tenant:globex",
        "tenant:initech",
    ]
    assert fields["default"] == fields["plan:free"]
    assert fields["meta"]["version"] == rule_set.version


def test_plan_rule_carries_every_limit_of_the_plan() -> None:
    pro = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments").documents()["plan:pro"]
    assert pro == {
        "kind": "plan",
        "plan": "pro",
        "tier": "pro",
        "isolation": "namespace",
        "rate": {"requests_per_second": 100, "burst": 200, "window_ms": 2000},
        "api_key_rate": {"requests_per_second": 20, "burst": 40, "window_ms": 2000},
        "quota": {"requests": 500000, "period_seconds": 86400},
        "concurrency": 20,
        "credits_cost": None,
    }


def test_tenant_rule_applies_overrides_and_keeps_the_plan_limits_it_cannot_override() -> None:
    fields = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments").documents()
    initech, globex = fields["tenant:initech"], fields["tenant:globex"]
    assert initech["rate"] == {"requests_per_second": 150, "burst": 300, "window_ms": 2000}
    assert initech["quota"] == fields["plan:pro"]["quota"]
    assert globex["quota"] == {"requests": 2000000, "period_seconds": 86400}
    assert globex["rate"] == fields["plan:pro"]["rate"]
    for tenant in (initech, globex):
        assert tenant["api_key_rate"] == fields["plan:pro"]["api_key_rate"]
        assert tenant["concurrency"] == 20
        assert tenant["plan"] == "pro"
    acme = fields["tenant:acme"]
    assert (acme["credits_cost"], acme["isolation"], acme["region"]) == (3, "dedicated", "us-central1")
    # A burst defaulted from the override's rate, not from the plan's burst.
    assert fields["tenant:Umbrella.Corp"]["rate"] == {"requests_per_second": 7, "burst": 7, "window_ms": 1000}


def test_meta_records_policy_algorithm_failure_mode_and_routes() -> None:
    meta = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments").documents()["meta"]
    assert meta["algorithm"] == "token-bucket"
    assert meta["failure_mode"] == "closed"
    assert meta["conflicts"] == []
    assert meta["routes"] == ["shop/charges"]
    (artifact,) = meta["policies"]
    assert artifact.startswith("shop-policy@2.0.0@sha256:")
    assert meta["lease_ms"] == 15_000 + 5_000
    assert (meta["residency"], meta["regions"], meta["default_plan"]) == (
        "GLOBAL",
        ["us-central1", "europe-west1"],
        "free",
    )


def test_disagreeing_policies_resolve_to_the_strictest_and_say_so() -> None:
    output = _render(_documents("mixed-policy-algorithms"))
    fields = output.rule_set("catalog/search").documents()
    assert fields["meta"]["algorithm"] == "sliding-window"
    assert fields["meta"]["failure_mode"] == "closed"
    assert fields["meta"]["conflicts"] == ["algorithm", "failure_mode"]
    assert fields["route:catalog/search-v1"]["algorithm"] == "fixed-window"
    assert fields["route:catalog/search-v2"]["failure_mode"] == "open"


def test_product_without_routes_gets_the_policy_defaults() -> None:
    meta = _render(_documents("mixed-policy-algorithms")).rule_set("catalog/unused").documents()["meta"]
    assert (meta["algorithm"], meta["failure_mode"], meta["policies"], meta["routes"]) == (
        "sliding-window",
        "open",
        {},
        [],
    )


def test_rule_set_keys_share_the_product_hash_tag() -> None:
    rule_set = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments")
    keys = [rule_set.key, rule_set.current_key, rule_set.versions_key]
    assert {_hash_tag(k) for k in keys} == {"shop/payments"}
    assert rule_set.key == f"apx:rules:{{shop/payments}}:v:{rule_set.version}"


def test_version_is_a_16_hex_content_hash_and_fields_are_canonical_json() -> None:
    rule_set = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments")
    assert re.fullmatch(r"[0-9a-f]{16}", rule_set.version)
    for _, value in rule_set.fields:
        assert value == json.dumps(
            json.loads(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )


def test_changing_a_limit_changes_the_version_and_nothing_else_changes_it() -> None:
    documents = _documents("plans-tenants-apikey")
    before = _render(documents).rule_set("shop/payments").version
    assert _render(copy.deepcopy(documents)).rule_set("shop/payments").version == before
    changed = copy.deepcopy(documents)
    changed[0]["spec"]["plans"][0]["rateLimit"]["burst"] = 11
    assert _render(changed).rule_set("shop/payments").version != before


def test_canary_steps_change_the_route_table_but_not_the_rule_set() -> None:
    documents = _documents("route-table-async-canary")
    later = copy.deepcopy(documents)
    route = next(d for d in later if d["kind"] == "Route" and d["metadata"]["name"] == "generate")
    route["status"]["canary"] = {"phase": "Progressing", "step": 2, "weight": 50}
    first, second = _render(documents), _render(later)
    assert first.rule_set("analytics/reports").version == second.rule_set("analytics/reports").version
    assert first.route_table.version != second.route_table.version
    weights = [t["weight"] for t in second.route_table.documents()["analytics/generate"]["tracks"]]
    assert weights == [50, 50]


def test_route_table_entry_has_topics_per_track_and_region_and_tenant_topics() -> None:
    output = _render(_documents("route-table-async-canary"))
    table = output.route_table
    assert table.key == names.route_table_key(table.version)
    assert table.current_key == names.route_table_current_key()
    assert {_hash_tag(k) for k in (table.key, table.current_key, table.versions_key)} == {"routes"}
    entry = table.documents()["analytics/generate"]
    assert entry["mode"] == "async"
    assert entry["sticky_by_tenant"] is True
    assert entry["ordering"] is False
    assert (entry["backlog_limit"], entry["timeout_ms"], entry["result_ttl_ms"]) == (
        2000,
        300_000,
        21_600_000,
    )
    assert [(t["track"], t["weight"], t["policy_version"]) for t in entry["tracks"]] == [
        ("stable", 75, "3.1.0"),
        ("canary", 25, "3.2.0"),
    ]
    assert set(entry["topics"]) == {"stable", "canary"}
    assert set(entry["topics"]["stable"]) == {"europe-west1", "europe-west4"}
    # bank-a has a home region, bank-b is in every region.
    assert set(entry["tenant_topics"]["bank-a"]["stable"]) == {"europe-west4"}
    assert set(entry["tenant_topics"]["bank-b"]["canary"]) == {"europe-west1", "europe-west4"}


def test_sync_routes_are_in_the_route_table_without_topics() -> None:
    entry = _render(_documents("route-table-async-canary")).route_table.documents()["analytics/status-page"]
    assert entry["mode"] == "sync"
    assert entry["topics"] == {}
    assert entry["tenant_topics"] == {}


def test_counter_keys_of_one_request_share_one_hash_tag() -> None:
    fields = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments").documents()
    keys = request_counter_keys(
        "shop/payments",
        "globex",
        decode_rule(fields["tenant:globex"]),
        "sliding-window",
        1_700_000_000_000,
        api_key="secret-key",
    )
    assert set(keys) == {"rate", "api_key_rate", "quota", "concurrency"}
    assert {_hash_tag(k) for k in keys.values()} == {"shop/payments/globex"}
    assert keys["rate"] == "apx:c:{shop/payments/globex}:tenant:sw"
    assert "secret-key" not in keys["api_key_rate"]
    assert keys["api_key_rate"] == f"apx:c:{{shop/payments/globex}}:apikey:{api_key_id('secret-key')}:sw"


def test_fixed_window_and_quota_counters_are_keyed_by_window() -> None:
    fields = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments").documents()
    rule = decode_rule(fields["plan:free"])  # window 2000 ms, monthly quota
    at = 2_592_000_000 * 7 + 1999
    keys = request_counter_keys("shop/payments", "someone", rule, "fixed-window", at)
    assert keys["rate"].endswith(f":tenant:fw:{at // 2000}")
    assert keys["quota"].endswith(":quota:2592000:7")
    assert (
        request_counter_keys("shop/payments", "someone", rule, "fixed-window", at + 1)["rate"] != keys["rate"]
    )


def test_credits_counter_only_for_plans_with_credits() -> None:
    fields = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments").documents()
    acme = request_counter_keys(
        "shop/payments", "acme", decode_rule(fields["tenant:acme"]), "token-bucket", 0
    )
    assert acme["credits"] == "apx:c:{shop/payments/acme}:credits"
    assert "quota" not in acme
    assert "credits" not in request_counter_keys(
        "shop/payments", "x", decode_rule(fields["plan:free"]), "token-bucket", 0
    )


def test_hostile_tenant_ids_are_hashed_so_they_cannot_break_the_hash_tag() -> None:
    assert counter_tenant("Globex.Inc") == "Globex.Inc"
    hostile = "evil}:tenant:sw{"
    safe = counter_tenant(hostile)
    assert re.fullmatch(r"~[0-9a-f]{16}", safe)
    rule = Rule(kind="plan", plan="p", tier="free", isolation="shared", rate=Rate.of(1, 1), concurrency=3)
    keys = request_counter_keys("ns/p", hostile, rule, "sliding-window", 0)
    assert {_hash_tag(k) for k in keys.values()} == {f"ns/p/{safe}"}


def test_output_is_independent_of_document_order() -> None:
    documents = _documents("route-table-async-canary")
    first = _render(documents).to_json()
    assert _render(list(reversed(documents))).to_json() == first


def test_every_counter_gets_a_ttl_rate_windows_quota_to_period_end_leases_and_no_ttl_for_credits() -> None:
    fields = _render(_documents("plans-tenants-apikey")).rule_set("shop/payments").documents()
    meta, pro = fields["meta"], decode_rule(fields["plan:pro"])
    now = 86_400_000 * 3 + 1_000
    keys = request_counter_keys("shop/payments", "t", pro, "token-bucket", now, api_key="k")
    ttls = request_counter_ttls_ms(pro, now, meta["lease_ms"])
    assert set(keys) == set(ttls)
    assert ttls == {
        "rate": 2000,
        "api_key_rate": 2000,
        "quota": 86_400_000 - 1_000 + 60_000,
        "concurrency": meta["lease_ms"],
    }
    assert request_counter_ttls_ms(decode_rule(fields["tenant:acme"]), now, 1)["credits"] is None
