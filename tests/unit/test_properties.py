"""Properties of translate and the Redis, Pub/Sub and Kubernetes renderers on generated valid objects."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apx.contracts.rule_set import decode_rule
from apx.controllers.renderers.kubernetes import render_kubernetes
from apx.controllers.renderers.pubsub_plan import render_pubsub, route_topics
from apx.controllers.renderers.redis_rules import ALGORITHM_CODES, render_redis, request_counter_keys
from apx.controllers.translate import TranslateResult, translate
from tests.strategies import eu_worlds, worlds

SNAPSHOT = {"version": "property", "resources": {}}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _translate(documents: list[dict[str, Any]]) -> TranslateResult:
    result = translate(documents)
    assert not result.stalled, [s.message for s in result.stalled]
    return result


def _rendered(documents: list[dict[str, Any]]) -> str:
    ir = _translate(documents).ir
    everything = {
        "redis": render_redis(ir).to_json(),
        "pubsub": render_pubsub(ir).to_json(),
        "kubernetes": render_kubernetes(ir, SNAPSHOT).to_json(),
    }
    return json.dumps(everything, sort_keys=True)


def _hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: between the first ``{`` and the next ``}``."""
    start = key.find("{")
    end = key.find("}", start + 1)
    assert start >= 0 and end > start + 1, key
    return key[start + 1 : end]


@FAST
@given(worlds())
def test_track_weights_of_every_route_sum_to_100(documents: list[dict[str, Any]]) -> None:
    ir = _translate(documents).ir
    for route in ir.routes:
        assert sum(track.weight for track in route.tracks) == 100
        assert all(0 <= track.weight <= 100 for track in route.tracks)
    for entry in render_redis(ir).route_table.documents().values():
        assert sum(track["weight"] for track in entry["tracks"]) == 100


@FAST
@given(eu_worlds())
def test_eu_products_never_yield_a_topic_or_persistence_region_outside_europe(
    documents: list[dict[str, Any]],
) -> None:
    ir = _translate(documents).ir
    output = render_pubsub(ir)
    for topic in output.topics:
        regions = topic["message_storage_policy"]["allowed_persistence_regions"]
        assert regions and all(region.startswith("europe-") for region in regions)
        assert topic["message_storage_policy"]["enforce_in_transit"] is True
    for route in ir.routes:
        assert all(plan.region.startswith("europe-") for plan in route_topics(route))
    for entry in render_redis(ir).route_table.documents().values():
        regions = [r for by_region in entry["topics"].values() for r in by_region]
        regions += [r for tracks in entry["tenant_topics"].values() for by in tracks.values() for r in by]
        assert all(region.startswith("europe-") for region in regions)


@FAST
@given(worlds(), st.randoms(use_true_random=False))
def test_translate_and_renderers_are_deterministic_and_ignore_document_order(
    documents: list[dict[str, Any]], random: Any
) -> None:
    first = _rendered(documents)
    assert _rendered(json.loads(json.dumps(documents))) == first
    shuffled = list(documents)
    random.shuffle(shuffled)
    assert _rendered(shuffled) == first


@FAST
@given(
    worlds(),
    st.text(min_size=1, max_size=40),
    st.one_of(st.none(), st.text(min_size=1, max_size=60)),
    st.sampled_from(sorted(ALGORITHM_CODES)),
    st.integers(0, 2**45),
)
def test_every_counter_key_of_a_request_shares_one_hash_tag(
    documents: list[dict[str, Any]], tenant: str, api_key: str | None, algorithm: str, now_ms: int
) -> None:
    output = render_redis(_translate(documents).ir)
    for rule_set in output.rule_sets:
        assert {_hash_tag(k) for k in (rule_set.key, rule_set.current_key, rule_set.versions_key)} == {
            rule_set.product
        }
        for field, rule in rule_set.documents().items():
            if rule["kind"] not in ("plan", "tenant"):
                continue
            who = rule.get("tenant", tenant) if field.startswith("tenant:") else tenant
            keys = request_counter_keys(
                rule_set.product, who, decode_rule(rule), algorithm, now_ms, api_key=api_key
            )
            assert len({_hash_tag(key) for key in keys.values()}) == 1, keys
            assert _hash_tag(keys["rate"]).startswith(rule_set.product + "/")


@SLOW
@given(worlds())
def test_every_rendered_manifest_validates_with_kubernetes_validate(documents: list[dict[str, Any]]) -> None:
    for manifest in render_kubernetes(_translate(documents).ir, SNAPSHOT).to_json():
        kubernetes_validate.validate(manifest, "1.30", strict=True)
