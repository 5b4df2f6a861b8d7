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
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2, json_format

from ...gcpause import collector_paused
from ...ir import IR
from .clusters import build_clusters
from .common import DEFAULT_SETTINGS, EnvoySettings, RenderError, pack
from .context import RenderContext
from .listener import build_listener
from .route_config import build_route_configuration
from .validate import validate_all

__all__ = ["DEFAULT_SETTINGS", "EnvoyOutput", "EnvoySettings", "RenderError", "render_envoy"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


SNAPSHOT_ENCODING = "gzip+length-delimited google.protobuf.Any (Listener, RouteConfiguration, Cluster)"


def decode_snapshot(data: bytes) -> list[Any]:
    """Read back ``snapshot_document()['binary']``: the resources as ``google.protobuf.Any`` messages."""
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


@dataclass(frozen=True, slots=True)
class EnvoyOutput:
    """Rendered xDS resources, the routes left out, and a content version."""

    listeners: list[Any]
    route_configurations: list[Any]
    clusters: list[Any]
    errors: dict[str, str] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def create(
        cls,
        listeners: list[Any],
        route_configurations: list[Any],
        clusters: list[Any],
        errors: dict[str, str],
    ) -> EnvoyOutput:
        """Build an output whose ``version`` is the sha256 of its serialized resources."""
        partial = cls(listeners, route_configurations, clusters, dict(sorted(errors.items())))
        return cls(
            listeners,
            route_configurations,
            clusters,
            partial.errors,
            "sha256:" + hashlib.sha256(partial.serialize()).hexdigest(),
        )

    def resources(self) -> Iterator[Any]:
        """Every resource: listeners, then route configurations, then clusters."""
        yield from self.listeners
        yield from self.route_configurations
        yield from self.clusters

    def serialize(self) -> bytes:
        """All resources as one length-delimited stream of their deterministic binary encodings."""
        return _delimited(self.resources())

    def snapshot_document(self) -> dict[str, Any]:
        """The compact snapshot stored in the snapshot ConfigMap.

        Proto3 JSON of a large snapshot is both slow to produce (seconds for
        thousands of routes) and larger than a ConfigMap may be (1 MiB), so
        the ConfigMap carries the binary form: every resource packed in a
        ``google.protobuf.Any``, length-delimited, gzip-compressed
        (``decode_snapshot`` reads it back).
        """
        packed = _delimited(pack(resource) for resource in self.resources())
        return {
            "version": self.version,
            "encoding": SNAPSHOT_ENCODING,
            "binary": gzip.compress(packed, compresslevel=6, mtime=0),
            "counts": {
                "listeners": len(self.listeners),
                "routes": sum(len(vh.routes) for rc in self.route_configurations for vh in rc.virtual_hosts),
                "virtual_hosts": sum(len(rc.virtual_hosts) for rc in self.route_configurations),
                "clusters": len(self.clusters),
                "routes_left_out": len(self.errors),
            },
        }

    def to_json(self) -> dict[str, Any]:
        """Proto3 JSON of every resource (``@type`` included), for ``apx translate`` and golden files."""

        def as_json(messages: list[Any]) -> list[Any]:
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


def render_envoy(ir: IR, port: int = 8080, settings: EnvoySettings | None = None) -> EnvoyOutput:
    """Render the IR into Envoy resources (listener on ``port``)."""
    with collector_paused():
        return _render(ir, port, settings or DEFAULT_SETTINGS)


def _render(ir: IR, port: int, settings: EnvoySettings) -> EnvoyOutput:
    ctx = RenderContext.create(ir.policies, settings)
    route_configuration, rendered, errors = build_route_configuration(ir.routes, ctx)
    clusters = build_clusters(rendered, ctx.jwt.jwks_endpoints, settings)
    listener = build_listener(port, settings, ctx.jwt.filter_config(), ctx.ratelimits.filters())
    return EnvoyOutput.create([listener], [route_configuration], clusters, errors)
