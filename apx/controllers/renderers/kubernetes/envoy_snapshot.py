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
avoids), both formats Envoy's filesystem subscription reads. When they all
fit in one part they are stored as they are (JSON in ``data``, binary in
``binaryData``) in ``apx-envoy-snapshot-0``, so the part can be mounted into
an Envoy pod as it is (format v1). Otherwise (format v2) each file is a
multi-member gzip stream: its head (the version, and lengths that change
with any resource) is a member stored in the index ``apx-envoy-snapshot``,
the rest is cut into chunks of resources (virtual hosts for the route
table), one member each, which fill parts named by a digest of what they
hold. A one-Route change rewrites the index and the one part holding its
virtual host; the parts it replaced are deleted after the index is applied.

Why cut at all: at 10,000 Routes the route table is a single
RouteConfiguration (~24 MB of binary, ~0.8 MB compressed), larger than any
one ConfigMap may be. Why cut at content-chosen places (``_chunks``) rather
than every N bytes: a change in one host then changes one chunk, so one
part; cut by size, every byte after the change would move, and every part
with it (at 10,000 Routes each write sent ~1.3 MB of base64 in three
ConfigMaps, and the API server answered other requests slowly meanwhile).

No ownerReferences, on purpose: the snapshot aggregates Routes of every
namespace, and an ownerReference cannot point across namespaces. The parts
are pruned by the operator itself (the reconciler deletes the parts the new
index no longer names).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from ... import names
from ...policy_artifacts import canonical_json
from ..envoy import decode_snapshot
from ..envoy.discovery_json import JSON_MAX_PB_BYTES, Piece, SnapshotFile, SnapshotFiles
from .common import MANAGED_BY, metadata

# Payload bytes per part ConfigMap (data values plus decoded binaryData). The
# API server refuses a ConfigMap above 1 MiB; binaryData travels base64-encoded
# (4/3 larger) in JSON requests, and the metadata needs room too.
PART_BYTES = 768 * 1024
# Decompressed size a reader accepts per file: a corrupt or hostile ConfigMap
# cannot make the operator inflate gigabytes (a 10,000-Route rds.json is ~50 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024

FORMAT = "apx.dev/envoy-snapshot/v1"  # small snapshots: one part; and every snapshot of APX 0.2
# Large snapshots: heads in the index, parts named by their content, files as multi-member gzip.
FORMAT_CONTENT_PARTS = "apx.dev/envoy-snapshot/v2"
# How a large snapshot's files are cut (``_chunks``): a chunk (one gzip member) ends after a
# piece whose cut key's crc32 is 0 modulo CHUNK_CUT_ONE_IN once it holds CHUNK_MIN_BYTES, and
# at CHUNK_MAX_BYTES regardless. At 10,000 Routes: 146 chunks, the route table's 87 of ~190 KB
# (~10 KB compressed), so a one-Route change compresses ~190 KB, not the 30 MB of every file.
CHUNK_MIN_BYTES = 64 * 1024
CHUNK_MAX_BYTES = 1024 * 1024
CHUNK_CUT_ONE_IN = 16
# A part ends after a chunk whose last cut key falls in another bucket once it holds
# PART_MIN_BYTES of compressed payload (or when the next member would not fit PART_BYTES):
# ~90 KiB parts, ~11 at 10,000 Routes, of which a one-Route change rewrites one.
PART_MIN_BYTES = 64 * 1024
PART_CUT_ONE_IN = 4
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
        f"{PART_BYTES} {PART_MIN_BYTES} {PART_CUT_ONE_IN}",
        f"{CHUNK_MIN_BYTES} {CHUNK_MAX_BYTES} {CHUNK_CUT_ONE_IN}",
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
    layouts = _layouts(snapshot.get("files") or {})
    if sum(layout.size for layout in layouts.values()) <= PART_BYTES:
        files = {name: layout.content() for name, layout in layouts.items()}
        return _plain(version, snapshot, files, operator_namespace, instance, labels)
    return _content_parts(version, snapshot, layouts, operator_namespace, instance, labels)


def _layouts(files: Mapping[str, bytes]) -> Mapping[str, SnapshotFile]:
    """Each file as head and pieces: the Envoy render's own (``SnapshotFiles``), or one piece per file."""
    if isinstance(files, SnapshotFiles):
        return files.layouts()
    return {name: SnapshotFile(b"", [(b"", b"", content)]) for name, content in files.items()}


def _plain(
    version: str,
    snapshot: Mapping[str, Any],
    files: Mapping[str, bytes],
    operator_namespace: str,
    instance: str,
    labels: Mapping[str, str],
) -> list[dict[str, Any]]:
    """A small snapshot: one part, ``apx-envoy-snapshot-0``, every file as it is (mountable)."""
    part_name = names.envoy_snapshot_part_configmap(0, instance)
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for name, content in files.items():
        if name.endswith(".json"):
            data[name] = content.decode()
        else:
            binary[name] = base64.b64encode(content).decode("ascii")
        entries.append(
            {
                "name": name,
                "compression": "none",
                "sha256": hashlib.sha256(content).hexdigest(),
                "size": len(content),
                "slices": [[part_name, name]],
            }
        )
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
    index = _index(FORMAT, version, snapshot, entries, [part_name], operator_namespace, instance, labels)
    return [index, manifest]


# The gzip members of the last large render, by the pieces they compress (the very objects the
# Envoy render keeps), and its part ConfigMaps by name: a one-Route change compresses the
# stretch of hosts it changed, and every part it did not touch is the same dict as before.
_members: dict[tuple[bytes, ...], bytes] = {}
_part_manifests: dict[str, dict[str, Any]] = {}


def _content_parts(
    version: str,
    snapshot: Mapping[str, Any],
    layouts: Mapping[str, SnapshotFile],
    operator_namespace: str,
    instance: str,
    labels: Mapping[str, str],
) -> list[dict[str, Any]]:
    """A large snapshot: heads in the index, stretches of pieces gzip-compressed into content-named parts.

    Each file is cut into chunks after pieces whose cut key falls in a bucket
    (``_chunks``); each chunk is one gzip member, so a file's members joined
    are one multi-member gzip stream. Members fill parts, a part ending after
    a chunk whose cut key falls in another bucket (``_part_ends``) or when the
    next member would not fit; so a change moves no cut but near itself, and
    every part it did not reach has the same bytes, hence the same name, as before.
    """
    global _members, _part_manifests
    index_name = names.envoy_snapshot_configmap(instance)
    kept: dict[tuple[bytes, ...], bytes] = _members
    members: dict[tuple[bytes, ...], bytes] = {}
    heads: dict[str, bytes] = {}
    entries: list[dict[str, Any]] = []
    # Each member in storage order: (key, member, where a part may end after it, its file's entry).
    stream: list[tuple[str, bytes, bytes, dict[str, Any]]] = []
    for name, layout in layouts.items():
        key = f"{name}.gz"
        checksum = hashlib.sha256(layout.head)
        for _, prefix, data in layout.pieces:
            checksum.update(prefix)
            checksum.update(data)
        entry: dict[str, Any] = {
            "name": name,
            "compression": "gzip",
            "sha256": checksum.hexdigest(),
            "size": layout.size,
            "slices": [],
        }
        entries.append(entry)
        if layout.head:
            heads[key] = gzip.compress(layout.head, compresslevel=6, mtime=0)
            entry["slices"].append([index_name, key])
        for chunk in _chunks(layout.pieces):
            stored = tuple(chain.from_iterable((prefix, data) for _, prefix, data in chunk))
            member = kept.get(stored) or members.get(stored)
            if member is None:
                member = gzip.compress(b"".join(stored), compresslevel=6, mtime=0)
            members[stored] = member
            stream.append((key, member, chunk[-1][0], entry))
    _members = members

    # Fill the parts: (key → slices) per part, and each entry's (part number, key) slices.
    filled: list[dict[str, list[bytes]]] = [{}]
    size = 0
    placed: list[tuple[dict[str, Any], int, str]] = []
    for key, member, cut, entry in stream:
        if size and size + len(member) > PART_BYTES:
            filled.append({})
            size = 0
        position = 0
        while position < len(member):
            if size >= PART_BYTES:  # a member larger than a part spans parts
                filled.append({})
                size = 0
            piece = member[position : position + PART_BYTES - size]
            if key not in filled[-1]:
                placed.append((entry, len(filled) - 1, key))
            filled[-1].setdefault(key, []).append(piece)
            position += len(piece)
            size += len(piece)
        if size >= PART_MIN_BYTES and _part_ends(cut):
            filled.append({})
            size = 0
    if not filled[-1]:
        filled.pop()

    part_names: list[str] = []
    manifests: list[dict[str, Any]] = []
    previous, now = _part_manifests, {}
    for number, held in enumerate(filled):
        binary = {key: b"".join(pieces) for key, pieces in held.items()}
        digest = hashlib.sha256()
        for key in sorted(binary):
            digest.update(b"%s\0%d\0" % (key.encode(), len(binary[key])))
            digest.update(binary[key])
        name = names.envoy_snapshot_content_part_configmap(digest.hexdigest(), instance)
        if name in part_names:  # the same bytes twice in one snapshot: named apart by place
            digest.update(b"\0%d" % number)
            name = names.envoy_snapshot_content_part_configmap(digest.hexdigest(), instance)
        part_names.append(name)
        manifest = previous.get(name)
        if manifest is None or manifest["metadata"]["namespace"] != operator_namespace:
            manifest = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": metadata(name, operator_namespace, {**labels, ROLE_LABEL: "part"}),
                "binaryData": {
                    key: base64.b64encode(content).decode("ascii") for key, content in binary.items()
                },
            }
        now[name] = manifest
        manifests.append(manifest)
    _part_manifests = now
    for entry, number, key in placed:
        entry["slices"].append([part_names[number], key])
    index = _index(
        FORMAT_CONTENT_PARTS, version, snapshot, entries, part_names, operator_namespace, instance, labels
    )
    if heads:
        index["binaryData"] = {key: base64.b64encode(head).decode("ascii") for key, head in heads.items()}
    return [index, *manifests]


def _chunks(pieces: Sequence[Piece]) -> list[Sequence[Piece]]:
    """``pieces`` in chunks: cut after a piece whose cut key falls in the chunk bucket.

    Only once a chunk holds ``CHUNK_MIN_BYTES``, and always at ``CHUNK_MAX_BYTES``:
    where a cut falls depends on the pieces near it only.
    """
    chunks: list[Sequence[Piece]] = []
    start, size = 0, 0
    for number, (cut, prefix, data) in enumerate(pieces):
        size += len(prefix) + len(data)
        if size >= CHUNK_MAX_BYTES or (
            size >= CHUNK_MIN_BYTES and cut and zlib.crc32(cut) % CHUNK_CUT_ONE_IN == 0
        ):
            chunks.append(pieces[start : number + 1])
            start, size = number + 1, 0
    if start < len(pieces):
        chunks.append(pieces[start:])
    return chunks


def _part_ends(cut: bytes) -> bool:
    """Whether a part may end after a chunk ending with this cut key.

    Other bits of the checksum than ``_chunks`` reads: most chunks end with a
    key whose low bits are zero.
    """
    return bool(cut) and (zlib.crc32(cut) // CHUNK_CUT_ONE_IN) % PART_CUT_ONE_IN == 0


def _index(
    format_name: str,
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
        "format": format_name,
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
        if index.get("format") not in (FORMAT, FORMAT_CONTENT_PARTS):
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
        # Parts of the one-part form carry the version they were written for; content-named
        # parts carry none (they serve every version that holds the same bytes). Either way
        # the file's sha256 below is what proves the slices belong together.
        annotations = (part.get("metadata") or {}).get("annotations") or {}
        if VERSION_ANNOTATION in annotations and annotations[VERSION_ANNOTATION] != version:
            return None
        if key in (part.get("binaryData") or {}):
            stored.append(base64.b64decode(part["binaryData"][key], validate=True))
        elif key in (part.get("data") or {}):
            stored.append(str(part["data"][key]).encode())
        else:
            return None
    joined = b"".join(stored)
    if entry.get("compression") == "gzip":
        inflated = _gunzip(joined)
        if inflated is None:
            return None
        content = inflated
    elif entry.get("compression") == "none":
        content = joined
    else:
        return None
    if hashlib.sha256(content).hexdigest() != entry.get("sha256"):
        return None
    return content


def _gunzip(stream: bytes) -> bytes | None:
    """A gzip stream of one or more members, inflated; None if truncated, corrupt or too large."""
    inflated: list[bytes] = []
    total = 0
    rest = stream
    if not rest:
        return None
    while rest:
        if total >= MAX_FILE_BYTES:
            return None  # (a limit of 0 would mean none to zlib)
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        member = inflater.decompress(rest, MAX_FILE_BYTES - total)
        if inflater.unconsumed_tail or not inflater.eof:
            return None  # larger than MAX_FILE_BYTES, or truncated
        inflated.append(member)
        total += len(member)
        rest = inflater.unused_data
    return b"".join(inflated)
