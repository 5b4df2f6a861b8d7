"""Per-tenant concurrency leases and prepaid credits, for the callers that see a request end.

Envoy asks the rate-limit service once, when a request starts, and never says
when it ends, so the service can check a tenant's concurrency cap but cannot
hold a slot. Whoever sees both ends holds it: the async gateway acquires a
lease when it accepts a job and the worker (or the gateway, on its result)
releases it. Imported by ``apx.dataplane.gateway`` / ``.worker``; the
rate-limit service reads the same keys (``limiter``: a tenant at its cap is
refused at Envoy already).

* ``ConcurrencyLeases.acquire(product, tenant, limit=, lease_ms=)`` →
  ``Lease`` or None (at the cap). A lease is a member of the tenant's
  ``concurrency`` ZSET scored with its expiry (Redis time + ``lease_ms``);
  expired members are dropped before counting, so a crashed holder frees its
  slot after ``lease_ms`` (the operator sets ``meta.lease_ms`` to the slowest
  Route's timeout plus a margin). ``renew`` pushes the expiry for long jobs,
  ``release`` frees the slot at once. ``acquire_for`` reads the limit and
  lease length from the product's rule set; a plan without a cap gets an
  unlimited lease that touches no counter.
* ``Credits.spend(product, tenant, cost)`` → ``Spend`` (``spent`` false when
  the balance does not cover ``cost``: the caller answers 402). Atomic: the
  check and the ``DECRBY`` are one script, so concurrent spenders never take
  the balance below zero. The rate-limit service charges ``credits_cost`` per
  admitted request in its own script; ``spend`` is for charges outside
  Envoy's path (a worker billing a job by its size). ``top_up`` is what
  billing calls.

Keys come from ``apx.contracts.redis_keys`` (``concurrency_key``,
``credits_key``: the same keys ``request_counter_keys`` names for the
rate-limit service). Redis errors
propagate: the caller decides what an outage means for its request.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from apx.contracts import redis_keys
from apx.dataplane.common.redisconn import RedisClient
from apx.dataplane.common.rulesets import RuleSetReader

from . import scripts
from .limiter import NoRuleSet

_TENANT_KEYS = {"concurrency": redis_keys.concurrency_key, "credits": redis_keys.credits_key}


def tenant_counter_key(product: str, tenant: str, purpose: str) -> str:
    """The ``concurrency`` or ``credits`` key of a tenant, exactly as ``request_counter_keys`` names it."""
    return _TENANT_KEYS[purpose](product, tenant)


@dataclass(frozen=True, slots=True)
class Lease:
    """A concurrency slot held by one request; ``key`` None means the plan has no cap."""

    key: str | None
    lease_id: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Spend:
    """The outcome of a charge: ``spent`` false means the balance did not cover it (402)."""

    spent: bool
    balance: int


class ConcurrencyLeases:
    """Acquire, renew and release per-tenant concurrency slots."""

    def __init__(
        self,
        client: RedisClient,
        reader: RuleSetReader | None = None,
        *,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._client = client
        self._reader = reader
        self._acquire = client.register_script(scripts.LEASE_ACQUIRE)
        self._renew = client.register_script(scripts.LEASE_RENEW)
        # Tests pin time; otherwise Redis TIME, shared with the rate-limit service.
        self._clock_ms = clock_ms

    def _now(self) -> str:
        return str(self._clock_ms()) if self._clock_ms is not None else "0"

    async def acquire(
        self, product: str, tenant: str, *, limit: int, lease_ms: int, lease_id: str | None = None
    ) -> Lease | None:
        """Take a slot if the tenant holds fewer than ``limit``; None when at the cap."""
        key = tenant_counter_key(product, tenant, "concurrency")
        lease_id = lease_id or secrets.token_hex(8)
        raw: Any = await self._acquire(keys=[key], args=[str(limit), str(lease_ms), lease_id, self._now()])
        acquired, _, expires_ms = (int(v) for v in raw)
        if not acquired:
            return None
        return Lease(key, lease_id, expires_ms)

    async def acquire_for(
        self, product: str, tenant: str, plan: str | None = None, lease_id: str | None = None
    ) -> Lease | None:
        """``acquire`` with the cap and lease length of the tenant's rule in the live rule set."""
        if self._reader is None:
            raise RuntimeError("acquire_for needs a RuleSetReader")
        match = await self._reader.lookup(product, tenant, plan)
        if match is None:
            raise NoRuleSet(f"no rule set for product {product!r}")
        limit = match.rule.concurrency
        lease_id = lease_id or secrets.token_hex(8)
        if limit is None:
            return Lease(None, lease_id, 0)
        return await self.acquire(
            product, tenant, limit=limit, lease_ms=match.meta.lease_ms, lease_id=lease_id
        )

    async def renew(self, lease: Lease, lease_ms: int) -> bool:
        """Extend a live lease to ``lease_ms`` from now; False when it had already expired."""
        if lease.key is None:
            return True
        return bool(await self._renew(keys=[lease.key], args=[lease.lease_id, str(lease_ms), self._now()]))

    async def release(self, lease: Lease) -> bool:
        """Free the slot; False when it was already gone (expired or released)."""
        if lease.key is None:
            return True
        return bool(await self._client.zrem(lease.key, lease.lease_id))

    async def active(self, product: str, tenant: str) -> int:
        """Slots held now (leases not yet expired)."""
        key = tenant_counter_key(product, tenant, "concurrency")
        now = self._clock_ms() if self._clock_ms is not None else await self._redis_ms()
        return int(await self._client.zcount(key, f"({now}", "+inf"))

    @contextlib.asynccontextmanager
    async def hold(
        self, product: str, tenant: str, *, limit: int, lease_ms: int
    ) -> AsyncIterator[Lease | None]:
        """``async with leases.hold(...) as lease``: None when at the cap, released on exit otherwise."""
        lease = await self.acquire(product, tenant, limit=limit, lease_ms=lease_ms)
        try:
            yield lease
        finally:
            if lease is not None:
                await self.release(lease)

    async def _redis_ms(self) -> int:
        seconds, micros = await self._client.time()
        return int(seconds) * 1000 + int(micros) // 1000


class Credits:
    """A tenant's prepaid balance: spend atomically, top up, read."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._spend = client.register_script(scripts.CREDITS_SPEND)

    async def spend(self, product: str, tenant: str, cost: int) -> Spend:
        """Take ``cost`` credits if the balance covers it; otherwise take nothing."""
        if cost < 0:
            raise ValueError("cost must not be negative (use top_up to add credits)")
        key = tenant_counter_key(product, tenant, "credits")
        raw: Any = await self._spend(keys=[key], args=[str(cost)])
        spent, balance = (int(v) for v in raw)
        return Spend(bool(spent), balance)

    async def top_up(self, product: str, tenant: str, amount: int) -> int:
        """Add ``amount`` credits; the new balance."""
        return int(await self._client.incrby(tenant_counter_key(product, tenant, "credits"), amount))

    async def balance(self, product: str, tenant: str) -> int:
        value = await self._client.get(tenant_counter_key(product, tenant, "credits"))
        return int(value) if value is not None else 0
