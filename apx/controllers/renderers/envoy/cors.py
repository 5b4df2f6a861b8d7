"""CORS: per-route ``CorsPolicy`` for the ``envoy.filters.http.cors`` filter, and preflight routes.

Called by ``route_config`` and ``canary`` (the policy of each track) and by
``route_config`` for preflight routes. The listener carries an empty ``Cors``
filter, first in the chain so a preflight is answered before authentication.
Pure; one message per policy artifact.

Mapping of the PolicyBundle's ``cors`` block: ``allowOrigins`` → one exact
string matcher per origin (``*`` → the RE2 ``.*``; a subdomain wildcard
``https://*.example.com`` → an RE2 of its labels and ``.example.com``, any
subdomain at any depth but not ``example.com`` itself), ``allowMethods``,
``allowHeaders``, ``exposeHeaders`` → comma-separated lists, ``maxAgeSeconds``
→ ``max_age``, ``allowCredentials`` → ``allow_credentials``.

Preflight routes. A browser's preflight is an ``OPTIONS`` request without
credentials or custom headers. A Route that matches on methods (say GET and
POST) would never match it, Envoy would answer 404 and the browser would
block the call. So for such a route we add a preflight route just before it:
same path, ``:method: OPTIONS`` plus ``Origin`` and
``Access-Control-Request-Method`` present, no other header matchers (a
preflight does not carry them), the stable track's CORS policy, JWT disabled,
and a 204 ``direct_response``. The CORS filter answers a valid preflight
itself; one from a foreign origin gets the bare 204 without CORS headers and
the browser refuses — the upstream never sees preflights. When several routes
share a path, the first (most specific) one's preflight answers for all.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.type.v3 import percent_pb2

from ...ir import PolicyIR
from .common import (
    CORS_FILTER,
    JWT_FILTER,
    TRUE,
    RenderError,
    exact,
    header_value_error,
    pack,
    re2_escape,
    regex,
)

PREFLIGHT_SUFFIX = "/cors-preflight"
PREFLIGHT_HEADERS = (
    route_pb.HeaderMatcher(name=":method", string_match=exact("OPTIONS")),
    route_pb.HeaderMatcher(name="origin", present_match=True),
    route_pb.HeaderMatcher(name="access-control-request-method", present_match=True),
)


class Cors:
    """CORS policies per policy artifact for one render."""

    def __init__(self) -> None:
        # Keyed by id(): PolicyIR objects are shared and outlive the render.
        self._cache: dict[int, Any | None] = {}
        # A canary track without CORS must override the other track's policy.
        self.neutral = pack(
            cors_pb2.CorsPolicy(
                filter_enabled=base_pb2.RuntimeFractionalPercent(
                    default_value=percent_pb2.FractionalPercent(numerator=0)
                )
            )
        )

    def per_route(self, policy: PolicyIR) -> Any | None:
        """Packed ``CorsPolicy`` of ``policy``, or None when the policy has no CORS."""
        key = id(policy)
        if key not in self._cache:
            self._cache[key] = self._build(policy)
        return self._cache[key]

    @staticmethod
    def _build(policy: PolicyIR) -> Any | None:
        cors = policy.spec.cors
        if cors is None:
            return None
        for field, values in (("allowHeaders", cors.allow_headers), ("exposeHeaders", cors.expose_headers)):
            for index, value in enumerate(values):
                problem = header_value_error(value)
                if problem:
                    raise RenderError(f"PolicyBundle {policy.key}: spec.cors.{field}[{index}]: {problem}")
        origins = [_origin_matcher(o) for o in sorted(set(cors.allow_origins))]
        return pack(
            cors_pb2.CorsPolicy(
                allow_origin_string_match=origins,
                allow_methods=",".join(cors.allow_methods),
                allow_headers=",".join(cors.allow_headers),
                expose_headers=",".join(cors.expose_headers),
                max_age=str(cors.max_age_seconds),
                allow_credentials=TRUE if cors.allow_credentials else None,
            )
        )


def needs_preflight_route(methods: tuple[str, ...], cors: Any | None) -> bool:
    """A route restricted to methods other than OPTIONS needs its own preflight route."""
    return cors is not None and bool(methods) and "OPTIONS" not in methods


def preflight_route_kwargs(cors: Any, jwt_disabled: Any) -> dict[str, Any]:
    """Everything of a preflight route except its name and match."""
    return {
        "direct_response": route_pb.DirectResponseAction(status=204),
        "typed_per_filter_config": {CORS_FILTER: cors, JWT_FILTER: jwt_disabled},
    }


_LABELS = r"[a-z0-9-]+(\.[a-z0-9-]+)*"


def _origin_matcher(origin: str) -> Any:
    """``*`` matches any origin; ``scheme://*.rest`` any subdomain of ``rest``; anything else exactly."""
    if origin == "*":
        return regex(".*")
    scheme, _, host = origin.partition("://")
    if host.startswith("*."):
        # Browsers send the full origin, host lowercased: the wildcard stands
        # for one or more DNS labels, the rest must follow literally.
        return regex(f"{re2_escape(scheme)}://{_LABELS}{re2_escape(host[1:])}")
    return exact(origin)
