"""The HTTP listener and its HttpConnectionManager.

Called by the package's ``render_envoy`` with the filter configs the other
modules built (JWT providers, the two rate-limit filters). Pure.

One listener, ``names.LISTENER_NAME`` on ``0.0.0.0:<port>`` (8080 by
default), one filter chain with the HTTP connection manager:

* routes come over ADS: ``rds`` with ``config_source: {ads: {}}`` and
  ``route_config_name: names.ROUTE_CONFIG_NAME``. Everything per route lives in
  RDS, so the listener changes only when the set of JWT providers changes
  (a listener update drains connections; a route update does not);
* ``x-request-id``: ``generate_request_id`` and ``preserve_external_request_id``
  (a caller's id is kept for correlation), echoed in the response;
* ``use_remote_address`` with ``xff_num_trusted_hops`` from the settings, so
  the client address RBAC's IP allowlist sees is the real one;
* edge hygiene (Envoy's edge-proxy best practices): path normalisation and
  merged slashes before routing and RBAC, escaped slashes unescaped and
  redirected, headers with underscores dropped (``x_apx_tenant`` would
  otherwise reach backends that map ``_`` to ``-``), ``x-envoy-*`` headers
  suppressed by the router;
* **early header mutation** deleting every client-sent ``x-apx-*`` header
  before route selection and before any HTTP filter: the ``x-apx-*`` headers
  upstreams and the rate-limit descriptors see were set by APX (route config,
  or jwt_authn from a verified token), never by the client;
* HTTP filters, in order: ``cors`` (answers preflights before anything asks
  for a token), ``jwt_authn``, ``rbac``, ``apx.ratelimit.fail_open``,
  ``apx.ratelimit.fail_closed``, ``router`` (always last). The CORS and RBAC
  filters carry empty configs; per-route ``typed_per_filter_config`` does the
  work. Access logs are left out (no sink is configured for APX yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, extension_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2
from envoy.type.matcher.v3 import string_pb2

from ... import names
from .common import CORS_FILTER, JWT_FILTER, RBAC_FILTER, ROUTER_FILTER, TRUE, EnvoySettings, pack

HCM_FILTER = "envoy.filters.network.http_connection_manager"
RESERVED_HEADER_PREFIX = "x-apx-"
STRIP_RESERVED_HEADERS = "apx.strip_reserved_headers"

HCM = hcm_pb.HttpConnectionManager


def strip_reserved_headers() -> Any:
    """Early header mutation: delete every request header starting with ``x-apx-``."""
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=[
            mutation_rules_pb2.HeaderMutation(
                remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
                    key_matcher=string_pb2.StringMatcher(prefix=RESERVED_HEADER_PREFIX)
                )
            )
        ]
    )
    return extension_pb2.TypedExtensionConfig(name=STRIP_RESERVED_HEADERS, typed_config=pack(mutation))


def http_filters(jwt_config: Any, ratelimit_filters: Sequence[Any]) -> list[Any]:
    """The HTTP filter chain, router last."""
    return [
        hcm_pb.HttpFilter(name=CORS_FILTER, typed_config=pack(cors_pb2.Cors())),
        hcm_pb.HttpFilter(name=JWT_FILTER, typed_config=pack(jwt_config)),
        hcm_pb.HttpFilter(name=RBAC_FILTER, typed_config=pack(rbac_filter_pb.RBAC())),
        *ratelimit_filters,
        hcm_pb.HttpFilter(
            name=ROUTER_FILTER, typed_config=pack(router_pb2.Router(suppress_envoy_headers=True))
        ),
    ]


def build_listener(
    port: int, settings: EnvoySettings, jwt_config: Any, ratelimit_filters: Sequence[Any]
) -> Any:
    manager = HCM(
        codec_type=HCM.AUTO,
        stat_prefix=settings.stat_prefix,
        rds=hcm_pb.Rds(
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
            route_config_name=names.ROUTE_CONFIG_NAME,
        ),
        http_filters=http_filters(jwt_config, ratelimit_filters),
        use_remote_address=TRUE,
        xff_num_trusted_hops=settings.xff_num_trusted_hops,
        generate_request_id=TRUE,
        preserve_external_request_id=True,
        always_set_request_id_in_response=True,
        normalize_path=TRUE,
        merge_slashes=True,
        path_with_escaped_slashes_action=HCM.UNESCAPE_AND_REDIRECT,
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.DROP_HEADER
        ),
        early_header_mutation_extensions=[strip_reserved_headers()],
    )
    return listener_pb2.Listener(
        name=names.LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=settings.listener_address, port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))]
            )
        ],
    )
