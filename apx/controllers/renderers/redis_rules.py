"""Render the Redis side of the control plane: versioned rate-limit rule sets and the route table.

Pure. Called through ``apx.controllers.renderers.registry`` (golden files,
``apx translate``) and by the Redis applier, which writes each rule set and
the route table and then switches their ``current`` pointer. The rate-limit
service (Envoy RLS) reads the rule sets; the async gateway reads the route
table. The records, their encoders and the key rules are the contract shared
with the dataplane (``apx.contracts``: ``rule_set``, ``route_table``,
``redis_keys``); this module builds the records from the IR.
``apx/controllers/renderers/REDIS_KEYS.md`` is the same contract in prose.

Key schema (all names come from ``apx.contracts.redis_keys``, re-exported by ``names``)::

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

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from apx.contracts import documents as contract_documents
from apx.contracts import redis_keys, route_table
from apx.contracts import rule_set as rules
from apx.contracts.documents import VERSION_LENGTH, canonical_json
from apx.contracts.rule_set import Quota, Rate, Rule

from .. import names
from ..ir import IR, PlanIR, PolicyIR, ProductIR, RouteIR, TenantIR
from ..memo import Caches, same
from ..models.common import duration_ms
from .pubsub_plan import route_topics

# The record types, their encoders and the key and counter rules are the
# operator/dataplane contract (``apx.contracts``); re-exported here for the
# operator's callers. This module only builds the records from the IR.
RULES_SCHEMA = rules.RULES_SCHEMA
ALGORITHM_PRECEDENCE = rules.ALGORITHM_PRECEDENCE
FAILURE_MODE_PRECEDENCE = rules.FAILURE_MODE_PRECEDENCE
LEASE_MARGIN_MS = rules.LEASE_MARGIN_MS
QUOTA_GRACE_SECONDS = rules.QUOTA_GRACE_SECONDS
ALGORITHM_CODES = redis_keys.ALGORITHM_CODES
content_version = contract_documents.content_version
counter_tenant = redis_keys.counter_tenant
api_key_id = redis_keys.api_key_id
request_counter_keys = redis_keys.request_counter_keys
request_counter_ttls_ms = rules.request_counter_ttls_ms


# --- rule documents ---------------------------------------------------------------


def _quota(requests: int | None, period_seconds: int | None) -> Quota | None:
    if requests is None or period_seconds is None:
        return None
    return Quota(requests, period_seconds)


def plan_record(plan: PlanIR) -> Rule:
    api_key_rate = None
    if plan.api_key_requests_per_second is not None:
        api_key_rate = Rate.of(
            plan.api_key_requests_per_second, plan.api_key_burst or plan.api_key_requests_per_second
        )
    return Rule(
        kind="plan",
        plan=plan.name,
        tier=plan.tier,
        isolation=plan.isolation,
        rate=Rate.of(plan.requests_per_second, plan.burst),
        api_key_rate=api_key_rate,
        quota=_quota(plan.quota_requests, plan.quota_period_seconds),
        concurrency=plan.concurrency,
        credits_cost=plan.credits_cost,
    )


def tenant_record(tenant: TenantIR, plan: PlanIR) -> Rule:
    # Start from the plan so limits a tenant cannot override (API-key rate,
    # concurrency, credits, isolation) are still in the one document read.
    return replace(
        plan_record(plan),
        kind="tenant",
        tenant=tenant.id,
        tier=tenant.tier,
        region=tenant.region,
        rate=Rate.of(tenant.requests_per_second, tenant.burst),
        quota=_quota(tenant.quota_requests, tenant.quota_period_seconds),
    )


def plan_rule(plan: PlanIR) -> dict[str, Any]:
    return rules.encode_rule(plan_record(plan))


def tenant_rule(tenant: TenantIR, plan: PlanIR) -> dict[str, Any]:
    return rules.encode_rule(tenant_record(tenant, plan))


def _first(precedence: tuple[str, ...], values: Iterable[str]) -> str:
    present = set(values)
    return next(value for value in precedence if value in present)


def _limits_of(policies: Iterable[PolicyIR]) -> tuple[str, str, tuple[str, ...]]:
    """(algorithm, failure mode, what disagreed) for policies sharing counters."""
    chosen = list(policies)
    if not chosen:
        return rules.DEFAULT_ALGORITHM, rules.DEFAULT_FAILURE_MODE, ()
    algorithms = {p.spec.rate_limit.algorithm for p in chosen}
    failure_modes = {p.spec.rate_limit.failure_mode for p in chosen}
    conflicts = tuple(
        name for name, seen in (("algorithm", algorithms), ("failure_mode", failure_modes)) if len(seen) > 1
    )
    return _first(ALGORITHM_PRECEDENCE, algorithms), _first(FAILURE_MODE_PRECEDENCE, failure_modes), conflicts


def route_rule_record(route: RouteIR) -> rules.RouteRule:
    # Weights are left out on purpose: a canary step must not rewrite rule sets.
    algorithm, failure_mode, conflicts = _limits_of(track.policy for track in route.tracks)
    return rules.RouteRule(
        route=route.key,
        mode=route.mode,
        timeout_ms=route.timeout_ms,
        algorithm=algorithm,
        failure_mode=failure_mode,
        conflicts=conflicts,
        policy_artifact=route.stable.policy.artifact,
        tracks=tuple(
            rules.RouteRuleTrack(
                track=track.name,
                policy_version=track.policy.version,
                policy_artifact=track.policy.artifact,
                algorithm=track.policy.spec.rate_limit.algorithm,
                failure_mode=track.policy.spec.rate_limit.failure_mode,
            )
            for track in route.tracks
        ),
    )


def route_rule(route: RouteIR) -> dict[str, Any]:
    return rules.encode_route_rule(route_rule_record(route))


def meta_record(product: ProductIR, routes: tuple[RouteIR, ...]) -> rules.RuleSetMeta:
    used = {track.policy.artifact: track.policy for route in routes for track in route.tracks}
    algorithm, failure_mode, conflicts = _limits_of(used[a] for a in sorted(used))
    return rules.RuleSetMeta(
        product=product.key,
        residency=product.residency,
        regions=tuple(product.regions),
        default_plan=product.default_plan,
        plans=tuple(plan.name for plan in product.plans),
        algorithm=algorithm,
        failure_mode=failure_mode,
        conflicts=conflicts,
        policies={
            artifact: rules.PolicyLimits(
                bundle=policy.bundle.key,
                version=policy.version,
                algorithm=policy.spec.rate_limit.algorithm,
                failure_mode=policy.spec.rate_limit.failure_mode,
            )
            for artifact, policy in sorted(used.items())
        },
        routes=tuple(sorted(route.key for route in routes)),
        # Concurrency leases must outlive the slowest request of any Route.
        lease_ms=max((route.timeout_ms for route in routes), default=0) + LEASE_MARGIN_MS,
    )


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
    meta = meta_record(product, routes)
    documents: dict[str, Any] = {rules.META_FIELD: rules.encode_meta(meta)}
    plans = {plan.name: plan for plan in product.plans}
    for plan in product.plans:
        documents[rules.plan_field(plan.name)] = plan_rule(plan)
    documents[rules.DEFAULT_FIELD] = documents[rules.plan_field(product.default_plan)]
    for tenant in product.tenants:
        documents[rules.tenant_field(tenant.id)] = tenant_rule(tenant, plans[tenant.plan])
    for route in routes:
        documents[rules.route_field(route.key)] = route_rule(route)
    # The version is the hash of everything else, then recorded in meta.
    version = content_version(documents)
    documents[rules.META_FIELD] = rules.encode_meta(replace(meta, version=version))
    return RuleSet(
        product=product.key,
        version=version,
        key=names.ruleset_key(product.key, version),
        current_key=names.ruleset_current_key(product.key),
        versions_key=names.ruleset_versions_key(product.key),
        fields=tuple((name, canonical_json(documents[name])) for name in sorted(documents)),
    )


# --- route table --------------------------------------------------------------------


def track_auth_record(policy: PolicyIR) -> route_table.AuthSettings:
    """How the async gateway authenticates a request on a track: the policy's auth settings, nothing else.

    The gateway takes tenant identity only from a credential it verified
    itself, so it needs the issuer, key set, audiences and claims (or the
    API-key header) of the track's policy; the rest of the compiled artifact
    (authz, transforms, CORS) stays with Envoy.
    """
    auth = policy.spec.auth
    jwt = None
    if auth.jwt is not None:
        jwt = route_table.JwtSettings(
            issuer=auth.jwt.issuer,
            jwks_uri=auth.jwt.jwks_uri,
            audiences=tuple(auth.jwt.audiences),
            tenant_claim=auth.jwt.tenant_claim,
            tier_claim=auth.jwt.tier_claim,
            clock_skew_seconds=auth.jwt.clock_skew_seconds,
            jwks_cache_ms=duration_ms(auth.jwt.jwks_cache_duration),
        )
    api_key = None
    if auth.api_key is not None:
        api_key = route_table.ApiKeySettings(
            header=auth.api_key.header, query_parameter=auth.api_key.query_parameter
        )
    return route_table.AuthSettings(jwt=jwt, api_key=api_key, allow_anonymous=auth.allow_anonymous)


def track_auth(policy: PolicyIR) -> dict[str, Any]:
    return route_table.encode_auth(track_auth_record(policy))


def route_record(route: RouteIR) -> route_table.RouteEntry:
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
    return route_table.RouteEntry(
        key=route.key,
        mode=route.mode,
        product=route.product.key,
        hosts=tuple(route.match.hosts),
        path=route.match.path,
        path_prefix=route.match.path_prefix,
        methods=tuple(route.match.methods),
        residency=route.product.residency,
        regions=tuple(route.product.regions),
        timeout_ms=route.timeout_ms,
        backlog_limit=delivery.backlog_limit,
        result_ttl_ms=delivery.result_ttl_ms,
        ordering=delivery.ordering,
        sticky_by_tenant=state.sticky_by_tenant if state is not None else False,
        canary_phase=state.phase if state is not None else None,
        tracks=tuple(
            route_table.TrackEntry(
                name=track.name,
                weight=track.weight,
                policy_version=track.policy.version,
                policy_artifact=track.policy.artifact,
                auth=track_auth_record(track.policy),
            )
            for track in route.tracks
        ),
        topics=topics,
        tenant_topics=tenant_topics,
    )


def route_entry(route: RouteIR) -> dict[str, Any]:
    """The route-table document of ``route`` (``apx.contracts.route_table`` encodes it)."""
    return route_table.encode_route_entry(route_record(route))


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


def render_route_table(routes: Iterable[RouteIR], caches: Caches | None = None) -> RouteTable:
    if caches is None:
        encoded = {route.key: canonical_json(route_entry(route)) for route in routes}
    else:
        memo = caches.redis_routes
        encoded = {route.key: memo.get(route, functools.partial(_encoded_entry, route)) for route in routes}
    entries = tuple((key, encoded[key]) for key in sorted(encoded))
    version = _joined_version(entries)
    return RouteTable(
        version=version,
        key=names.route_table_key(version),
        current_key=names.route_table_current_key(),
        versions_key=names.route_table_versions_key(),
        entries=entries,
    )


def _encoded_entry(route: RouteIR) -> str:
    return canonical_json(route_entry(route))


def _joined_version(entries: tuple[tuple[str, str], ...]) -> str:
    """The route table's version: ``table_version`` of its entries' ``entry_digest``-s, in key order."""
    return table_version([entry_digest(entry_prefix(key), encoded) for key, encoded in entries])


def entry_prefix(key: str) -> str:
    """What precedes an entry in the table's canonical JSON: ``"<route key>":``."""
    return f"{json.dumps(key, ensure_ascii=False)}:"


def entry_digest(prefix: str, encoded: str) -> bytes:
    """The sha256 of one member ``"<route key>":<entry>`` of the table's canonical JSON."""
    return hashlib.sha256((prefix + encoded).encode()).digest()


def table_version(digests: Sequence[bytes]) -> str:
    """The route-table version: the sha256 of its members' digests, in key order (``REDIS_KEYS.md``).

    Not the hash of the whole text, as a rule set's: at 10,000 Routes that is
    ~10 MB to hash per pass (~13 ms, on the path of every change to Redis and
    Envoy), where the digests are 320 KB and a one-Route change rehashes one
    entry (the incremental render keeps the others: ``redis_incremental.py``).
    """
    return hashlib.sha256(b"".join(digests)).hexdigest()[:VERSION_LENGTH]


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


def render_redis(ir: IR, caches: Caches | None = None) -> RedisOutput:
    """Rule sets of every Product and the route table of every Route in the IR.

    With ``caches``, a product's rule set is rendered again only when its
    ProductIR or one of its RouteIRs is another object than last time, and
    a route-table entry only when its RouteIR is.
    """
    routes = sorted(ir.routes, key=lambda r: r.key)
    by_product: dict[str, list[RouteIR]] = {}
    for route in routes:
        by_product.setdefault(route.product.key, []).append(route)
    rule_sets = tuple(
        _rule_set(product, tuple(by_product.get(product.key, ())), caches)
        for product in sorted(ir.products, key=lambda p: p.key)
    )
    return RedisOutput(rule_sets=rule_sets, route_table=render_route_table(routes, caches))


def _rule_set(product: ProductIR, routes: tuple[RouteIR, ...], caches: Caches | None) -> RuleSet:
    if caches is None:
        return render_rule_set(product, routes)
    inputs = (product, *routes)
    cached = caches.redis_products.get(product.key)
    if cached is not None and same(cached[0], inputs):
        return cast(RuleSet, cached[1])
    rule_set = render_rule_set(product, routes)
    caches.redis_products.put(product.key, (inputs, rule_set))
    return rule_set
