"""Discovery documents, the official kubernetes client, kmock's DSL, and bounded memory."""

from __future__ import annotations

import kmock
import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from e2e.kubeemu.testing import RunningEmulator, running_emulator
from tests.kubeemu.emuhelpers import CONFIGMAPS, Api, configmap

# ---------------------------------------------------------------- discovery


def test_version_and_core_discovery(api: Api) -> None:
    assert api.get("/version").json()["gitVersion"].startswith("v1.32")
    assert api.get("/api").json()["versions"] == ["v1"]
    core = api.get("/api/v1").json()
    by_name = {resource["name"]: resource for resource in core["resources"]}
    assert by_name["configmaps"]["kind"] == "ConfigMap" and by_name["configmaps"]["shortNames"] == ["cm"]
    assert by_name["namespaces"]["namespaced"] is False
    assert by_name["namespaces/status"]["verbs"] == ["get", "patch", "update"]
    assert {"services", "secrets", "events"} <= set(by_name)


def test_group_discovery_lists_the_kinds_the_operator_writes(api: Api) -> None:
    groups = {group["name"]: group for group in api.get("/apis").json()["groups"]}
    for group in ("apps", "events.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io"):
        assert groups[group]["preferredVersion"]["version"] == "v1"
    assert api.get("/apis/apps").json()["kind"] == "APIGroup"
    kinds = {r["kind"] for r in api.get("/apis/coordination.k8s.io/v1").json()["resources"]}
    assert kinds == {"Lease"}


def test_openapi_is_served_and_listed_at_the_root(api: Api) -> None:
    assert api.get("/openapi/v2").status_code == 200
    assert "apis/apps/v1" in api.get("/openapi/v3").json()["paths"]
    assert {"/openapi/v2", "/openapi/v3"} <= set(api.get("/").json()["paths"])


def test_health_endpoints(api: Api) -> None:
    assert api.get("/healthz").text == "ok"
    assert api.get("/readyz").status_code == 200


def test_protobuf_bodies_of_unsupported_kinds_are_415(api: Api) -> None:
    response = api.request(
        "POST",
        CONFIGMAPS,
        data=b"k8s\x00\n\x0f\n\x07apps/v1\x12\x04Nope",
        content_type="application/vnd.kubernetes.protobuf",
    )
    assert response.status_code == 415


# ----------------------------------------------------- the official client


@pytest.fixture
def core(emu: RunningEmulator) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(emu.kubeconfig)))


def test_official_client_create_returns_the_object_and_reads_it_back(core: client.CoreV1Api) -> None:
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="a", labels={"app": "x"}), data={"k": "v"})
    created = core.create_namespaced_config_map("default", body)
    assert created is not None and created.metadata.uid
    listed = core.list_namespaced_config_map("default", label_selector="app=x")
    assert [item.metadata.name for item in listed.items] == ["a"]
    assert listed.items[0].kind == "ConfigMap"


def test_official_client_patch_replace_delete_and_errors(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="a")))
    patched = core.patch_namespaced_config_map("a", "default", {"data": {"k": "1"}})
    assert patched.data == {"k": "1"}
    current = core.read_namespaced_config_map("a", "default")
    current.data = {"k": "2"}
    assert core.replace_namespaced_config_map("a", "default", current).data == {"k": "2"}
    stale = current
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("a", "default", stale)
    assert conflict.value.status == 409
    core.delete_namespaced_config_map("a", "default")
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("a", "default")
    assert missing.value.status == 404


def test_official_client_watch(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="a")))
    events = watch.Watch().stream(core.list_namespaced_config_map, "default", timeout_seconds=5)
    first = next(events)
    assert first["type"] == "ADDED" and first["object"].metadata.name == "a"


def test_official_client_namespaces_and_events(core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    assert "team-a" in [ns.metadata.name for ns in core.list_namespace().items]
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="x-"),
        involved_object=client.V1ObjectReference(kind="ConfigMap", name="a", namespace="team-a"),
        reason="Tested",
        message="twice",
    )
    first = core.create_namespaced_event("team-a", event)
    second = core.create_namespaced_event("team-a", event)
    assert first.metadata.name != second.metadata.name


# ------------------------------------------------------- kmock underneath


def test_kmock_reactions_still_intercept_requests(emu: RunningEmulator) -> None:
    api = Api(emu.url)
    api.create(CONFIGMAPS, configmap("a"))
    emu.call(lambda: emu.emulator["get", kmock.resource("v1/configmaps"), kmock.name("a")] << 503)
    assert api.get(f"{CONFIGMAPS}/a").status_code == 503
    assert api.get(CONFIGMAPS).status_code == 200
    assert emu.emulator.objects["v1/configmaps", "default", "a"]["data"] == {"k": "v"}


def test_request_logs_and_object_history_stay_bounded() -> None:
    with running_emulator(request_log_size=5, history_size=10) as emu:
        api = Api(emu.url)
        api.create(CONFIGMAPS, configmap("a"))
        for index in range(50):
            api.patch(f"{CONFIGMAPS}/a", {"data": {"k": str(index)}})
        emulator = emu.emulator
        assert len(list(emulator)) <= 5 + 5 * len(emulator._payloads)
        assert len(emulator.objects["v1/configmaps", "default", "a"].history) == 1
        assert len(emulator.store.log) <= 2 * 10
    with running_emulator(request_log_size=0) as emu:
        assert Api(emu.url).get(CONFIGMAPS).status_code == 200
        assert list(emu.emulator) == []
