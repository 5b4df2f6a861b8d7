"""The per-render bundle of feature builders and their caches.

Created once per ``render_envoy`` call by the package ``__init__`` and passed
to ``route_config`` and ``canary``. Each builder memoises the messages it
makes (per policy artifact, per product, per backend), so a snapshot with
thousands of routes builds each distinct sub-message once. Nothing here
outlives the render: the caches are not global, so rendering stays pure and
memory is released with the output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...ir import PolicyIR, ProductIR
from .authz import Authz
from .common import CORS_FILTER, RBAC_FILTER, EnvoySettings
from .cors import Cors
from .headers import Headers
from .jwt import JwtAuthn
from .ratelimit import RateLimits


@dataclass(slots=True)
class RenderContext:
    settings: EnvoySettings
    jwt: JwtAuthn
    authz: Authz
    cors: Cors
    ratelimits: RateLimits
    headers: Headers
    # Serialized route fragments, keyed by what they depend on (see route_config).
    fragments: dict[tuple[Any, ...], bytes] = field(default_factory=dict)

    @classmethod
    def create(cls, policies: Iterable[PolicyIR], settings: EnvoySettings) -> RenderContext:
        jwt = JwtAuthn(policies, settings)
        return cls(settings, jwt, Authz(jwt), Cors(), RateLimits(settings), Headers())

    def track_filter_configs(
        self, policy: PolicyIR, product: ProductIR, *, per_cluster: bool
    ) -> dict[str, Any]:
        """Per-filter configs that depend on one track's policy (everything but jwt_authn).

        ``per_cluster`` configs name every filter, with a neutral config where
        the policy has none, because a weighted cluster's config must override
        whatever the route level holds for the other track.
        """
        cors = self.cors.per_route(policy)
        rbac = self.authz.per_route(policy)
        if per_cluster:
            return {
                CORS_FILTER: cors if cors is not None else self.cors.neutral,
                RBAC_FILTER: rbac if rbac is not None else self.authz.neutral,
                **self.ratelimits.per_cluster(policy, product),
            }
        configs: dict[str, Any] = {}
        if cors is not None:
            configs[CORS_FILTER] = cors
        if rbac is not None:
            configs[RBAC_FILTER] = rbac
        configs.update(self.ratelimits.per_route(policy, product))
        return configs
