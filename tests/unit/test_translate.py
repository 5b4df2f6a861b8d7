"""The translator: references, canary weights, policy history, isolation of errors, determinism."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from apx.controllers.models.common import shared_default
from apx.controllers.models.resources import Route
from apx.controllers.models.route import CanaryStatus
from apx.controllers.status import build_conditions
from apx.controllers.translate import canary_revision, translate

ROOT = Path(__file__).resolve().parents[2]


def _samples() -> list[dict[str, Any]]:
    return [
        d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def _by_name(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def test_route_created_before_its_product_is_reconciling_then_ready_once_the_product_exists() -> None:
    documents = _samples()
    without_product = [
        d for d in documents if not (d["kind"] == "Product" and d["metadata"]["name"] == "ledger")
    ]
    before = translate(without_product)
    status = before.statuses[("Route", "default/ledger-exports")]
    # kstatus: the Product may still appear, so the Route waits (Reconciling), it is not Stalled.
    assert status.phase == "Reconciling"
    assert status.reason == "ProductNotFound"
    assert status.stalled, "still left out of what is served"
    conditions = {c["type"]: c["status"] for c in status.to_dict()["conditions"]}
    assert conditions == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert "spec.productRef.name" in status.message
    after = translate(documents)
    assert after.statuses[("Route", "default/ledger-exports")].phase == "Ready"


def test_one_bad_route_does_not_stop_the_other_routes() -> None:
    documents = _samples()
    broken = copy.deepcopy(_by_name(documents, "Route", "payments-legacy"))
    broken["spec"]["policyRef"]["version"] = "9.9.9"
    result = translate([d for d in documents if d["metadata"]["name"] != "payments-legacy"] + [broken])
    # A version not served yet may still be applied: the Route waits for it.
    assert result.statuses[("Route", "default/payments-legacy")].phase == "Reconciling"
    assert result.statuses[("Route", "default/payments-legacy")].reason == "PolicyVersionNotServed"
    assert {r.key for r in result.ir.routes} == {"default/payments-charges", "default/ledger-exports"}


def test_canary_weight_comes_from_route_status_when_the_revision_matches() -> None:
    documents = _samples()
    route = _by_name(documents, "Route", "payments-charges")
    from apx.controllers.models.route import Canary

    revision = canary_revision(Canary.model_validate(route["spec"]["canary"]))
    route["status"] = {"canary": {"phase": "Progressing", "revision": revision, "step": 1, "weight": 25}}
    result = translate(documents)
    charges = next(r for r in result.ir.routes if r.key == "default/payments-charges")
    assert charges.canary is not None
    assert (charges.stable.weight, charges.canary.weight) == (75, 25)
    assert result.statuses[("Route", "default/payments-charges")].summary["canaryWeight"] == 25


def test_canary_progress_of_an_older_canary_block_is_ignored() -> None:
    documents = _samples()
    route = _by_name(documents, "Route", "payments-charges")
    route["status"] = {"canary": {"phase": "Progressing", "revision": "stale", "step": 2, "weight": 50}}
    charges = next(r for r in translate(documents).ir.routes if r.key == "default/payments-charges")
    assert charges.canary is not None and charges.canary.weight == 0
    assert charges.canary_state is not None and charges.canary_state.phase == "Pending"


def test_rendering_at_a_new_weight_is_a_pure_call_with_canary_states() -> None:
    documents = _samples()
    for weight in (10, 50, 100):
        result = translate(
            documents,
            canary_states={"default/payments-charges": CanaryStatus(phase="Progressing", weight=weight)},
        )
        charges = next(r for r in result.ir.routes if r.key == "default/payments-charges")
        assert charges.canary is not None
        assert charges.stable.weight + charges.canary.weight == 100
        assert charges.canary.weight == weight


def test_rolled_back_canary_gets_no_traffic_and_promoted_gets_all() -> None:
    documents = _samples()
    for phase, expected in (("RolledBack", 0), ("Promoted", 100)):
        result = translate(
            documents, canary_states={"default/payments-charges": CanaryStatus(phase=phase, weight=40)}
        )
        charges = next(r for r in result.ir.routes if r.key == "default/payments-charges")
        assert charges.canary is not None and charges.canary.weight == expected


def test_canary_track_uses_new_backend_and_new_policy_version() -> None:
    charges = next(r for r in translate(_samples()).ir.routes if r.key == "default/payments-charges")
    assert charges.canary is not None
    assert charges.stable.backend.cluster == "svc/default/charges-v1:8080"
    assert charges.canary.backend.cluster == "svc/default/charges-v2:8080"
    assert (charges.stable.policy.version, charges.canary.policy.version) == ("1.2.0", "1.3.0")


def test_previous_version_is_served_from_the_live_objects_status() -> None:
    documents = _samples()
    first = translate(documents)
    served = first.statuses[("PolicyBundle", "default/payments-policy")].summary["servedVersions"]
    live = copy.deepcopy(_by_name(documents, "PolicyBundle", "payments-policy"))
    live["spec"]["version"] = "1.3.0"
    live["spec"]["auth"]["apiKey"] = {"header": "x-api-key"}
    v13 = next(d for d in documents if d["kind"] == "PolicyBundle" and d["spec"]["version"] == "1.3.0")
    live = copy.deepcopy(v13)
    live["status"] = {"servedVersions": served}
    others = [d for d in documents if d["kind"] != "PolicyBundle"]
    result = translate([*others, live])
    versions = {p.version: p.current for p in result.ir.policies}
    assert versions == {"1.3.0": True, "1.2.0": False}
    assert result.statuses[("Route", "default/payments-legacy")].phase == "Ready"


def test_a_version_the_status_already_serves_is_compiled_from_the_live_spec_not_a_second_copy() -> None:
    """The status's copy of the served spec (kept for N-1) is not held as a second model of N."""
    from apx.controllers.models.policy import PolicyBundleSpec, ServedVersion
    from apx.controllers.policy_artifacts import compile_policy, resolve_history

    bundle = _by_name(_samples(), "PolicyBundle", "payments-policy")
    spec = PolicyBundleSpec.model_validate(bundle["spec"])
    status_entry = compile_policy("p", spec).served_version().model_dump(by_alias=True)
    served = [ServedVersion.model_validate(status_entry)]
    history = resolve_history("p", [spec], served)
    assert history.served is not None and history.error is None
    assert history.served.current.spec is spec
    assert history.served.current == compile_policy("p", spec)
    # A status whose copy differs (an operational field only: same artifact) keeps the status's compilation.
    changed = spec.model_copy(update={"deletion_policy": "Delete"})
    assert compile_policy("p", changed).digest == served[0].digest
    assert resolve_history("p", [changed], served).served.current.spec == spec  # type: ignore[union-attr]


def test_bad_policy_apply_keeps_serving_previous_versions() -> None:
    documents = _samples()
    bad = copy.deepcopy(_by_name(documents, "PolicyBundle", "payments-policy"))
    bad["spec"]["version"] = "1.4.0"
    bad["spec"]["compat"] = "breaking"
    result = translate([*documents, bad])
    status = result.statuses[("PolicyBundle", "default/payments-policy")]
    assert status.phase == "Stalled" and "major version bump" in status.message
    assert {p.version for p in result.ir.policies} == {"1.2.0", "1.3.0"}
    assert all(s.phase == "Ready" for k, s in result.statuses.items() if k[0] == "Route")


def test_translate_is_deterministic_and_independent_of_document_order() -> None:
    documents = _samples()
    reference = translate(documents)
    rng = random.Random(7)
    for _ in range(5):
        shuffled = documents[:]
        rng.shuffle(shuffled)
        # PolicyBundle history order is by version, so shuffling those is fine too.
        result = translate(shuffled)
        assert result.ir == reference.ir
        assert {k: s.to_dict() for k, s in result.statuses.items()} == {
            k: s.to_dict() for k, s in reference.statuses.items()
        }


def test_observed_generation_and_kstatus_conditions() -> None:
    documents = _samples()
    product = _by_name(documents, "Product", "payments")
    product["metadata"]["generation"] = 7
    status = translate(documents).statuses[("Product", "default/payments")].to_dict()
    assert status["observedGeneration"] == 7
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}


def test_condition_transition_time_only_moves_when_status_changes() -> None:
    result = translate(_samples())
    status = result.statuses[("Product", "default/payments")]
    first = build_conditions(status, "2026-01-01T00:00:00Z", [])
    again = build_conditions(status, "2026-01-02T00:00:00Z", first)
    assert [c["lastTransitionTime"] for c in again] == ["2026-01-01T00:00:00Z"] * 3


def test_non_apx_documents_are_ignored_and_reported() -> None:
    result = translate([*_samples(), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}])
    assert ("Namespace", "default/x") in result.ignored


def test_offline_objects_get_stable_placeholder_uids() -> None:
    a = translate(_samples()).ir.routes[0].ref.uid
    b = translate(_samples()).ir.routes[0].ref.uid
    assert a == b and len(a) == 36


def test_status_the_operator_wrote_changes_nothing_even_when_malformed() -> None:
    from apx.controllers.models.route import Canary

    documents = copy.deepcopy(_samples())
    route = _by_name(documents, "Route", "payments-charges")
    revision = canary_revision(Canary.model_validate(route["spec"]["canary"]))
    route["status"] = {"canary": {"phase": "Progressing", "revision": revision, "step": 1, "weight": 25}}
    plain = translate(copy.deepcopy(documents))

    written = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "x" * 500}],
        "topics": [f"topic-{i}" for i in range(50)],
        "deployments": ["apx-worker-a-stable"],
        "kopf": {"progress": {}},
        "observedGeneration": "not a number",  # malformed: never read, so never an error
    }
    for document in documents:
        document["status"] = {**(document.get("status") or {}), **written}
    busy = translate(documents)

    assert busy.ir == plain.ir
    assert busy.statuses == plain.statuses
    charges = next(r for r in busy.ir.routes if r.key == "default/payments-charges")
    assert charges.canary is not None and charges.canary.weight == 25


def test_omitted_nested_settings_share_one_frozen_default_and_mutable_models_cannot() -> None:
    documents = _samples()
    routes = [doc for doc in documents if doc["kind"] == "Route" and "retries" not in doc["spec"]]
    first, second = (Route.model_validate(doc) for doc in routes[:2])
    # One instance, not one validation per object; safe because it cannot change.
    assert first.spec.retries is second.spec.retries
    with pytest.raises(ValidationError):
        first.spec.retries.attempts = 9  # type: ignore[misc]

    class Mutable(BaseModel):
        value: int = 0

    with pytest.raises(TypeError, match="mutable"):
        shared_default(Mutable)
