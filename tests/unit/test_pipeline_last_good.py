"""The pure pipeline's serving guarantees, as ``apx translate`` and the operator both get them.

Offline there is no last good spec: a spec that fails a later stage is
Stalled and left out, and nothing raises. With a last good body (what the
operator keeps) the failing object is rendered from it instead.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from apx.controllers.pipeline import compile_resources, finish, first_stage

ROOT = Path(__file__).resolve().parents[2]


def _samples() -> list[dict[str, Any]]:
    return [
        d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def _named(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in documents if d["metadata"]["name"] == name and d["kind"] == "Route")


def _colliding_routes() -> tuple[dict[str, Any], dict[str, Any]]:
    jobs = copy.deepcopy(_named(_samples(), "ledger-exports"))
    jobs["metadata"]["name"] = "jobs"
    jobs["spec"]["match"]["hosts"] = ["jobs.example.eu"]
    twin = copy.deepcopy(jobs)
    twin["metadata"]["name"] = "jobs-enterprise"
    twin["spec"]["match"]["hosts"] = ["jobs-enterprise.example.eu"]
    return jobs, twin


def test_offline_worker_names_that_collide_stall_one_route_instead_of_failing_the_render() -> None:
    jobs, twin = _colliding_routes()
    jobs["spec"]["productRef"]["name"] = "payments"  # dedicated "enterprise" pool: the twin's name
    compiled = compile_resources([*_samples(), jobs, twin])
    statuses = {key: s for key, s in compiled.statuses.items() if key[0] == "Route"}
    stalled = [s for s in statuses.values() if s.phase == "Stalled"]
    assert len(stalled) == 1
    assert stalled[0].reason == "RenderError"
    assert "apx-worker-jobs-enterprise-stable" in stalled[0].message
    served = {r.key for r in compiled.ir.routes}
    assert stalled[0].key not in served
    assert {"default/jobs", "default/jobs-enterprise"} - {stalled[0].key} <= served


def test_with_a_last_good_body_the_route_whose_spec_changed_gives_way_and_serves_its_old_spec() -> None:
    jobs, twin = _colliding_routes()
    good = copy.deepcopy(jobs)
    jobs["spec"]["productRef"]["name"] = "payments"
    documents = [*_samples(), jobs, twin]
    last_good = {("Route", "default/jobs"): good, ("Route", "default/jobs-enterprise"): twin}
    compiled = finish(first_stage(documents, last_good=last_good))
    status = compiled.statuses[("Route", "default/jobs")]
    assert status.phase == "Stalled" and "collide" in status.message
    served = {r.key: r for r in compiled.ir.routes}
    assert served["default/jobs"].product.key == "default/ledger"  # the last good spec
    assert compiled.statuses[("Route", "default/jobs-enterprise")].phase == "Ready"
    assert ("Route", "default/jobs") in compiled.failures


def test_header_regex_re2_refuses_is_rendered_from_the_last_good_spec() -> None:
    documents = _samples()
    route = _named(documents, "payments-legacy")
    good = copy.deepcopy(route)
    route["spec"]["match"]["headers"] = [{"name": "x-client", "regex": "(?=abc)abc"}]
    compiled = finish(first_stage(documents, last_good={("Route", "default/payments-legacy"): good}))
    status = compiled.statuses[("Route", "default/payments-legacy")]
    assert status.stalled and "spec.match.headers[0]" in status.message
    served = {r.key: r for r in compiled.ir.routes}
    assert served["default/payments-legacy"].match.headers == ()
    assert "default/payments-legacy" in dict(compiled.redis.route_table.entries)
    # Offline (no last good) it is left out of every output.
    offline = compile_resources(documents)
    assert "default/payments-legacy" not in {r.key for r in offline.ir.routes}
    assert "default/payments-legacy" not in dict(offline.redis.route_table.entries)
    assert offline.statuses[("Route", "default/payments-legacy")].message == status.message


def test_offline_a_newer_bundle_version_keeps_serving_the_version_routes_pin() -> None:
    documents = _samples()
    newer = copy.deepcopy(
        next(d for d in documents if d["kind"] == "PolicyBundle" and d["spec"]["version"] == "1.3.0")
    )
    newer["spec"]["version"] = "1.4.0"
    compiled = compile_resources([*documents, newer])
    bundle = compiled.statuses[("PolicyBundle", "default/payments-policy")]
    assert bundle.phase == "Ready" and bundle.reason == "VersionsPinned"
    served = {v["version"]: v for v in bundle.summary["servedVersions"]}
    assert list(served) == ["1.4.0", "1.3.0", "1.2.0"]
    assert served["1.2.0"]["pinnedBy"] == ["default/payments-charges", "default/payments-legacy"]
    for name in ("payments-charges", "payments-legacy"):
        assert compiled.statuses[("Route", f"default/{name}")].phase == "Ready"
    # Without those pins, 1.2.0 is no longer served.
    for name in ("payments-charges", "payments-legacy"):
        route = _named(documents, name)
        route["spec"]["policyRef"]["version"] = "1.3.0"
        route["spec"].get("canary", {}).pop("policyVersion", None)
    moved = compile_resources([*documents, newer])
    bundle = moved.statuses[("PolicyBundle", "default/payments-policy")]
    assert bundle.reason == "Ready"
    assert [v["version"] for v in bundle.summary["servedVersions"]] == ["1.4.0", "1.3.0"]


def test_a_route_only_envoy_validation_refuses_is_stalled_by_name_and_served_from_its_last_good_spec(
    monkeypatch: Any,
) -> None:
    """The full Envoy validation runs per route before the snapshot; a refusal is that Route's alone.

    No spec the models accept is known to fail validation (the models and the
    renderer's own checks come first), so the validator is made to refuse the
    new spec of one Route — a timeout of 7s — as Envoy would refuse something
    the earlier checks missed.
    """
    from apx.controllers.renderers.envoy import route_config

    original = route_config.entry_problems

    def refuse_7s(encoded: bytes) -> tuple[str, ...]:
        entry = route_config.route_pb.Route.FromString(encoded)
        if entry.name.endswith("payments-legacy") and entry.route.timeout.seconds == 7:
            return ("route.timeout: refused by the validator (test)",)
        return original(encoded)

    monkeypatch.setattr(route_config, "entry_problems", refuse_7s)
    documents = _samples()
    route = _named(documents, "payments-legacy")
    good = copy.deepcopy(route)
    route["spec"]["timeout"] = "7s"
    compiled = finish(first_stage(documents, last_good={("Route", "default/payments-legacy"): good}))
    status = compiled.statuses[("Route", "default/payments-legacy")]
    assert status.phase == "Stalled" and status.reason == "RenderError"
    assert "Envoy would refuse the route" in status.message and "route.timeout" in status.message
    served = {r.key: r for r in compiled.ir.routes}
    assert served["default/payments-legacy"].timeout_ms == int(good["spec"].get("timeout", "30s")[:-1]) * 1000
    assert compiled.envoy.errors == {}
    # Every other Route is Ready and rendered; offline the refused Route is left out of every output.
    others = [
        s
        for (kind, key), s in compiled.statuses.items()
        if kind == "Route" and key != "default/payments-legacy"
    ]
    assert others and all(s.phase == "Ready" for s in others)
    offline = compile_resources(documents)
    assert "default/payments-legacy" not in {r.key for r in offline.ir.routes}
    assert (
        "default/payments-legacy" in offline.envoy.errors
        or offline.statuses[("Route", "default/payments-legacy")].reason == "RenderError"
    )
