"""The translator's layout: one step per kind around one context, summaries owned by one module.

Behaviour is pinned elsewhere (``test_translate``, ``test_golden``,
``test_incremental``); these tests pin the structure a newcomer relies on —
each step adds only its own kind to the context, the compatibility module is
the package, no function grows past a screen — and the pure status overlays
in ``translation.summaries`` that the pipeline and the operator apply.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from apx.controllers import translate as compat
from apx.controllers import translation
from apx.controllers.pipeline import compile_resources
from apx.controllers.status import ResourceStatus, ready, stalled
from apx.controllers.translation import summaries
from apx.controllers.translation.context import TranslationContext
from apx.controllers.translation.parse import parse_resources
from apx.controllers.translation.policybundles import process_policy_bundles
from apx.controllers.translation.products import process_products
from apx.controllers.translation.routes import process_routes

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "apx" / "controllers" / "translation"
MAX_FUNCTION_LINES = 60


def _samples() -> list[dict[str, Any]]:
    return [
        d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def test_the_package_has_one_module_per_step_and_kind() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == {
        "__init__",
        "context",
        "errors",
        "facts",
        "incremental",
        "parse",
        "policybundles",
        "products",
        "routes",
        "summaries",
    }


def test_no_function_of_the_translator_is_longer_than_a_screen() -> None:
    long = []
    for module in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module.name}:{node.name} has {length} lines")
    assert not long, long


def test_the_compatibility_module_re_exports_the_package_objects_themselves() -> None:
    for name in compat.__all__:
        assert getattr(compat, name) is getattr(translation, name), name
    assert compat.translate is translation.translate


def test_each_step_adds_only_its_own_kind_to_the_context() -> None:
    ctx = TranslationContext()
    parse_resources(ctx, [*_samples(), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}])
    assert ctx.ignored == [("ConfigMap", "default/x")]
    assert set(ctx.products) == {"default/payments", "default/ledger"}
    assert set(ctx.bundle_applies) == {"default/payments-policy"}
    assert len(ctx.routes) == 3 and not ctx.statuses

    process_policy_bundles(ctx)
    assert {k[0] for k in ctx.statuses} == {"PolicyBundle"}
    assert sorted(ctx.policy_irs["default/payments-policy"]) == ["1.2.0", "1.3.0"]
    assert not ctx.product_irs

    process_products(ctx)
    assert {k[0] for k in ctx.statuses} == {"PolicyBundle", "Product"}
    assert set(ctx.product_irs) == set(ctx.products) and not ctx.route_irs

    process_routes(ctx)
    assert [r.key for r in ctx.route_irs] == sorted(ctx.routes)
    assert all(ctx.statuses[("Route", key)].phase == "Ready" for key in ctx.routes)
    # The Route step counts each Product's Routes on the Product's status.
    counted = {key: ctx.statuses[("Product", key)].summary["routes"] for key in ctx.products}
    assert counted == {k: len(v) for k, v in ctx.routes_by_product.items()}

    result = ctx.result()
    assert result == translation.translate([*_samples(), {"kind": "ConfigMap", "metadata": {"name": "x"}}])


def test_a_route_step_without_products_waits_for_the_product_and_leaves_the_route_out() -> None:
    ctx = TranslationContext()
    parse_resources(ctx, [d for d in _samples() if d["kind"] != "Product"])
    process_policy_bundles(ctx)
    process_products(ctx)
    process_routes(ctx)
    assert not ctx.route_irs
    statuses = [ctx.statuses[("Route", key)] for key in ctx.routes]
    assert {s.reason for s in statuses} == {"ProductNotFound"}
    assert all(s.phase == "Reconciling" and s.waits_for_reference for s in statuses)


def test_every_summary_key_written_anywhere_is_one_the_operator_clears_when_it_disappears() -> None:
    from apx.operator.reconciler import SUMMARY_KEYS

    assert tuple(SUMMARY_KEYS) == summaries.SUMMARY_KEYS
    compiled = compile_resources(_samples())
    written = {key for status in compiled.statuses.values() for key in status.summary}
    route = next(
        s for (kind, _), s in compiled.statuses.items() if kind == "Route" and s.summary["deployments"]
    )
    overlaid = summaries.with_in_use(summaries.with_workers(route, {"stable": {"ready": 1}}, None), ["a/b"])
    written |= set(overlaid.summary)
    assert written <= set(summaries.SUMMARY_KEYS)
    assert {"topics", "ruleSetVersion", "deployments", "servedVersions", "workers", "inUseBy"} <= written


def test_output_summaries_put_the_rule_set_version_on_products_only_and_topics_on_both() -> None:
    compiled = compile_resources(_samples())
    for (kind, key), status in compiled.statuses.items():
        if kind == "Route":
            assert "ruleSetVersion" not in status.summary
        if kind == "Product":
            assert status.summary["ruleSetVersion"] == compiled.redis.rule_set(key).version
    ledger = compiled.statuses[("Product", "default/ledger")].summary
    route = compiled.statuses[("Route", "default/ledger-exports")].summary
    assert ledger["topics"] == sorted(route["topics"]) and route["topics"]


def _status(phase: str = "Ready") -> ResourceStatus:
    if phase == "Ready":
        return ready("Route", "default/r", 3, "sync route on a", {"canaryWeight": 0})
    return stalled("Route", "default/r", 3, "InvalidSpec", "spec: bad", {"canaryWeight": 0})


@pytest.mark.parametrize(
    ("phase", "waiting", "expected"),
    [
        ("Ready", None, ("Ready", "Ready")),
        ("Ready", "deployment r-stable has 0 of 1 available", ("Reconciling", "WorkersUnavailable")),
        ("Stalled", "deployment r-stable has 0 of 1 available", ("Stalled", "InvalidSpec")),
    ],
)
def test_with_workers_adds_the_workers_and_only_a_ready_status_waits_for_them(
    phase: str, waiting: str | None, expected: tuple[str, str]
) -> None:
    status = _status(phase)
    before = copy.deepcopy(status)
    overlaid = summaries.with_workers(status, {"stable": {"available": 0}}, waiting)
    assert (overlaid.phase, overlaid.reason) == expected
    assert overlaid.summary == {"canaryWeight": 0, "workers": {"stable": {"available": 0}}}
    assert status == before  # the translated status is left as it was
    assert "workers" not in summaries.with_workers(status, {}, None).summary


def test_with_in_use_keeps_a_ready_object_ready_and_names_the_routes_using_it() -> None:
    overlaid = summaries.with_in_use(_status(), ["default/a", "default/b"])
    assert (overlaid.phase, overlaid.reason) == ("Ready", "InUse")
    assert overlaid.message == "being deleted, still serving: in use by Route default/a, default/b"
    assert overlaid.summary["inUseBy"] == ["default/a", "default/b"]
    not_ready = _status("Stalled")
    assert summaries.with_in_use(not_ready, ["default/a"]) is not_ready
    assert summaries.with_in_use(_status(), None).reason == "Ready"


def test_with_problem_reports_a_failed_target_and_keeps_the_summary() -> None:
    overlaid = summaries.with_problem(_status(), False, "RedisUnavailable", "connection refused; retrying")
    assert (overlaid.phase, overlaid.reason, overlaid.message) == (
        "Reconciling",
        "RedisUnavailable",
        "connection refused; retrying",
    )
    assert overlaid.summary == {"canaryWeight": 0}
    assert summaries.with_problem(_status(), True, "X", "y").phase == "Stalled"
