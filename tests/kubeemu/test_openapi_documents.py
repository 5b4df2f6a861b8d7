"""The emulator's ``/openapi/v2`` and ``/openapi/v3`` documents and the Table columns of built-in kinds.

These talk HTTP only (no kubectl), so they stay fast; ``test_openapi_kubectl``
checks what kubectl makes of the same documents.
"""

from __future__ import annotations

import copy
from typing import Any

from emuhelpers import Api

from e2e.kubeemu.openapi_proto import CONTENT_TYPE

TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _patch_parameters(document: dict[str, Any], path: str) -> set[str]:
    return {parameter["name"] for parameter in document["paths"][path]["patch"].get("parameters", [])}


def test_v3_index_lists_every_group_version_with_a_content_hash(api: Api) -> None:
    index = api.get("/openapi/v3").json()["paths"]
    for key in ("api/v1", "apis/apps/v1", "apis/test.kubeemu.dev/v1"):
        assert index[key]["serverRelativeURL"].startswith(f"/openapi/v3/{key}?hash=")


def test_v3_document_of_a_crd_has_its_schema_and_a_patch_accepting_field_validation(api: Api) -> None:
    document = api.get("/openapi/v3/apis/test.kubeemu.dev/v1").json()
    schema = document["components"]["schemas"]["dev.kubeemu.test.v1.Widget"]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": "test.kubeemu.dev", "kind": "Widget", "version": "v1"}
    ]
    assert schema["properties"]["metadata"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    ]
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in document["components"]["schemas"]
    path = "/apis/test.kubeemu.dev/v1/namespaces/{namespace}/widgets/{name}"
    assert {"fieldValidation", "dryRun", "fieldManager"} <= _patch_parameters(document, path)
    gvk = document["paths"][path]["patch"]["x-kubernetes-group-version-kind"]
    assert gvk == {"group": "test.kubeemu.dev", "kind": "Widget", "version": "v1"}


def test_v3_documents_of_built_in_kinds_keep_the_strategic_merge_metadata(api: Api) -> None:
    document = api.get("/openapi/v3/apis/apps/v1").json()
    schemas = document["components"]["schemas"]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["items"] == {
        "allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}]
    } or (containers["items"] == {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"})
    target_port = schemas["io.k8s.api.core.v1.ContainerPort"]["properties"]["containerPort"]
    assert target_port["type"] == "integer"
    assert "/apis/apps/v1/namespaces/{namespace}/deployments/{name}" in document["paths"]


def test_v3_hash_changes_when_a_crd_schema_changes(api: Api) -> None:
    before = api.get("/openapi/v3").json()["paths"]["apis/test.kubeemu.dev/v1"]["serverRelativeURL"]
    crd = api.get(f"{CRDS}/widgets.test.kubeemu.dev").json()
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["colour"] = {"type": "string", "description": "A new field."}
    assert api.put(f"{CRDS}/widgets.test.kubeemu.dev", crd).status_code == 200
    after = api.get("/openapi/v3").json()["paths"]["apis/test.kubeemu.dev/v1"]["serverRelativeURL"]
    assert after != before
    widget = api.get(after).json()["components"]["schemas"]["dev.kubeemu.test.v1.Widget"]
    assert widget["properties"]["spec"]["properties"]["colour"]["description"] == "A new field."


def test_unknown_group_version_is_not_found(api: Api) -> None:
    assert api.get("/openapi/v3/apis/nothing.example/v1").status_code == 404


def test_v2_is_served_as_json_and_as_gnostic_protobuf(api: Api) -> None:
    document = api.get("/openapi/v2", headers={"Accept": "application/json"}).json()
    assert document["swagger"] == "2.0"
    assert "dev.kubeemu.test.v1.Widget" in document["definitions"]
    assert "io.k8s.api.apps.v1.Deployment" in document["definitions"]
    metadata = document["definitions"]["dev.kubeemu.test.v1.Widget"]["properties"]["metadata"]
    assert metadata["$ref"] == "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    binary = api.get(
        "/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"}
    )
    assert binary.headers["Content-Type"].startswith(CONTENT_TYPE)
    # Field 1 (swagger, length-delimited) comes first: tag 0x0a, length 3, "2.0".
    assert binary.content[:5] == b"\x0a\x032.0"
    assert b"dev.kubeemu.test.v1.Widget" in binary.content


def _table(api: Api, path: str) -> tuple[list[str], list[list[Any]]]:
    table = api.get(path, headers={"Accept": TABLE}).json()
    names = [column["name"] for column in table["columnDefinitions"] if column["priority"] == 0]
    shown = [index for index, column in enumerate(table["columnDefinitions"]) if column["priority"] == 0]
    return names, [[row["cells"][index] for index in shown] for row in table["rows"]]


def test_tables_of_built_in_kinds_have_their_usual_columns(api: Api) -> None:
    namespace = "/api/v1/namespaces/default"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {}}},
    }
    api.create("/apis/apps/v1/namespaces/default/deployments", deployment)
    status = {"status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    api.patch("/apis/apps/v1/namespaces/default/deployments/web/status", status)
    names, rows = _table(api, "/apis/apps/v1/namespaces/default/deployments")
    assert names == ["Name", "Ready", "Up-to-date", "Available", "Age"]
    assert rows[0][:4] == ["web", "2/3", 3, 2]

    api.create(
        f"{namespace}/configmaps",
        {"metadata": {"name": "c"}, "data": {"x": "1"}, "binaryData": {"y": "AA=="}},
    )
    names, rows = _table(api, f"{namespace}/configmaps/c")
    assert names == ["Name", "Data", "Age"] and rows[0][:2] == ["c", 2]

    service = {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}}
    api.create(f"{namespace}/services", service)
    names, rows = _table(api, f"{namespace}/services/s")
    assert names == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age"]
    assert rows[0][1] == "ClusterIP" and rows[0][3] == "<none>" and rows[0][4] == "80/TCP,53/UDP"

    event = {
        "metadata": {"name": "e1"},
        "type": "Warning",
        "reason": "Stalled",
        "message": "spec.timeout: must be positive",
        "involvedObject": {"kind": "Route", "name": "r1"},
    }
    api.create(f"{namespace}/events", copy.deepcopy(event))
    names, rows = _table(api, f"{namespace}/events")
    assert names == ["Last Seen", "Type", "Reason", "Object", "Message"]
    assert rows[0][1:] == ["Warning", "Stalled", "route/r1", "spec.timeout: must be positive"]

    names, rows = _table(api, "/api/v1/namespaces/default")
    assert names == ["Name", "Status", "Age"] and rows[0][:2] == ["default", "Active"]
