"""Namespaces: the initial ones, explicit creation only, 404 for content of missing ones, termination."""

from __future__ import annotations

from tests.kubeemu.emuhelpers import CONFIGMAPS, Api, configmap

NAMESPACES = "/api/v1/namespaces"


def namespace(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def test_default_and_kube_system_exist_from_the_start(api: Api) -> None:
    body = api.get(NAMESPACES).json()
    assert body["kind"] == "NamespaceList"
    names = [item["metadata"]["name"] for item in body["items"]]
    assert "default" in names and "kube-system" in names
    default = api.get(f"{NAMESPACES}/default").json()
    assert default["status"] == {"phase": "Active"}


def test_namespaces_are_created_explicitly(api: Api) -> None:
    created = api.create(NAMESPACES, namespace("team-a"))
    assert created["spec"] == {"finalizers": ["kubernetes"]}
    assert api.post("/api/v1/namespaces/team-a/configmaps", configmap("a")).status_code == 201


def test_content_of_a_missing_namespace_is_404_and_no_namespace_is_auto_created(api: Api) -> None:
    response = api.post("/api/v1/namespaces/ghost/configmaps", configmap("a"))
    assert response.status_code == 404
    assert response.json()["message"] == 'namespaces "ghost" not found'
    assert api.get(f"{NAMESPACES}/ghost").status_code == 404


def test_deleting_a_namespace_deletes_its_content_then_itself(api: Api) -> None:
    api.create(NAMESPACES, namespace("team-a"))
    api.create("/api/v1/namespaces/team-a/configmaps", configmap("plain"))
    api.create("/api/v1/namespaces/team-a/configmaps", configmap("held", finalizers=["x.dev/hold"]))
    api.create(CONFIGMAPS, configmap("elsewhere"))
    marked = api.delete(f"{NAMESPACES}/team-a").json()
    assert marked["status"] == {"phase": "Terminating"}
    assert api.get("/api/v1/namespaces/team-a/configmaps/plain").status_code == 404
    assert api.get(f"{NAMESPACES}/team-a").json()["status"]["phase"] == "Terminating"
    refused = api.post("/api/v1/namespaces/team-a/configmaps", configmap("late"))
    assert refused.status_code == 403
    api.patch("/api/v1/namespaces/team-a/configmaps/held", {"metadata": {"finalizers": None}})
    assert api.get(f"{NAMESPACES}/team-a").status_code == 404
    assert api.get(f"{CONFIGMAPS}/elsewhere").status_code == 200


def test_cluster_scoped_kinds_refuse_namespaced_urls(api: Api) -> None:
    assert api.get("/api/v1/namespaces/default/namespaces").status_code == 404
