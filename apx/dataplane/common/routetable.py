"""Read the operator's route table from Redis and match requests against it.

Used by the async gateway (``apx.dataplane.gateway``) on every request. The
table is the operator's contract (``apx.contracts.route_table``, which the
operator's renderer encodes and this module decodes; keys from
``apx.contracts.redis_keys``): ``apx:routetable:{routes}:current`` names the
live version and ``apx:routetable:{routes}:v:<version>`` maps ``<ns>/<route>``
to a JSON entry.

Reading:

* ``current`` is re-read at most once per ``refresh_interval`` (1 s), in the
  background, while requests keep using the table they have
  (stale-while-revalidate); only the first request waits for a read.
* A version hash is immutable, so a table is loaded once per version
  (``HGETALL``) and decoded into frozen ``RouteEntry`` records with a match
  index. A request takes one ``RouteTable`` snapshot and uses only it, so it
  never mixes entries of two versions.
* When Redis is unreachable the last table keeps serving; with no table at all
  ``snapshot()`` raises and the gateway answers 503. A missing ``current`` is
  an empty table (no routes yet). Entries that do not parse are skipped and
  logged, never fatal for the others.

Matching mirrors what Envoy does with the same Route (``apx/controllers/renderers/envoy``):
host (exact, then the longest ``*.suffix`` wildcard; the port is ignored
unless the Route's host names one), then an exact ``path`` before the longest
``path_prefix`` (plain string prefixes, as Envoy's ``prefix``), then the
method. A path that matches only with another method is reported so the
gateway can answer 405 instead of 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apx.contracts import redis_keys
from apx.contracts.errors import ContractError
from apx.contracts.route_table import (
    ApiKeySettings,
    AuthSettings,
    JwtSettings,
    RouteEntry,
    TrackEntry,
    decode_route_entry_text,
)
from apx.dataplane.common.redisconn import RedisClient

log = logging.getLogger(__name__)

DEFAULT_REFRESH_INTERVAL = 1.0

# The records the gateway works with are the contract's own.
__all__ = [
    "ApiKeySettings",
    "AuthSettings",
    "JwtSettings",
    "Match",
    "RouteEntry",
    "RouteTable",
    "RouteTableReader",
    "RouteTableUnavailable",
    "TrackEntry",
]


class RouteTableUnavailable(Exception):
    """No route table could be read yet (Redis unreachable since start)."""


def allows(entry: RouteEntry, method: str) -> bool:
    return not entry.methods or method in entry.methods


def matches_path(entry: RouteEntry, path: str) -> bool:
    if entry.path is not None:
        return path == entry.path
    return entry.path_prefix is not None and path.startswith(entry.path_prefix)


def matches_host(entry: RouteEntry, host: str) -> bool:
    bare = _strip_port(host)
    for pattern in entry.hosts:
        candidate = host if ":" in pattern else bare
        if pattern.startswith("*."):
            if candidate.endswith(pattern[1:]) and len(candidate) > len(pattern) - 1:
                return True
        elif candidate == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Match:
    """Result of matching a request: the entry, or why there is none."""

    entry: RouteEntry | None
    allowed_methods: frozenset[str] = frozenset()  # non-empty: the path matched, the method did not


def _strip_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True, slots=True)
class RouteTable:
    """One version of the route table with its match index."""

    version: str | None
    entries: Mapping[str, RouteEntry]
    _by_host: Mapping[str, tuple[RouteEntry, ...]] = field(default_factory=dict, repr=False)
    _wildcards: tuple[tuple[str, tuple[RouteEntry, ...]], ...] = field(default=(), repr=False)

    @classmethod
    def build(cls, version: str | None, entries: Mapping[str, RouteEntry]) -> RouteTable:
        by_host: dict[str, list[RouteEntry]] = {}
        wildcards: dict[str, list[RouteEntry]] = {}
        for entry in entries.values():
            for host in entry.hosts:
                if host.startswith("*."):
                    wildcards.setdefault(host[1:], []).append(entry)
                else:
                    by_host.setdefault(host, []).append(entry)
        return cls(
            version=version,
            entries=dict(entries),
            _by_host={h: _ordered(es) for h, es in by_host.items()},
            # Longest suffix first, as Envoy picks the most specific wildcard domain.
            _wildcards=tuple(
                (suffix, _ordered(es)) for suffix, es in sorted(wildcards.items(), key=lambda kv: -len(kv[0]))
            ),
        )

    def _candidates(self, host: str) -> tuple[RouteEntry, ...]:
        host = host.strip().lower()
        found = self._by_host.get(host) or self._by_host.get(_strip_port(host))
        if found:
            return found
        bare = _strip_port(host)
        for suffix, entries in self._wildcards:
            if bare.endswith(suffix) and len(bare) > len(suffix):
                return entries
        return ()

    def match(self, host: str, path: str, method: str, hint: str | None = None) -> Match:
        """The entry serving ``method host path``; ``hint`` (Envoy's ``x-apx-route``) is checked."""
        method = method.upper()
        if hint:
            entry = self.entries.get(hint)
            if (
                entry is not None
                and matches_host(entry, host)
                and matches_path(entry, path)
                and allows(entry, method)
            ):
                return Match(entry)
        allowed: set[str] = set()
        for entry in self._candidates(host):
            if not matches_path(entry, path):
                continue
            if allows(entry, method):
                return Match(entry)
            allowed.update(entry.methods)
        return Match(None, frozenset(allowed))


def _ordered(entries: list[RouteEntry]) -> tuple[RouteEntry, ...]:
    # Exact paths first, then prefixes longest first; ties by route key for determinism.
    def rank(entry: RouteEntry) -> tuple[int, int, str]:
        if entry.path is not None:
            return (0, -len(entry.path), entry.key)
        return (1, -len(entry.path_prefix or ""), entry.key)

    return tuple(sorted(entries, key=rank))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RouteTableReader:
    """Keeps the live route table in memory, refreshed from Redis at most every ``refresh_interval``."""

    def __init__(
        self,
        client: RedisClient,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        instance: str = "",
    ) -> None:
        self._client = client
        # The operator instance whose route table is read (``apx-gateway --instance``).
        self.instance = instance
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._table: RouteTable | None = None
        self._fetched_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self.loads = 0  # versions loaded (for metrics and tests)

    @property
    def table(self) -> RouteTable | None:
        """The table in memory, without I/O."""
        return self._table

    async def snapshot(self) -> RouteTable:
        """The current table; raises ``RouteTableUnavailable`` if none could ever be read."""
        if self._table is None:
            await self._first_read()
            assert self._table is not None
            return self._table
        if self._clock() - self._fetched_at > self.refresh_interval and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh())
        return self._table

    async def _first_read(self) -> None:
        if self._first is not None:
            await asyncio.shield(self._first)
            return
        self._first = asyncio.get_running_loop().create_future()
        try:
            await self._load()
            self._first.set_result(None)
        except Exception as exc:
            error = RouteTableUnavailable(f"route table unreadable: {exc}")
            self._first.set_exception(error)
            self._first.exception()  # retrieved: waiters re-raise it
            raise error from exc
        finally:
            self._first = None

    async def _refresh(self) -> None:
        try:
            await self._load()
        except Exception as exc:  # keep serving the table we have; the next request retries
            log.warning(
                "route table refresh failed; serving version %s", self.version, extra={"error": str(exc)}
            )
            self._fetched_at = self._clock()
        finally:
            self._refreshing = None

    @property
    def version(self) -> str | None:
        return self._table.version if self._table is not None else None

    async def _load(self) -> None:
        raw = await self._client.get(redis_keys.route_table_current_key(self.instance))
        version = _text(raw) if raw is not None else None
        if self._table is not None and version == self._table.version:
            self._fetched_at = self._clock()
            return
        entries: dict[str, RouteEntry] = {}
        if version is not None:
            fields = await self._client.hgetall(redis_keys.route_table_key(version, self.instance))
            if not fields:
                # Pruned between the two reads (two switches in a row): read the pointer again next time.
                raise RuntimeError(f"route table version {version} vanished")
            for name, value in fields.items():
                try:
                    entries[_text(name)] = decode_route_entry_text(value)
                except ContractError as exc:
                    log.warning(
                        "unreadable route-table entry skipped",
                        extra={"route": _text(name), "error": str(exc)},
                    )
        self._table = RouteTable.build(version, entries)
        self._fetched_at = self._clock()
        self.loads += 1
        log.info("route table loaded", extra={"version": version, "routes": len(entries)})

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
