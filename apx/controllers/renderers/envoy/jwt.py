"""JWT authentication: the ``envoy.filters.http.jwt_authn`` filter and its per-route requirements.

Called by the package's ``render_envoy`` (filter config for the listener, JWKS
endpoints for the clusters) and by ``route_config``/``canary`` (per-route
``PerRouteConfig``). Pure.

Providers. One ``JwtProvider`` per distinct (PolicyBundle, JWT settings):
versions of a bundle whose ``auth.jwt`` block is identical share a provider,
so a canary that only changes, say, authz rules keeps one requirement for both
tracks. Providers are made for every *served* policy version (N and N-1), not
only for the versions routes use now, so the listener already knows a provider
before the first route switches to it. Each provider:

* checks ``iss`` and ``aud`` and fetches keys with ``remote_jwks`` through a
  JWKS cluster of its host (``names.jwks_cluster``), fetched at start-up
  (``async_fetch``) and cached for ``jwksCacheDuration``;
* writes the verified payload into dynamic metadata under its own name
  (``payload_in_metadata``), which the RBAC filter reads for scopes and to
  check *which* provider verified the caller;
* copies the tenant claim into ``x-apx-tenant`` and the tier claim into
  ``x-apx-plan`` (``claim_to_headers``), then clears the route cache so the
  tenant-sticky canary hash sees the verified tenant.

Why a client cannot spoof ``x-apx-tenant``: the listener's early header
mutation deletes every ``x-apx-*`` request header before routing and before
any filter runs (see ``listener.py``); afterwards the only writer of
``x-apx-tenant``/``x-apx-plan`` is this filter, and only from a token whose
signature, issuer, audience and expiry it verified.

Requirements. A route names one requirement (``PerRouteConfig.requirement_name``):

* policy with JWT only → ``<provider>``: a valid token is required;
* JWT plus API key, or ``allowAnonymous`` → ``<provider>|allow-missing``: a
  token that is present must be valid, a missing one passes (the API key is
  checked by the rate-limit service, and RBAC requires one of the two);
* no JWT in the policy → ``disabled: true``: the filter does nothing.

A canary whose tracks have different JWT settings gets one route-level
requirement that accepts any of the tracks' providers (plus ``allow-missing``
when one track accepts callers without a token). This is deliberate: the
tenant-sticky hash may move a request to the other track after the token is
verified, so the JWT check must not depend on the track; each track's RBAC
then insists on a payload from *its own* provider (see ``authz.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from envoy.config.core.v3 import http_uri_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb
from google.protobuf import empty_pb2

from ... import names
from ...ir import PolicyIR
from ...models.common import duration_ms
from ...models.policy import Jwt
from .common import EnvoySettings, duration, pack

ALLOW_MISSING = "allow-missing"


def jwt_digest(jwt: Jwt) -> str:
    """Hash of a JWT settings block; equal settings of one bundle share a provider."""
    canonical = json.dumps(jwt.model_dump(by_alias=True, mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def jwks_endpoint(jwks_uri: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a JWKS URI."""
    parts = urlsplit(jwks_uri)
    tls = parts.scheme == "https"
    return parts.scheme, parts.hostname or "", parts.port or (443 if tls else 80)


class JwtAuthn:
    """Providers and requirements for one render; builds each message once."""

    def __init__(self, policies: Iterable[PolicyIR], settings: EnvoySettings) -> None:
        self._settings = settings
        self._providers: dict[str, Any] = {}
        self._provider_of: dict[str, str | None] = {}
        self._requirements: dict[str, Any] = {}
        self._per_route: dict[tuple[str, ...], Any] = {}
        # cluster name → (scheme, host, port) of every JWKS host.
        self.jwks_endpoints: dict[str, tuple[str, str, int]] = {}
        self.disabled = pack(jwt_pb.PerRouteConfig(disabled=True))
        for policy in policies:
            provider = self.provider_of(policy)
            if provider is not None:
                self._requirement([provider], self._accepts_missing(policy))

    # --- providers -----------------------------------------------------------

    def provider_of(self, policy: PolicyIR) -> str | None:
        """Name of the provider verifying ``policy``'s tokens, or None for a policy without JWT."""
        if policy.key in self._provider_of:
            return self._provider_of[policy.key]
        jwt = policy.spec.auth.jwt
        name = None if jwt is None else names.jwt_provider(policy.bundle.key, jwt_digest(jwt))
        if jwt is not None and name is not None and name not in self._providers:
            self._providers[name] = self._provider(name, jwt)
        self._provider_of[policy.key] = name
        return name

    def _provider(self, name: str, jwt: Jwt) -> Any:
        scheme, host, port = jwks_endpoint(jwt.jwks_uri)
        cluster = names.jwks_cluster(scheme, host, port)
        self.jwks_endpoints[cluster] = (scheme, host, port)
        claims = [jwt_pb.JwtClaimToHeader(header_name=names.TENANT_HEADER, claim_name=jwt.tenant_claim)]
        if jwt.tier_claim is not None:
            claims.append(jwt_pb.JwtClaimToHeader(header_name=names.PLAN_HEADER, claim_name=jwt.tier_claim))
        return jwt_pb.JwtProvider(
            issuer=jwt.issuer,
            audiences=jwt.audiences,
            remote_jwks=jwt_pb.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(
                    uri=jwt.jwks_uri, cluster=cluster, timeout=duration(self._settings.jwks_timeout_ms)
                ),
                cache_duration=duration(duration_ms(jwt.jwks_cache_duration)),
                async_fetch=jwt_pb.JwksAsyncFetch(),
            ),
            forward=jwt.forward_token,
            clock_skew_seconds=jwt.clock_skew_seconds,
            payload_in_metadata=name,
            claim_to_headers=claims,
            clear_route_cache=True,
        )

    # --- requirements --------------------------------------------------------

    @staticmethod
    def _accepts_missing(policy: PolicyIR) -> bool:
        auth = policy.spec.auth
        return auth.jwt is None or auth.api_key is not None or auth.allow_anonymous

    def _requirement(self, providers: Sequence[str], allow_missing: bool) -> str:
        name = "|".join([*providers, ALLOW_MISSING] if allow_missing else providers)
        if name not in self._requirements:
            if len(providers) == 1 and not allow_missing:
                requirement = jwt_pb.JwtRequirement(provider_name=providers[0])
            else:
                alternatives = [jwt_pb.JwtRequirement(provider_name=p) for p in providers]
                if allow_missing:
                    alternatives.append(jwt_pb.JwtRequirement(allow_missing=empty_pb2.Empty()))
                requirement = jwt_pb.JwtRequirement(
                    requires_any=jwt_pb.JwtRequirementOrList(requirements=alternatives)
                )
            self._requirements[name] = requirement
        return name

    def per_route(self, policies: Sequence[PolicyIR]) -> Any:
        """Packed ``PerRouteConfig`` for a route whose tracks use ``policies``."""
        key = tuple(p.key for p in policies)
        cached = self._per_route.get(key)
        if cached is None:
            providers = sorted(
                {p for p in (self.provider_of(policy) for policy in policies) if p is not None}
            )
            if not providers:
                cached = self.disabled
            else:
                name = self._requirement(providers, any(self._accepts_missing(p) for p in policies))
                cached = pack(jwt_pb.PerRouteConfig(requirement_name=name))
            self._per_route[key] = cached
        return cached

    def filter_config(self) -> Any:
        """The listener's ``JwtAuthentication``: every provider and every requirement in use."""
        return jwt_pb.JwtAuthentication(
            providers=self._providers,
            requirement_map=self._requirements,
            # CORS preflights carry no token; the CORS filter answers them first anyway.
            bypass_cors_preflight=True,
        )
