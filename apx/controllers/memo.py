"""Caches that make a pass over unchanged objects cheap: what translation and rendering reuse.

Created and owned by the caller (the operator's reconciler keeps one
``Caches`` for its whole life; ``apx translate`` and the from-scratch path
pass none) and handed to ``translate``, ``render_redis``, ``render_envoy``,
``render_pubsub`` and ``render_kubernetes`` through ``pipeline``. Pure: no
clock, no I/O; a cache only ever returns what the uncached call would have
computed from the same inputs, which ``tests/unit/test_incremental.py``
checks on random edit sequences (incremental output == from-scratch output,
byte for byte).

How entries are keyed, and why that is safe:

* by *identity* of an input object that the cache holds a strong reference
  to (a raw body, a parsed model, an IR object): while the entry lives, the
  object cannot be freed, so its ``id`` cannot be reused by another one, and
  every lookup also checks ``entry_input is input``. The operator's store
  replaces a body (a new dict) whenever it changes, never mutates it, and the
  IR is frozen; so "same object" means "same content";
* or by a plain value (an object key) with the identities of everything the
  result depends on stored beside it and compared on lookup.

Bound: an entry not used during a whole pass is dropped when the pass ends
(``Caches.end_pass``), so the caches hold what the last pass used and
nothing older — at most one entry per object and per derived resource.
A stage on its delta path (``delta.py``: it updates what it assembled last
pass for the few Routes that changed, kept in ``Caches.assembled``) does not
look up unchanged objects: it ``carry``-s its memos (every entry counts as
used) and ``forget``-s the entries of the objects that were replaced.
Size, measured at 10,000 Routes / 1,000 Products (``bench/workload.py``,
released memory after clearing each cache): about 8 KiB per Route — the
serialized Envoy entries (2.5 KiB) and virtual hosts (2.4 KiB), the RouteIR
and its status summary (1.3 KiB), the route-table record (1 KiB), the rule
sets (0.7 KiB) — plus about 35 MiB kept per policy version and product (the
Envoy render context and the compiled PolicyBundles): 115 MiB in all. A
Route's pydantic model is not kept (``translation/facts.py``): parsed again
only when the Route must be translated again.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class PassMemo(Generic[K, V]):
    """A dict whose entries survive while some pass uses them.

    Two generations: ``get`` moves a hit from the previous pass's generation
    into the current one; ``end_pass`` drops whatever the pass did not touch.
    """

    __slots__ = ("_current", "_previous", "hits", "misses")

    def __init__(self) -> None:
        self._current: dict[K, V] = {}
        self._previous: dict[K, V] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        value = self._current.get(key)
        if value is None:
            value = self._previous.pop(key, None)
            if value is None:
                self.misses += 1
                return None
            self._current[key] = value
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> V:
        self._current[key] = value
        return value

    def end_pass(self) -> None:
        self._previous = self._current
        self._current = {}

    def carry(self) -> None:
        """Count every entry as used this pass (a stage that skipped unchanged objects still holds them)."""
        if self._previous:
            self._previous.update(self._current)
            self._current, self._previous = self._previous, {}

    def forget(self, key: K) -> None:
        self._current.pop(key, None)
        self._previous.pop(key, None)

    def clear(self) -> None:
        self._current.clear()
        self._previous.clear()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class IdentityMemo(Generic[V]):
    """Values computed from one object, keyed by that object's identity (it is held, see module doc)."""

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: PassMemo[int, tuple[object, V]] = PassMemo()

    def get(self, source: object, compute: Callable[[], V]) -> V:
        entry = self._memo.get(id(source))
        if entry is not None and entry[0] is source:
            return entry[1]
        value = compute()
        self._memo.put(id(source), (source, value))
        return value

    def end_pass(self) -> None:
        self._memo.end_pass()

    def carry(self) -> None:
        self._memo.carry()

    def forget(self, source: object) -> None:
        """Drop the entry of ``source`` (an input that has just been replaced by another object)."""
        entry = self._memo.get(id(source))
        if entry is not None and entry[0] is source:
            self._memo.forget(id(source))

    def clear(self) -> None:
        self._memo.clear()

    def __len__(self) -> int:
        return len(self._memo)


def same(left: tuple[Any, ...], right: tuple[Any, ...]) -> bool:
    """True when two dependency tuples hold the very same objects, position by position."""
    # In C (``map`` of ``operator.is_``): several stages compare the 1,000 Products every pass.
    return len(left) == len(right) and all(map(operator.is_, left, right))


@dataclass(slots=True)
class Caches:
    """Every cache of the pure path, one field per stage; see each stage for what its entries hold."""

    # translate
    parsed: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    products: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    bundles: PassMemo[str, Any] = field(default_factory=PassMemo)
    routes: PassMemo[str, Any] = field(default_factory=PassMemo)
    # renderers, keyed by RouteIR / ProductIR identity
    redis_routes: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    redis_products: PassMemo[str, Any] = field(default_factory=PassMemo)
    envoy_routes: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    envoy_hosts: PassMemo[str, Any] = field(default_factory=PassMemo)
    envoy_clusters: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    envoy_context: list[Any] = field(default_factory=list)
    pubsub_routes: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    kubernetes_routes: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    kubernetes_policies: IdentityMemo[Any] = field(default_factory=IdentityMemo)
    digests: IdentityMemo[str] = field(default_factory=IdentityMemo)
    # What each stage assembled last pass, by stage, for its delta path (``delta.py``): one entry each.
    assembled: dict[str, Any] = field(default_factory=dict)

    def _memos(self) -> list[PassMemo[Any, Any] | IdentityMemo[Any]]:
        return [
            self.parsed, self.products, self.bundles, self.routes, self.redis_routes, self.redis_products,
            self.envoy_routes, self.envoy_hosts, self.envoy_clusters, self.pubsub_routes,
            self.kubernetes_routes, self.kubernetes_policies, self.digests,
        ]  # fmt: skip

    def end_pass(self) -> None:
        """Drop entries the pass just finished did not use."""
        for memo in self._memos():
            memo.end_pass()

    def clear(self) -> None:
        for memo in self._memos():
            memo.clear()
        self.envoy_context.clear()
        self.assembled.clear()

    def sizes(self) -> dict[str, int]:
        names = (
            "parsed", "products", "bundles", "routes", "redis_routes", "redis_products", "envoy_routes",
            "envoy_hosts", "envoy_clusters", "pubsub_routes", "kubernetes_routes", "kubernetes_policies",
            "digests",
        )  # fmt: skip
        return {name: len(memo) for name, memo in zip(names, self._memos(), strict=True)}
