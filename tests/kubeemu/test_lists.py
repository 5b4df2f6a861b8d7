"""Lists: kind/apiVersion of lists and items, label and field selectors, limit/continue pagination."""

from __future__ import annotations

import pytest

from e2e.kubeemu.selectors import LabelSelector
from tests.kubeemu.emuhelpers import CONFIGMAPS, Api, configmap


@pytest.fixture
def labelled(api: Api) -> Api:
    api.create(CONFIGMAPS, configmap("a", labels={"app": "x", "tier": "web"}))
    api.create(CONFIGMAPS, configmap("b", labels={"app": "y", "tier": "db"}))
    api.create(CONFIGMAPS, configmap("c", labels={"app": "z"}))
    api.create("/api/v1/namespaces/kube-system/configmaps", configmap("d", labels={"app": "x"}))
    return api


def names(api: Api, path: str, **params: str) -> list[str]:
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return [item["metadata"]["name"] for item in response.json()["items"]]


def test_list_carries_kind_api_version_and_resource_version_and_so_do_items(labelled: Api) -> None:
    body = labelled.get(CONFIGMAPS).json()
    assert body["kind"] == "ConfigMapList" and body["apiVersion"] == "v1"
    assert int(body["metadata"]["resourceVersion"]) > 0
    assert all(item["kind"] == "ConfigMap" and item["apiVersion"] == "v1" for item in body["items"])


def test_cluster_wide_list_spans_namespaces(labelled: Api) -> None:
    assert names(labelled, "/api/v1/configmaps") == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=x", ["a"]),
        ("app==x", ["a"]),
        ("app!=x", ["b", "c"]),
        ("app in (x,y)", ["a", "b"]),
        ("app notin (x,y)", ["c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("app in (x, y),tier!=db", ["a"]),
        ("app=x,c!=d,app in (x,y),!f,tier", ["a"]),
    ],
)
def test_label_selectors(labelled: Api, selector: str, expected: list[str]) -> None:
    assert names(labelled, CONFIGMAPS, labelSelector=selector) == expected


def test_numeric_label_comparisons() -> None:
    selector = LabelSelector.parse("replicas>2,zone<5")
    assert selector.matches({"metadata": {"labels": {"replicas": "3", "zone": "1"}}})
    assert not selector.matches({"metadata": {"labels": {"replicas": "2", "zone": "1"}}})


def test_malformed_label_selector_is_400(labelled: Api) -> None:
    assert labelled.get(CONFIGMAPS, params={"labelSelector": "app in x"}).status_code == 400


def test_field_selectors_on_name_and_namespace(labelled: Api) -> None:
    assert names(labelled, CONFIGMAPS, fieldSelector="metadata.name=b") == ["b"]
    assert names(labelled, CONFIGMAPS, fieldSelector="metadata.name!=b") == ["a", "c"]
    assert names(labelled, "/api/v1/configmaps", fieldSelector="metadata.namespace=kube-system") == ["d"]
    assert names(
        labelled, "/api/v1/configmaps", fieldSelector="metadata.namespace==default,metadata.name=c"
    ) == ["c"]


def test_limit_and_continue_paginate_in_a_stable_order(labelled: Api) -> None:
    first = labelled.get("/api/v1/configmaps", params={"limit": "3"}).json()
    assert [item["metadata"]["name"] for item in first["items"]] == ["a", "b", "c"]
    assert first["metadata"]["remainingItemCount"] == 1
    token = first["metadata"]["continue"]
    second = labelled.get("/api/v1/configmaps", params={"limit": "3", "continue": token}).json()
    assert [item["metadata"]["name"] for item in second["items"]] == ["d"]
    assert "continue" not in second["metadata"]


def test_pagination_combines_with_selectors(labelled: Api) -> None:
    page = labelled.get("/api/v1/configmaps", params={"limit": "1", "labelSelector": "app=x"}).json()
    assert [item["metadata"]["name"] for item in page["items"]] == ["a"]
    rest = labelled.get(
        "/api/v1/configmaps", params={"labelSelector": "app=x", "continue": page["metadata"]["continue"]}
    ).json()
    assert [item["metadata"]["name"] for item in rest["items"]] == ["d"]


def test_a_garbled_continue_token_is_400(labelled: Api) -> None:
    assert labelled.get(CONFIGMAPS, params={"continue": "!!"}).status_code == 400
