"""The fields of a product's rate-limit rule set in Redis: typed records, one encoder and one decoder each.

Written by the operator (``apx.controllers.renderers.redis_rules`` builds the
records from the IR and encodes them; the Redis applier writes the JSON) and
read by the rate-limit service and the async gateway
(``apx.dataplane.common.rulesets`` decodes the fields a request needs).

Fields of ``apx:rules:{<ns>/<product>}:v:<version>`` (``redis_keys``):

* ``meta`` → ``RuleSetMeta``: product, plans, the algorithm and failure mode
  resolved for the product, the policies in use, ``lease_ms``, the version;
* ``plan:<name>`` and ``default`` (the default plan again) → ``Rule`` of kind ``plan``;
* ``tenant:<id>`` → ``Rule`` of kind ``tenant``: self-contained (the plan's
  limits with the tenant's overrides applied), plus ``tenant`` and ``region``;
* ``route:<ns>/<name>`` → ``RouteRule``: per-Route algorithm and failure mode.

Encoders return the JSON-ready document (``documents.canonical_json`` gives
the bytes); decoders take the parsed document and raise ``ContractError``
when it breaks the contract. A reader meeting a field an older operator left
out uses the defaults defined here (``DEFAULT_ALGORITHM``, ...), which are the
operator's own defaults (a test pins them to the models').
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ContractError

RULES_SCHEMA = 1
ALGORITHMS = ("sliding-window", "token-bucket", "fixed-window")
FAILURE_MODES = ("open", "closed")
# What the PolicyBundle model defaults to, and what a reader assumes when meta omits it.
DEFAULT_ALGORITHM = "sliding-window"
DEFAULT_FAILURE_MODE = "open"
# Most accurate first: when Routes of one product disagree, the product's
# shared counters use the first algorithm any of them asks for.
ALGORITHM_PRECEDENCE = ("sliding-window", "token-bucket", "fixed-window")
FAILURE_MODE_PRECEDENCE = ("closed", "open")
# Concurrency leases outlive the longest request by this much before Redis drops them.
LEASE_MARGIN_MS = 5_000
# Quota counters stay a little past their period so a late request near the
# boundary still finds the counter of the period it was admitted in.
QUOTA_GRACE_SECONDS = 60

META_FIELD = "meta"
DEFAULT_FIELD = "default"
PLAN_FIELD_PREFIX = "plan:"
TENANT_FIELD_PREFIX = "tenant:"
ROUTE_FIELD_PREFIX = "route:"


def plan_field(plan: str) -> str:
    return PLAN_FIELD_PREFIX + plan


def tenant_field(tenant: str) -> str:
    return TENANT_FIELD_PREFIX + tenant


def route_field(route: str) -> str:
    return ROUTE_FIELD_PREFIX + route


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """A steady rate with a burst; ``window_ms`` is the window in which ``burst`` requests are admitted."""

    requests_per_second: int
    burst: int
    window_ms: int

    @classmethod
    def of(cls, requests_per_second: int, burst: int) -> Rate:
        # The long-run rate is `requests_per_second` whatever the algorithm.
        return cls(requests_per_second, burst, math.ceil(1000 * burst / requests_per_second))


@dataclass(frozen=True, slots=True)
class Quota:
    requests: int
    period_seconds: int  # a month is 30 days


@dataclass(frozen=True, slots=True)
class Rule:
    """The limits answering a request: a plan's (``kind="plan"``) or a listed tenant's (``kind="tenant"``).

    Unset (``None``) means unlimited in that dimension only; ``rate`` is always set.
    """

    kind: str  # "plan" | "tenant"
    plan: str
    tier: str
    isolation: str
    rate: Rate
    api_key_rate: Rate | None = None
    quota: Quota | None = None
    concurrency: int | None = None
    credits_cost: int | None = None
    tenant: str | None = None  # kind "tenant" only
    region: str | None = None  # kind "tenant" only: the tenant's home region, when it has one


@dataclass(frozen=True, slots=True)
class PolicyLimits:
    """What one policy artifact in use asks of the rate-limit service."""

    bundle: str
    version: str
    algorithm: str
    failure_mode: str


@dataclass(frozen=True, slots=True)
class RuleSetMeta:
    """The ``meta`` field: the product and what the service applies to all its counters."""

    product: str
    residency: str
    regions: tuple[str, ...]
    default_plan: str
    plans: tuple[str, ...]
    algorithm: str = DEFAULT_ALGORITHM
    failure_mode: str = DEFAULT_FAILURE_MODE
    conflicts: tuple[str, ...] = ()
    policies: Mapping[str, PolicyLimits] = field(default_factory=dict)  # artifact -> limits
    routes: tuple[str, ...] = ()
    lease_ms: int = LEASE_MARGIN_MS
    schema: int = RULES_SCHEMA
    version: str | None = None  # None while the version is being computed (it hashes the rest)


@dataclass(frozen=True, slots=True)
class RouteRuleTrack:
    track: str
    policy_version: str
    policy_artifact: str
    algorithm: str
    failure_mode: str


@dataclass(frozen=True, slots=True)
class RouteRule:
    """A ``route:`` field: the per-Route values behind ``meta``'s product-wide resolution."""

    route: str
    mode: str
    timeout_ms: int
    algorithm: str
    failure_mode: str
    conflicts: tuple[str, ...]
    policy_artifact: str
    tracks: tuple[RouteRuleTrack, ...]


# --- encoders --------------------------------------------------------------------------------


def _encode_rate(rate: Rate | None) -> dict[str, int] | None:
    if rate is None:
        return None
    return {"requests_per_second": rate.requests_per_second, "burst": rate.burst, "window_ms": rate.window_ms}


def encode_rule(rule: Rule) -> dict[str, Any]:
    """The document of a ``plan:``/``default``/``tenant:`` field."""
    document: dict[str, Any] = {
        "kind": rule.kind,
        "plan": rule.plan,
        "tier": rule.tier,
        "isolation": rule.isolation,
        "rate": _encode_rate(rule.rate),
        "api_key_rate": _encode_rate(rule.api_key_rate),
        "quota": (
            None
            if rule.quota is None
            else {"requests": rule.quota.requests, "period_seconds": rule.quota.period_seconds}
        ),
        "concurrency": rule.concurrency,
        "credits_cost": rule.credits_cost,
    }
    if rule.kind == "tenant":
        document["tenant"] = rule.tenant
        document["region"] = rule.region
    return document


def encode_meta(meta: RuleSetMeta) -> dict[str, Any]:
    """The ``meta`` document; ``version`` is left out while it is ``None`` (it hashes everything else)."""
    document: dict[str, Any] = {
        "kind": "meta",
        "schema": meta.schema,
        "product": meta.product,
        "residency": meta.residency,
        "regions": list(meta.regions),
        "default_plan": meta.default_plan,
        "plans": list(meta.plans),
        "algorithm": meta.algorithm,
        "failure_mode": meta.failure_mode,
        "conflicts": list(meta.conflicts),
        "policies": {
            artifact: {
                "bundle": limits.bundle,
                "version": limits.version,
                "algorithm": limits.algorithm,
                "failure_mode": limits.failure_mode,
            }
            for artifact, limits in sorted(meta.policies.items())
        },
        "routes": list(meta.routes),
        "lease_ms": meta.lease_ms,
    }
    if meta.version is not None:
        document["version"] = meta.version
    return document


def encode_route_rule(rule: RouteRule) -> dict[str, Any]:
    """The document of a ``route:`` field."""
    return {
        "kind": "route",
        "route": rule.route,
        "mode": rule.mode,
        "timeout_ms": rule.timeout_ms,
        "algorithm": rule.algorithm,
        "failure_mode": rule.failure_mode,
        "conflicts": list(rule.conflicts),
        "policy_artifact": rule.policy_artifact,
        "tracks": [
            {
                "track": t.track,
                "policy_version": t.policy_version,
                "policy_artifact": t.policy_artifact,
                "algorithm": t.algorithm,
                "failure_mode": t.failure_mode,
            }
            for t in rule.tracks
        ],
    }


# --- decoders --------------------------------------------------------------------------------


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ContractError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _int(document: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = document.get(name)
    if value is None:
        if default is None:
            raise ContractError(f"{name} is missing")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"{name} must be an integer, got {value!r}")
    return value


def _optional_int(document: Mapping[str, Any], name: str) -> int | None:
    return None if document.get(name) is None else _int(document, name)


def _str(document: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = document.get(name)
    if value is None:
        if default is None:
            raise ContractError(f"{name} is missing")
        return default
    if not isinstance(value, str):
        raise ContractError(f"{name} must be a string, got {value!r}")
    return value


def _optional_str(document: Mapping[str, Any], name: str) -> str | None:
    return None if document.get(name) is None else _str(document, name)


def _strings(document: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = document.get(name) or ()
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise ContractError(f"{name} must be a list of strings")
    return tuple(value)


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ContractError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _decode_rate(value: Any, name: str) -> Rate | None:
    if value is None:
        return None
    document = _mapping(value, name)
    rate = Rate(_int(document, "requests_per_second"), _int(document, "burst"), _int(document, "window_ms"))
    if rate.requests_per_second <= 0 or rate.burst <= 0 or rate.window_ms <= 0:
        raise ContractError(f"{name} must have positive requests_per_second, burst and window_ms")
    return rate


def decode_rule(document: Mapping[str, Any]) -> Rule:
    """A ``plan:``/``default``/``tenant:`` document as a ``Rule``."""
    document = _mapping(document, "rule")
    kind = _choice(_str(document, "kind"), ("plan", "tenant"), "kind")
    rate = _decode_rate(document.get("rate"), "rate")
    if rate is None:
        raise ContractError("rate is missing")
    quota = None
    if document.get("quota") is not None:
        quota_doc = _mapping(document["quota"], "quota")
        quota = Quota(_int(quota_doc, "requests"), _int(quota_doc, "period_seconds"))
        if quota.period_seconds <= 0:
            raise ContractError("quota.period_seconds must be positive")
    return Rule(
        kind=kind,
        plan=_str(document, "plan"),
        tier=_str(document, "tier", ""),
        isolation=_str(document, "isolation", "shared"),
        rate=rate,
        api_key_rate=_decode_rate(document.get("api_key_rate"), "api_key_rate"),
        quota=quota,
        concurrency=_optional_int(document, "concurrency"),
        credits_cost=_optional_int(document, "credits_cost"),
        tenant=_str(document, "tenant") if kind == "tenant" else None,
        region=_optional_str(document, "region") if kind == "tenant" else None,
    )


def decode_meta(document: Mapping[str, Any]) -> RuleSetMeta:
    """A ``meta`` document as a ``RuleSetMeta`` (defaults for fields an older operator left out)."""
    document = _mapping(document, "meta")
    if document.get("kind", "meta") != "meta":
        raise ContractError(f"kind {document.get('kind')!r} is not meta")
    policies = {}
    for artifact, value in _mapping(document.get("policies") or {}, "policies").items():
        limits = _mapping(value, f"policies[{artifact}]")
        policies[str(artifact)] = PolicyLimits(
            bundle=_str(limits, "bundle"),
            version=_str(limits, "version"),
            algorithm=_choice(_str(limits, "algorithm", DEFAULT_ALGORITHM), ALGORITHMS, "algorithm"),
            failure_mode=_choice(
                _str(limits, "failure_mode", DEFAULT_FAILURE_MODE), FAILURE_MODES, "failure_mode"
            ),
        )
    return RuleSetMeta(
        product=_str(document, "product"),
        residency=_str(document, "residency", "GLOBAL"),
        regions=_strings(document, "regions"),
        default_plan=_str(document, "default_plan", ""),
        plans=_strings(document, "plans"),
        algorithm=_choice(_str(document, "algorithm", DEFAULT_ALGORITHM), ALGORITHMS, "algorithm"),
        failure_mode=_choice(
            _str(document, "failure_mode", DEFAULT_FAILURE_MODE), FAILURE_MODES, "failure_mode"
        ),
        conflicts=_strings(document, "conflicts"),
        policies=policies,
        routes=_strings(document, "routes"),
        lease_ms=_int(document, "lease_ms", LEASE_MARGIN_MS),
        schema=_int(document, "schema", RULES_SCHEMA),
        version=_optional_str(document, "version"),
    )


def decode_route_rule(document: Mapping[str, Any]) -> RouteRule:
    """A ``route:`` document as a ``RouteRule``."""
    document = _mapping(document, "route rule")
    tracks = tuple(
        RouteRuleTrack(
            track=_str(t, "track"),
            policy_version=_str(t, "policy_version"),
            policy_artifact=_str(t, "policy_artifact"),
            algorithm=_choice(_str(t, "algorithm", DEFAULT_ALGORITHM), ALGORITHMS, "algorithm"),
            failure_mode=_choice(
                _str(t, "failure_mode", DEFAULT_FAILURE_MODE), FAILURE_MODES, "failure_mode"
            ),
        )
        for t in (_mapping(item, "track") for item in document.get("tracks") or ())
    )
    return RouteRule(
        route=_str(document, "route"),
        mode=_str(document, "mode"),
        timeout_ms=_int(document, "timeout_ms"),
        algorithm=_choice(_str(document, "algorithm", DEFAULT_ALGORITHM), ALGORITHMS, "algorithm"),
        failure_mode=_choice(
            _str(document, "failure_mode", DEFAULT_FAILURE_MODE), FAILURE_MODES, "failure_mode"
        ),
        conflicts=_strings(document, "conflicts"),
        policy_artifact=_str(document, "policy_artifact"),
        tracks=tracks,
    )


def decode_field(name: str, text: str | bytes) -> RuleSetMeta | Rule | RouteRule:
    """One field of a rule-set hash, as read from Redis, by its name; raises ``ContractError``."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ContractError(f"{name} is not JSON: {exc}") from exc
    if name == META_FIELD:
        return decode_meta(document)
    if name.startswith(ROUTE_FIELD_PREFIX):
        return decode_route_rule(document)
    return decode_rule(document)


# --- counter lifetimes -------------------------------------------------------------------------


def request_counter_ttls_ms(rule: Rule, now_ms: int, lease_ms: int) -> dict[str, int | None]:
    """How long each counter of ``redis_keys.request_counter_keys`` lives after a write (``None``: no expiry).

    Rate counters of every algorithm need ``window_ms``: a sliding window
    forgets older entries, a token bucket refills from empty in
    ``burst / requests_per_second`` seconds, and a fixed window ends. Quota
    counters live to the end of their period plus a grace period; leases
    outlive the slowest request (``meta.lease_ms``); credits are a balance.
    """
    ttls: dict[str, int | None] = {"rate": rule.rate.window_ms}
    if rule.api_key_rate is not None:
        ttls["api_key_rate"] = rule.api_key_rate.window_ms
    if rule.quota is not None:
        period_ms = rule.quota.period_seconds * 1000
        ttls["quota"] = period_ms - now_ms % period_ms + QUOTA_GRACE_SECONDS * 1000
    if rule.concurrency is not None:
        ttls["concurrency"] = lease_ms
    if rule.credits_cost is not None:
        ttls["credits"] = None
    return ttls


# --- API-key table (written by key management, not by the operator) -------------------------


def encode_api_key_entry(tenant: str) -> str:
    """The value stored under an API-key id in ``redis_keys.api_key_table_key``: ``{"tenant": …}``."""
    return json.dumps({"tenant": tenant})


def decode_api_key_entry(text: str | bytes) -> str:
    """The tenant owning an API key, from its key-table value; raises ``ContractError``."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ContractError(f"API-key entry is not JSON: {exc}") from exc
    tenant = _mapping(document, "API-key entry").get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise ContractError("API-key entry without a tenant")
    return tenant
