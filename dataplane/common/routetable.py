"""Read the operator's route table from Redis and match requests against it.

Used by the async gateway (``apx.dataplane.gateway``) on every request. The
table is the operator's contract (``controllers/renderers/REDIS_KEYS.md``,
rendered by ``apx.controllers.renderers.redis_rules.route_entry``):
``apx:routetable:{routes}:current`` names the live version and
``apx:routetable:{routes}:v:<version>`` maps ``<ns>/<route>`` to a JSON entry.

Reading:

* ``current`` is re-read at most once per ``refresh_interval`` (1 s), in the
  background, while requests keep using the table they have
  (stale-while-revalidate); only the first request waits for a read.
* A version hash is immutable, so a table is loaded once per version
  (``HGETALL``) and parsed into frozen ``RouteEntry`` objects with a match
  index. A request takes one ``RouteTable`` snapshot and uses only it, so it
  never mixes entries of two versions.
* When Redis is unreachable the last table keeps serving; with no table at all
  ``snapshot()`` raises and the gateway answers 503. A missing ``current`` is
  an empty table (no routes yet). Entries that do not parse are skipped and
  logged, never fatal for the others.

Matching mirrors what Envoy does with the same Route (``controllers/renderers/envoy``):
host (exact, then the longest ``*.suffix`` wildcard; the port is ignored
unless the Route's host names one), then an exact ``path`` before the longest
``path_prefix`` (plain string prefixes, as Envoy's ``prefix``), then the
method. A path that matches only with another method is reported so the
gateway can answer 405 instead of 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from apx.controllers import names

log = logging.getLogger(__name__)

DEFAULT_REFRESH_INTERVAL = 1.0


class RouteTableUnavailable(Exception):
    """No route table could be read yet (Redis unreachable since start)."""


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """JWT verification settings of a track's policy (``auth.jwt`` of the PolicyBundle)."""

    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...]
    tenant_claim: str
    tier_claim: str | None
    clock_skew_seconds: int
    jwks_cache_ms: int


@dataclass(frozen=True, slots=True)
class ApiKeySettings:
    header: str
    query_parameter: str | None


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How a track's policy identifies callers; the only source of tenant identity."""

    jwt: JwtSettings | None
    api_key: ApiKeySettings | None
    allow_anonymous: bool


@dataclass(frozen=True, slots=True)
class TrackEntry:
    name: str  # "stable" | "canary"
    weight: int  # percent; the weights of a route sum to 100
    policy_version: str
    policy_artifact: str
    auth: AuthSettings


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One Route as the gateway sees it."""

    key: str  # "<ns>/<name>"
    mode: str
    product: str
    hosts: tuple[str, ...]
    path: str | None
    path_prefix: str | None
    methods: frozenset[str]
    residency: str
    regions: tuple[str, ...]
    timeout_ms: int
    backlog_limit: int
    result_ttl_ms: int
    ordering: bool
    sticky_by_tenant: bool
    tracks: tuple[TrackEntry, ...]
    topics: Mapping[str, Mapping[str, str]]  # track -> region -> topic id
    tenant_topics: Mapping[str, Mapping[str, Mapping[str, str]]]  # tenant -> track -> region -> topic id

    def track(self, name: str) -> TrackEntry | None:
        for track in self.tracks:
            if track.name == name:
                return track
        return None

    def allows(self, method: str) -> bool:
        return not self.methods or method in self.methods

    def matches_path(self, path: str) -> bool:
        if self.path is not None:
            return path == self.path
        return self.path_prefix is not None and path.startswith(self.path_prefix)

    def matches_host(self, host: str) -> bool:
        bare = _strip_port(host)
        for pattern in self.hosts:
            candidate = host if ":" in pattern else bare
            if pattern.startswith("*."):
                if candidate.endswith(pattern[1:]) and len(candidate) > len(pattern) - 1:
                    return True
            elif candidate == pattern:
                return True
        return False

    @property
    def match_base(self) -> str:
        """The exact path or prefix the Route matched on (the worker rewrites it for URL backends)."""
        return self.path if self.path is not None else (self.path_prefix or "/")


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


def _auth(document: Mapping[str, Any] | None) -> AuthSettings:
    # An entry rendered before tracks carried auth settings admits nobody: the
    # gateway never guesses identity.
    if not document:
        return AuthSettings(jwt=None, api_key=None, allow_anonymous=False)
    jwt_doc = document.get("jwt")
    jwt = None
    if jwt_doc:
        jwt = JwtSettings(
            issuer=str(jwt_doc["issuer"]),
            jwks_uri=str(jwt_doc["jwks_uri"]),
            audiences=tuple(str(a) for a in jwt_doc.get("audiences") or ()),
            tenant_claim=str(jwt_doc.get("tenant_claim") or "tenant"),
            tier_claim=str(jwt_doc["tier_claim"]) if jwt_doc.get("tier_claim") else None,
            clock_skew_seconds=int(jwt_doc.get("clock_skew_seconds", 60)),
            jwks_cache_ms=int(jwt_doc.get("jwks_cache_ms", 300_000)),
        )
    key_doc = document.get("api_key")
    api_key = None
    if key_doc:
        query = key_doc.get("query_parameter")
        api_key = ApiKeySettings(
            header=str(key_doc.get("header") or "x-api-key").lower(), query_parameter=query
        )
    return AuthSettings(jwt=jwt, api_key=api_key, allow_anonymous=bool(document.get("allow_anonymous")))


def parse_entry(document: Mapping[str, Any]) -> RouteEntry:
    """A route-table entry as written by ``redis_rules.route_entry``; raises on a malformed one."""
    tracks = tuple(
        TrackEntry(
            name=str(t["track"]),
            weight=int(t["weight"]),
            policy_version=str(t.get("policy_version") or ""),
            policy_artifact=str(t.get("policy_artifact") or ""),
            auth=_auth(t.get("auth")),
        )
        for t in document["tracks"]
    )
    if not tracks:
        raise ValueError("route entry without tracks")
    return RouteEntry(
        key=str(document["route"]),
        mode=str(document["mode"]),
        product=str(document["product"]),
        hosts=tuple(str(h).lower() for h in document.get("hosts") or ()),
        path=document.get("path"),
        path_prefix=document.get("path_prefix"),
        methods=frozenset(str(m).upper() for m in document.get("methods") or ()),
        residency=str(document.get("residency") or "GLOBAL"),
        regions=tuple(str(r) for r in document.get("regions") or ()),
        timeout_ms=int(document.get("timeout_ms") or 30_000),
        backlog_limit=int(document.get("backlog_limit") or 0),
        result_ttl_ms=int(document.get("result_ttl_ms") or 3_600_000),
        ordering=bool(document.get("ordering", True)),
        sticky_by_tenant=bool(document.get("sticky_by_tenant")),
        tracks=tracks,
        topics={str(k): dict(v) for k, v in (document.get("topics") or {}).items()},
        tenant_topics={
            str(tenant): {str(track): dict(regions) for track, regions in per_track.items()}
            for tenant, per_track in (document.get("tenant_topics") or {}).items()
        },
    )


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
                and entry.matches_host(host)
                and entry.matches_path(path)
                and entry.allows(method)
            ):
                return Match(entry)
        allowed: set[str] = set()
        for entry in self._candidates(host):
            if not entry.matches_path(path):
                continue
            if entry.allows(method):
                return Match(entry)
            allowed |= entry.methods
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
        client: aioredis.Redis,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
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
        raw = await self._client.get(names.route_table_current_key())
        version = _text(raw) if raw is not None else None
        if self._table is not None and version == self._table.version:
            self._fetched_at = self._clock()
            return
        entries: dict[str, RouteEntry] = {}
        if version is not None:
            fields = await self._client.hgetall(names.route_table_key(version))
            if not fields:
                # Pruned between the two reads (two switches in a row): read the pointer again next time.
                raise RuntimeError(f"route table version {version} vanished")
            for name, value in fields.items():
                try:
                    entries[_text(name)] = parse_entry(json.loads(_text(value)))
                except (ValueError, KeyError, TypeError) as exc:
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
