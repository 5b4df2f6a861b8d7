"""The Envoy snapshot as ConfigMaps in the operator's namespace: an index and its parts.

Pure. ``render_envoy_snapshot`` is called by ``render_kubernetes`` (this
package) with ``EnvoyOutput.snapshot_document()``; ``decode_configmaps`` is
called by the operator's xDS server (``apx.operator.xds.wiring``: a restarted
operator or a standby serves the stored snapshot before its first pass) and by
tests. The format, and how to read it with ``kubectl``, ``base64`` and
``gunzip`` only, is documented in ``ENVOY_SNAPSHOT.md`` beside this file.

In short: per xDS type (``lds``, ``rds``, ``cds``) one
``envoy.service.discovery.v3.DiscoveryResponse`` as binary protobuf
(``<type>.pb``) and as proto3 JSON (``<type>.json``, left out for a type
whose binary form exceeds 2 MiB: see ``ENVOY_SNAPSHOT.md`` for the cost that
avoids), both formats Envoy's filesystem subscription reads. When they all fit in one part they are stored
as they are (JSON in ``data``, binary in ``binaryData``), so the part can be
mounted into an Envoy pod as it is. Otherwise each file is gzip-compressed
and the compressed bytes are cut into consecutive slices of at most
``PART_BYTES`` across ``apx-envoy-snapshot-0``, ``-1``, …; the index
``apx-envoy-snapshot`` names the parts, the slices of every file, their
sha256 and the snapshot version, which every part repeats in an annotation.

Why slices of one gzip stream rather than whole resources per part: at 10,000
Routes the route table is a single RouteConfiguration (~50 MB of JSON, ~1.1 MB
compressed), larger than any one ConfigMap may be.

No ownerReferences, on purpose: the snapshot aggregates Routes of every
namespace, and an ownerReference cannot point across namespaces. The parts
are pruned by the operator itself when the snapshot shrinks (the reconciler
deletes snapshot parts it no longer renders).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from ... import names
from ...policy_artifacts import canonical_json
from ..envoy import decode_snapshot
from ..envoy.discovery_json import JSON_MAX_PB_BYTES
from .common import MANAGED_BY, metadata

# Payload bytes per part ConfigMap (data values plus decoded binaryData). The
# API server refuses a ConfigMap above 1 MiB; binaryData travels base64-encoded
# (4/3 larger) in JSON requests, and the metadata needs room too.
PART_BYTES = 768 * 1024
# Decompressed size a reader accepts per file: a corrupt or hostile ConfigMap
# cannot make the operator inflate gigabytes (a 10,000-Route rds.json is ~50 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024

FORMAT = "apx.dev/envoy-snapshot/v1"
VERSION_ANNOTATION = "apx.dev/envoy-snapshot-version"
ROLE_LABEL = "apx.dev/envoy-snapshot"
# Set on the ConfigMaps of a named operator instance only (several may share one operator
# namespace): the reconciler prunes only parts of its own instance.
INSTANCE_LABEL = "apx.dev/instance"
_LABELS = {**MANAGED_BY, "app.kubernetes.io/name": "apx", "app.kubernetes.io/component": "envoy-snapshot"}
_LEGACY_KEY = "snapshot.pb.gz"  # the single-ConfigMap form of APX 0.1


# The last render's ConfigMaps, by everything they depend on: a pass whose Envoy
# version did not change gets the very same manifests (no JSON, no gzip; the
# reconciler's digest cache recognises the dicts). The version is a digest of
# every resource, so the same version means the same files.
_last_render: tuple[tuple[str, ...], list[dict[str, Any]]] | None = None


def render_envoy_snapshot(
    snapshot: Mapping[str, Any], operator_namespace: str, instance: str = ""
) -> list[dict[str, Any]]:
    """The index ConfigMap and its parts for ``EnvoyOutput.snapshot_document()``.

    ``instance``: the operator instance writing them (``names.envoy_snapshot_configmap``);
    "" is the default instance and today's names.
    """
    global _last_render
    version = str(snapshot.get("version") or "")
    key = (
        version,
        operator_namespace,
        instance,
        str(PART_BYTES),
        str(snapshot.get("encoding") or ""),
        canonical_json(snapshot.get("counts") or {}),
    )
    last = _last_render
    if version and last is not None and last[0] == key:
        return list(last[1])
    manifests = _render(version, snapshot, operator_namespace, instance)
    _last_render = (key, manifests)
    return list(manifests)


def _render(
    version: str, snapshot: Mapping[str, Any], operator_namespace: str, instance: str
) -> list[dict[str, Any]]:
    labels = {**_LABELS, INSTANCE_LABEL: instance} if instance else dict(_LABELS)
    files: Mapping[str, bytes] = snapshot.get("files") or {}
    plain = sum(len(content) for content in files.values()) <= PART_BYTES
    # (part, key, bytes) of every slice, parts filled in file order.
    slices: list[tuple[int, str, bytes]] = []
    entries: list[dict[str, Any]] = []
    part, room = 0, PART_BYTES
    for name, content in files.items():
        stored = content if plain else gzip.compress(content, compresslevel=6, mtime=0)
        key = name if plain else f"{name}.gz"
        entry: dict[str, Any] = {
            "name": name,
            "compression": "none" if plain else "gzip",
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
            "slices": [],
        }
        position = 0
        while True:
            if room == 0:
                part, room = part + 1, PART_BYTES
            piece = stored[position : position + room]
            slices.append((part, key, piece))
            entry["slices"].append([names.envoy_snapshot_part_configmap(part, instance), key])
            position += len(piece)
            room -= len(piece)
            if position >= len(stored):
                break
        entries.append(entry)
    parts = [names.envoy_snapshot_part_configmap(i, instance) for i in range(part + 1)]
    manifests = [_index(version, snapshot, entries, parts, operator_namespace, instance, labels)]
    for index, part_name in enumerate(parts):
        data: dict[str, str] = {}
        binary: dict[str, str] = {}
        for slice_part, key, piece in slices:
            if slice_part != index:
                continue
            if key.endswith(".json"):
                data[key] = piece.decode()
            else:
                binary[key] = base64.b64encode(piece).decode("ascii")
        manifest: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(
                part_name, operator_namespace, {**labels, ROLE_LABEL: "part"}, {VERSION_ANNOTATION: version}
            ),
        }
        if data:
            manifest["data"] = data
        if binary:
            manifest["binaryData"] = binary
        manifests.append(manifest)
    return manifests


def _index(
    version: str,
    snapshot: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    parts: Sequence[str],
    namespace: str,
    instance: str,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    # Files in their order (listeners, route configurations, clusters; binary, then JSON).
    index: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "parts": list(parts),
        "files": list(entries),
    }
    stored = {str(e["name"]) for e in entries}
    omitted = [n.removesuffix(".pb") for n in stored if n.endswith(".pb") and n[:-3] + ".json" not in stored]
    if omitted:
        index["jsonOmitted"] = {
            "types": sorted(omitted),
            "reason": f"binary response above {JSON_MAX_PB_BYTES} bytes: read its .pb (ENVOY_SNAPSHOT.md)",
        }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            names.envoy_snapshot_configmap(instance), namespace, {**labels, ROLE_LABEL: "index"}
        ),
        "data": {
            "version": version,
            "encoding": str(snapshot.get("encoding") or ""),
            "parts": " ".join(parts),
            "index.json": json.dumps(index, indent=1, sort_keys=True) + "\n",
            "counts.json": canonical_json(snapshot.get("counts") or {}),
        },
    }


def decode_configmaps(
    configmaps: Sequence[Mapping[str, Any]], instance: str = ""
) -> list[any_pb2.Any] | None:
    """The snapshot's resources (listeners, route configurations, clusters) as ``Any`` messages.

    ``configmaps`` are the operator namespace's ConfigMaps (others are
    ignored). Reads the ``.pb`` files the index names. None when the set is
    incomplete or inconsistent: no index, a part missing, a part of another
    version (the operator is rewriting them), a slice missing or corrupt. The
    single-ConfigMap form of APX 0.1 is read too, so an upgraded operator can
    serve what its predecessor stored. ``instance`` picks the operator instance
    whose snapshot is read (several may share a namespace; "" is the default one).
    Without it, and with no default-instance index, the one index present is
    read: a reader that does not know its instance (the xDS wiring) finds the
    snapshot of a named instance alone in its namespace, as the chart installs it.
    """
    by_name: dict[str, Mapping[str, Any]] = {}
    for configmap in configmaps:
        name = (configmap.get("metadata") or {}).get("name")
        if isinstance(name, str):
            if name in by_name:
                return None  # two namespaces' worth: the caller must pass one namespace
            by_name[name] = configmap
    index_map = by_name.get(names.envoy_snapshot_configmap(instance))
    if index_map is None and not instance:
        indexes = [
            c
            for c in by_name.values()
            if ((c.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL) == "index"
        ]
        index_map = indexes[0] if len(indexes) == 1 else None
    if index_map is None:
        return None
    try:
        data = index_map.get("data") or {}
        legacy = (index_map.get("binaryData") or {}).get(_LEGACY_KEY)
        # The new form wins: a 0.1 key left beside it (another field manager) is stale.
        if "index.json" not in data and isinstance(legacy, str):
            return list(decode_snapshot(base64.b64decode(legacy, validate=True)))
        index = json.loads(data["index.json"])
        if index.get("format") != FORMAT:
            return None
        version = str(index["version"])
        resources: list[any_pb2.Any] = []
        for entry in index["files"]:
            if not str(entry["name"]).endswith(".pb"):
                continue
            content = _file(entry, version, by_name)
            if content is None:
                return None
            response = discovery_pb2.DiscoveryResponse()
            response.ParseFromString(content)
            if response.version_info != version:
                return None
            resources.extend(response.resources)
        return resources
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        binascii.Error,
        DecodeError,
        zlib.error,
        OSError,  # the 0.1 form's gzip
        EOFError,
    ):
        return None


def _file(entry: Mapping[str, Any], version: str, by_name: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """One file's bytes from its slices, checked against its sha256; None when anything is off."""
    stored: list[bytes] = []
    for part_name, key in entry["slices"]:
        part = by_name.get(part_name)
        if part is None:
            return None
        annotations = (part.get("metadata") or {}).get("annotations") or {}
        if annotations.get(VERSION_ANNOTATION) != version:
            return None
        if key in (part.get("binaryData") or {}):
            stored.append(base64.b64decode(part["binaryData"][key], validate=True))
        elif key in (part.get("data") or {}):
            stored.append(str(part["data"][key]).encode())
        else:
            return None
    joined = b"".join(stored)
    if entry.get("compression") == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        content = inflater.decompress(joined, MAX_FILE_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            return None  # larger than MAX_FILE_BYTES, or truncated
    elif entry.get("compression") == "none":
        content = joined
    else:
        return None
    if hashlib.sha256(content).hexdigest() != entry.get("sha256"):
        return None
    return content
