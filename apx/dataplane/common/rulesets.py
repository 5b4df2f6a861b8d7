"""Read the operator's rate-limit rule sets and the API-key table from Redis, with bounded caching.

Used by the rate-limit service (``apx.dataplane.ratelimit``) on every
decision and by the concurrency/credits helpers the async gateway imports.
The keys and documents are the operator's contract: key names from
``apx.contracts.redis_keys``, fields decoded by ``apx.contracts.rule_set``
into typed records (``RuleSetMeta``, ``Rule``); see also
``apx/controllers/renderers/REDIS_KEYS.md``.

Caching, chosen so the hot path costs no Redis round trip of its own:

* ``apx:rules:{<product>}:current`` is cached per product for at most
  ``pointer_ttl`` seconds (1 s, what the contract allows). A stale pointer is
  refreshed in the background while requests keep using the cached one
  (stale-while-revalidate); only the very first request of a product waits.
* A version hash is immutable once written, so its documents are cached for
  as long as the version is current, field by field as requests need them
  (one ``HMGET meta tenant:<id> plan:<plan> default`` on a miss). Rule sets
  with thousands of listed tenants are never loaded whole; unknown fields are
  cached as absent, so a flood of made-up tenant ids costs one read each per
  version. When the pointer moves, the old version's cache is dropped.
* Every answer comes from the documents of one version: a request is never
  judged against fields of two versions. If a version hash has vanished
  (pruned after two quick switches), the pointer is re-read and the lookup
  is retried once against the new version.
* The API-key table (``apx:apikeys:{<product>}``) maps key ids to tenants;
  answers, including "unknown key", are cached for ``pointer_ttl`` seconds
  the same stale-while-revalidate way, so revoking a key takes effect within
  about a second and a flood of bogus keys does not reach Redis per request.

Redis errors propagate (``redis.exceptions.RedisError`` / ``OSError``) so the
caller applies its failure mode; ``cached_meta()`` answers from memory only,
for deciding that failure mode while Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apx.contracts import redis_keys
from apx.contracts.errors import ContractError
from apx.contracts.rule_set import (
    DEFAULT_FIELD,
    META_FIELD,
    RouteRule,
    Rule,
    RuleSetMeta,
    decode_api_key_entry,
    decode_field,
    plan_field,
    tenant_field,
)
from apx.dataplane.common.redisconn import RedisClient

log = logging.getLogger(__name__)

# A decoded field of a rule-set version (None: absent or unreadable, remembered as such).
Field = RuleSetMeta | Rule | RouteRule | None

DEFAULT_POINTER_TTL = 1.0
# Bounds on what one process remembers; past them the oldest entries go.
MAX_FIELDS_PER_VERSION = 100_000
MAX_API_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """The documents of one rule-set version that answer one request."""

    product: str
    version: str
    meta: RuleSetMeta
    rule: Rule
    field: str  # which field answered: "tenant:<id>", "plan:<name>" or "default"


@dataclass(slots=True)
class _VersionDocs:
    version: str
    fields: OrderedDict[str, Field] = field(default_factory=OrderedDict)
    # (tenant, plan) -> the match they got: the documents of a version never change, so a repeated
    # question is answered without rebuilding field names (bounded like ``fields``).
    matches: dict[tuple[str, str | None], RuleMatch] = field(default_factory=dict)


@dataclass(slots=True)
class _Pointer:
    version: str | None = None
    fetched_at: float = float("-inf")
    known: bool = False  # False until the first successful read
    refreshing: asyncio.Task[None] | None = None
    docs: _VersionDocs | None = None
    last_meta: RuleSetMeta | None = None  # survives version switches, for failure decisions


@dataclass(slots=True)
class _ApiKeyEntry:
    tenant: str | None
    fetched_at: float
    refreshing: asyncio.Task[None] | None = None


class RuleSetReader:
    """Cached reader of rule sets and API keys of every product it is asked about."""

    def __init__(
        self,
        client: RedisClient,
        *,
        pointer_ttl: float = DEFAULT_POINTER_TTL,
        max_fields: int = MAX_FIELDS_PER_VERSION,
        max_api_keys: int = MAX_API_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.pointer_ttl = pointer_ttl
        self._max_fields = max_fields
        self._max_api_keys = max_api_keys
        self._clock = clock
        self._pointers: dict[str, _Pointer] = {}
        self._api_keys: OrderedDict[tuple[str, str], _ApiKeyEntry] = OrderedDict()
        self._first_reads: dict[str, asyncio.Future[None]] = {}
        self.version_loads = 0  # pointer moves seen (for metrics and tests)

    # --- rule sets ------------------------------------------------------------------

    async def lookup(self, product: str, tenant: str, plan: str | None) -> RuleMatch | None:
        """The rule answering (tenant, plan) in the live version of ``product``; None: no rule set."""
        for attempt in range(2):
            pointer = await self._pointer(product, force=attempt > 0)
            if pointer.version is None:
                return None
            match = await self._match(product, pointer, tenant, plan)
            if match is not None:
                return match
        return None

    def cached_meta(self, product: str) -> RuleSetMeta | None:
        """The ``meta`` document last seen for ``product`` (no I/O), e.g. for its failure mode."""
        pointer = self._pointers.get(product)
        return pointer.last_meta if pointer is not None else None

    async def current_version(self, product: str) -> str | None:
        """The live version of ``product`` as cached (refreshed when older than ``pointer_ttl``)."""
        return (await self._pointer(product)).version

    async def _match(
        self, product: str, pointer: _Pointer, tenant: str, plan: str | None
    ) -> RuleMatch | None:
        version = pointer.version
        assert version is not None
        docs = pointer.docs
        if docs is None or docs.version != version:
            docs = pointer.docs = _VersionDocs(version)
        known = docs.matches.get((tenant, plan))
        if known is not None:
            pointer.last_meta = known.meta
            return known
        wanted = [META_FIELD, tenant_field(tenant), DEFAULT_FIELD]
        if plan:
            wanted.insert(2, plan_field(plan))
        missing = [name for name in wanted if name not in docs.fields]
        if missing:
            values = await self._client.hmget(redis_keys.ruleset_key(product, version), missing)
            if META_FIELD in missing and values[missing.index(META_FIELD)] is None:
                # The hash is gone: the pointer moved twice since we read it.
                return None
            if pointer.docs is not docs:
                # The pointer moved while we read; the caller retries with the new version.
                return None
            for name, value in zip(missing, values, strict=True):
                docs.fields[name] = _decode(name, value)
            while len(docs.fields) > self._max_fields:
                docs.fields.popitem(last=False)
        meta = docs.fields.get(META_FIELD)
        if not isinstance(meta, RuleSetMeta):
            return None
        pointer.last_meta = meta
        for name in wanted[1:]:
            rule = docs.fields.get(name)
            if isinstance(rule, Rule):
                match = RuleMatch(product, version, meta, rule, name)
                matches = docs.matches
                if len(matches) >= self._max_fields:
                    del matches[next(iter(matches))]
                matches[(tenant, plan)] = match
                return match
        return None

    async def _pointer(self, product: str, force: bool = False) -> _Pointer:
        pointer = self._pointers.get(product)
        if pointer is None:
            pointer = self._pointers[product] = _Pointer()
        if force or not pointer.known:
            await self._read_pointer_once(product, pointer)
            return pointer
        if self._clock() - pointer.fetched_at > self.pointer_ttl and pointer.refreshing is None:
            pointer.refreshing = asyncio.create_task(self._refresh_pointer(product, pointer))
        return pointer

    async def _read_pointer_once(self, product: str, pointer: _Pointer) -> None:
        # Requests arriving together for a product not yet known share one read.
        pending = self._first_reads.get(product)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._first_reads[product] = future
        try:
            await self._read_pointer(product, pointer)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            # Waiters re-raise it; mark it retrieved so asyncio does not log it as lost.
            future.exception()
            raise
        finally:
            del self._first_reads[product]

    async def _refresh_pointer(self, product: str, pointer: _Pointer) -> None:
        try:
            await self._read_pointer(product, pointer)
        except Exception as exc:  # the request path reports Redis errors; this only retries later
            log.debug("refreshing the rule-set pointer of %s failed: %s", product, exc)
        finally:
            pointer.refreshing = None

    async def _read_pointer(self, product: str, pointer: _Pointer) -> None:
        value = await self._client.get(redis_keys.ruleset_current_key(product))
        version = _text(value)
        if version != pointer.version:
            if pointer.known:
                log.info(
                    "rule set switched",
                    extra={"product": product, "from_version": pointer.version, "to_version": version},
                )
            self.version_loads += 1
            pointer.version = version
            pointer.docs = None
        pointer.known = True
        pointer.fetched_at = self._clock()

    # --- API keys ---------------------------------------------------------------------

    async def api_key_tenant(self, product: str, api_key: str) -> str | None:
        """The tenant owning ``api_key`` in ``product``'s key table; None when the key is unknown."""
        cache_key = (product, redis_keys.api_key_id(api_key))
        entry = self._api_keys.get(cache_key)
        if entry is None:
            tenant = await self._read_api_key(*cache_key)
            self._api_keys[cache_key] = _ApiKeyEntry(tenant, self._clock())
            while len(self._api_keys) > self._max_api_keys:
                self._api_keys.popitem(last=False)
            return tenant
        self._api_keys.move_to_end(cache_key)
        if self._clock() - entry.fetched_at > self.pointer_ttl and entry.refreshing is None:
            entry.refreshing = asyncio.create_task(self._refresh_api_key(cache_key, entry))
        return entry.tenant

    async def _refresh_api_key(self, cache_key: tuple[str, str], entry: _ApiKeyEntry) -> None:
        try:
            entry.tenant = await self._read_api_key(*cache_key)
            entry.fetched_at = self._clock()
        except Exception as exc:
            log.debug("refreshing an API key of %s failed: %s", cache_key[0], exc)
        finally:
            entry.refreshing = None

    async def _read_api_key(self, product: str, key_id: str) -> str | None:
        value = await self._client.hget(redis_keys.api_key_table_key(product), key_id)
        if value is None:
            return None
        try:
            return decode_api_key_entry(value)
        except ContractError as exc:
            log.warning(
                "unreadable API-key entry ignored",
                extra={"product": product, "key_id": key_id, "error": str(exc)},
            )
            return None

    async def close(self) -> None:
        """Cancel background refreshes (the Redis client belongs to the caller)."""
        tasks = [p.refreshing for p in self._pointers.values() if p.refreshing is not None]
        tasks += [e.refreshing for e in self._api_keys.values() if e.refreshing is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(name: str, value: Any) -> Field:
    if value is None:
        return None
    try:
        return decode_field(name, value)
    except ContractError as exc:
        log.warning("unreadable rule-set field ignored", extra={"field": name, "error": str(exc)})
        return None
