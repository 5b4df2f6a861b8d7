"""Watches: initial state, replay from a resourceVersion, 410 Gone, no lost events, timeouts, bookmarks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.kubeemu.testing import running_emulator
from tests.kubeemu.emuhelpers import CONFIGMAPS, Api, configmap


def stream(api: Api, path: str, **params: str) -> Iterator[dict[str, Any]]:
    """Yield the events of one watch request until the server ends it."""
    query = {"watch": "true", **params}
    with api.session.get(api.url + path, params=query, stream=True, timeout=15) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        for line in response.iter_lines():
            if line:
                yield json.loads(line)


def take(events: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return [next(events) for _ in range(count)]


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["metadata"].get("name", "")) for event in events]


@pytest.mark.parametrize("flag", ["true", "True", "1"])
def test_watch_flag_spellings_and_initial_added_events(api: Api, flag: str) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    api.create(CONFIGMAPS, configmap("b"))
    events = take(stream(api, CONFIGMAPS, watch=flag, timeoutSeconds="10"), 2)
    assert summary(events) == [("ADDED", "a"), ("ADDED", "b")]
    assert events[0]["object"]["kind"] == "ConfigMap"


def test_watch_from_a_resource_version_replays_every_later_event(api: Api) -> None:
    rv = api.create(CONFIGMAPS, configmap("a"))["metadata"]["resourceVersion"]
    api.create(CONFIGMAPS, configmap("b"))
    api.patch(f"{CONFIGMAPS}/a", {"data": {"k": "2"}})
    api.delete(f"{CONFIGMAPS}/b")
    events = take(stream(api, CONFIGMAPS, resourceVersion=rv, timeoutSeconds="10"), 3)
    assert summary(events) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert versions == sorted(versions) and versions[0] > int(rv)


def test_watch_from_a_list_resource_version_gets_the_writes_after_the_list(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    listed = api.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
    events = stream(api, CONFIGMAPS, resourceVersion=listed, timeoutSeconds="5")
    api.create(CONFIGMAPS, configmap("b"))
    assert summary(take(events, 1)) == [("ADDED", "b")]


def test_a_resource_version_older_than_the_history_is_410_gone() -> None:
    with running_emulator(history_size=2) as emu:
        api = Api(emu.url)
        for index in range(10):
            api.create(CONFIGMAPS, configmap(f"c{index}"))
        events = list(stream(api, CONFIGMAPS, resourceVersion="1", timeoutSeconds="5"))
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


def test_no_event_is_lost_between_the_snapshot_and_live_events(api: Api) -> None:
    total = 400
    writing = threading.Event()

    def writer() -> None:
        client = Api(api.url)
        for index in range(total):
            client.create(CONFIGMAPS, configmap(f"c{index:03}"))
            writing.set()

    def watcher(delay: float, seen: set[str]) -> None:
        time.sleep(delay)
        for event in stream(Api(api.url), CONFIGMAPS, timeoutSeconds="20"):
            seen.add(event["object"]["metadata"]["name"])
            if len(seen) == total:
                return

    # Watches start at different moments while the writes are under way (each one's
    # snapshot splits the writes differently); every one must end up seeing all of them.
    results: list[set[str]] = [set() for _ in range(6)]
    threads = [threading.Thread(target=watcher, args=(0.05 * n, results[n])) for n in range(6)]
    write = threading.Thread(target=writer)
    write.start()
    assert writing.wait(10)
    for thread in threads:
        thread.start()
    write.join()
    for thread in threads:
        thread.join()
    assert [len(seen) for seen in results] == [total] * 6


def test_timeout_seconds_ends_the_stream(api: Api) -> None:
    started = time.monotonic()
    assert list(stream(api, CONFIGMAPS, timeoutSeconds="1")) == []
    assert 0.8 < time.monotonic() - started < 5


def test_bookmarks_are_sent_when_allowed(api: Api) -> None:
    bookmarks = take(stream(api, CONFIGMAPS, allowWatchBookmarks="true", timeoutSeconds="10"), 2)
    assert [event["type"] for event in bookmarks] == ["BOOKMARK", "BOOKMARK"]
    assert bookmarks[0]["object"]["kind"] == "ConfigMap"
    assert int(bookmarks[0]["object"]["metadata"]["resourceVersion"]) > 0
    assert not [e for e in stream(api, CONFIGMAPS, timeoutSeconds="1") if e["type"] == "BOOKMARK"]


def test_send_initial_events_ends_the_initial_state_with_a_marked_bookmark(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    events = take(stream(api, CONFIGMAPS, sendInitialEvents="true", allowWatchBookmarks="true"), 2)
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_objects_leaving_and_entering_a_label_selection_are_deleted_and_added(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a", labels={"app": "x"}))
    events = stream(api, CONFIGMAPS, labelSelector="app=x", timeoutSeconds="5")
    assert summary(take(events, 1)) == [("ADDED", "a")]
    api.patch(f"{CONFIGMAPS}/a", {"metadata": {"labels": {"app": "y"}}})
    api.patch(f"{CONFIGMAPS}/a", {"metadata": {"labels": {"app": "x"}}})
    api.patch(f"{CONFIGMAPS}/a", {"data": {"k": "2"}})
    assert summary(take(events, 3)) == [("DELETED", "a"), ("ADDED", "a"), ("MODIFIED", "a")]


def test_watch_of_one_object_by_field_selector_and_by_url(api: Api) -> None:
    api.create(CONFIGMAPS, configmap("a"))
    api.create(CONFIGMAPS, configmap("b"))
    by_field = stream(api, CONFIGMAPS, fieldSelector="metadata.name=b", timeoutSeconds="10")
    assert summary(take(by_field, 1)) == [("ADDED", "b")]
    by_url = stream(api, f"{CONFIGMAPS}/a", timeoutSeconds="10")
    assert summary(take(by_url, 1)) == [("ADDED", "a")]
    api.patch(f"{CONFIGMAPS}/b", {"data": {"k": "2"}})
    api.patch(f"{CONFIGMAPS}/a", {"data": {"k": "2"}})
    assert summary(take(by_url, 1)) == [("MODIFIED", "a")]
    assert summary(take(by_field, 1)) == [("MODIFIED", "b")]


def test_namespaced_watch_ignores_other_namespaces(api: Api) -> None:
    events = stream(api, CONFIGMAPS, timeoutSeconds="5")
    api.create("/api/v1/namespaces/kube-system/configmaps", configmap("other"))
    api.create(CONFIGMAPS, configmap("mine"))
    assert summary(take(events, 1)) == [("ADDED", "mine")]


def test_a_malformed_resource_version_is_400(api: Api) -> None:
    response = api.get(CONFIGMAPS, params={"watch": "1", "resourceVersion": "abc"})
    assert response.status_code == 400
