"""Server-set metadata: resourceVersion, uid, creationTimestamp, generation, generateName, namespace."""

from __future__ import annotations

import re

from tests.kubeemu.emuhelpers import CONFIGMAPS, WIDGETS, Api, configmap, widget


def test_create_answers_201_with_the_created_object(api: Api) -> None:
    response = api.post(CONFIGMAPS, configmap("a"))
    assert response.status_code == 201
    body = response.json()
    assert body["kind"] == "ConfigMap" and body["apiVersion"] == "v1"
    assert body["metadata"]["name"] == "a" and body["data"] == {"k": "v"}


def test_resource_version_is_a_string_counter_bumped_by_every_write_cluster_wide(api: Api) -> None:
    first = api.create(CONFIGMAPS, configmap("a"))["metadata"]["resourceVersion"]
    second = api.create(WIDGETS, widget("w"))["metadata"]["resourceVersion"]
    patched = api.patch(f"{CONFIGMAPS}/a", {"data": {"k": "2"}}).json()["metadata"]["resourceVersion"]
    assert all(isinstance(rv, str) for rv in (first, second, patched))
    assert int(first) < int(second) < int(patched)
    assert api.get(f"{CONFIGMAPS}/a").json()["metadata"]["resourceVersion"] == patched


def test_uid_and_creation_timestamp_are_set_on_create_and_kept_on_updates(api: Api) -> None:
    created = api.create(CONFIGMAPS, configmap("a"))["metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", created["uid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created["creationTimestamp"])
    body = api.get(f"{CONFIGMAPS}/a").json()
    body["metadata"]["uid"] = "forged"
    body["metadata"]["creationTimestamp"] = "2000-01-01T00:00:00Z"
    replaced = api.put(f"{CONFIGMAPS}/a", body).json()["metadata"]
    assert replaced["uid"] == created["uid"]
    assert replaced["creationTimestamp"] == created["creationTimestamp"]


def test_generation_starts_at_1_and_moves_only_when_the_spec_changes(api: Api) -> None:
    path = f"{WIDGETS}/w"
    assert api.create(WIDGETS, widget("w"))["metadata"]["generation"] == 1
    labelled = api.patch(path, {"metadata": {"labels": {"team": "a"}}}).json()
    assert labelled["metadata"]["generation"] == 1
    status = api.patch(f"{path}/status", {"status": {"phase": "Ready"}}).json()
    assert status["metadata"]["generation"] == 1
    resized = api.patch(path, {"spec": {"size": 2}}).json()
    assert resized["metadata"]["generation"] == 2


def test_generate_name_makes_unique_names_so_events_can_be_posted_repeatedly(api: Api) -> None:
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "w-"},
        "involvedObject": {"kind": "Widget", "name": "w", "namespace": "default"},
        "reason": "Tested",
        "message": "hello",
    }
    names = {api.create("/api/v1/namespaces/default/events", event)["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(re.fullmatch(r"w-[a-z0-9]{5}", name) for name in names)
    modern = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"generateName": "e-"}}
    path = "/apis/events.k8s.io/v1/namespaces/default/events"
    assert api.post(path, modern).status_code == 201
    assert api.post(path, modern).status_code == 201


def test_missing_name_without_generate_name_is_invalid(api: Api) -> None:
    response = api.post(CONFIGMAPS, {"data": {}})
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "metadata.name"


def test_namespace_is_filled_from_the_url_and_a_contradicting_one_is_refused(api: Api) -> None:
    created = api.create(CONFIGMAPS, configmap("a"))
    assert created["metadata"]["namespace"] == "default"
    response = api.post(CONFIGMAPS, configmap("b", namespace="kube-system"))
    assert response.status_code == 400


def test_duplicate_create_is_409_already_exists(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    response = api.post(CONFIGMAPS, configmap("a"))
    assert response.status_code == 409
    assert response.json()["reason"] == "AlreadyExists"


def test_get_of_a_missing_object_is_a_404_status(api: Api) -> None:
    response = api.get(f"{CONFIGMAPS}/nope")
    assert response.status_code == 404
    body = response.json()
    assert body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["message"] == 'configmaps "nope" not found'


def test_invalid_names_and_label_values_are_refused(api: Api) -> None:
    assert api.post(CONFIGMAPS, configmap("Not_Valid")).status_code == 422
    assert api.post(CONFIGMAPS, configmap("ok", labels={"a": "white space"})).status_code == 422


def test_secret_string_data_is_folded_into_base64_data(api: Api) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    created = api.create("/api/v1/namespaces/default/secrets", secret)
    assert created["data"] == {"token": "YWJj"} and "stringData" not in created
    assert created["type"] == "Opaque"


def test_services_get_a_stable_cluster_ip(api: Api) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}]},
    }
    path = "/api/v1/namespaces/default/services"
    created = api.create(path, service)
    ip = created["spec"]["clusterIP"]
    assert re.fullmatch(r"10\.96\.\d+\.\d+", ip)
    updated = api.put(f"{path}/s", {**service, "spec": {"ports": [{"port": 81}]}}).json()
    assert updated["spec"]["clusterIP"] == ip
