"""What changed between two passes' Routes, and sorted outputs updated in place of rebuilt.

Called by the renderers' incremental paths (``renderers/pubsub_plan.py``,
``renderers/redis_rules.py``, ``renderers/kubernetes``, ``renderers/envoy/incremental.py``)
and by ``translation/summaries.py``. Each of them keeps, in the operator's
``Caches``, the Routes it rendered last pass and what it assembled from them;
``route_changes`` names the few Routes that are other objects now (the IR
keeps unchanged Routes' very objects, ``memo.py``), so a pass costs a
comparison of identities (done in C) plus the work for what changed, instead
of a Python loop over every Route. Anything it cannot describe cheaply (Routes
added or removed, many changes, another order) returns ``None``: the caller
then assembles from scratch, as without caches. Pure.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from itertools import compress
from typing import Any, Generic, TypeVar

from .ir import RouteIR

# Beyond this many changed Routes a caller assembles from scratch: the delta would not be cheaper.
MAX_CHANGES = 64

V = TypeVar("V")

RouteChange = tuple[RouteIR, RouteIR]


def route_changes(previous: Sequence[RouteIR], current: Sequence[RouteIR]) -> list[RouteChange] | None:
    """``(before, after)`` of each Route that is another object, or ``None`` (see module doc).

    Both sequences are the IR's Routes, sorted by key: a Route edited in
    place keeps its position, so same length and same keys at every changed
    position mean no Route came or went.
    """
    if len(previous) != len(current):
        return None
    changed = list(compress(range(len(current)), map(operator.is_not, previous, current)))
    if len(changed) > MAX_CHANGES:
        return None
    changes = [(previous[i], current[i]) for i in changed]
    if any(before.key != after.key for before, after in changes):
        return None
    return changes


def async_route_changes(previous: Sequence[RouteIR], current: Sequence[RouteIR]) -> list[RouteChange] | None:
    """``route_changes`` limited to Routes async before or after (the Pub/Sub and worker stages)."""
    changes = route_changes(previous, current)
    if changes is None:
        return None
    return [(before, after) for before, after in changes if before.mode == "async" or after.mode == "async"]


class SortedRows(Generic[V]):
    """Values kept sorted by a string-tuple sort key, with inserts and removals by bisection.

    The lists are only ever replaced (``rows()`` hands out a tuple), so a
    tuple given to an earlier pass's output never changes.
    """

    __slots__ = ("_keys", "_values")

    def __init__(self, rows: Sequence[tuple[Any, V]]) -> None:
        self._keys: list[Any] = [key for key, _ in rows]
        self._values: list[V] = [value for _, value in rows]

    def remove(self, key: Any) -> bool:
        index = bisect.bisect_left(self._keys, key)
        if index < len(self._keys) and self._keys[index] == key:
            del self._keys[index]
            del self._values[index]
            return True
        return False

    def insert(self, key: Any, value: V) -> bool:
        """Insert a row; ``False`` (and nothing inserted) when the key is already there."""
        index = bisect.bisect_left(self._keys, key)
        if index < len(self._keys) and self._keys[index] == key:
            return False
        self._keys.insert(index, key)
        self._values.insert(index, value)
        return True

    def replace(self, key: Any, value: V) -> bool:
        """Replace the value of an existing row; ``False`` when there is none."""
        index = bisect.bisect_left(self._keys, key)
        if index < len(self._keys) and self._keys[index] == key:
            self._values[index] = value
            return True
        return False

    def get(self, key: Any) -> V | None:
        index = bisect.bisect_left(self._keys, key)
        if index < len(self._keys) and self._keys[index] == key:
            return self._values[index]
        return None

    def copy(self) -> SortedRows[V]:
        rows: SortedRows[V] = SortedRows(())
        rows._keys = list(self._keys)
        rows._values = list(self._values)
        return rows

    def values(self) -> tuple[V, ...]:
        return tuple(self._values)

    def __len__(self) -> int:
        return len(self._keys)
