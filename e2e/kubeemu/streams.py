"""One watch stream of the emulated API server, from its start to its end.

A watch without a resourceVersion (or with ``0``) first sends ``ADDED`` for
the current objects, then everything after the snapshot; with
``resourceVersion=N`` it replays everything after ``N`` from the event log,
or sends a ``410 Expired`` ``ERROR`` event when ``N`` is older than the log
keeps. Objects entering or leaving a label/field selection are sent as
``ADDED``/``DELETED``, like the real server does. ``timeoutSeconds`` ends the
stream, ``allowWatchBookmarks`` adds periodic ``BOOKMARK`` events,
``sendInitialEvents`` ends the initial state with the
``k8s.io/initial-events-end`` bookmark, and ``Accept: ...;as=Table`` wraps the
objects in tables for ``kubectl get -w``. Events are newline-delimited JSON.
Called by :mod:`.emulator` for ``?watch=true|True|1`` requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Protocol

import aiohttp.web
import attrs

from . import errors, tables
from .registry import Kind
from .selectors import FieldSelector, LabelSelector
from .store import Store
from .watching import EventLog, Expired, WatchEvent


class Closable(Protocol):
    """What a watch needs from its server: when to stop and how often to bookmark."""

    @property
    def closing(self) -> bool: ...

    @property
    def bookmark_interval(self) -> float: ...


@attrs.define(kw_only=True)
class WatchStream:
    """One watch stream: initial state or replay, then live events, bookmarks, timeout."""

    store: Store
    emulator: Closable
    kind: Kind
    namespace: str | None
    name: str | None
    labels: LabelSelector
    fields: FieldSelector
    table: bool
    bookmarks: bool
    initial_end: bool
    _columns_sent: bool = False

    def _matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return self.labels.matches(obj) and self.fields.matches(obj)

    def _translate(self, event: WatchEvent) -> tuple[str, dict[str, Any]] | None:
        """The event as this watch sees it: objects entering or leaving the selection."""
        if event.storage != self.kind.storage:
            return None
        now_matches = self._matches(event.obj)
        if event.type == "MODIFIED" and event.old is not None:
            was_matching = self._matches(event.old)
            if now_matches and was_matching:
                return "MODIFIED", event.obj
            if now_matches:
                return "ADDED", event.obj
            if was_matching:
                return "DELETED", event.obj
            return None
        return (event.type, event.obj) if now_matches else None

    def _encode(self, event_type: str, obj: dict[str, Any]) -> bytes:
        presented: dict[str, Any] = self.store.present(self.kind, obj)
        if self.table and event_type != "BOOKMARK":
            presented = tables.table(
                self.kind,
                [presented],
                resource_version=str((obj.get("metadata") or {}).get("resourceVersion", "")),
                now=self.store.clock(),
                with_columns=not self._columns_sent,
            )
            self._columns_sent = True
        return json.dumps({"type": event_type, "object": presented}).encode() + b"\n"

    def _bookmark(self, rv: int, *, initial_end: bool = False) -> bytes:
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.kind.kind, "apiVersion": self.kind.api_version, "metadata": metadata}
        return json.dumps({"type": "BOOKMARK", "object": obj}).encode() + b"\n"

    @staticmethod
    def _expired(rv: int, log: EventLog) -> bytes:
        status = errors.status_body(errors.gone(f"too old resource version: {rv} ({log.evicted_upto + 1})"))
        return json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"

    async def run(self, response: aiohttp.web.StreamResponse, since: str, timeout: int | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        log = self.store.log
        waker = log.subscribe()
        try:
            # sendInitialEvents (client-go's WatchList) always starts from a fresh snapshot.
            if since in ("", "0") or self.initial_end:
                # Snapshot and position are taken in one synchronous step: every later
                # write has a higher resourceVersion and is read from the log below.
                position = self.store.rv
                page = self.store.list_objects(self.kind, self.namespace, self.labels, self.fields)
                initial = [obj for obj in page.items if self._matches(obj)]
                for obj in initial:
                    await response.write(self._encode("ADDED", obj))
                if self.initial_end:
                    await response.write(self._bookmark(position, initial_end=True))
            else:
                position = int(since)
            next_bookmark = loop.time() + self.emulator.bookmark_interval
            while not self.emulator.closing:
                waker.clear()
                try:
                    events = log.since(position)
                except Expired:
                    await response.write(self._expired(position, log))
                    return
                for event in events:
                    position = event.rv
                    seen = self._translate(event)
                    if seen is not None:
                        await response.write(self._encode(*seen))
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return
                if self.bookmarks and now >= next_bookmark:
                    # Every event up to `position` has been read (sent or filtered out).
                    await response.write(self._bookmark(position))
                    next_bookmark = now + self.emulator.bookmark_interval
                wait = self.emulator.bookmark_interval if self.bookmarks else 3600.0
                wait = min(wait, next_bookmark - now) if self.bookmarks else wait
                if deadline is not None:
                    wait = min(wait, deadline - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), timeout=max(wait, 0.0))
        finally:
            log.unsubscribe(waker)
