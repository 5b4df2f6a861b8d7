"""The Pub/Sub renderer: topics per region x track (x tenant), subscriptions, residency, legal names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.pubsub_v1 import types

from apx.controllers import names
from apx.controllers.ir import IR
from apx.controllers.renderers.pubsub_plan import (
    ResidencyViolation,
    render_pubsub,
    route_topics,
    subscriptions_for_route,
    topics_for_route,
)
from apx.controllers.translate import translate

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "pubsub"
PUBSUB_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
GCP_LABEL = re.compile(r"^[a-z0-9_-]{0,63}$")


def _ir(case: str) -> IR:
    documents = [d for d in yaml.safe_load_all((GOLDEN / case / "input.yaml").read_text()) if d]
    result = translate(documents)
    assert not result.stalled, [s.message for s in result.stalled]
    return result.ir


def _by_id(documents: Any) -> dict[str, dict[str, Any]]:
    return {d["name"].rsplit("/", 1)[-1]: d for d in documents}


def test_one_topic_per_region_and_track_with_dead_letter_topic_and_two_subscriptions() -> None:
    output = render_pubsub(_ir("eu-async-route"))
    topics = _by_id(output.topics)
    assert sorted(topics) == [
        "apx-finance-ledger-exports-europe-west1",
        "apx-finance-ledger-exports-europe-west1.dlq",
        "apx-finance-ledger-exports-europe-west4",
        "apx-finance-ledger-exports-europe-west4.dlq",
    ]
    subscriptions = _by_id(output.subscriptions)
    assert sorted(subscriptions) == sorted(
        f"apx-finance-ledger-exports-{region}.{suffix}"
        for region in ("europe-west1", "europe-west4")
        for suffix in ("workers", "dlq.inspect")
    )


def test_topics_are_pinned_to_their_region_and_enforced_in_transit_for_residencies() -> None:
    for document in render_pubsub(_ir("eu-async-route")).topics:
        policy = document["message_storage_policy"]
        assert policy["allowed_persistence_regions"] == [document["labels"]["apx-region"]]
        assert policy["enforce_in_transit"] is True
    for document in render_pubsub(_ir("namespace-isolation-tenants")).topics:
        assert document["message_storage_policy"]["enforce_in_transit"] is False  # GLOBAL product


def test_worker_subscription_takes_delivery_settings_from_the_route() -> None:
    subscription = _by_id(render_pubsub(_ir("eu-async-route"), project="acme-prod").subscriptions)[
        "apx-finance-ledger-exports-europe-west1.workers"
    ]
    assert (
        subscription["name"]
        == "projects/acme-prod/subscriptions/apx-finance-ledger-exports-europe-west1.workers"
    )
    assert subscription["topic"] == "projects/acme-prod/topics/apx-finance-ledger-exports-europe-west1"
    assert subscription["enable_message_ordering"] is True
    assert subscription["ack_deadline_seconds"] == 180
    assert subscription["retry_policy"] == {
        "minimum_backoff": {"seconds": 1, "nanos": 500_000_000},
        "maximum_backoff": {"seconds": 300},
    }
    assert subscription["dead_letter_policy"] == {
        "dead_letter_topic": "projects/acme-prod/topics/apx-finance-ledger-exports-europe-west1.dlq",
        "max_delivery_attempts": 10,
    }
    assert subscription["expiration_policy"] == {}


def test_retention_above_seven_days_goes_on_the_topic_and_is_capped_on_the_subscription() -> None:
    output = render_pubsub(_ir("eu-async-route"))
    topic = _by_id(output.topics)["apx-finance-ledger-exports-europe-west1"]
    assert topic["message_retention_duration"] == {"seconds": 240 * 3600}
    for subscription in output.subscriptions:
        assert subscription["message_retention_duration"] == {"seconds": 7 * 24 * 3600}
    # Default retention (7 days) needs no topic retention.
    for document in render_pubsub(_ir("canary-route")).topics:
        assert "message_retention_duration" not in document


def test_dead_letter_inspection_subscription_reads_the_dead_letter_topic() -> None:
    subscription = _by_id(render_pubsub(_ir("eu-async-route")).subscriptions)[
        "apx-finance-ledger-exports-europe-west4.dlq.inspect"
    ]
    assert subscription["topic"].endswith("/topics/apx-finance-ledger-exports-europe-west4.dlq")
    assert "dead_letter_policy" not in subscription
    assert subscription["labels"]["apx-kind"] == "dead-letter-inspection"


def test_every_dead_letter_inspection_subscription_is_ordered_whatever_the_route_asks() -> None:
    # Readers see one key's dead letters in the order they failed, and the emulator holds no
    # thread for an ordered subscription until a message arrives (appliers/PUBSUB.md).
    for name in ("eu-async-route", "canary-route", "namespace-isolation-tenants"):
        inspections = [
            s
            for s in render_pubsub(_ir(name)).subscriptions
            if s["labels"]["apx-kind"] == "dead-letter-inspection"
        ]
        assert inspections
        assert all(s["enable_message_ordering"] is True for s in inspections)


def test_canary_track_gets_its_own_topics_even_at_weight_zero() -> None:
    ir = _ir("canary-route")
    send = next(r for r in ir.routes if r.ref.name == "send")
    assert send.canary is not None and send.canary.weight == 0
    plans = route_topics(send)
    assert [(p.track, p.region) for p in plans] == [("stable", "us-east1"), ("canary", "us-east1")]
    assert plans[1].topic == "apx-comms-mail-send-us-east1-canary"


def test_sync_routes_have_no_topics() -> None:
    ir = _ir("canary-route")
    templates = next(r for r in ir.routes if r.ref.name == "templates")
    assert route_topics(templates) == []
    assert "comms/templates" not in render_pubsub(ir).to_json()["routes"]


def test_isolated_tenants_get_topics_in_their_home_region_or_every_region() -> None:
    ir = _ir("namespace-isolation-tenants")
    plans = {(p.tenant, p.region): p for p in route_topics(ir.routes[0])}
    assert set(plans) == {
        (None, "us-central1"),
        (None, "asia-northeast1"),
        ("Pixel.Works", "asia-northeast1"),
        ("reel", "us-central1"),
        ("reel", "asia-northeast1"),
        ("bigscreen", "us-central1"),
    }
    assert plans[("bigscreen", "us-central1")].pool == "studio"
    assert plans[("reel", "us-central1")].pool is None
    assert (
        plans[("Pixel.Works", "asia-northeast1")].topic
        == "apx-studio-media-transcode-asia-northeast1-t-Pixel.Works"
    )


def test_tenant_topics_carry_tenant_and_pool_labels() -> None:
    topics = _by_id(render_pubsub(_ir("namespace-isolation-tenants")).topics)
    dedicated = topics["apx-studio-media-transcode-us-central1-t-bigscreen"]["labels"]
    assert (dedicated["apx-tenant"], dedicated["apx-pool"]) == ("bigscreen", "studio")
    assert (
        topics["apx-studio-media-transcode-asia-northeast1-t-Pixel.Works"]["labels"]["apx-tenant"]
        == "pixel-works"
    )


def test_every_id_and_label_value_is_legal_and_documents_fit_the_admin_api_types() -> None:
    for case in ("eu-async-route", "namespace-isolation-tenants", "canary-route"):
        output = render_pubsub(_ir(case))
        for document in output.topics:
            assert PUBSUB_ID.match(document["name"].rsplit("/", 1)[-1])
            assert all(GCP_LABEL.match(v) and GCP_LABEL.match(k) for k, v in document["labels"].items())
            types.Topic(**document)
        for document in output.subscriptions:
            assert PUBSUB_ID.match(document["name"].rsplit("/", 1)[-1])
            assert all(GCP_LABEL.match(v) for v in document["labels"].values())
            types.Subscription(**document)


def test_long_names_are_shortened_to_legal_ids_and_labels() -> None:
    ir = _ir("eu-async-route")
    route = ir.routes[0]
    long_name = "r" + "-x" * 31
    ref = dataclasses.replace(route.ref, name=long_name, namespace="n" * 63)
    long_route = dataclasses.replace(route, ref=ref)
    output = render_pubsub(dataclasses.replace(ir, routes=(long_route,)))
    for document in (*output.topics, *output.subscriptions):
        assert PUBSUB_ID.match(document["name"].rsplit("/", 1)[-1])
        assert len(document["labels"]["apx-route"]) <= 63


def test_eu_product_with_a_non_eu_region_is_refused_by_the_renderer() -> None:
    ir = _ir("eu-async-route")
    route = ir.routes[0]
    # The Product model rejects this; the renderer must refuse it too if it ever gets through.
    forged = dataclasses.replace(route.product, regions=("europe-west1", "us-central1"))
    forged_ir = dataclasses.replace(ir, routes=(dataclasses.replace(route, product=forged),))
    with pytest.raises(ResidencyViolation, match="us-central1"):
        render_pubsub(forged_ir)


def test_tenant_home_region_outside_the_residency_is_refused() -> None:
    ir = _ir("namespace-isolation-tenants")
    route = ir.routes[0]
    product = dataclasses.replace(route.product, residency="ASIA", regions=("asia-northeast1",))
    with pytest.raises(ResidencyViolation):
        route_topics(dataclasses.replace(route, product=product))


def test_status_helpers_list_topics_and_subscriptions_of_a_route() -> None:
    route = _ir("eu-async-route").routes[0]
    assert topics_for_route(route) == [p.topic for p in route_topics(route)]
    assert subscriptions_for_route(route) == [names.worker_subscription(t) for t in topics_for_route(route)]


def test_parts_that_repeat_across_documents_are_one_object_and_equal_a_fresh_render() -> None:
    # Thousands of async Routes share a handful of durations, storage and retry policies:
    # the documents hold one object of each (and a topic's path once for the topic and its
    # subscriptions), which is what keeps the Pub/Sub plan's memory per Route small.
    output = render_pubsub(_ir("eu-async-route"))
    topics = [t for t in output.topics if not t["name"].endswith(".dlq")]
    assert len(topics) == 2
    policies = {id(t["message_storage_policy"]) for t in output.topics}
    assert len(policies) == 2  # one per region, not one per topic
    workers = [s for s in output.subscriptions if s["labels"]["apx-kind"] == "worker"]
    assert len({id(s["retry_policy"]) for s in workers}) == 1
    assert len({id(s["expiration_policy"]) for s in output.subscriptions}) == 1
    by_name = {t["name"]: t for t in output.topics}
    for worker in workers:
        assert worker["topic"] is by_name[worker["topic"]]["name"]
    # Shared parts are values like any other: a second render is equal, document by document.
    assert render_pubsub(_ir("eu-async-route")) == output
