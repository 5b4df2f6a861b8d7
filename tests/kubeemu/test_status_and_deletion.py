"""The status subresource, finalizers, deletionTimestamp and ownerReference garbage collection."""

from __future__ import annotations

from typing import Any

from tests.kubeemu.emuhelpers import CONFIGMAPS, WIDGETS, Api, configmap, widget

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def owned_by(obj: dict[str, Any], *owners: dict[str, Any]) -> dict[str, Any]:
    refs = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
        }
        for owner in owners
    ]
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": refs}}


def exists(api: Api, path: str) -> bool:
    return api.get(path).status_code == 200


# ------------------------------------------------------------------ status


def test_status_writes_change_only_status(api: Api) -> None:
    api.create(WIDGETS, widget("w", size=2))
    body = {"spec": {"size": 9}, "metadata": {"labels": {"x": "y"}}, "status": {"phase": "Ready"}}
    patched = api.patch(f"{WIDGETS}/w/status", body).json()
    assert patched["status"] == {"phase": "Ready"}
    assert patched["spec"]["size"] == 2 and "labels" not in patched["metadata"]
    current = api.get(f"{WIDGETS}/w/status").json()
    current["status"] = {"phase": "Done"}
    assert api.put(f"{WIDGETS}/w/status", current).json()["status"] == {"phase": "Done"}


def test_main_resource_writes_ignore_status_for_kinds_with_the_subresource(api: Api) -> None:
    created = api.create(WIDGETS, {**widget("w"), "status": {"phase": "Forged"}})
    assert "status" not in created
    api.patch(f"{WIDGETS}/w/status", {"status": {"phase": "Ready"}})
    patched = api.patch(f"{WIDGETS}/w", {"spec": {"size": 3}, "status": {"phase": "Forged"}}).json()
    assert patched["status"] == {"phase": "Ready"} and patched["spec"]["size"] == 3
    current = api.get(f"{WIDGETS}/w").json()
    current["status"] = {"phase": "Forged again"}
    assert api.put(f"{WIDGETS}/w", current).json()["status"] == {"phase": "Ready"}


def test_status_of_a_kind_without_the_subresource_is_404_and_status_is_plain_data(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    assert api.patch(f"{CONFIGMAPS}/a/status", {"status": {}}).status_code == 404


def test_builtin_deployment_has_a_status_subresource(api: Api) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}},
    }
    api.create(DEPLOYMENTS, deployment)
    status = {"status": {"readyReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]}}
    assert api.patch(f"{DEPLOYMENTS}/d/status", status).status_code == 200
    assert api.get(f"{DEPLOYMENTS}/d").json()["status"]["readyReplicas"] == 1


# ---------------------------------------------------------------- deletion


def test_delete_answers_200_with_the_object(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    response = api.delete(f"{CONFIGMAPS}/a")
    assert response.status_code == 200
    assert response.json()["metadata"]["name"] == "a"
    assert not exists(api, f"{CONFIGMAPS}/a")
    assert api.delete(f"{CONFIGMAPS}/a").status_code == 404


def test_finalizers_keep_a_deleted_object_until_they_are_removed(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a", finalizers=["x.dev/hold"]))
    marked = api.delete(f"{CONFIGMAPS}/a").json()
    assert marked["metadata"]["deletionTimestamp"]
    assert exists(api, f"{CONFIGMAPS}/a")
    again = api.delete(f"{CONFIGMAPS}/a").json()
    assert again["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    refused = api.patch(f"{CONFIGMAPS}/a", {"metadata": {"finalizers": ["x.dev/hold", "x.dev/new"]}})
    assert refused.status_code == 422
    released = api.patch(f"{CONFIGMAPS}/a", {"metadata": {"finalizers": None}})
    assert released.status_code == 200
    assert not exists(api, f"{CONFIGMAPS}/a")


def test_delete_preconditions_are_checked(api: Api) -> None:
    created = api.create(CONFIGMAPS, configmap("a"))
    stale = {"preconditions": {"resourceVersion": "1"}}
    assert api.delete(f"{CONFIGMAPS}/a", stale).status_code == 409
    current = {"preconditions": {"uid": created["metadata"]["uid"]}}
    assert api.delete(f"{CONFIGMAPS}/a", current).status_code == 200


def test_background_deletion_collects_dependents_in_cascade(api: Api) -> None:
    owner = api.create(WIDGETS, widget("owner"))
    child = api.create(CONFIGMAPS, owned_by(configmap("child"), owner))
    api.create(CONFIGMAPS, owned_by(configmap("grandchild"), child))
    api.create(CONFIGMAPS, configmap("unrelated"))
    assert api.delete(f"{WIDGETS}/owner").status_code == 200
    assert not exists(api, f"{CONFIGMAPS}/child")
    assert not exists(api, f"{CONFIGMAPS}/grandchild")
    assert exists(api, f"{CONFIGMAPS}/unrelated")


def test_a_dependent_with_another_live_owner_survives_and_loses_the_dead_reference(api: Api) -> None:
    first = api.create(WIDGETS, widget("first"))
    second = api.create(WIDGETS, widget("second"))
    api.create(CONFIGMAPS, owned_by(configmap("shared"), first, second))
    api.delete(f"{WIDGETS}/first")
    survivor = api.get(f"{CONFIGMAPS}/shared").json()
    assert [ref["name"] for ref in survivor["metadata"]["ownerReferences"]] == ["second"]


def test_owner_references_added_or_removed_by_later_writes_decide_what_a_deletion_collects(
    api: Api,
) -> None:
    """The server's owner index follows every write, not only creations."""
    owner = api.create(WIDGETS, widget("owner"))
    adopted = api.create(CONFIGMAPS, configmap("adopted"))
    api.put(f"{CONFIGMAPS}/adopted", owned_by(adopted, owner))
    released = api.create(CONFIGMAPS, owned_by(configmap("released"), owner))
    api.patch(f"{CONFIGMAPS}/released", {"metadata": {"ownerReferences": None}})
    api.create(CONFIGMAPS, owned_by(configmap("recreated"), owner))
    api.delete(f"{CONFIGMAPS}/recreated")
    api.create(CONFIGMAPS, configmap("recreated"))
    assert released["metadata"]["name"] == "released"
    api.delete(f"{WIDGETS}/owner")
    assert not exists(api, f"{CONFIGMAPS}/adopted")
    assert exists(api, f"{CONFIGMAPS}/released")
    assert exists(api, f"{CONFIGMAPS}/recreated")


def test_dependents_with_finalizers_are_marked_not_removed(api: Api) -> None:
    owner = api.create(WIDGETS, widget("owner"))
    api.create(CONFIGMAPS, owned_by(configmap("child", finalizers=["x.dev/hold"]), owner))
    api.delete(f"{WIDGETS}/owner")
    child = api.get(f"{CONFIGMAPS}/child").json()
    assert child["metadata"]["deletionTimestamp"]


def test_foreground_deletion_waits_for_dependents(api: Api) -> None:
    owner = api.create(WIDGETS, widget("owner"))
    api.create(CONFIGMAPS, owned_by(configmap("child", finalizers=["x.dev/hold"]), owner))
    marked = api.delete(f"{WIDGETS}/owner", {"propagationPolicy": "Foreground"}).json()
    assert "foregroundDeletion" in marked["metadata"]["finalizers"]
    assert exists(api, f"{WIDGETS}/owner")
    api.patch(f"{CONFIGMAPS}/child", {"metadata": {"finalizers": None}})
    assert not exists(api, f"{CONFIGMAPS}/child")
    assert not exists(api, f"{WIDGETS}/owner")


def test_orphan_deletion_keeps_dependents_and_strips_the_reference(api: Api) -> None:
    owner = api.create(WIDGETS, widget("owner"))
    api.create(CONFIGMAPS, owned_by(configmap("child"), owner))
    api.delete(f"{WIDGETS}/owner", params={"propagationPolicy": "Orphan"})
    child = api.get(f"{CONFIGMAPS}/child").json()
    assert "ownerReferences" not in child["metadata"]


def test_delete_collection_by_label(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a", labels={"app": "x"}))
    api.create(CONFIGMAPS, configmap("b", labels={"app": "x"}))
    api.create(CONFIGMAPS, configmap("c"))
    response = api.delete(CONFIGMAPS, params={"labelSelector": "app=x"})
    assert response.status_code == 200
    assert sorted(item["metadata"]["name"] for item in response.json()["items"]) == ["a", "b"]
    assert [item["metadata"]["name"] for item in api.get(CONFIGMAPS).json()["items"]] == ["c"]
