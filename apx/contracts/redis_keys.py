"""Every Redis key APX uses: names, prefixes, hash tags, and the identifiers that go inside keys.

The only place a Redis key string is built (an architecture test holds every
other module to it). Called by the operator's renderers and appliers (through
``apx.controllers.names``, which re-exports the builders) and by the
dataplane: the rate-limit service, the async gateway and the worker.

Cluster safety: keys one Lua script or MULTI touches share a hash tag
(``{...}``), so each script runs on one Redis Cluster slot:

* ``{<ns>/<product>}``: every key of one product's rule set and its API-key table;
* ``{<ns>/<product>/<tenant>}``: every counter of one request (tenant, tier,
  API key, quota, concurrency, credits), judged in one round trip;
* ``{routes}``: the route table's versions and pointer (``{routes/<instance>}`` for a named
  operator instance, see ``route_table_tag``);
* ``{<request_id>}`` and ``{<ns>/<route>}``: the dataplane's request state and
  backlog counters (one key per script).

``apx/controllers/renderers/REDIS_KEYS.md`` has the full table (types, writers,
readers, lifetimes).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .rule_set import Rule

REDIS_PREFIX = "apx"
ROUTE_TABLE_TAG = "{routes}"
# Suffix of the counter beside a version log that orders its entries (the applier's script).
SEQUENCE_SUFFIX = ":seq"
REQUEST_PREFIX = f"{REDIS_PREFIX}:req:"
BACKLOG_PREFIX = f"{REDIS_PREFIX}:backlog:"

# The counter-key code of each rate-limit algorithm: a policy that changes algorithm never
# reads a counter of another type.
ALGORITHM_CODES = {"sliding-window": "sw", "token-bucket": "tb", "fixed-window": "fw"}

# Tenant ids as a Product may list them. A tenant id from a token that does not
# look like one (it could carry "{", "}" or ":") is hashed before it becomes
# part of a key, so it can neither break the hash tag nor alias another key.
_SAFE_TENANT = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$")
IDENTIFIER_LENGTH = 16


# --- rule sets and API keys (tag: the product) ------------------------------------------------


def product_tag(product_key: str) -> str:
    return "{" + product_key + "}"


def ruleset_version_prefix(product_key: str) -> str:
    """Prefix of a product's rule-set version hashes: prefix + version = ``ruleset_key``."""
    return f"{REDIS_PREFIX}:rules:{product_tag(product_key)}:v:"


def ruleset_key(product_key: str, version: str) -> str:
    """Hash of the rules of one rule-set version of a product (immutable once written)."""
    return ruleset_version_prefix(product_key) + version


def ruleset_current_key(product_key: str) -> str:
    """String holding the live rule-set version of a product; switched atomically."""
    return f"{REDIS_PREFIX}:rules:{product_tag(product_key)}:current"


def ruleset_versions_key(product_key: str) -> str:
    """Sorted set of the versions written for a product (score = write order), for cleanup."""
    return f"{REDIS_PREFIX}:rules:{product_tag(product_key)}:versions"


def sequence_key(versions_key: str) -> str:
    """Counter giving the write order of a version log (``…:versions:seq``); same tag as the log."""
    return versions_key + SEQUENCE_SUFFIX


def api_key_table_key(product_key: str) -> str:
    """Hash: API-key id (``api_key_id``) → JSON ``{"tenant": …}``; written by key management."""
    return f"{REDIS_PREFIX}:apikeys:{product_tag(product_key)}"


# --- route table (tag: {routes}, or {routes/<instance>} for a named operator instance) ----------


# Operator instance names: DNS labels of at most 40 characters (the chart's name length), so they
# fit Kubernetes names and cannot break a hash tag. "" is the default, unnamed instance.
INSTANCE_PATTERN = re.compile(r"^(|[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?)$")


def check_instance(instance: str) -> str:
    """``instance`` if it is a legal operator instance name (see ``INSTANCE_PATTERN``), else ValueError."""
    if not INSTANCE_PATTERN.match(instance):
        raise ValueError(
            f"instance {instance!r}: must be a DNS label of at most 40 characters "
            "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
        )
    return instance


def route_table_tag(instance: str = "") -> str:
    """Hash tag of one operator instance's route table: ``{routes}`` for the default (unnamed) one.

    Several operator instances (one per namespace set) share a Redis; each owns
    its own route table under its own tag, read by the gateways of that
    instance (``apx-gateway --instance``). Instance names are DNS labels, so
    they can neither break the tag nor alias another instance's keys.
    """
    return ROUTE_TABLE_TAG if not instance else "{routes/" + instance + "}"


def route_table_version_prefix(instance: str = "") -> str:
    """Prefix of the route table's version hashes: prefix + version = ``route_table_key``."""
    return f"{REDIS_PREFIX}:routetable:{route_table_tag(instance)}:v:"


def route_table_key(version: str, instance: str = "") -> str:
    """Hash: route key → JSON route entry, read by the async gateway."""
    return route_table_version_prefix(instance) + version


def route_table_current_key(instance: str = "") -> str:
    return f"{REDIS_PREFIX}:routetable:{route_table_tag(instance)}:current"


def route_table_versions_key(instance: str = "") -> str:
    """Sorted set of the route-table versions written (score = write order), for cleanup."""
    return f"{REDIS_PREFIX}:routetable:{route_table_tag(instance)}:versions"


# --- counters (tag: product and tenant) --------------------------------------------------------


def counter_tenant(tenant: str) -> str:
    """The tenant component of counter keys: the id itself when it is a plain id, else ``~<hash>``."""
    if _SAFE_TENANT.match(tenant):
        return tenant
    return "~" + hashlib.sha256(tenant.encode()).hexdigest()[:IDENTIFIER_LENGTH]


def api_key_id(api_key: str) -> str:
    """Identifier of an API key in keys and the key table: never the secret itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:IDENTIFIER_LENGTH]


def counter_tag(product_key: str, tenant: str) -> str:
    return "{" + f"{product_key}/{tenant}" + "}"


def counter_key(product_key: str, tenant: str, descriptor: str) -> str:
    """Counter of one descriptor (``tenant:<algo>``, ``apikey:<id>:<algo>``, ``quota:…``, ``concurrency``, …).

    ``tenant`` is used as given: callers pass ``counter_tenant(tenant)``.
    """
    return f"{REDIS_PREFIX}:c:{counter_tag(product_key, tenant)}:{descriptor}"


def product_counters_pattern(product_key: str) -> str:
    """``SCAN`` pattern of every counter of every tenant of a product (deleted with the product)."""
    return f"{REDIS_PREFIX}:c:{{{_glob_escape(product_key)}/*"


def concurrency_key(product_key: str, tenant: str) -> str:
    """ZSET of a tenant's concurrency leases (request id → lease expiry ms)."""
    return counter_key(product_key, counter_tenant(tenant), "concurrency")


def credits_key(product_key: str, tenant: str) -> str:
    """String holding a tenant's prepaid credit balance."""
    return counter_key(product_key, counter_tenant(tenant), "credits")


def request_counter_keys(
    product_key: str,
    tenant: str,
    rule: Rule,
    algorithm: str,
    now_ms: int,
    api_key: str | None = None,
) -> dict[str, str]:
    """Every counter key one request touches, by purpose (``rate``, ``api_key_rate``, ``quota``, ...).

    ``rule`` is the tenant or plan rule answering the request. Keys of time
    windows (fixed-window rate, quota) depend on ``now_ms``; all keys share the
    hash tag ``{<product>/<tenant>}``.
    """
    who = counter_tenant(tenant)
    code = ALGORITHM_CODES[algorithm]

    def rate_key(prefix: str, window_ms: int) -> str:
        descriptor = f"{prefix}:{code}"
        if algorithm == "fixed-window":
            descriptor += f":{now_ms // window_ms}"
        return counter_key(product_key, who, descriptor)

    keys = {"rate": rate_key("tenant", rule.rate.window_ms)}
    if api_key is not None and rule.api_key_rate is not None:
        keys["api_key_rate"] = rate_key(f"apikey:{api_key_id(api_key)}", rule.api_key_rate.window_ms)
    quota = rule.quota
    if quota is not None:
        period = quota.period_seconds
        keys["quota"] = counter_key(product_key, who, f"quota:{period}:{now_ms // (period * 1000)}")
    if rule.concurrency is not None:
        keys["concurrency"] = counter_key(product_key, who, "concurrency")
    if rule.credits_cost is not None:
        keys["credits"] = counter_key(product_key, who, "credits")
    return keys


# --- the dataplane's own keys (request state, backlog) -----------------------------------------


def request_key(request_id: str) -> str:
    """Hash holding one async request's state (hash tag: the request id)."""
    return REQUEST_PREFIX + "{" + request_id + "}"


def request_keys_pattern() -> str:
    """``SCAN`` pattern of every request-state hash."""
    return REQUEST_PREFIX + "*"


def backlog_key(route: str, track: str) -> str:
    """Counter of one Route track's unfinished requests (hash tag: the route key)."""
    return BACKLOG_PREFIX + "{" + route + "}:" + track


def _glob_escape(text: str) -> str:
    # Product keys are "<ns>/<name>" DNS labels, but a pattern must never widen by accident.
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
