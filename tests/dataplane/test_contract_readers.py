"""The dataplane's readers, against real Redis, get exactly the records the operator rendered and wrote.

The operator's renderer builds the contract records (``route_record``, ``plan_record``, ...) and its
Redis applier writes their encoding; the async gateway's ``RouteTableReader`` and the rate-limit
service's ``RuleSetReader`` read them back through ``apx.contracts``. Equality of records on both
sides is the contract: no field lost, renamed or defaulted differently on the way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from apx.contracts import redis_keys
from apx.contracts.rule_set import encode_api_key_entry
from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys
from apx.controllers.renderers.redis_rules import (
    meta_record,
    plan_record,
    render_redis,
    route_record,
    tenant_record,
)
from apx.controllers.translate import translate
from apx.dataplane.common.routetable import RouteTableReader
from apx.dataplane.common.rulesets import RuleSetReader

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "redis"
pytestmark = pytest.mark.asyncio


def _documents(case: str, namespace: str) -> list[dict[str, Any]]:
    documents = [
        copy.deepcopy(d) for d in yaml.safe_load_all((GOLDEN / case / "input.yaml").read_text()) if d
    ]
    for document in documents:
        document["metadata"]["namespace"] = namespace
    return documents


async def _publish(redis_url: str, documents: list[dict[str, Any]]) -> Any:
    """Translate, render and write exactly as the operator does; returns the IR and the rendered output."""
    result = translate(documents)
    assert not result.stalled, [s.message for s in result.stalled]
    output = render_redis(result.ir)
    applier = RedisApplier(redis_url)
    try:
        for rule_set in output.rule_sets:
            keys = VersionedKeys(
                redis_keys.ruleset_version_prefix(rule_set.product),
                rule_set.current_key,
                rule_set.versions_key,
            )
            await applier.publish(keys, rule_set.version, dict(rule_set.fields))
        table = output.route_table
        keys = VersionedKeys(redis_keys.route_table_version_prefix(), table.current_key, table.versions_key)
        await applier.publish(keys, table.version, dict(table.entries))
    finally:
        await applier.close()
    return result.ir, output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["route-table-async-canary", "plans-tenants-apikey"])
async def test_the_gateway_reads_the_route_entries_the_operator_rendered(redis_url: str, case: str) -> None:
    ir, output = await _publish(redis_url, _documents(case, f"t{uuid.uuid4().hex[:10]}"))
    client = aioredis.Redis.from_url(redis_url)
    reader = RouteTableReader(client)
    try:
        table = await reader.snapshot()
        assert table.version == output.route_table.version
        assert set(table.entries) == {route.key for route in ir.routes}
        for route in ir.routes:
            assert table.entries[route.key] == route_record(route)
    finally:
        await reader.close()
        await client.aclose()


@pytest.mark.timeout(60)
async def test_the_rate_limit_service_reads_the_rules_and_meta_the_operator_rendered(redis_url: str) -> None:
    ir, output = await _publish(redis_url, _documents("plans-tenants-apikey", f"t{uuid.uuid4().hex[:10]}"))
    client = aioredis.Redis.from_url(redis_url)
    reader = RuleSetReader(client)
    try:
        for product in ir.products:
            rendered = output.rule_set(product.key)
            routes = tuple(
                sorted((r for r in ir.routes if r.product.key == product.key), key=lambda r: r.key)
            )
            meta = dataclasses.replace(meta_record(product, routes), version=rendered.version)
            plans = {plan.name: plan for plan in product.plans}
            for tenant in product.tenants:
                match = await reader.lookup(product.key, tenant.id, None)
                assert match is not None
                assert (match.version, match.field) == (rendered.version, f"tenant:{tenant.id}")
                assert match.meta == meta
                assert match.rule == tenant_record(tenant, plans[tenant.plan])
            for plan in product.plans:
                match = await reader.lookup(product.key, "someone-unlisted", plan.name)
                assert match is not None and match.rule == plan_record(plan)
            fallback = await reader.lookup(product.key, "someone-unlisted", "no-such-plan")
            assert fallback is not None and fallback.field == "default"
            assert fallback.rule == plan_record(plans[product.default_plan])
            # The key table: what key management writes (the contract's encoder), the service resolves.
            await client.hset(
                redis_keys.api_key_table_key(product.key),
                redis_keys.api_key_id("k-1"),
                encode_api_key_entry("tenant-of-k1"),
            )
            assert await reader.api_key_tenant(product.key, "k-1") == "tenant-of-k1"
    finally:
        await reader.close()
        await client.aclose()


@pytest.mark.timeout(60)
async def test_an_entry_that_breaks_the_contract_is_skipped_and_the_others_still_serve(
    redis_url: str,
) -> None:
    ir, output = await _publish(
        redis_url, _documents("route-table-async-canary", f"t{uuid.uuid4().hex[:10]}")
    )
    client = aioredis.Redis.from_url(redis_url)
    version = f"broken{uuid.uuid4().hex[:8]}"
    entries = dict(output.route_table.entries)
    entries["ns/broken"] = json.dumps(
        {"route": "ns/broken", "mode": "async", "product": "ns/p", "tracks": []}
    )
    await client.hset(redis_keys.route_table_key(version), mapping=entries)
    await client.set(redis_keys.route_table_current_key(), version)
    reader = RouteTableReader(client)
    try:
        table = await reader.snapshot()
        assert set(table.entries) == {route.key for route in ir.routes}
    finally:
        await reader.close()
        # Leave the operator's table current again for whoever reads it next.
        await client.set(redis_keys.route_table_current_key(), output.route_table.version)
        await client.delete(redis_keys.route_table_key(version))
        await client.aclose()
