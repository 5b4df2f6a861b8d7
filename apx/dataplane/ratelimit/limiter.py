"""Judge one request against its product's rule set: every limit, one Redis round trip, no cross-limit burn.

Transport-free core of the rate-limit service: ``server.RateLimitService``
turns Envoy's ``RateLimitRequest`` into a ``LimitRequest``, calls
``Limiter.decide`` and turns the ``Decision`` back into a
``RateLimitResponse``; anything else in the process (the async gateway, the
benchmark) may call ``decide`` directly.

One decision:

1. Read the descriptors as one request (``DESCRIPTORS.md``): the product,
   the ``plan`` and ``tenant`` claims, API keys. Each API key must be in the
   product's key table (cached, ``RuleSetReader.api_key_tenant``); an unknown
   key is OVER_LIMIT before any counter is touched. Tenant ← the ``tenant``
   entry, else the first API key's tenant, else ``anonymous``.
2. Find the rule (``RuleSetReader.lookup``: tenant rule, else the plan
   claimed, else the default plan) in the live version of the rule set; the
   algorithm is ``meta.algorithm`` (the contract's resolution of the Routes'
   PolicyBundles).
3. Build the checks of the request with the contract's own functions
   (``request_counter_keys``/``request_counter_ttls_ms``): tenant rate, API-key
   rate, quota, concurrency, credits, whichever the rule sets. The plan of
   checks is cached per (rule-set version, tenant, API key), so the hot path
   is dictionary look-ups plus one ``EVALSHA``.
4. Run ``scripts.DECIDE``: it checks all limits first and counts the request
   in all of them only if every one admits it. This is the "no cross-limit
   burn" property: a request refused by the tenant's quota does not eat the
   API key's rate, and the reverse (the reference envoyproxy/ratelimit
   increments each descriptor's counter as it goes).
5. Pick what the client sees: when refused, the refusing limit that takes
   longest to clear (credits first: waiting never refills a balance); when
   admitted, the rate-like limit with the fewest requests left.

Concurrency is checked here but never taken: Envoy does not tell the rate-limit
service when a request ends, so slots are acquired and released by whoever
sees the end (``leases.ConcurrencyLeases``, used by the async gateway and
workers). A tenant at its cap is refused here early, with ``retry-after``.
Credits are charged here, ``credits_cost`` per admitted request, in the same
script (only when every other limit admitted it).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.exceptions import RedisError

from apx.contracts import headers
from apx.contracts.redis_keys import api_key_id, request_counter_keys
from apx.contracts.rule_set import Rate, Rule, RuleSetMeta, request_counter_ttls_ms
from apx.dataplane.common.pipe import PipelinedRedis, encode_args
from apx.dataplane.common.redisconn import PoolOverloaded
from apx.dataplane.common.rulesets import RuleMatch, RuleSetReader

from . import scripts

# Descriptor entry keys and domain: the contract the Envoy renderer writes (``apx.contracts.headers``).
PRODUCT_KEY = headers.DESCRIPTOR_PRODUCT
PLAN_KEY = headers.DESCRIPTOR_PLAN
TENANT_KEY = headers.DESCRIPTOR_TENANT
API_KEY_KEY = headers.DESCRIPTOR_API_KEY
ANONYMOUS = "anonymous"

# Check order inside the script; also the order statuses are reported in.
PURPOSES = ("rate", "api_key_rate", "quota", "concurrency", "credits")
RATE_LIKE = ("rate", "api_key_rate", "quota")
ALGORITHM_KINDS = {"sliding-window": "sw", "token-bucket": "tb", "fixed-window": "fw"}

# Metric label ``limit`` per purpose (bounded set; "none" for admitted requests).
LIMIT_LABELS = {
    "rate": "rate",
    "api_key_rate": "api_key",
    "quota": "quota",
    "concurrency": "concurrency",
    "credits": "credits",
}
# ``x-apx-reason`` of a refusal, per purpose.
REASONS = {
    "rate": "rate-limited",
    "api_key_rate": "api-key-rate-limited",
    "quota": "quota-exhausted",
    "concurrency": "concurrency-limited",
    "credits": "credits-exhausted",
}
UNKNOWN_API_KEY = "unknown-api-key"
UNAVAILABLE = "ratelimit-unavailable"
REASON_HEADER = "x-apx-reason"
CREDITS_HEADER = "x-apx-credits-remaining"

# Suggested wait when a tenant is at its concurrency cap (slots free when requests end).
CONCURRENCY_RETRY_MS = 1_000
DECIDE_SOURCE = scripts.DECIDE.encode()
DECIDE_SHA = hashlib.sha1(DECIDE_SOURCE).hexdigest().encode()
MAX_PLANS = 50_000


class LimiterError(Exception):
    """The service cannot judge the request; the failure mode applies."""

    reason = "error"  # metric label


class BadRequest(LimiterError):
    """The call does not follow the descriptor contract (wrong domain, no product)."""

    reason = "bad_request"


class NoRuleSet(LimiterError):
    """Redis has no live rule set for the product (the contract: answer like an unreachable Redis)."""

    reason = "no_rules"


class RedisUnavailable(LimiterError):
    """Redis could not be reached or answered with an error."""

    reason = "redis"


class Overloaded(LimiterError):
    """Every pooled Redis connection stayed busy past the wait deadline (or the queue was full).

    Answered like an outage (the failure mode applies) but counted apart:
    Redis itself is fine, the service is short of connections.
    """

    reason = "overload"


@dataclass(frozen=True, slots=True)
class LimitRequest:
    """One ``ShouldRateLimit`` call: its domain, descriptors (entries in order) and hits."""

    domain: str
    descriptors: tuple[tuple[tuple[str, str], ...], ...]
    hits: int = 1


@dataclass(frozen=True, slots=True)
class Check:
    """One counter of one request, as the script receives it."""

    purpose: str
    key: str
    kind: str
    limit: int
    param: float
    ttl_ms: int
    flag: int
    window_ms: int | None


# LimitStatus and Decision are named tuples, not frozen dataclasses: every decision builds one of
# each per limit, and a frozen dataclass' __init__ (object.__setattr__ per field) cost ≈2 µs each
# against ≈0.4 µs; both stay immutable.
class LimitStatus(NamedTuple):
    """What one limit said about the request."""

    purpose: str
    allowed: bool
    limit: int
    remaining: int
    reset_ms: int
    retry_after_ms: int | None  # None: waiting does not help
    window_ms: int | None


class Decision(NamedTuple):
    """The answer for one request."""

    allowed: bool
    product: str
    tenant: str
    tier: str
    version: str | None
    statuses: tuple[LimitStatus, ...] = ()
    deciding: str | None = None  # purpose that refused the request
    reason: str | None = None  # x-apx-reason when refused
    api_keys: int = 0  # API-key descriptors seen
    failed: bool = False  # answered by the failure mode, not by the limits

    @property
    def limit_label(self) -> str:
        if self.allowed or self.failed:
            return "none"
        if self.reason == UNKNOWN_API_KEY:
            return "api_key"
        return LIMIT_LABELS.get(self.deciding or "", "none")

    def status(self, purpose: str) -> LimitStatus | None:
        for status in self.statuses:
            if status.purpose == purpose:
                return status
        return None

    def header_status(self) -> LimitStatus | None:
        """The limit the ``x-ratelimit-*`` headers describe (the most restrictive rate-like one)."""
        # One pass, no intermediate lists: this runs for every decision.
        refused_by = None if self.allowed else self.deciding
        shown: LimitStatus | None = None
        for status in self.statuses:
            if status.purpose not in RATE_LIKE:
                continue
            if status.purpose == refused_by:
                return status
            if shown is None or _tighter(status, shown):
                shown = status
        return shown

    def retry_after_ms(self) -> int | None:
        """How long until every refusing limit would admit the request; None when waiting cannot help."""
        if self.allowed:
            return None
        waits = [s.retry_after_ms for s in self.statuses if not s.allowed]
        if not waits or any(w is None for w in waits):
            return None
        return max(w for w in waits if w is not None)

    def headers(self) -> list[tuple[str, str]]:
        """``x-ratelimit-limit/remaining/reset``, ``retry-after`` and ``x-apx-*`` for Envoy to add."""
        out: list[tuple[str, str]] = []
        shown = self.header_status()
        if shown is not None:
            out.append(("x-ratelimit-limit", str(shown.limit)))
            out.append(("x-ratelimit-remaining", str(max(shown.remaining, 0))))
            # Whole seconds, rounded up: -(-ms // 1000) is ceil(ms / 1000) without a float.
            out.append(("x-ratelimit-reset", str(-(-max(shown.reset_ms, 0) // 1000))))
        for status in self.statuses:
            if status.purpose == "credits":
                out.append((CREDITS_HEADER, str(max(status.remaining, 0))))
                break
        if not self.allowed:
            retry = self.retry_after_ms()
            if retry is not None:
                out.append(("retry-after", str(max(1, math.ceil(retry / 1000)))))
            if self.reason:
                out.append((REASON_HEADER, self.reason))
        return out


def _tighter(status: LimitStatus, than: LimitStatus) -> bool:
    """Fewer requests left, or as few and a later reset: the limit the client should see."""
    left, other_left = max(status.remaining, 0), max(than.remaining, 0)
    return left < other_left or (left == other_left and status.reset_ms > than.reset_ms)


@dataclass(frozen=True, slots=True)
class _Plan:
    tier: str
    checks: tuple[Check, ...]
    # The EVALSHA command in RESP, encoded once per plan: the hot path only adds
    # time, hits and the request id between the two halves.
    head: bytes
    tail: bytes


@dataclass(frozen=True, slots=True)
class _Identity:
    product: str
    plan: str | None
    tenant: str | None
    api_keys: tuple[str, ...]


def parse_descriptors(request: LimitRequest) -> _Identity:
    """Read the descriptors of one call as one request (``DESCRIPTORS.md``)."""
    if request.domain != headers.RATE_LIMIT_DOMAIN:
        raise BadRequest(f"domain {request.domain!r} is not {headers.RATE_LIMIT_DOMAIN!r}")
    product: str | None = None
    plan: str | None = None
    tenant: str | None = None
    api_keys: list[str] = []
    for descriptor in request.descriptors:
        for key, value in descriptor:
            if key == PRODUCT_KEY:
                if product is not None and value != product:
                    raise BadRequest(f"descriptors name two products: {product!r} and {value!r}")
                product = value
            elif key == TENANT_KEY and value:
                tenant = tenant or value
            elif key == PLAN_KEY and value:
                plan = plan or value
            elif key == API_KEY_KEY:
                api_keys.append(value)
            # Other entries (a future `route`, say) do not change the decision.
    if not product:
        raise BadRequest("no descriptor names a product")
    return _Identity(product, plan, tenant, tuple(api_keys))


class Limiter:
    """Decides requests against the rule sets in Redis."""

    def __init__(
        self,
        reader: RuleSetReader,
        pipe: PipelinedRedis,
        *,
        clock_us: Callable[[], int] | None = None,
        max_plans: int = MAX_PLANS,
    ) -> None:
        self.reader = reader
        self._pipe = pipe
        # Only tests pass a clock; the service uses Redis TIME so replicas agree.
        self._clock_us = clock_us
        self._plans: OrderedDict[tuple[str, str, str, str, str | None], _Plan] = OrderedDict()
        # Requests seen (Envoy repeats the same descriptor sets) and who they name, oldest first.
        self._identities: dict[LimitRequest, _Identity] = {}
        self._max_plans = max_plans
        # Sliding-window log members: unique per request across replicas and restarts.
        self._id_prefix = secrets.token_hex(6).encode()
        self._ids = itertools.count()

    def failure_mode(self, product: str | None) -> str:
        """What the product's policies ask for when the service cannot decide (``open`` when unknown)."""
        meta = self.reader.cached_meta(product) if product else None
        # The decoder admits only "open" and "closed".
        return meta.failure_mode if meta is not None else "open"

    async def decide(self, request: LimitRequest) -> Decision:
        """Judge one request; raises ``LimiterError`` when it cannot be judged."""
        identity = self._identities.get(request)
        if identity is None:
            identity = parse_descriptors(request)  # BadRequest is not remembered: it is raised each time
            identities = self._identities
            if len(identities) >= self._max_plans:
                del identities[next(iter(identities))]
            identities[request] = identity
        try:
            return await self._decide_for(identity, max(request.hits, 0))
        except PoolOverloaded as exc:
            raise Overloaded(str(exc)) from exc
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis: {exc}") from exc

    async def _decide_for(self, who: _Identity, hits: int) -> Decision:
        product = who.product
        key_tenant: str | None = None
        for index, api_key in enumerate(who.api_keys):
            owner = await self.reader.api_key_tenant(product, api_key)
            if owner is None:
                return Decision(
                    allowed=False,
                    product=product,
                    tenant=who.tenant or ANONYMOUS,
                    tier="none",
                    version=None,
                    reason=UNKNOWN_API_KEY,
                    api_keys=len(who.api_keys),
                )
            if index == 0:
                key_tenant = owner
        tenant = who.tenant or key_tenant or ANONYMOUS
        match = await self.reader.lookup(product, tenant, who.plan)
        if match is None:
            raise NoRuleSet(f"no rule set for product {product!r}")
        first_key = who.api_keys[0] if who.api_keys else None
        plan = self._plan(match, tenant, first_key)
        now = b"%d" % self._clock_us() if self._clock_us is not None else b"0"
        request_id = b"%s%x" % (self._id_prefix, next(self._ids))
        hits_arg = b"%d" % hits
        # The three per-call arguments as RESP bulk strings (encode_args, spelled out for the hot path).
        command = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n%s" % (
            plan.head,
            len(now),
            now,
            len(hits_arg),
            hits_arg,
            len(request_id),
            request_id,
            plan.tail,
        )
        raw = await self._pipe.evalsha(DECIDE_SHA, DECIDE_SOURCE, command)
        return _decision(match, tenant, plan, raw, len(who.api_keys))

    def _plan(self, match: RuleMatch, tenant: str, api_key: str | None) -> _Plan:
        cache_key = (
            match.product,
            match.version,
            match.field,
            tenant,
            api_key_id(api_key) if api_key else None,
        )
        plan = self._plans.get(cache_key)
        if plan is not None:
            self._plans.move_to_end(cache_key)
            return plan
        plan = build_plan(match.product, tenant, match.meta, match.rule, api_key)
        self._plans[cache_key] = plan
        # Plans of replaced versions age out here instead of being tracked per version.
        while len(self._plans) > self._max_plans:
            self._plans.popitem(last=False)
        return plan


def build_plan(product: str, tenant: str, meta: RuleSetMeta, rule: Rule, api_key: str | None) -> _Plan:
    """The checks of a request from the rule documents, with keys and TTLs from the contract's functions."""
    algorithm = meta.algorithm
    kind = ALGORITHM_KINDS[algorithm]
    lease_ms = meta.lease_ms
    # Windowed keys end with the window index; computed at time 0 they end in
    # ":0", which the script replaces with the index of Redis' own clock.
    keys = request_counter_keys(product, tenant, rule, algorithm, 0, api_key=api_key)
    ttls = request_counter_ttls_ms(rule, 0, lease_ms)
    checks: list[Check] = []
    for purpose in PURPOSES:
        key = keys.get(purpose)
        if key is None:
            continue
        ttl = ttls.get(purpose) or 0
        if purpose in ("rate", "api_key_rate"):
            limit: Rate | None = rule.rate if purpose == "rate" else rule.api_key_rate
            assert limit is not None  # request_counter_keys names the key only when the rule sets it
            burst = limit.burst
            window_ms = limit.window_ms
            if kind == "sw":
                checks.append(Check(purpose, key, "sw", burst, window_ms, ttl, 0, window_ms))
            elif kind == "tb":
                interval_us = 1_000_000 / float(limit.requests_per_second)
                checks.append(Check(purpose, key, "tb", burst, interval_us, ttl, 0, window_ms))
            else:
                checks.append(Check(purpose, _window_prefix(key), "fw", burst, window_ms, ttl, 0, window_ms))
        elif purpose == "quota":
            quota = rule.quota
            assert quota is not None
            period_ms = quota.period_seconds * 1000
            # The TTL at the period's start; the script subtracts the elapsed part.
            checks.append(
                Check(purpose, _window_prefix(key), "fw", quota.requests, period_ms, ttl, 1, period_ms)
            )
        elif purpose == "concurrency":
            checks.append(
                Check(purpose, key, "cc", rule.concurrency or 0, CONCURRENCY_RETRY_MS, ttl, 0, None)
            )
        elif purpose == "credits":
            checks.append(Check(purpose, key, "cr", 0, rule.credits_cost or 0, 0, 0, None))
    encoded_keys = [check.key.encode() for check in checks]
    args: list[bytes] = []
    for check in checks:
        args += [check.kind.encode(), b"%d" % check.limit, repr(check.param).encode()]
        args += [b"%d" % check.ttl_ms, b"%d" % check.flag]
    dynamic = 3  # now, hits, request id
    head = b"*%d\r\n" % (3 + len(encoded_keys) + dynamic + len(args)) + encode_args(
        [b"EVALSHA", DECIDE_SHA, b"%d" % len(encoded_keys), *encoded_keys]
    )
    return _Plan(tier=rule.tier or "none", checks=tuple(checks), head=head, tail=encode_args(args))


def _window_prefix(key: str) -> str:
    if not key.endswith(":0"):
        raise ValueError(f"expected a window key computed at time 0, got {key!r}")
    return key[:-1]


def _decision(match: RuleMatch, tenant: str, plan: _Plan, raw: Sequence[Any], api_keys: int) -> Decision:
    statuses = []
    refusing = []
    at = 2
    for check in plan.checks:
        # Lua numbers come back as Redis integers: already ints.
        retry_ms = raw[at + 3]
        status = LimitStatus(
            check.purpose,
            raw[at] == 1,
            check.limit,
            raw[at + 1],
            raw[at + 2],
            retry_ms if retry_ms >= 0 else None,
            check.window_ms,
        )
        statuses.append(status)
        if not status.allowed:
            refusing.append(status)
        at += 4
    allowed = raw[0] == 1
    deciding: str | None = None
    if not allowed:
        credits = [s for s in refusing if s.purpose == "credits"]
        chosen = credits[0] if credits else max(refusing, key=_wait)
        deciding = chosen.purpose
    return Decision(
        allowed,
        match.product,
        tenant,
        plan.tier,
        match.version,
        tuple(statuses),
        deciding,
        REASONS[deciding] if deciding else None,
        api_keys,
    )


def _wait(status: LimitStatus) -> float:
    return math.inf if status.retry_after_ms is None else status.retry_after_ms
