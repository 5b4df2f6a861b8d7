"""PUT with optimistic concurrency, JSON patch, merge patch, strategic merge, no-op writes, dry runs."""

from __future__ import annotations

from e2e.kubeemu.patching import strategic_merge_patch
from tests.kubeemu.emuhelpers import CONFIGMAPS, WIDGETS, Api, configmap, widget

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


def test_put_replaces_the_whole_object(api: Api) -> None:
    api.create(CONFIGMAPS, {**configmap("a"), "data": {"x": "1", "y": "2"}})
    current = api.get(f"{CONFIGMAPS}/a").json()
    current["data"] = {"z": "3"}
    response = api.put(f"{CONFIGMAPS}/a", current)
    assert response.status_code == 200
    assert api.get(f"{CONFIGMAPS}/a").json()["data"] == {"z": "3"}


def test_put_with_a_stale_resource_version_is_409_conflict(api: Api) -> None:
    stale = api.create(CONFIGMAPS, configmap("a"))
    api.patch(f"{CONFIGMAPS}/a", {"data": {"k": "newer"}})
    stale["data"] = {"k": "lost update"}
    response = api.put(f"{CONFIGMAPS}/a", stale)
    assert response.status_code == 409
    assert response.json()["reason"] == "Conflict"
    assert "the object has been modified" in response.json()["message"]


def test_put_without_resource_version_is_unconditional_and_put_of_a_missing_object_is_404(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    assert api.put(f"{CONFIGMAPS}/a", {**configmap("a"), "data": {"k": "2"}}).status_code == 200
    assert api.put(f"{CONFIGMAPS}/zz", configmap("zz")).status_code == 404


def test_put_with_a_mismatching_name_is_400(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    assert api.put(f"{CONFIGMAPS}/a", configmap("b")).status_code == 400


def test_json_patch_applies_operations_and_a_failed_test_is_422(api: Api) -> None:
    created = api.create(CONFIGMAPS, configmap("a"))
    rv = created["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x.dev/f"]},
    ]
    response = api.patch(f"{CONFIGMAPS}/a", ops, content_type=JSON_PATCH)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["finalizers"] == ["x.dev/f"]
    stale = api.patch(f"{CONFIGMAPS}/a", ops, content_type=JSON_PATCH)
    assert stale.status_code == 422
    assert stale.json()["reason"] == "Invalid"


def test_json_patch_on_a_missing_path_is_422(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    ops = [{"op": "replace", "path": "/spec/nothing", "value": 1}]
    assert api.patch(f"{CONFIGMAPS}/a", ops, content_type=JSON_PATCH).status_code == 422


def test_merge_patch_merges_maps_replaces_lists_and_null_removes_keys(api: Api) -> None:
    api.create(CONFIGMAPS, {**configmap("a", labels={"x": "1", "y": "2"}), "data": {"a": "1", "b": "2"}})
    body = {"metadata": {"labels": {"y": None, "z": "3"}, "finalizers": ["f/1"]}, "data": {"a": None}}
    patched = api.patch(f"{CONFIGMAPS}/a", body).json()
    assert patched["metadata"]["labels"] == {"x": "1", "z": "3"}
    assert patched["data"] == {"b": "2"}
    again = api.patch(f"{CONFIGMAPS}/a", {"metadata": {"finalizers": ["f/2"]}}).json()
    assert again["metadata"]["finalizers"] == ["f/2"]


def test_patch_with_a_stale_resource_version_in_the_body_is_409(api: Api) -> None:
    created = api.create(CONFIGMAPS, configmap("a"))
    api.patch(f"{CONFIGMAPS}/a", {"data": {"k": "2"}})
    body = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "data": {"k": "3"}}
    assert api.patch(f"{CONFIGMAPS}/a", body).status_code == 409


def test_strategic_merge_patch_is_a_merge_patch_without_directives(api: Api) -> None:
    api.create(CONFIGMAPS, {**configmap("a", labels={"x": "1"}), "data": {"a": "1"}})
    body = {"metadata": {"labels": {"y": "2"}}, "data": {"a": None, "b": "2"}}
    patched = api.patch(f"{CONFIGMAPS}/a", body, content_type=STRATEGIC).json()
    assert patched["metadata"]["labels"] == {"x": "1", "y": "2"}
    assert patched["data"] == {"b": "2"}


def test_strategic_merge_honours_set_element_order_as_the_merge_key_of_a_list() -> None:
    current = {
        "spec": {
            "containers": [
                {"name": "app", "image": "app:1", "ports": [{"containerPort": 80}]},
                {"name": "sidecar", "image": "side:1"},
            ]
        }
    }
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{"name": "app", "image": "app:2"}],
        }
    }
    merged = strategic_merge_patch(current, patch)
    assert merged["spec"]["containers"] == [
        {"name": "app", "image": "app:2", "ports": [{"containerPort": 80}]},
        {"name": "sidecar", "image": "side:1"},
    ]
    deleting = {
        "spec": {
            "$setElementOrder/containers": [{"name": "app"}],
            "containers": [{"name": "sidecar", "$patch": "delete"}],
        }
    }
    assert [c["name"] for c in strategic_merge_patch(merged, deleting)["spec"]["containers"]] == ["app"]


def test_strategic_merge_primitive_list_directives_and_patch_replace() -> None:
    current = {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}
    patch = {
        "$setElementOrder/finalizers": ["c", "a"],
        "$deleteFromPrimitiveList/finalizers": ["b"],
        "finalizers": ["c"],
        "labels": {"$patch": "replace", "z": "3"},
    }
    assert strategic_merge_patch(current, patch) == {"finalizers": ["c", "a"], "labels": {"z": "3"}}


def test_unknown_patch_content_type_is_415(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    response = api.patch(f"{CONFIGMAPS}/a", {"data": {}}, content_type="text/plain")
    assert response.status_code == 415


def test_a_write_that_changes_nothing_keeps_the_resource_version(api: Api) -> None:
    created = api.create(WIDGETS, widget("w", size=2))
    rv = created["metadata"]["resourceVersion"]
    same = api.patch(f"{WIDGETS}/w", {"spec": {"size": 2}}).json()
    assert same["metadata"]["resourceVersion"] == rv


def test_dry_run_validates_without_storing(api: Api) -> None:
    response = api.post(CONFIGMAPS, configmap("dry"), params={"dryRun": "All"})
    assert response.status_code == 201
    assert api.get(f"{CONFIGMAPS}/dry").status_code == 404
    assert api.post(WIDGETS, widget("w", size=99), params={"dryRun": "All"}).status_code == 422


def test_bodies_up_to_3_mib_are_read_like_the_real_api_server_and_larger_ones_are_413(api: Api) -> None:
    # A ConfigMap near its 1 MiB data limit travels base64-encoded in a larger JSON body.
    near_limit = {**configmap("big"), "binaryData": {"part": "A" * (1024 * 1024 + 400 * 1024)}}
    assert api.post(CONFIGMAPS, near_limit).status_code == 201
    too_large = {**configmap("huge"), "data": {"part": "x" * (3 * 1024 * 1024 + 1)}}
    response = api.post(CONFIGMAPS, too_large)
    assert response.status_code == 413
    assert api.get(f"{CONFIGMAPS}/big").status_code == 200  # still serving
