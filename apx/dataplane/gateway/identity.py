"""Caller identity for the async gateway: verify the credential the Route's policy asks for, read the tenant.

Called by ``apx.dataplane.gateway.app`` for every request (submissions and
``/status`` reads). Tenant identity comes only from a credential verified
here — a JWT signed by a key of the policy's JWKS, or an API key found in the
product's key table — never from a header the client sent: ``x-apx-tenant``
is not read at all (Envoy strips client copies too, and sets it from the
token only on routes it authenticates itself).

Credential precedence, per the track's policy (``AuthSettings`` in the route
table): a bearer token when the policy has JWT settings and the request
carries one (an invalid token is refused, never downgraded to another
method); else an API key when the policy names its header or query parameter;
else ``anonymous`` when the policy allows it; else 401.

JWT verification (PyJWT + cryptography): asymmetric algorithms only (the
``alg`` of the token must be one of ``ALLOWED_ALGORITHMS`` and match the key),
``iss`` must equal the policy's issuer, ``aud`` must contain one of the
policy's audiences when it lists any, ``exp``/``nbf`` with the policy's clock
skew. Keys come from ``jwks_uri``, cached for the policy's
``jwksCacheDuration``; a token whose ``kid`` is unknown triggers one early
refetch (key rotation) at most every ``MIN_REFETCH_SECONDS``; concurrent
misses share one fetch. When the key set cannot be fetched and none is
cached, the answer is 503 (retry), not 401 (the caller did nothing wrong).

Verified tokens are remembered (bounded LRU, at most ``token_cache_seconds``
and never past ``exp``), so a client reusing its token costs one signature
check per minute instead of one per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from apx.dataplane.common.routetable import AuthSettings, JwtSettings
from apx.dataplane.common.rulesets import RuleSetReader

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
ANONYMOUS = "anonymous"
MIN_REFETCH_SECONDS = 10.0
# Tenant ids travel as Pub/Sub ordering keys and attributes and into Redis keys
# (hashed when unusual, see names.counter_tenant): bounded and printable.
_TENANT = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")


class AuthError(Exception):
    """The request cannot be attributed to a tenant: 401, 403 or 503 (keys unavailable)."""

    def __init__(self, status: int, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as verified: the tenant, the plan its token claims (if any) and how it was verified."""

    tenant: str
    plan: str | None
    method: str  # "jwt" | "api_key" | "anonymous"


@dataclass(slots=True)
class _KeySet:
    keys: dict[str | None, jwt.PyJWK]
    fetched_at: float


class JwksCache:
    """JSON Web Key Sets by URI, fetched with aiohttp and cached per the policy's cache duration."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        fetch_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout)
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self.fetches = 0

    async def key(self, uri: str, kid: str | None, cache_ms: int) -> jwt.PyJWK | None:
        entry = self._sets.get(uri)
        now = self._clock()
        stale = entry is None or now - entry.fetched_at > cache_ms / 1000
        unknown = entry is not None and _pick(entry, kid) is None
        if stale or (unknown and entry is not None and now - entry.fetched_at >= MIN_REFETCH_SECONDS):
            await self._fetch_shared(uri, keep_old=entry is not None)
            entry = self._sets.get(uri)
        return _pick(entry, kid) if entry is not None else None

    async def _fetch_shared(self, uri: str, keep_old: bool) -> None:
        pending = self._fetching.get(uri)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetching[uri] = future
        try:
            await self._fetch(uri)
            future.set_result(None)
        except Exception as exc:
            if keep_old:
                # Serve the keys we have; refetch again after the minimum interval.
                log.warning(
                    "JWKS refresh failed; using cached keys", extra={"jwks_uri": uri, "error": str(exc)}
                )
                self._sets[uri].fetched_at = self._clock()
                future.set_result(None)
            else:
                error = AuthError(503, f"signing keys unavailable: {exc}")
                future.set_exception(error)
                future.exception()
                raise error from exc
        finally:
            del self._fetching[uri]

    async def _fetch(self, uri: str) -> None:
        async with self._session.get(uri, timeout=self._timeout) as response:
            response.raise_for_status()
            document = await response.json(content_type=None)
        self.fetches += 1
        keys: dict[str | None, jwt.PyJWK] = {}
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            try:
                key = jwt.PyJWK.from_dict(jwk)
            except (jwt.PyJWTError, ValueError, KeyError) as exc:
                log.info("unusable JWK skipped", extra={"jwks_uri": uri, "error": str(exc)})
                continue
            keys[key.key_id] = key
        self._sets[uri] = _KeySet(keys, self._clock())


def _pick(entry: _KeySet, kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return entry.keys.get(kid)
    # A token without kid is accepted only when the set has exactly one key.
    return next(iter(entry.keys.values())) if len(entry.keys) == 1 else None


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (as Envoy's claim_to_headers)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _tenant_value(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value)
        return text if _TENANT.match(text) else None
    return None


class Authenticator:
    """Turns a request's credential into an ``Identity`` under one track's ``AuthSettings``."""

    def __init__(
        self,
        jwks: JwksCache,
        rulesets: RuleSetReader,
        *,
        token_cache_size: int = 10_000,
        token_cache_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._jwks = jwks
        self._rulesets = rulesets
        self._cache: OrderedDict[tuple[str, JwtSettings], tuple[Identity, float]] = OrderedDict()
        self._cache_size = token_cache_size
        self._cache_seconds = token_cache_seconds
        self._clock = clock
        self._wall = wall_clock

    async def authenticate(
        self, auth: AuthSettings, product: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> Identity:
        if auth.jwt is not None:
            token = _bearer(headers.get("authorization"))
            if token is not None:
                return await self._verify_jwt(auth.jwt, token)
        if auth.api_key is not None:
            key = headers.get(auth.api_key.header)
            if not key and auth.api_key.query_parameter:
                key = query.get(auth.api_key.query_parameter)
            if key:
                tenant = await self._rulesets.api_key_tenant(product, key)
                if tenant is None:
                    raise AuthError(401, "unknown API key", challenge="ApiKey")
                checked = _tenant_value(tenant)
                if checked is None:
                    raise AuthError(403, "the API key maps to an unusable tenant id")
                return Identity(checked, None, "api_key")
        if auth.allow_anonymous:
            return Identity(ANONYMOUS, None, "anonymous")
        challenge = "Bearer" if auth.jwt is not None else "ApiKey" if auth.api_key is not None else None
        raise AuthError(401, "credentials required", challenge=challenge)

    async def _verify_jwt(self, settings: JwtSettings, token: str) -> Identity:
        cache_key = (token, settings)
        cached = self._cache.get(cache_key)
        now = self._clock()
        if cached is not None:
            identity, until = cached
            if now < until:
                self._cache.move_to_end(cache_key)
                return identity
            del self._cache[cache_key]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"malformed token: {exc}", challenge='Bearer error="invalid_token"') from exc
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise AuthError(
                401, f"token algorithm {algorithm!r} not accepted", challenge='Bearer error="invalid_token"'
            )
        key = await self._jwks.key(settings.jwks_uri, header.get("kid"), settings.jwks_cache_ms)
        if key is None:
            raise AuthError(401, "token signed by an unknown key", challenge='Bearer error="invalid_token"')
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=list(settings.audiences) or None,
                issuer=settings.issuer,
                leeway=settings.clock_skew_seconds,
                options={"verify_aud": bool(settings.audiences), "require": ["iss"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"invalid token: {exc}", challenge='Bearer error="invalid_token"') from exc
        tenant = _tenant_value(_claim(claims, settings.tenant_claim))
        if tenant is None:
            raise AuthError(403, f"token has no usable {settings.tenant_claim!r} claim")
        plan_value = _claim(claims, settings.tier_claim) if settings.tier_claim else None
        identity = Identity(tenant, plan_value if isinstance(plan_value, str) and plan_value else None, "jwt")
        until = now + self._cache_seconds
        expires = claims.get("exp")
        if isinstance(expires, int | float):
            until = min(until, now + (float(expires) - self._wall()))
        if until > now:
            self._cache[cache_key] = (identity, until)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return identity


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
