"""The route table in Redis: one typed entry per Route, with one encoder, one decoder and the defaults.

Written by the operator (``apx.controllers.renderers.redis_rules`` builds a
``RouteEntry`` per Route from the IR and encodes it into
``apx:routetable:{routes}:v:<version>``, field ``<ns>/<route>``) and read by
the async gateway (``apx.dataplane.common.routetable`` decodes every entry of
the live version and matches requests against them).

Decoding normalises what is case-insensitive (hosts lower-case, methods
upper-case, header names lower-case) and fills fields an older operator left
out with the defaults below, which are the Route and PolicyBundle models' own
defaults (a test renders a Route that sets none of them and checks). A track
without ``auth`` admits nobody: the gateway never guesses identity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ContractError

# Defaults of the Route model (timeout, async delivery) and the PolicyBundle model (JWT, API key).
DEFAULT_RESIDENCY = "GLOBAL"
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_BACKLOG_LIMIT = 10_000
DEFAULT_RESULT_TTL_MS = 3_600_000
DEFAULT_ORDERING = True
DEFAULT_TENANT_CLAIM = "tenant"
DEFAULT_CLOCK_SKEW_SECONDS = 60
DEFAULT_JWKS_CACHE_MS = 300_000
DEFAULT_API_KEY_HEADER = "x-api-key"

STABLE = "stable"
CANARY = "canary"


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """JWT verification settings of a track's policy (``auth.jwt`` of the PolicyBundle)."""

    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...] = ()
    tenant_claim: str = DEFAULT_TENANT_CLAIM
    tier_claim: str | None = None
    clock_skew_seconds: int = DEFAULT_CLOCK_SKEW_SECONDS
    jwks_cache_ms: int = DEFAULT_JWKS_CACHE_MS


@dataclass(frozen=True, slots=True)
class ApiKeySettings:
    header: str = DEFAULT_API_KEY_HEADER
    query_parameter: str | None = None


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How a track's policy identifies callers; the only source of tenant identity."""

    jwt: JwtSettings | None = None
    api_key: ApiKeySettings | None = None
    allow_anonymous: bool = False


# What a track without auth settings gets: nobody is admitted.
NO_AUTH = AuthSettings()


@dataclass(frozen=True, slots=True)
class TrackEntry:
    name: str  # "stable" | "canary"
    weight: int  # percent; the weights of a route sum to 100
    policy_version: str = ""
    policy_artifact: str = ""
    auth: AuthSettings = NO_AUTH


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One Route as the async gateway sees it (sync Routes are listed too, with no topics)."""

    key: str  # "<ns>/<name>"
    mode: str
    product: str
    tracks: tuple[TrackEntry, ...]
    hosts: tuple[str, ...] = ()
    path: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()  # empty: any method
    residency: str = DEFAULT_RESIDENCY
    regions: tuple[str, ...] = ()  # the product's preference order
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    backlog_limit: int = DEFAULT_BACKLOG_LIMIT
    result_ttl_ms: int = DEFAULT_RESULT_TTL_MS
    ordering: bool = DEFAULT_ORDERING
    sticky_by_tenant: bool = False
    canary_phase: str | None = None
    topics: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # track -> region -> topic
    # tenant -> track -> region -> topic (tenants of namespace/dedicated plans)
    tenant_topics: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    def track(self, name: str) -> TrackEntry | None:
        for track in self.tracks:
            if track.name == name:
                return track
        return None

    @property
    def match_base(self) -> str:
        """The exact path or prefix the Route matched on (the worker rewrites it for URL backends)."""
        return self.path if self.path is not None else (self.path_prefix or "/")


# --- encoder ---------------------------------------------------------------------------------


def encode_auth(auth: AuthSettings) -> dict[str, Any]:
    jwt = None
    if auth.jwt is not None:
        jwt = {
            "issuer": auth.jwt.issuer,
            "jwks_uri": auth.jwt.jwks_uri,
            "audiences": list(auth.jwt.audiences),
            "tenant_claim": auth.jwt.tenant_claim,
            "tier_claim": auth.jwt.tier_claim,
            "clock_skew_seconds": auth.jwt.clock_skew_seconds,
            "jwks_cache_ms": auth.jwt.jwks_cache_ms,
        }
    api_key = None
    if auth.api_key is not None:
        api_key = {"header": auth.api_key.header, "query_parameter": auth.api_key.query_parameter}
    return {"jwt": jwt, "api_key": api_key, "allow_anonymous": auth.allow_anonymous}


def encode_route_entry(entry: RouteEntry) -> dict[str, Any]:
    """The JSON-ready document of one entry (``documents.canonical_json`` gives the bytes written)."""
    return {
        "route": entry.key,
        "mode": entry.mode,
        "product": entry.product,
        "hosts": list(entry.hosts),
        "path": entry.path,
        "path_prefix": entry.path_prefix,
        "methods": list(entry.methods),
        "residency": entry.residency,
        "regions": list(entry.regions),
        "timeout_ms": entry.timeout_ms,
        "backlog_limit": entry.backlog_limit,
        "result_ttl_ms": entry.result_ttl_ms,
        "ordering": entry.ordering,
        "sticky_by_tenant": entry.sticky_by_tenant,
        "canary_phase": entry.canary_phase,
        "tracks": [
            {
                "track": track.name,
                "weight": track.weight,
                "policy_version": track.policy_version,
                "policy_artifact": track.policy_artifact,
                "auth": encode_auth(track.auth),
            }
            for track in entry.tracks
        ],
        "topics": {track: dict(regions) for track, regions in entry.topics.items()},
        "tenant_topics": {
            tenant: {track: dict(regions) for track, regions in per_track.items()}
            for tenant, per_track in entry.tenant_topics.items()
        },
    }


# --- decoder ---------------------------------------------------------------------------------


def _get(document: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = document.get(name)
    if value is None:
        if default is _REQUIRED:
            raise ContractError(f"{name} is missing")
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ContractError(f"{name} has the wrong type: {value!r}")
    return value


_REQUIRED: Any = object()


def _strings(document: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = _get(document, name, list, [])
    if not all(isinstance(item, str) for item in value):
        raise ContractError(f"{name} must be a list of strings")
    return tuple(value)


def _topic_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ContractError(f"{name} must map regions to topic ids")
    return dict(value)


def decode_auth(document: Mapping[str, Any] | None) -> AuthSettings:
    """A track's ``auth`` document; absent or empty means nobody is admitted."""
    if not document:
        return NO_AUTH
    if not isinstance(document, Mapping):
        raise ContractError("auth must be an object")
    jwt = None
    jwt_doc = document.get("jwt")
    if jwt_doc:
        if not isinstance(jwt_doc, Mapping):
            raise ContractError("auth.jwt must be an object")
        jwt = JwtSettings(
            issuer=_get(jwt_doc, "issuer", str, _REQUIRED),
            jwks_uri=_get(jwt_doc, "jwks_uri", str, _REQUIRED),
            audiences=_strings(jwt_doc, "audiences"),
            tenant_claim=_get(jwt_doc, "tenant_claim", str, "") or DEFAULT_TENANT_CLAIM,
            tier_claim=_get(jwt_doc, "tier_claim", str, "") or None,
            clock_skew_seconds=_get(jwt_doc, "clock_skew_seconds", int, DEFAULT_CLOCK_SKEW_SECONDS),
            jwks_cache_ms=_get(jwt_doc, "jwks_cache_ms", int, DEFAULT_JWKS_CACHE_MS),
        )
    api_key = None
    key_doc = document.get("api_key")
    if key_doc:
        if not isinstance(key_doc, Mapping):
            raise ContractError("auth.api_key must be an object")
        api_key = ApiKeySettings(
            header=(_get(key_doc, "header", str, "") or DEFAULT_API_KEY_HEADER).lower(),
            query_parameter=_get(key_doc, "query_parameter", str, None),
        )
    return AuthSettings(
        jwt=jwt, api_key=api_key, allow_anonymous=_get(document, "allow_anonymous", bool, False)
    )


def decode_route_entry(document: Mapping[str, Any]) -> RouteEntry:
    """An entry as written by ``encode_route_entry``; raises ``ContractError`` on a malformed one."""
    if not isinstance(document, Mapping):
        raise ContractError("a route entry must be an object")
    tracks = []
    for item in _get(document, "tracks", list, _REQUIRED):
        if not isinstance(item, Mapping):
            raise ContractError("tracks[] must be objects")
        tracks.append(
            TrackEntry(
                name=_get(item, "track", str, _REQUIRED),
                weight=_get(item, "weight", int, _REQUIRED),
                policy_version=_get(item, "policy_version", str, ""),
                policy_artifact=_get(item, "policy_artifact", str, ""),
                auth=decode_auth(item.get("auth")),
            )
        )
    if not tracks:
        raise ContractError("route entry without tracks")
    topics = {
        track: _topic_map(regions, f"topics[{track}]")
        for track, regions in _get(document, "topics", Mapping, {}).items()
    }
    tenant_topics: dict[str, dict[str, dict[str, str]]] = {}
    for tenant, per_track in _get(document, "tenant_topics", Mapping, {}).items():
        if not isinstance(per_track, Mapping):
            raise ContractError(f"tenant_topics[{tenant}] must map tracks to regions")
        tenant_topics[tenant] = {
            track: _topic_map(regions, f"tenant_topics[{tenant}][{track}]")
            for track, regions in per_track.items()
        }
    return RouteEntry(
        key=_get(document, "route", str, _REQUIRED),
        mode=_get(document, "mode", str, _REQUIRED),
        product=_get(document, "product", str, _REQUIRED),
        tracks=tuple(tracks),
        hosts=tuple(h.lower() for h in _strings(document, "hosts")),
        path=_get(document, "path", str, None),
        path_prefix=_get(document, "path_prefix", str, None),
        methods=tuple(m.upper() for m in _strings(document, "methods")),
        residency=_get(document, "residency", str, DEFAULT_RESIDENCY),
        regions=_strings(document, "regions"),
        timeout_ms=_get(document, "timeout_ms", int, DEFAULT_TIMEOUT_MS),
        backlog_limit=_get(document, "backlog_limit", int, DEFAULT_BACKLOG_LIMIT),
        result_ttl_ms=_get(document, "result_ttl_ms", int, DEFAULT_RESULT_TTL_MS),
        ordering=_get(document, "ordering", bool, DEFAULT_ORDERING),
        sticky_by_tenant=_get(document, "sticky_by_tenant", bool, False),
        canary_phase=_get(document, "canary_phase", str, None),
        topics=topics,
        tenant_topics=tenant_topics,
    )


def decode_route_entry_text(text: str | bytes) -> RouteEntry:
    """One hash value of the route table, as read from Redis."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ContractError(f"route entry is not JSON: {exc}") from exc
    return decode_route_entry(document)
