"""Upstream clusters: backends, the rate-limit service, the async gateway and JWKS hosts.

Called by the package's ``render_envoy`` with the routes that rendered and the
JWKS endpoints of the JWT providers. Pure. Clusters are sorted by name.

* One cluster per distinct backend of a *sync* route track (the cluster name
  from the IR, ``names.service_cluster``/``names.url_cluster``, is the dedupe
  key). Async routes' backends are called by workers, not by Envoy, so they
  get no cluster; async traffic goes to the gateway.
  - Service → ``STRICT_DNS`` on the Service FQDN;
  - URL → ``LOGICAL_DNS`` (an external name may resolve to many rotating
    addresses; Envoy keeps one connection target per resolution), with a TLS
    transport socket for https: SNI = host, the server certificate verified
    against the CA bundle (``EnvoySettings.trusted_ca_file``) and its SAN
    matched against the host.
  - HTTP/1.1 upstream (``envoy.extensions.upstreams.http.v3.HttpProtocolOptions``).
* One cluster per track of each sync canary Route, copies of the backend
  clusters with their own stat names (``track_clusters.py``).
* ``names.RATE_LIMIT_CLUSTER`` — the APX rate-limit service, gRPC so HTTP/2.
* ``names.ASYNC_GATEWAY_CLUSTER`` — the APX async gateway, HTTP/1.1. Always
  present (like the rate-limit cluster), so the listener never references a
  missing cluster and adding the first async route changes only RDS.
* One cluster per JWKS host (``names.jwks_cluster``), TLS for https.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http_pb

from ... import names
from ...ir import RouteIR
from .common import EnvoySettings, duration, exact, pack
from .track_clusters import build_track_clusters, track_cluster_name
from .validate import encoded_problems

CLUSTER_TYPE = cluster_pb2.Cluster.DESCRIPTOR.full_name

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"

_HTTP1 = {
    HTTP_PROTOCOL_OPTIONS: pack(
        upstream_http_pb.HttpProtocolOptions(
            explicit_http_config=upstream_http_pb.HttpProtocolOptions.ExplicitHttpConfig(
                http_protocol_options=protocol_pb2.Http1ProtocolOptions()
            )
        )
    )
}
_HTTP2 = {
    HTTP_PROTOCOL_OPTIONS: pack(
        upstream_http_pb.HttpProtocolOptions(
            explicit_http_config=upstream_http_pb.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
    )
}


def _tls(host: str, settings: EnvoySettings) -> Any:
    context = tls_pb2.UpstreamTlsContext(
        sni=host,
        common_tls_context=tls_pb2.CommonTlsContext(
            validation_context=tls_common_pb.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=settings.trusted_ca_file),
                match_typed_subject_alt_names=[
                    tls_common_pb.SubjectAltNameMatcher(
                        san_type=tls_common_pb.SubjectAltNameMatcher.DNS, matcher=exact(host)
                    )
                ],
            )
        ),
    )
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def dns_cluster(
    name: str,
    host: str,
    port: int,
    settings: EnvoySettings,
    *,
    logical: bool = False,
    tls: bool = False,
    http2: bool = False,
) -> Any:
    """A cluster resolving ``host`` by DNS, with one endpoint ``host:port``."""
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=host, port_value=port)
            )
        )
    )
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.LOGICAL_DNS if logical else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration(settings.connect_timeout_ms),
        # IPv4 first, IPv6 when a name has no A record: the common cluster network.
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
        typed_extension_protocol_options=_HTTP2 if http2 else _HTTP1,
        transport_socket=_tls(host, settings) if tls else None,
    )


def build_clusters(
    routes: Collection[RouteIR],
    jwks_endpoints: Mapping[str, tuple[str, str, int]],
    settings: EnvoySettings,
) -> list[Any]:
    """Every cluster the listener and the rendered routes reference, sorted by name."""
    clusters: dict[str, Any] = {
        names.RATE_LIMIT_CLUSTER: dns_cluster(
            names.RATE_LIMIT_CLUSTER, settings.ratelimit_host, settings.ratelimit_port, settings, http2=True
        ),
        names.ASYNC_GATEWAY_CLUSTER: dns_cluster(
            names.ASYNC_GATEWAY_CLUSTER, settings.gateway_host, settings.gateway_port, settings
        ),
    }
    for route in routes:
        if route.mode == "async":
            continue
        for track in route.tracks:
            backend = track.backend
            if backend.cluster not in clusters:
                clusters[backend.cluster] = dns_cluster(
                    backend.cluster,
                    backend.host,
                    backend.port,
                    settings,
                    logical=backend.kind == "url",
                    tls=backend.tls,
                )
    clusters.update(build_track_clusters(routes, clusters))
    for name, (scheme, host, port) in jwks_endpoints.items():
        clusters[name] = dns_cluster(name, host, port, settings, logical=True, tls=scheme == "https")
    return [clusters[name] for name in sorted(clusters)]


def refused_clusters(routes: Iterable[RouteIR], clusters: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """Route key → why Envoy would refuse a cluster the Route's tracks use (``validate.py``).

    Clusters are checked once per distinct encoding; a refused cluster takes
    every Route that sends traffic to it out of the snapshot, each reported
    by name (and served from its last good spec by the pipeline).
    """
    return route_refusals(routes, refused_cluster_names(clusters))


def refused_cluster_names(clusters: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """Cluster name → why Envoy would refuse it, for the clusters it would refuse."""
    refused: dict[str, str] = {}
    for name, encoded in clusters:
        problems = encoded_problems(CLUSTER_TYPE, encoded)
        if problems:
            refused[name] = "; ".join(problem.lstrip(".") for problem in problems[:3])
    return refused


def route_refusals(routes: Iterable[RouteIR], refused: Mapping[str, str]) -> dict[str, str]:
    """Route key → the first refused cluster (``refused_cluster_names``) its tracks use."""
    if not refused:
        return {}
    errors: dict[str, str] = {}
    for route in routes:
        for track in route.tracks:
            for name in (track.backend.cluster, track_cluster_name(route, track)):
                if name in refused and route.key not in errors:
                    errors[route.key] = f"Envoy would refuse cluster {name}: {refused[name]}"
    return errors
