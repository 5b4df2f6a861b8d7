"""The Envoy renderer: the IR as Envoy v3 xDS resources (listener, routes, clusters).

Called by the renderer registry (golden files, ``apx translate``), by the
Kubernetes renderer (the ConfigMap snapshot) and by the xDS applier. Pure:
no I/O, no clock; the same IR always gives byte-identical resources and the
same ``version``.

``render_envoy(ir)`` assembles the feature modules of this package, one
Envoy feature per file:

========================  ==================================================
``listener.py``           listener, HttpConnectionManager, filter order
``route_config.py``       virtual hosts, matching, ordering, timeouts, retries
``canary.py``             weighted clusters, tenant-sticky hashing
``clusters.py``           backend, rate-limit, gateway and JWKS clusters
``track_clusters.py``     per-track clusters of sync canaries (stat names)
``jwt.py``                jwt_authn providers and per-route requirements
``authz.py``              RBAC per route (scopes, IP allowlist)
``ratelimit.py``          rate-limit filters and descriptors (``DESCRIPTORS.md``)
``cors.py``               CORS policies and preflight routes
``headers.py``            request/response header manipulation
========================  ==================================================

plus ``common.py`` (settings, filter names, helpers), ``context.py`` (the
per-render caches) and ``validate.py`` (pre-snapshot validation).

A route that cannot be rendered is left out and reported in ``errors``
(route key → message naming the field); the rest of the snapshot is still
produced, as in Envoy Gateway's translator.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import any_pb2, json_format

from ...gcpause import collector_paused
from ...ir import IR
from ...memo import Caches
from .clusters import build_clusters, refused_clusters
from .common import DEFAULT_SETTINGS, EnvoySettings, RenderError, pack
from .context import RenderContext
from .discovery_json import SnapshotFile, SnapshotFiles, SplitResource, snapshot_files
from .incremental import (
    Encoded,
    host_field_head,
    listener_jwt,
    render_incremental,
    varint,
    version_of_messages,
)
from .incremental_delta import render_delta
from .listener import build_listener
from .route_config import build_route_configuration
from .validate import validate_all

__all__ = ["DEFAULT_SETTINGS", "EnvoyOutput", "EnvoySettings", "RenderError", "render_envoy"]


_varint = varint


TYPE_URL_PREFIX = "type.googleapis.com/"
_LISTENER_TYPE = TYPE_URL_PREFIX + listener_pb2.Listener.DESCRIPTOR.full_name
_ROUTE_CONFIGURATION_TYPE = TYPE_URL_PREFIX + route_pb2.RouteConfiguration.DESCRIPTOR.full_name
_CLUSTER_TYPE = TYPE_URL_PREFIX + cluster_pb2.Cluster.DESCRIPTOR.full_name
# Envoy routes per virtual host encoding, of the last snapshot document's hosts (``_route_counts``).
_host_route_counts: dict[bytes, int] = {}
SNAPSHOT_ENCODING = (
    "per xDS type (lds, rds, cds) an envoy.service.discovery.v3.DiscoveryResponse: "
    "<type>.pb binary protobuf, <type>.json proto3 JSON"
)


def decode_snapshot(data: bytes) -> list[Any]:
    """Read the snapshot ConfigMap of APX 0.1 (``snapshot.pb.gz``): the resources as ``Any`` messages.

    That form (gzip of length-delimited ``Any`` messages) is no longer
    written; ``kubernetes.envoy_snapshot.decode_configmaps`` still reads it
    so an upgraded operator can serve the snapshot its predecessor left.
    """
    raw = gzip.decompress(data)
    resources: list[Any] = []
    position = 0
    while position < len(raw):
        length, shift = 0, 0
        while True:
            byte = raw[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        message = any_pb2.Any()
        message.ParseFromString(raw[position : position + length])
        resources.append(message)
        position += length
    return resources


def _delimited(resources: Iterable[Any]) -> bytes:
    parts: list[bytes] = []
    for resource in resources:
        encoded = resource.SerializeToString(deterministic=True)
        parts.append(_varint(len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def _split_route_configuration(config: route_pb2.RouteConfiguration) -> SplitResource | None:
    """A RouteConfiguration of a name and virtual hosts only, as its head and one piece per host.

    What the incremental render keeps (``Encoded.route_head``, ``virtual_hosts``),
    from the message of a render without caches, so the snapshot ConfigMaps
    cut both alike. Deterministic serialization writes fields in number order,
    so with no field after ``virtual_hosts`` (2) the pieces join to the same
    bytes. Anything else: ``None``, the whole encoding as one resource.
    """
    if {field.name for field, _ in config.ListFields()} - {"name", "virtual_hosts"}:
        return None
    head = route_pb2.RouteConfiguration(name=config.name).SerializeToString(deterministic=True)
    pieces = []
    for host in config.virtual_hosts:
        data = host.SerializeToString(deterministic=True)
        # Cut by its domain, as the incremental render keys its hosts: both cut alike.
        pieces.append(
            ((host.domains[0] if host.domains else host.name).encode(), host_field_head(data), data)
        )
    return SplitResource(head, pieces)


@dataclass(frozen=True, slots=True)
class EnvoyOutput:
    """Rendered xDS resources, the routes left out, and a content version."""

    listeners: list[Any]
    # A list, or the cached renders' ``on_demand.ParsedOnUse`` (parsed when read).
    route_configurations: Sequence[Any]
    clusters: list[Any]
    errors: dict[str, str] = field(default_factory=dict)
    version: str = ""
    # The resources' deterministic encodings when the render kept them (the
    # incremental render does): serializing is then a join, not a re-encode.
    encoded: Encoded | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        listeners: list[Any],
        route_configurations: Sequence[Any],
        clusters: list[Any],
        errors: dict[str, str],
        encoded: Encoded | None = None,
    ) -> EnvoyOutput:
        """Build an output whose ``version`` is the digest of its resources (``incremental.version_of``).

        The incremental render computed it from the digests it keeps (``encoded.version``).
        """
        if encoded is not None and encoded.version:
            version = encoded.version
        else:
            version = version_of_messages(listeners, route_configurations, clusters)
        return cls(listeners, route_configurations, clusters, dict(sorted(errors.items())), version, encoded)

    def resources(self) -> Iterator[Any]:
        """Every resource: listeners, then route configurations, then clusters."""
        yield from self.listeners
        yield from self.route_configurations
        yield from self.clusters

    def serialize(self) -> bytes:
        """All resources as one length-delimited stream of their deterministic binary encodings."""
        if self.encoded is not None:
            return b"".join(varint(len(item)) + item for item in self.encoded.all())
        return _delimited(self.resources())

    def _encodings(self) -> Iterator[bytes]:
        """Every resource's deterministic encoding, in ``resources()`` order: the kept ones when there are.

        Read by position, never through the messages: reading a cached render's
        RouteConfiguration message would parse it (16 MB at 10,000 Routes).
        """
        if self.encoded is None:
            return (resource.SerializeToString(deterministic=True) for resource in self.resources())
        return iter(self.encoded.all())

    def _route_counts(self) -> tuple[int, int]:
        """(virtual hosts, Envoy routes) of the route configurations.

        From a cached render's encodings, one virtual host parsed at a time: the
        whole RouteConfiguration is never parsed, and the caller (the snapshot
        ConfigMap writer, in a worker thread) never holds the interpreter for the
        length of a 16 MB parse.
        """
        global _host_route_counts
        encoded = self.encoded
        if encoded is not None and encoded.route_head and len(encoded.route_configurations) == 1:
            # A host's count is kept by its encoding (the render keeps an unchanged host's bytes
            # object, whose hash Python keeps too): a write after a one-Route change parses one
            # host, not 2,900 (~0.12 s at 10,000 Routes). Only the current hosts stay kept.
            kept, counts = _host_route_counts, {}
            parse = route_components_pb2.VirtualHost.FromString
            for _, host in encoded.virtual_hosts:
                count = kept.get(host)
                counts[host] = len(parse(host).routes) if count is None else count
            _host_route_counts = counts
            return len(encoded.virtual_hosts), sum(counts[host] for _, host in encoded.virtual_hosts)
        return (
            sum(len(rc.virtual_hosts) for rc in self.route_configurations),
            sum(len(vh.routes) for rc in self.route_configurations for vh in rc.virtual_hosts),
        )

    def snapshot_document(self) -> dict[str, Any]:
        """What the snapshot ConfigMaps hold: per xDS type a ``DiscoveryResponse``, binary and JSON.

        ``files`` maps ``lds.pb``, ``rds.pb``, ``cds.pb`` (the binary
        ``envoy.service.discovery.v3.DiscoveryResponse`` of the listeners,
        route configurations and clusters) and ``lds.json``, ``rds.json``,
        ``cds.json`` (the same responses in proto3 JSON, for the types whose
        binary form is at most ``discovery_json.JSON_MAX_PB_BYTES``) to their
        bytes, built on first read (``discovery_json.SnapshotFiles``). Both
        are what Envoy's filesystem subscription reads; the binary one is
        what the operator reads back on restart (parsing 50 MB of JSON would
        take a minute), the JSON one is for people. The Kubernetes renderer
        (``kubernetes/envoy_snapshot.py``) compresses and splits them; its
        ``ENVOY_SNAPSHOT.md`` documents the format.
        """

        def build() -> dict[str, SnapshotFile]:
            encoded = self.encoded
            if encoded is not None and encoded.route_head and len(encoded.route_configurations) == 1:
                # The route table as its head and hosts, each host the render's kept bytes: the
                # ConfigMaps store a stretch of hosts once per content (``SnapshotFile``), and
                # the 24 MB RouteConfiguration (at 10,000 Routes) is never joined for them.
                table = SplitResource(
                    encoded.route_head,
                    [(host.encode(), host_field_head(data), data) for host, data in encoded.virtual_hosts],
                )
                by_type: list[Sequence[bytes | SplitResource]] = [
                    encoded.listeners,
                    [table],
                    encoded.clusters,
                ]
            else:
                encodings = self._encodings()
                by_type = [
                    [next(encodings) for _ in range(len(messages))]
                    for messages in (self.listeners, self.route_configurations, self.clusters)
                ]
                by_type[1] = [
                    _split_route_configuration(message) or encoding
                    for message, encoding in zip(self.route_configurations, by_type[1], strict=True)
                ]
            typed = [
                (name, type_url, messages, resources)
                for (name, type_url, messages), resources in zip(
                    (
                        ("lds", _LISTENER_TYPE, self.listeners),
                        ("rds", _ROUTE_CONFIGURATION_TYPE, self.route_configurations),
                        ("cds", _CLUSTER_TYPE, self.clusters),
                    ),
                    by_type,
                    strict=True,
                )
            ]
            return snapshot_files(typed, self.version)

        virtual_hosts, routes = self._route_counts()
        return {
            "version": self.version,
            "encoding": SNAPSHOT_ENCODING,
            "files": SnapshotFiles(self.version, build),
            "counts": {
                "listeners": len(self.listeners),
                "routes": routes,
                "virtual_hosts": virtual_hosts,
                "clusters": len(self.clusters),
                "routes_left_out": len(self.errors),
            },
        }

    def to_json(self) -> dict[str, Any]:
        """Proto3 JSON of every resource (``@type`` included), for ``apx translate`` and golden files."""

        def as_json(messages: Sequence[Any]) -> list[Any]:
            return [json_format.MessageToDict(pack(m)) for m in messages]

        return {
            "version": self.version,
            "resources": {
                "listeners": as_json(self.listeners),
                "routes": as_json(self.route_configurations),
                "clusters": as_json(self.clusters),
            },
        }

    def validate_resources(self) -> list[str]:
        """Problems Envoy would NACK, as far as ``validate.py`` checks; empty when all is well."""
        return validate_all((f"{type(r).DESCRIPTOR.name}/{r.name}", r) for r in self.resources())


def render_envoy(
    ir: IR, port: int = 8080, settings: EnvoySettings | None = None, caches: Caches | None = None
) -> EnvoyOutput:
    """Render the IR into Envoy resources (listener on ``port``).

    With ``caches`` (the operator's), only what changed since the last render
    is built again (``incremental.py``); the output is the same.
    """
    with collector_paused():
        if caches is not None:
            # A few Routes changed: last render updated (``incremental_delta.py``); else ``incremental.py``.
            rendered = render_delta(ir, port, settings or DEFAULT_SETTINGS, caches)
            if rendered is None:
                rendered = render_incremental(ir, port, settings or DEFAULT_SETTINGS, caches)
            listener, configurations, clusters, errors, encoded = rendered
            return EnvoyOutput.create([listener], configurations, clusters, errors, encoded)
        return _render(ir, port, settings or DEFAULT_SETTINGS)


def _render(ir: IR, port: int, settings: EnvoySettings) -> EnvoyOutput:
    ctx = RenderContext.create(ir.policies, settings)
    route_configuration, rendered, errors = build_route_configuration(ir.routes, ctx)
    jwt = listener_jwt(ir.policies, settings, rendered)
    clusters = build_clusters(rendered, jwt.jwks_endpoints, settings)
    errors.update(
        refused_clusters(rendered, ((c.name, c.SerializeToString(deterministic=True)) for c in clusters))
    )
    listener = build_listener(port, settings, jwt.filter_config(), ctx.ratelimits.filters())
    return EnvoyOutput.create([listener], [route_configuration], clusters, errors)
