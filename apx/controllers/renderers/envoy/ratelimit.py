"""Global rate limiting: the two ``envoy.filters.http.ratelimit`` filters and per-route descriptors.

Called by the package's ``render_envoy`` (the listener's filters) and by
``route_config``/``canary`` (per-route ``RateLimitPerRoute``). Pure; one
message per (policy artifact, product).

Descriptor contract (also in ``DESCRIPTORS.md``; the Redis rule renderer and
the rate-limit service implement the other side). Domain ``apx``
(``names.RATE_LIMIT_DOMAIN``). Each request sends one to three descriptors,
in this order:

1. identity — always::

       ("product", "<namespace>/<product>")
       ("plan",    "<x-apx-plan>")      only if the verified JWT has the policy's tierClaim
       ("tenant",  "<x-apx-tenant>")    only if the verified JWT has the policy's tenantClaim

2. API key from the header — policies with ``auth.apiKey``, only when the header is sent::

       ("product", "<namespace>/<product>")
       ("api_key", "<value of auth.apiKey.header>")

3. API key from the query — same, with ``auth.apiKey.queryParameter``.

Entries are identified by key; the order above is fixed, an absent entry is
left out (never sent empty). ``plan``/``tenant`` use ``request_headers`` with
``skip_if_absent``; those headers exist only when jwt_authn verified a token
and copied the claim (the listener deletes every client-sent ``x-apx-*``
header before any filter runs), so a descriptor can never carry a tenant the
client made up. The rate-limit service resolves the rest: tenant ← the
``tenant`` entry, else the API-key table, else ``anonymous``; plan ← the
Product's entry for a listed tenant, else the ``plan`` entry, else the
Product's ``defaultPlan``. It answers OVER_LIMIT for an unknown API key.

Failure mode. ``failureMode`` is per policy while ``failure_mode_deny`` is a
filter setting, so the listener has two instances of the filter:
``apx.ratelimit.fail_open`` (failure_mode_deny false) and
``apx.ratelimit.fail_closed`` (true). A route puts its descriptors under the
instance of its policy's failure mode; the other instance finds no
descriptors and does not call the service. Neither instance uses the
canonical filter name, so Envoy's fallback lookup by extension name cannot
hand one instance the other's config. Both: ``enable_x_ratelimit_headers:
DRAFT_VERSION_03``, gRPC to ``names.RATE_LIMIT_CLUSTER`` over the v3 API, 429
answers become ``RESOURCE_EXHAUSTED`` for gRPC callers.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb

from apx.contracts import headers

from ... import names
from ...ir import PolicyIR, ProductIR
from .common import RATELIMIT_FAIL_CLOSED_FILTER, RATELIMIT_FAIL_OPEN_FILTER, EnvoySettings, duration, pack

Action = route_pb.RateLimit.Action

# Descriptor entry keys: the contract the rate-limit service reads (``apx.contracts.headers``).
PRODUCT_KEY = headers.DESCRIPTOR_PRODUCT
PLAN_KEY = headers.DESCRIPTOR_PLAN
TENANT_KEY = headers.DESCRIPTOR_TENANT
API_KEY_KEY = headers.DESCRIPTOR_API_KEY

FILTER_BY_FAILURE_MODE = {"open": RATELIMIT_FAIL_OPEN_FILTER, "closed": RATELIMIT_FAIL_CLOSED_FILTER}


def descriptors(policy: PolicyIR, product: ProductIR) -> list[Any]:
    """The ``RateLimit`` entries (one per descriptor) of a route track."""
    product_entry = Action(
        generic_key=Action.GenericKey(descriptor_key=PRODUCT_KEY, descriptor_value=product.key)
    )
    identity = [product_entry]
    auth = policy.spec.auth
    if auth.jwt is not None:
        if auth.jwt.tier_claim is not None:
            identity.append(
                Action(
                    request_headers=Action.RequestHeaders(
                        header_name=names.PLAN_HEADER, descriptor_key=PLAN_KEY, skip_if_absent=True
                    )
                )
            )
        identity.append(
            Action(
                request_headers=Action.RequestHeaders(
                    header_name=names.TENANT_HEADER, descriptor_key=TENANT_KEY, skip_if_absent=True
                )
            )
        )
    limits = [route_pb.RateLimit(actions=identity)]
    if auth.api_key is not None:
        by_header = Action(
            request_headers=Action.RequestHeaders(
                header_name=auth.api_key.header.lower(), descriptor_key=API_KEY_KEY
            )
        )
        limits.append(route_pb.RateLimit(actions=[product_entry, by_header]))
        if auth.api_key.query_parameter is not None:
            by_query = Action(
                query_parameters=Action.QueryParameters(
                    query_parameter_name=auth.api_key.query_parameter, descriptor_key=API_KEY_KEY
                )
            )
            limits.append(route_pb.RateLimit(actions=[product_entry, by_query]))
    return limits


class RateLimits:
    """The listener's rate-limit filters and per-route descriptors for one render."""

    def __init__(self, settings: EnvoySettings) -> None:
        self._settings = settings
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        # Canary tracks with different failure modes must silence the other instance.
        self.neutral = pack(rate_limit_pb2.RateLimitPerRoute())

    def per_route(self, policy: PolicyIR, product: ProductIR) -> dict[str, Any]:
        """``{filter name: packed RateLimitPerRoute}`` for one track."""
        key = (policy.key, product.key)
        cached = self._cache.get(key)
        if cached is None:
            name = FILTER_BY_FAILURE_MODE[policy.spec.rate_limit.failure_mode]
            cached = {name: pack(rate_limit_pb2.RateLimitPerRoute(rate_limits=descriptors(policy, product)))}
            self._cache[key] = cached
        return cached

    def per_cluster(self, policy: PolicyIR, product: ProductIR) -> dict[str, Any]:
        """Like ``per_route`` but naming both instances (weighted clusters override the route)."""
        configs = dict.fromkeys(FILTER_BY_FAILURE_MODE.values(), self.neutral)
        configs.update(self.per_route(policy, product))
        return configs

    def filters(self) -> list[Any]:
        """The two HTTP filters, fail-open first."""
        return [self._filter(mode, name) for mode, name in FILTER_BY_FAILURE_MODE.items()]

    def _filter(self, failure_mode: str, name: str) -> Any:
        settings = self._settings
        config = rate_limit_pb2.RateLimit(
            domain=names.RATE_LIMIT_DOMAIN,
            timeout=duration(settings.ratelimit_timeout_ms),
            failure_mode_deny=failure_mode == "closed",
            rate_limited_as_resource_exhausted=True,
            enable_x_ratelimit_headers=rate_limit_pb2.RateLimit.DRAFT_VERSION_03,
            stat_prefix=f"fail_{failure_mode}",
            rate_limit_service=rls_pb2.RateLimitServiceConfig(
                grpc_service=grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.RATE_LIMIT_CLUSTER)
                ),
                transport_api_version=config_source_pb2.V3,
            ),
        )
        return hcm_pb.HttpFilter(name=name, typed_config=pack(config))
