"""The event history behind race-free watches.

Every write of the store gets the next cluster-wide resourceVersion and
exactly one :class:`WatchEvent` appended here, in the same synchronous step
(the server runs on one event loop, and no write awaits in between). A watch
therefore never misses an event: it takes a snapshot (or a client's
resourceVersion) as its position and then reads everything after that
position from this log. The log is a bounded ring: when a watch asks for a
position older than what is kept, it gets ``410 Gone`` like from the real
server, and must re-list. Watchers are woken by per-watch ``asyncio.Event``
objects. Called by :mod:`.store` (append) and :mod:`.emulator` (read, wait).

kmock's own ``Bus`` fans out live items to consumers that are already
connected, but cannot replay from a resourceVersion, so it is not used here.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any

import attrs
import kmock


class Expired(Exception):
    """The requested resourceVersion is older than the kept history."""


@attrs.frozen
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    storage: kmock.resource
    obj: dict[str, Any] = attrs.field(eq=False)
    old: dict[str, Any] | None = attrs.field(default=None, eq=False)


@attrs.define
class EventLog:
    size: int = 4096
    evicted_upto: int = 0  # every event with rv <= this one is gone
    _events: list[WatchEvent] = attrs.field(factory=list)
    _rvs: list[int] = attrs.field(factory=list)
    _wakers: set[asyncio.Event] = attrs.field(factory=set)

    def append(self, event: WatchEvent) -> None:
        self._events.append(event)
        self._rvs.append(event.rv)
        # Trim in halves so that appends stay O(1) amortised.
        if len(self._events) > 2 * self.size:
            cut = len(self._events) - self.size
            self.evicted_upto = self._rvs[cut - 1]
            del self._events[:cut]
            del self._rvs[:cut]
        self.wake()

    def since(self, rv: int) -> list[WatchEvent]:
        """All events after ``rv``; raises :class:`Expired` if some are gone."""
        if rv < self.evicted_upto:
            raise Expired(rv)
        return self._events[bisect.bisect_right(self._rvs, rv) :]

    def subscribe(self) -> asyncio.Event:
        waker = asyncio.Event()
        self._wakers.add(waker)
        return waker

    def unsubscribe(self, waker: asyncio.Event) -> None:
        self._wakers.discard(waker)

    def wake(self) -> None:
        for waker in self._wakers:
            waker.set()

    def __len__(self) -> int:
        return len(self._events)
