"""CRDs: registration and unregistration, defaulting, pruning, validation and CEL rules (Widget CRD)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.kubeemu.emuhelpers import WIDGET_CRD, WIDGETS, Api, widget

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def causes(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["kind"] == "Status" and body["reason"] == "Invalid"
    return [(cause["field"], cause["message"]) for cause in body["details"]["causes"]]


# ------------------------------------------------------------ registration


def test_creating_a_crd_registers_endpoints_and_discovery(api: Api) -> None:
    crd = api.get(f"{CRDS}/widgets.test.kubeemu.dev").json()
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert crd["status"]["acceptedNames"]["kind"] == "Widget"
    resources = api.get("/apis/test.kubeemu.dev/v1").json()["resources"]
    widgets = next(r for r in resources if r["name"] == "widgets")
    assert widgets["kind"] == "Widget" and widgets["namespaced"] is True
    assert widgets["shortNames"] == ["wd"] and widgets["categories"] == ["widgetry"]
    assert {"create", "list", "watch", "patch", "delete"} <= set(widgets["verbs"])
    assert any(r["name"] == "widgets/status" for r in resources)
    groups = [g["name"] for g in api.get("/apis").json()["groups"]]
    assert "test.kubeemu.dev" in groups


def test_deleting_a_crd_deletes_its_objects_and_unregisters_it(api: Api) -> None:
    api.create(WIDGETS, widget("w"))
    assert api.delete(f"{CRDS}/widgets.test.kubeemu.dev").status_code == 200
    assert api.get(f"{CRDS}/widgets.test.kubeemu.dev").status_code == 404
    assert api.get(WIDGETS).status_code == 404
    assert api.get("/apis/test.kubeemu.dev/v1").status_code == 404
    assert "test.kubeemu.dev" not in [g["name"] for g in api.get("/apis").json()["groups"]]


def test_crd_deletion_waits_for_instance_finalizers(api: Api) -> None:
    api.create(WIDGETS, {**widget("w"), "metadata": {"name": "w", "finalizers": ["x.dev/hold"]}})
    api.delete(f"{CRDS}/widgets.test.kubeemu.dev")
    crd = api.get(f"{CRDS}/widgets.test.kubeemu.dev").json()
    assert crd["metadata"]["deletionTimestamp"]
    api.patch(f"{WIDGETS}/w", {"metadata": {"finalizers": None}})
    assert api.get(f"{CRDS}/widgets.test.kubeemu.dev").status_code == 404


def test_an_invalid_crd_is_refused(api: Api) -> None:
    crd = copy.deepcopy(WIDGET_CRD)
    crd["metadata"]["name"] = "wrong.name"
    crd["spec"]["names"]["plural"] = "gadgets"
    fields = [field for field, _ in causes(api.post(CRDS, crd))]
    assert "metadata.name" in fields


def test_updating_a_crd_schema_takes_effect(api: Api) -> None:
    crd = api.get(f"{CRDS}/widgets.test.kubeemu.dev").json()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"][
        "maximum"
    ] = 3
    assert api.put(f"{CRDS}/widgets.test.kubeemu.dev", crd).status_code == 200
    assert api.post(WIDGETS, widget("w", size=5)).status_code == 422


def test_unknown_kinds_and_groups_are_404(api: Api) -> None:
    assert api.get("/apis/nope.dev/v1/namespaces/default/things").status_code == 404
    assert api.get("/apis/nope.dev").status_code == 404


# ------------------------------------------------------------------ schema


def test_defaults_are_applied_recursively_to_absent_fields(api: Api) -> None:
    spec = api.create(WIDGETS, widget("w"))["spec"]
    assert spec == {
        "size": 1,
        "mode": "sync",
        "residency": "GLOBAL",
        "regions": [],
        "timeout": "30s",
        "retry": {"attempts": 3},
    }
    explicit = api.create(WIDGETS, widget("v", mode="async", retry={"attempts": 1}))["spec"]
    assert explicit["mode"] == "async" and explicit["retry"] == {"attempts": 1}


def test_field_validation_strict_refuses_unknown_fields(api: Api) -> None:
    response = api.post(WIDGETS, widget("w", bogus=1), params={"fieldValidation": "Strict"})
    assert response.status_code == 400
    assert response.json()["message"] == (
        'Widget in version "v1" cannot be handled as a Widget: '
        'strict decoding error: unknown field "spec.bogus"'
    )
    assert api.post(WIDGETS, widget("w", bogus=1), params={"fieldValidation": "Ignore"}).status_code == 201


def test_unknown_fields_are_pruned_unless_preserved(api: Api) -> None:
    body = widget("w", bogus=1, extra={"anything": {"goes": True}})
    body["topLevelJunk"] = "x"
    created = api.create(WIDGETS, body)
    assert "bogus" not in created["spec"] and "topLevelJunk" not in created
    assert created["spec"]["extra"] == {"anything": {"goes": True}}


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            {"size": "big"},
            "spec.size",
            'Invalid value: "string": spec.size in body must be of type integer: "string"',
        ),
        (
            {"size": 0},
            "spec.size",
            "Invalid value: 0: spec.size in body should be greater than or equal to 1",
        ),
        (
            {"size": 11},
            "spec.size",
            "Invalid value: 11: spec.size in body should be less than or equal to 10",
        ),
        (
            {"size": 1, "mode": "batch"},
            "spec.mode",
            'Unsupported value: "batch": supported values: "sync", "async"',
        ),
        (
            {"size": 1, "name": "Bad"},
            "spec.name",
            "Invalid value: \"Bad\": spec.name in body should match '^[a-z][a-z0-9-]*$'",
        ),
        ({"size": 1, "name": "a" * 21}, "spec.name", "Too long: may not be more than 20 bytes"),
        (
            {"size": 1, "regions": ["a1", "b1", "c1", "d1"]},
            "spec.regions",
            "Too many: 4: must have at most 3 items",
        ),
        (
            {"size": 1, "regions": ["x"]},
            "spec.regions[0]",
            'Invalid value: "x": spec.regions[0] in body should be at least 2 chars long',
        ),
        (
            {"size": 1, "tags": {"a": 1}},
            "spec.tags[a]",
            'Invalid value: "integer": spec.tags[a] in body must be of type string: "integer"',
        ),
        ({"mode": "sync"}, "spec.size", "Required value"),
    ],
)
def test_schema_violations_are_422_with_kubernetes_messages(
    api: Api, spec: dict[str, Any], field: str, message: str
) -> None:
    body = {"apiVersion": "test.kubeemu.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
    assert (field, message) in causes(api.post(WIDGETS, body))


def test_missing_required_top_level_field(api: Api) -> None:
    body = {"apiVersion": "test.kubeemu.dev/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert ("spec", "Required value") in causes(api.post(WIDGETS, body))


def test_the_top_level_message_names_kind_object_field_and_rule_message(api: Api) -> None:
    response = api.post(WIDGETS, widget("w", residency="EU", regions=["eu-1", "us-1"]))
    body = response.json()
    assert response.status_code == 422
    assert body["message"] == (
        'Widget.test.kubeemu.dev "w" is invalid: spec.regions: Invalid value: "object": '
        "regions must satisfy residency"
    )
    assert body["details"]["name"] == "w" and body["details"]["kind"] == "Widget"
    assert body["details"]["group"] == "test.kubeemu.dev"


def test_cel_rules_with_field_path_and_kubernetes_list_functions(api: Api) -> None:
    assert api.post(WIDGETS, widget("ok", residency="EU", regions=["eu-1", "eu-2"])).status_code == 201
    assert ("spec.regions", 'Invalid value: "array": regions must be sorted') in causes(
        api.post(WIDGETS, widget("w", regions=["b1", "a1"]))
    )


def test_transition_rules_run_only_on_update(api: Api) -> None:
    assert api.post(WIDGETS, widget("w", size=5)).status_code == 201
    shrink = api.patch(f"{WIDGETS}/w", {"spec": {"size": 2}})
    assert ("spec.size", 'Invalid value: "integer": size may not shrink') in causes(shrink)
    assert api.patch(f"{WIDGETS}/w", {"spec": {"size": 6}}).status_code == 200


def test_status_writes_are_validated_too(api: Api) -> None:
    api.create(WIDGETS, widget("w"))
    response = api.patch(f"{WIDGETS}/w/status", {"status": {"observedGeneration": "one"}})
    assert response.status_code == 422
