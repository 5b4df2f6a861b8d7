"""Server-side apply: YAML/JSON bodies, fieldManager, create-on-apply, merge semantics, managedFields."""

from __future__ import annotations

import requests
import yaml

from tests.kubeemu.emuhelpers import CONFIGMAPS, WIDGETS, Api, configmap, widget

APPLY = "application/apply-patch+yaml"


def apply(
    api: Api, path: str, body: dict[str, object], manager: str = "tester", **params: str
) -> requests.Response:
    return api.request(
        "PATCH",
        path,
        data=yaml.safe_dump(body),
        content_type=APPLY,
        params={"fieldManager": manager, **params},
    )


def test_apply_without_field_manager_is_400(api: Api) -> None:
    response = api.request(
        "PATCH", f"{CONFIGMAPS}/a", data=yaml.safe_dump(configmap("a")), content_type=APPLY
    )
    assert response.status_code == 400
    assert "fieldManager" in response.json()["message"]


def test_apply_creates_a_missing_object_with_201_from_a_yaml_body(api: Api) -> None:
    response = apply(api, f"{CONFIGMAPS}/a", configmap("a"))
    assert response.status_code == 201, response.text
    assert api.get(f"{CONFIGMAPS}/a").json()["data"] == {"k": "v"}


def test_apply_accepts_a_json_body(api: Api) -> None:
    response = api.request(
        "PATCH", f"{CONFIGMAPS}/a", configmap("a"), content_type=APPLY, params={"fieldManager": "json"}
    )
    assert response.status_code == 201


def test_a_json_and_a_yaml_apply_body_of_the_same_object_store_the_same_and_flow_yaml_still_reads(
    api: Api,
) -> None:
    """JSON bodies take the JSON parser (fast); what is YAML only, such as a flow mapping with
    bare words, still goes to the YAML parser."""
    tricky = {"on": "yes", "n": "0x1F", "t": "2026-01-01", "u": "caf\u00e9 \\/", "big": "x" * 200_000}
    json_body = configmap("a") | {"data": tricky}
    yaml_body = configmap("b") | {"data": tricky}
    assert api.request(
        "PATCH", f"{CONFIGMAPS}/a", json_body, content_type=APPLY, params={"fieldManager": "m"}
    ).ok
    assert apply(api, f"{CONFIGMAPS}/b", yaml_body, manager="m").ok
    assert api.get(f"{CONFIGMAPS}/a").json()["data"] == api.get(f"{CONFIGMAPS}/b").json()["data"] == tricky
    flow = "{apiVersion: v1, kind: ConfigMap, metadata: {name: c, namespace: default}, data: {k: v}}"
    response = api.request(
        "PATCH", f"{CONFIGMAPS}/c", data=flow, content_type=APPLY, params={"fieldManager": "m"}
    )
    assert response.status_code == 201, response.text
    assert api.get(f"{CONFIGMAPS}/c").json()["data"] == {"k": "v"}


def test_apply_merges_maps_and_replaces_lists(api: Api) -> None:
    apply(api, f"{WIDGETS}/w", widget("w", regions=["a1", "b1"], tags={"x": "1"}), manager="one")
    apply(api, f"{WIDGETS}/w", widget("w", regions=["c1"], tags={"y": "2"}), manager="two")
    spec = api.get(f"{WIDGETS}/w").json()["spec"]
    assert spec["regions"] == ["c1"]
    assert spec["tags"] == {"x": "1", "y": "2"}


def test_apply_records_managed_fields_with_manager_and_operation(api: Api) -> None:
    apply(api, f"{CONFIGMAPS}/a", configmap("a"), manager="apx-operator")
    entries = api.get(f"{CONFIGMAPS}/a").json()["metadata"]["managedFields"]
    entry = next(e for e in entries if e["manager"] == "apx-operator")
    assert entry["operation"] == "Apply"
    assert entry["apiVersion"] == "v1" and entry["fieldsType"] == "FieldsV1"
    assert entry["fieldsV1"] == {"f:data": {"f:k": {}}}


def test_reapplying_without_a_field_removes_it_unless_another_manager_owns_it(api: Api) -> None:
    path = f"{CONFIGMAPS}/a"
    apply(api, path, {**configmap("a"), "data": {"keep": "1", "drop": "2", "shared": "3"}}, manager="me")
    apply(
        api,
        path,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"shared": "3"}},
        manager="other",
    )
    apply(api, path, {**configmap("a"), "data": {"keep": "1"}}, manager="me")
    assert api.get(path).json()["data"] == {"keep": "1", "shared": "3"}


def test_an_update_takes_ownership_so_a_later_apply_does_not_remove_the_field(api: Api) -> None:
    path = f"{CONFIGMAPS}/a"
    apply(api, path, {**configmap("a"), "data": {"replicas": "1"}}, manager="me")
    api.patch(path, {"data": {"replicas": "5"}}, params={"fieldManager": "autoscaler"})
    apply(api, path, {**configmap("a"), "data": {}}, manager="me")
    assert api.get(path).json()["data"] == {"replicas": "5"}


def test_identical_reapply_is_a_no_op(api: Api) -> None:
    path = f"{WIDGETS}/w"
    first = apply(api, path, widget("w", size=3)).json()["metadata"]["resourceVersion"]
    second = apply(api, path, widget("w", size=3)).json()["metadata"]["resourceVersion"]
    assert first == second


def test_apply_is_validated_against_the_crd_schema(api: Api) -> None:
    response = apply(api, f"{WIDGETS}/w", widget("w", size=0))
    assert response.status_code == 422


def test_apply_to_the_status_subresource_changes_only_status(api: Api) -> None:
    apply(api, f"{WIDGETS}/w", widget("w", size=3))
    body = {**widget("w", size=9), "status": {"phase": "Ready"}}
    response = apply(api, f"{WIDGETS}/w/status", body, manager="controller")
    assert response.status_code == 200, response.text
    current = api.get(f"{WIDGETS}/w").json()
    assert current["status"] == {"phase": "Ready"} and current["spec"]["size"] == 3
