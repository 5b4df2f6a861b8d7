"""Events expire after the emulated API's ``event_ttl``, like the real API server's Event TTL.

Drives ``e2e.kubeemu.store.Store`` directly with a clock the test moves: an
Event older than the TTL is deleted (with a DELETED watch event) when the
next Event is created; a younger one, an Event deleted meanwhile and one
recreated under the same name are handled right; other kinds are untouched.
"""

from __future__ import annotations

import datetime
from typing import Any

import kmock

from e2e.kubeemu.base import WriteOptions
from e2e.kubeemu.store import Store

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime.datetime:
        return self.now


def _store(clock: Clock) -> Store:
    return Store(kmock.ObjectsArray(), kmock.ResourcesArray(), event_ttl=60.0, clock=clock)


def _event(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": "ConfigMap", "name": "x", "namespace": "default"},
        "reason": "Test",
        "message": name,
    }


def _names(store: Store, kind: Any) -> list[str]:
    return [item["metadata"]["name"] for item in store.list_objects(kind, "default").items]


def test_events_older_than_the_ttl_are_deleted_when_the_next_event_is_created() -> None:
    clock = Clock()
    store = _store(clock)
    events = store.registry.find("", "v1", "events")
    configmaps = store.registry.find("", "v1", "configmaps")
    assert events is not None and configmaps is not None
    store.create(events, "default", _event("old-1"), WriteOptions())
    store.create(events, "default", _event("old-2"), WriteOptions())
    store.create(configmaps, "default", {"metadata": {"name": "cm"}, "data": {"k": "v"}}, WriteOptions())
    clock.now = START + datetime.timedelta(seconds=30)
    store.create(events, "default", _event("young"), WriteOptions())
    assert _names(store, events) == ["old-1", "old-2", "young"]  # nothing is past the TTL yet

    clock.now = START + datetime.timedelta(seconds=61)
    rv_before = store.rv
    store.create(events, "default", _event("new"), WriteOptions())
    assert _names(store, events) == ["new", "young"]
    deleted = [e for e in store.log.since(rv_before) if e.type == "DELETED"]
    assert sorted(e.obj["metadata"]["name"] for e in deleted) == ["old-1", "old-2"]
    assert _names(store, configmaps) == ["cm"]  # only Events expire


def test_an_event_recreated_under_the_same_name_expires_by_its_own_creation_time() -> None:
    clock = Clock()
    store = _store(clock)
    events = store.registry.find("", "v1", "events")
    assert events is not None
    store.create(events, "default", _event("a"), WriteOptions())
    store.delete(events, "default", "a")
    clock.now = START + datetime.timedelta(seconds=40)
    store.create(events, "default", _event("a"), WriteOptions())  # the same name, created later
    clock.now = START + datetime.timedelta(seconds=70)
    store.create(events, "default", _event("b"), WriteOptions())
    assert _names(store, events) == ["a", "b"]  # the first "a" expired, the second is 30 s old
    clock.now = START + datetime.timedelta(seconds=101)
    store.create(events, "default", _event("c"), WriteOptions())
    assert _names(store, events) == ["b", "c"]
