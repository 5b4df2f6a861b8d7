"""Render the Redis side of the control plane: versioned rate-limit rule sets and the route table.

Pure. Called through ``apx.controllers.renderers.registry`` (golden files,
``apx translate``) and by the Redis applier, which writes each rule set and
the route table and then switches their ``current`` pointer. The rate-limit
service (Envoy RLS) reads the rule sets; the async gateway reads the route
table. ``controllers/renderers/REDIS_KEYS.md`` is the same contract written
for the dataplane's authors; keep both in step.

Key schema (all names come from ``apx.controllers.names``)::

    apx:rules:{<ns>/<product>}:v:<version>   HASH   field -> canonical JSON rule document
    apx:rules:{<ns>/<product>}:current       STRING live rule-set version
    apx:rules:{<ns>/<product>}:versions      ZSET   versions written (score = write order), for cleanup
    apx:routetable:{routes}:v:<version>      HASH   "<ns>/<route>" -> canonical JSON route entry
    apx:routetable:{routes}:current          STRING live route-table version
    apx:routetable:{routes}:versions         ZSET   route-table versions written, for cleanup
    apx:apikeys:{<ns>/<product>}             HASH   API-key id -> {"tenant": ...} (key management writes it)
    apx:c:{<ns>/<product>/<tenant>}:<counter> counters of one tenant (see ``request_counter_keys``)

Fields of a rule set: ``meta``, ``plan:<name>`` per plan, ``default`` (the
default plan's rule again, under a fixed name), ``tenant:<id>`` per known
tenant (self-contained: effective limits with overrides applied, so one
document answers a request), ``route:<ns>/<name>`` per Route of the product.
An Envoy descriptor ``product=<ns>/<product>, plan=<plan>, tenant=<id>
[, api_key=<key>]`` is answered with one ``HMGET <ruleset> meta tenant:<id>
plan:<plan> default``: the first present of the tenant rule, the plan rule and
the default rule applies (an unknown plan never means "unlimited").

Versions are content hashes (sha256, 16 hex characters) of the canonical
documents, so the same IR always writes the same keys: the applier writes the
new hash, then switches ``current`` (readers never see half a rule set), and
re-applying is a no-op. Every key of one product shares the hash tag
``{<ns>/<product>}`` and every counter of one request shares
``{<ns>/<product>/<tenant>}``, so one Lua script touches one Redis Cluster slot.

Rate-limit algorithm and failure mode are PolicyBundle settings, chosen per
Route, but the descriptors Envoy sends do not name the Route and the counters
are shared by all Routes of a product. The rule set therefore records them per
policy artifact and per Route (``route:`` fields) and resolves one value for
the product in ``meta``: when policies disagree the strictest wins
(``sliding-window`` over ``token-bucket`` over ``fixed-window``; ``closed``
over ``open``), and ``meta.conflicts`` names what disagreed. Envoy enforces
the failure mode itself, per Route (one rate-limit filter instance per mode),
so ``failure_mode`` here is a record for status and debugging.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import names
from ..ir import IR, PlanIR, PolicyIR, ProductIR, RouteIR, TenantIR
from ..models.common import duration_ms
from ..models.policy import RateLimitPolicy
from ..policy_artifacts import canonical_json
from .pubsub_plan import route_topics

RULES_SCHEMA = 1
VERSION_LENGTH = 16

# Most accurate first: when Routes of one product disagree, the product's
# shared counters use the first algorithm any of them asks for.
ALGORITHM_PRECEDENCE = ("sliding-window", "token-bucket", "fixed-window")
FAILURE_MODE_PRECEDENCE = ("closed", "open")
ALGORITHM_CODES = {"sliding-window": "sw", "token-bucket": "tb", "fixed-window": "fw"}

# Tenant ids as a Product may list them. A tenant id from a token that does not
# look like one (it could carry "{", "}" or ":") is hashed before it becomes
# part of a key, so it can neither break the hash tag nor alias another key.
_SAFE_TENANT = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$")
# Concurrency leases outlive the longest request by this much before Redis drops them.
LEASE_MARGIN_MS = 5_000
# Quota counters stay a little past their period so a late request near the
# boundary still finds the counter of the period it was admitted in.
QUOTA_GRACE_SECONDS = 60


def content_version(documents: Mapping[str, Any]) -> str:
    """Version of a set of documents: sha256 prefix of their canonical JSON (the bytes written)."""
    return hashlib.sha256(canonical_json(documents).encode()).hexdigest()[:VERSION_LENGTH]


# --- counters -------------------------------------------------------------------


def counter_tenant(tenant: str) -> str:
    """The tenant component of counter keys: the id itself when it is a plain id, else ``~<hash>``."""
    if _SAFE_TENANT.match(tenant):
        return tenant
    return "~" + hashlib.sha256(tenant.encode()).hexdigest()[:16]


def api_key_id(api_key: str) -> str:
    """Identifier of an API key in counter keys: never the secret itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def request_counter_keys(
    product_key: str,
    tenant: str,
    rule: Mapping[str, Any],
    algorithm: str,
    now_ms: int,
    api_key: str | None = None,
) -> dict[str, str]:
    """Every counter key one request touches, by purpose (``rate``, ``api_key_rate``, ``quota``, ...).

    ``rule`` is the tenant or plan rule document answering the request. Keys of
    time windows (fixed-window rate, quota) depend on ``now_ms``; all keys
    share the hash tag ``{<product>/<tenant>}``.
    """
    who = counter_tenant(tenant)
    code = ALGORITHM_CODES[algorithm]

    def rate_key(prefix: str, limit: Mapping[str, Any]) -> str:
        descriptor = f"{prefix}:{code}"
        if algorithm == "fixed-window":
            descriptor += f":{now_ms // int(limit['window_ms'])}"
        return names.counter_key(product_key, who, descriptor)

    keys = {"rate": rate_key("tenant", rule["rate"])}
    if api_key is not None and rule.get("api_key_rate") is not None:
        keys["api_key_rate"] = rate_key(f"apikey:{api_key_id(api_key)}", rule["api_key_rate"])
    quota = rule.get("quota")
    if quota is not None:
        period = int(quota["period_seconds"])
        keys["quota"] = names.counter_key(product_key, who, f"quota:{period}:{now_ms // (period * 1000)}")
    if rule.get("concurrency") is not None:
        keys["concurrency"] = names.counter_key(product_key, who, "concurrency")
    if rule.get("credits_cost") is not None:
        keys["credits"] = names.counter_key(product_key, who, "credits")
    return keys


def request_counter_ttls_ms(rule: Mapping[str, Any], now_ms: int, lease_ms: int) -> dict[str, int | None]:
    """How long each counter of ``request_counter_keys`` lives after a write (``None``: no expiry).

    Rate counters of every algorithm need ``window_ms``: a sliding window
    forgets older entries, a token bucket refills from empty in
    ``burst / requests_per_second`` seconds, and a fixed window ends. Quota
    counters live to the end of their period plus a grace period; leases
    outlive the slowest request (``meta.lease_ms``); credits are a balance.
    """
    ttls: dict[str, int | None] = {"rate": int(rule["rate"]["window_ms"])}
    if rule.get("api_key_rate") is not None:
        ttls["api_key_rate"] = int(rule["api_key_rate"]["window_ms"])
    quota = rule.get("quota")
    if quota is not None:
        period_ms = int(quota["period_seconds"]) * 1000
        ttls["quota"] = period_ms - now_ms % period_ms + QUOTA_GRACE_SECONDS * 1000
    if rule.get("concurrency") is not None:
        ttls["concurrency"] = lease_ms
    if rule.get("credits_cost") is not None:
        ttls["credits"] = None
    return ttls


# --- rule documents ---------------------------------------------------------------


def _rate(requests_per_second: int, burst: int) -> dict[str, int]:
    # window_ms: the sliding/fixed window in which `burst` requests are admitted,
    # so the long-run rate is `requests_per_second` whatever the algorithm.
    return {
        "requests_per_second": requests_per_second,
        "burst": burst,
        "window_ms": math.ceil(1000 * burst / requests_per_second),
    }


def _quota(requests: int | None, period_seconds: int | None) -> dict[str, int] | None:
    if requests is None or period_seconds is None:
        return None
    return {"requests": requests, "period_seconds": period_seconds}


def _plan_limits(plan: PlanIR) -> dict[str, Any]:
    api_key_rate = None
    if plan.api_key_requests_per_second is not None:
        api_key_rate = _rate(
            plan.api_key_requests_per_second, plan.api_key_burst or plan.api_key_requests_per_second
        )
    return {
        "plan": plan.name,
        "tier": plan.tier,
        "isolation": plan.isolation,
        "rate": _rate(plan.requests_per_second, plan.burst),
        "api_key_rate": api_key_rate,
        "quota": _quota(plan.quota_requests, plan.quota_period_seconds),
        "concurrency": plan.concurrency,
        "credits_cost": plan.credits_cost,
    }


def plan_rule(plan: PlanIR) -> dict[str, Any]:
    return {"kind": "plan", **_plan_limits(plan)}


def tenant_rule(tenant: TenantIR, plan: PlanIR) -> dict[str, Any]:
    # Start from the plan so limits a tenant cannot override (API-key rate,
    # concurrency, credits, isolation) are still in the one document read.
    document = {"kind": "tenant", **_plan_limits(plan)}
    document.update(
        tenant=tenant.id,
        tier=tenant.tier,
        region=tenant.region,
        rate=_rate(tenant.requests_per_second, tenant.burst),
        quota=_quota(tenant.quota_requests, tenant.quota_period_seconds),
    )
    return document


def _first(precedence: tuple[str, ...], values: Iterable[str]) -> str:
    present = set(values)
    return next(value for value in precedence if value in present)


def _limits_of(policies: Iterable[PolicyIR]) -> tuple[str, str, list[str]]:
    """(algorithm, failure mode, what disagreed) for policies sharing counters."""
    chosen = list(policies)
    if not chosen:
        default = RateLimitPolicy()
        return default.algorithm, default.failure_mode, []
    algorithms = {p.spec.rate_limit.algorithm for p in chosen}
    failure_modes = {p.spec.rate_limit.failure_mode for p in chosen}
    conflicts = [
        name for name, seen in (("algorithm", algorithms), ("failure_mode", failure_modes)) if len(seen) > 1
    ]
    return _first(ALGORITHM_PRECEDENCE, algorithms), _first(FAILURE_MODE_PRECEDENCE, failure_modes), conflicts


def route_rule(route: RouteIR) -> dict[str, Any]:
    # Weights are left out on purpose: a canary step must not rewrite rule sets.
    algorithm, failure_mode, conflicts = _limits_of(track.policy for track in route.tracks)
    return {
        "kind": "route",
        "route": route.key,
        "mode": route.mode,
        "timeout_ms": route.timeout_ms,
        "algorithm": algorithm,
        "failure_mode": failure_mode,
        "conflicts": conflicts,
        "policy_artifact": route.stable.policy.artifact,
        "tracks": [
            {
                "track": track.name,
                "policy_version": track.policy.version,
                "policy_artifact": track.policy.artifact,
                "algorithm": track.policy.spec.rate_limit.algorithm,
                "failure_mode": track.policy.spec.rate_limit.failure_mode,
            }
            for track in route.tracks
        ],
    }


def _meta(product: ProductIR, routes: tuple[RouteIR, ...]) -> dict[str, Any]:
    used = {track.policy.artifact: track.policy for route in routes for track in route.tracks}
    algorithm, failure_mode, conflicts = _limits_of(used[a] for a in sorted(used))
    return {
        "kind": "meta",
        "schema": RULES_SCHEMA,
        "product": product.key,
        "residency": product.residency,
        "regions": list(product.regions),
        "default_plan": product.default_plan,
        "plans": [plan.name for plan in product.plans],
        "algorithm": algorithm,
        "failure_mode": failure_mode,
        "conflicts": conflicts,
        "policies": {
            artifact: {
                "bundle": policy.bundle.key,
                "version": policy.version,
                "algorithm": policy.spec.rate_limit.algorithm,
                "failure_mode": policy.spec.rate_limit.failure_mode,
            }
            for artifact, policy in sorted(used.items())
        },
        "routes": sorted(route.key for route in routes),
        # Concurrency leases must outlive the slowest request of any Route.
        "lease_ms": max((route.timeout_ms for route in routes), default=0) + LEASE_MARGIN_MS,
    }


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One product's rule set: the hash to write and the pointer to switch."""

    product: str
    version: str
    key: str
    current_key: str
    versions_key: str
    fields: tuple[tuple[str, str], ...]  # (field, canonical JSON), sorted by field

    def documents(self) -> dict[str, Any]:
        return {name: json.loads(value) for name, value in self.fields}


def render_rule_set(product: ProductIR, routes: tuple[RouteIR, ...]) -> RuleSet:
    documents: dict[str, Any] = {"meta": _meta(product, routes)}
    plans = {plan.name: plan for plan in product.plans}
    for plan in product.plans:
        documents[f"plan:{plan.name}"] = plan_rule(plan)
    documents["default"] = documents[f"plan:{product.default_plan}"]
    for tenant in product.tenants:
        documents[f"tenant:{tenant.id}"] = tenant_rule(tenant, plans[tenant.plan])
    for route in routes:
        documents[f"route:{route.key}"] = route_rule(route)
    # The version is the hash of everything else, then recorded in meta.
    version = content_version(documents)
    documents["meta"]["version"] = version
    return RuleSet(
        product=product.key,
        version=version,
        key=names.ruleset_key(product.key, version),
        current_key=names.ruleset_current_key(product.key),
        versions_key=names.ruleset_versions_key(product.key),
        fields=tuple((name, canonical_json(documents[name])) for name in sorted(documents)),
    )


# --- route table --------------------------------------------------------------------


def track_auth(policy: PolicyIR) -> dict[str, Any]:
    """How the async gateway authenticates a request on a track: the policy's auth settings, nothing else.

    The gateway takes tenant identity only from a credential it verified
    itself, so it needs the issuer, key set, audiences and claims (or the
    API-key header) of the track's policy; the rest of the compiled artifact
    (authz, transforms, CORS) stays with Envoy.
    """
    auth = policy.spec.auth
    jwt = None
    if auth.jwt is not None:
        jwt = {
            "issuer": auth.jwt.issuer,
            "jwks_uri": auth.jwt.jwks_uri,
            "audiences": list(auth.jwt.audiences),
            "tenant_claim": auth.jwt.tenant_claim,
            "tier_claim": auth.jwt.tier_claim,
            "clock_skew_seconds": auth.jwt.clock_skew_seconds,
            "jwks_cache_ms": duration_ms(auth.jwt.jwks_cache_duration),
        }
    api_key = None
    if auth.api_key is not None:
        api_key = {"header": auth.api_key.header, "query_parameter": auth.api_key.query_parameter}
    return {"jwt": jwt, "api_key": api_key, "allow_anonymous": auth.allow_anonymous}


def route_entry(route: RouteIR) -> dict[str, Any]:
    """What the async gateway needs to accept a request for ``route`` and publish it."""
    topics: dict[str, dict[str, str]] = {}
    tenant_topics: dict[str, dict[str, dict[str, str]]] = {}
    for plan in route_topics(route):
        if plan.tenant is None:
            topics.setdefault(plan.track, {})[plan.region] = plan.topic
        else:
            tenant_topics.setdefault(plan.tenant, {}).setdefault(plan.track, {})[plan.region] = plan.topic
    delivery = route.delivery
    state = route.canary_state
    return {
        "route": route.key,
        "mode": route.mode,
        "product": route.product.key,
        "hosts": list(route.match.hosts),
        "path": route.match.path,
        "path_prefix": route.match.path_prefix,
        "methods": list(route.match.methods),
        "residency": route.product.residency,
        "regions": list(route.product.regions),
        "timeout_ms": route.timeout_ms,
        "backlog_limit": delivery.backlog_limit,
        "result_ttl_ms": delivery.result_ttl_ms,
        "ordering": delivery.ordering,
        "sticky_by_tenant": state.sticky_by_tenant if state is not None else False,
        "canary_phase": state.phase if state is not None else None,
        "tracks": [
            {
                "track": track.name,
                "weight": track.weight,
                "policy_version": track.policy.version,
                "policy_artifact": track.policy.artifact,
                "auth": track_auth(track.policy),
            }
            for track in route.tracks
        ],
        "topics": topics,
        "tenant_topics": tenant_topics,
    }


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The route table hash to write and its pointer."""

    version: str
    key: str
    current_key: str
    versions_key: str
    entries: tuple[tuple[str, str], ...]  # (route key, canonical JSON), sorted by route key

    def documents(self) -> dict[str, Any]:
        return {name: json.loads(value) for name, value in self.entries}


def render_route_table(routes: Iterable[RouteIR]) -> RouteTable:
    documents = {route.key: route_entry(route) for route in routes}
    version = content_version(documents)
    return RouteTable(
        version=version,
        key=names.route_table_key(version),
        current_key=names.route_table_current_key(),
        versions_key=names.route_table_versions_key(),
        entries=tuple((key, canonical_json(documents[key])) for key in sorted(documents)),
    )


# --- output -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisOutput:
    """Every rule set (sorted by product) and the route table."""

    rule_sets: tuple[RuleSet, ...]
    route_table: RouteTable

    def rule_set(self, product_key: str) -> RuleSet:
        for rule_set in self.rule_sets:
            if rule_set.product == product_key:
                return rule_set
        raise KeyError(product_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_sets": [
                {
                    "product": rs.product,
                    "version": rs.version,
                    "key": rs.key,
                    "current_key": rs.current_key,
                    "versions_key": rs.versions_key,
                    "fields": rs.documents(),
                }
                for rs in self.rule_sets
            ],
            "route_table": {
                "version": self.route_table.version,
                "key": self.route_table.key,
                "current_key": self.route_table.current_key,
                "versions_key": self.route_table.versions_key,
                "entries": self.route_table.documents(),
            },
        }


def render_redis(ir: IR) -> RedisOutput:
    """Rule sets of every Product and the route table of every Route in the IR."""
    routes = sorted(ir.routes, key=lambda r: r.key)
    by_product: dict[str, list[RouteIR]] = {}
    for route in routes:
        by_product.setdefault(route.product.key, []).append(route)
    rule_sets = tuple(
        render_rule_set(product, tuple(by_product.get(product.key, ())))
        for product in sorted(ir.products, key=lambda p: p.key)
    )
    return RedisOutput(rule_sets=rule_sets, route_table=render_route_table(routes))
