"""xDS resources as ``DiscoveryResponse`` proto3 JSON, fast enough for 10,000 Routes.

Called by ``EnvoyOutput.snapshot_document`` (this package) to write the
readable half of the snapshot ConfigMaps. Pure: no I/O, no clock (the caches
below only ever return what the uncached conversion would).

The text is what ``google.protobuf.json_format.MessageToDict`` gives (field
order, camelCase names, ``@type`` in ``Any``; map entries in key order), so
Envoy's filesystem subscription (``path_config_source``, a ``.json`` file)
and any proto3 JSON reader accept it.

Why not one ``MessageToDict`` call per resource: at 10,000 Routes the single
RouteConfiguration is ~50 MB of JSON and ``json_format`` walks it field by
field in Python (~30 s here). Two caches make it cheap:

* most of that text repeats: every Route of a PolicyBundle version carries the
  same per-filter configs (RBAC, JWT, CORS, rate limit) and the same headers.
  A Route is converted with those fields cleared, and each cleared value is
  converted once per distinct value (keyed by its deterministic bytes) and
  spliced back in field order;
* a virtual host (or cluster, listener) that did not change since the last
  snapshot keeps its text, keyed by a digest of its deterministic bytes, so a
  one-Route change converts the routes of one virtual host, not 10,000.

``tests/unit/test_envoy_snapshot_configmaps.py`` checks the text against
``MessageToDict`` of the same resources.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import chain
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from .incremental import length_delimited, varint

# Fields of a Route / VirtualHost whose values repeat across thousands of
# Routes (per-filter configs and headers of a PolicyBundle version).
_SHARED_FIELDS = frozenset({"typed_per_filter_config", "request_headers_to_add", "response_headers_to_add"})
# Distinct shared values of one snapshot: hundreds to a few thousand.
_SHARED_CACHE_SIZE = 32768
# Virtual hosts, clusters and listeners whose text is kept, per generation: a
# 10,000-Route snapshot has ~2,900 virtual hosts (~50 MB of text together) and
# ~6,000 clusters.
_TEXT_CACHE_SIZE = 16384


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Message classes of the shared values seen so far, by full name (Any, HeaderValueOption).
_CLASSES: dict[str, Any] = {}


@lru_cache(maxsize=_SHARED_CACHE_SIZE)
def _message_text(full_name: str, data: bytes) -> str:
    message: Message = _CLASSES[full_name]()
    message.ParseFromString(data)
    return _compact(json_format.MessageToDict(message))


def _shared_text(message: Message) -> str:
    name: str = message.DESCRIPTOR.full_name
    _CLASSES.setdefault(name, type(message))
    return _message_text(name, message.SerializeToString(deterministic=True))


def _with_shared(message: Message, inner: dict[str, str] | None = None) -> str:
    """JSON text of a Route / VirtualHost / RouteConfiguration, shared fields converted once per value.

    ``inner`` (field name → JSON text) supplies fields the caller converted itself.
    """
    present = [f for f, _ in message.ListFields()]
    cleared = {f.name for f in present if f.name in _SHARED_FIELDS or (inner and f.name in inner)}
    if not cleared:
        return _compact(json_format.MessageToDict(message))
    # The fields left, copied into an empty message (not a copy of the whole
    # message cleared afterwards: a virtual host's routes would be copied too).
    shell = type(message)()
    for field in present:
        if field.name in cleared:
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(shell, field.name)
            for key in value:
                if field.message_type.fields_by_name["value"].message_type is not None:
                    target[key].CopyFrom(value[key])
                else:
                    target[key] = value[key]
        elif field.is_repeated:
            getattr(shell, field.name).extend(value)
        elif field.message_type is not None:
            getattr(shell, field.name).CopyFrom(value)
        else:
            setattr(shell, field.name, value)
    base = json_format.MessageToDict(shell)
    parts: list[str] = []
    for field in present:
        key = _compact(field.json_name)
        value = getattr(message, field.name)
        if inner and field.name in inner:
            parts.append(f"{key}:{inner[field.name]}")
        elif field.name not in cleared:
            parts.append(f"{key}:{_compact(base[field.json_name])}")
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            # map<string, Any>, in key order: the same text on every run.
            entries = ",".join(f"{_compact(k)}:{_shared_text(value[k])}" for k in sorted(value))
            parts.append(f"{key}:{{{entries}}}")
        else:  # repeated messages
            parts.append(f"{key}:[{','.join(_shared_text(v) for v in value)}]")
    return "{" + ",".join(parts) + "}"


# Two generations (no lock: the pure core uses none, and single dict operations
# are atomic): texts found in either are moved to ``_texts_now``; when it is
# full it becomes ``_texts_before`` and the older generation is dropped. Texts
# used by every snapshot therefore stay, at most twice the size are kept.
_texts_now: dict[bytes, str] = {}
_texts_before: dict[bytes, str] = {}


def _kept_text(message: Message) -> str:
    """JSON text of a VirtualHost, Cluster or Listener, kept while the same message keeps coming."""
    global _texts_now, _texts_before
    data = message.SerializeToString(deterministic=True)
    key = hashlib.blake2b(data, digest_size=16, person=message.DESCRIPTOR.full_name[-16:].encode()).digest()
    text = _texts_now.get(key)
    if text is not None:
        return text
    text = _texts_before.get(key)
    if text is None:
        if isinstance(message, route_components_pb2.VirtualHost):
            routes = "[" + ",".join(_with_shared(r) for r in message.routes) + "]"
            text = _with_shared(message, {"routes": routes} if message.routes else None)
        else:
            text = _compact(json_format.MessageToDict(message))
    _texts_now[key] = text
    if len(_texts_now) >= _TEXT_CACHE_SIZE:
        _texts_before, _texts_now = _texts_now, {}
    return text


def _route_configuration_text(config: route_pb2.RouteConfiguration) -> str:
    hosts = ",".join(_kept_text(vh) for vh in config.virtual_hosts)
    return _with_shared(config, {"virtual_hosts": f"[{hosts}]"} if config.virtual_hosts else None)


def resource_text(message: Message) -> str:
    """Proto3 JSON of ``message`` packed in an ``Any`` (``@type`` first), as ``json_format`` writes it."""
    type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
    if isinstance(message, route_pb2.RouteConfiguration):
        body = _route_configuration_text(message)
    else:
        body = _kept_text(message)
    head = _any_head(type_url)
    return "{" + head + ("," + body[1:] if body != "{}" else "}")


@lru_cache(maxsize=64)
def _any_head(type_url: str) -> str:
    """``"@type":"<type URL>"``: the same few per snapshot (two JSON encodings per resource before)."""
    return _compact("@type") + ":" + _compact(type_url)


def discovery_response_json(type_url: str, version: str, resources: Iterable[Message]) -> bytes:
    """A ``DiscoveryResponse`` of ``resources`` as UTF-8 proto3 JSON, one resource per line."""
    return discovery_response_json_file(type_url, version, resources).content()


def discovery_response_json_file(type_url: str, version: str, resources: Iterable[Message]) -> SnapshotFile:
    """``discovery_response_json`` as a ``SnapshotFile``: the head names the version, a piece per line."""
    head = f'{{"versionInfo":{_compact(version)},"resources":[\n'.encode()
    pieces: list[Piece] = []
    for text in (resource_text(r).encode() for r in resources):
        pieces.append((text, b",\n" if pieces else b"", text))
    pieces.append((b"", f'\n],"typeUrl":{_compact(type_url)}}}\n'.encode(), b""))
    return SnapshotFile(head, pieces)


# Above this size of a type's binary response, its JSON is left out. The JSON
# of a 10,000-Route route table is ~53 MB and takes seconds to build (10 s the
# first time, ~2 s after a one-Route edit) and to compress, on the path that
# ends with the xDS push; the binary form of the same table costs ~0.5 s. Below
# it (a couple of MB of binary, ~800 Routes) people get JSON at little cost.
# ``ENVOY_SNAPSHOT.md`` says how to read the binary files without APX code.
JSON_MAX_PB_BYTES = 2 * 1024 * 1024


def snapshot_files(
    typed: Sequence[tuple[str, str, Sequence[Message], Sequence[bytes | SplitResource]]], version: str
) -> dict[str, SnapshotFile]:
    """``<xds>.pb`` and ``<xds>.json`` per ``(xds name, type URL, resources, their encodings)``.

    ``.pb`` files come first (binary ``DiscoveryResponse``, what the operator
    reads back), in the order given; then the ``.json`` files in the same order,
    for the types whose ``.pb`` is at most ``JSON_MAX_PB_BYTES``. The JSON reads
    the messages; the binary form only the encodings.
    """
    files: dict[str, SnapshotFile] = {}
    for name, type_url, _, encodings in typed:
        files[f"{name}.pb"] = discovery_response_file(version, type_url, encodings)
    for name, type_url, messages, _ in typed:
        if files[f"{name}.pb"].size <= JSON_MAX_PB_BYTES:
            files[f"{name}.json"] = discovery_response_json_file(type_url, version, messages)
    return files


# One piece of a stored file: (cut key, prefix, data); the file's bytes are its head, then
# every piece's prefix and data, in order. The cut key tells storage where the file may be cut
# (``kubernetes/envoy_snapshot.py`` cuts after pieces whose key falls in a bucket): what names
# the piece across versions (a virtual host's domain; a resource's or a line's own bytes), or
# b"" for framing that is never a place to cut. Prefix and data are apart so that a piece
# holds the render's kept encoding itself, not a copy: storage recognises an unchanged
# stretch of pieces by those objects.
Piece = tuple[bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class SplitResource:
    """A resource's encoding as its own head and pieces (the RouteConfiguration: its name, its hosts)."""

    head: bytes
    pieces: Sequence[Piece]


@dataclass(frozen=True)
class SnapshotFile:
    """One snapshot file as a head and pieces (``Piece``), joined by ``content``.

    The head is what changes with every version (the version, the lengths of
    what follows); the pieces are the resources (the route table's virtual
    hosts, one by one), which a one-Route change leaves the same but one.
    The snapshot ConfigMaps store the head in the index and the pieces in
    parts that stay the same while their pieces do (``ENVOY_SNAPSHOT.md``).
    """

    head: bytes
    pieces: Sequence[Piece]

    @cached_property  # read by the JSON bound and by the ConfigMaps' renderer
    def size(self) -> int:
        return len(self.head) + sum(len(prefix) + len(data) for _, prefix, data in self.pieces)

    def content(self) -> bytes:
        return self.head + b"".join(chain.from_iterable((prefix, data) for _, prefix, data in self.pieces))


@lru_cache(maxsize=16384)  # sizes repeat (clusters alike but for names): ~40 ms per snapshot without
def _any_framing(any_type_url: bytes, size: int) -> bytes:
    """What precedes an ``Any``'s value of ``size`` bytes in a ``DiscoveryResponse``'s resources."""
    # DiscoveryResponse.resources: field 2; Any: type_url 1, value 2 (left out when empty: proto3).
    value_head = varint(2 << 3 | 2) + varint(size) if size else b""
    return varint(2 << 3 | 2) + varint(len(any_type_url) + len(value_head) + size) + any_type_url + value_head


def discovery_response_bytes(
    version: str, type_url: str, encodings: Iterable[bytes | SplitResource]
) -> bytes:
    """``DiscoveryResponse(version_info, resources=[Any(type_url, value) ...], type_url)``, serialized.

    The bytes ``SerializeToString(deterministic=True)`` gives for the same
    message (fields in number order, empty strings and bytes left out: proto3),
    joined from the resources' kept encodings, as the xDS server joins its
    delta responses (``length_delimited``). Building the message instead
    copies each encoding three times (into an ``Any``, into the response, out
    again) while holding the interpreter: at 10,000 Routes ~0.2 s per snapshot
    ConfigMap write, beside the passes. A unit test compares the two on every
    edge (empty version, empty resource, no resource, multi-byte lengths).
    """
    return discovery_response_file(version, type_url, encodings).content()


def discovery_response_file(
    version: str, type_url: str, encodings: Iterable[bytes | SplitResource]
) -> SnapshotFile:
    """``discovery_response_bytes`` as a ``SnapshotFile``: a piece per resource or virtual host.

    The head holds the version, and the first split resource's framing, whose
    lengths change with any of its pieces.
    """
    # DiscoveryResponse: version_info 1, resources 2, type_url 4.
    any_type_url = length_delimited(1, type_url.encode()) if type_url else b""
    head = length_delimited(1, version.encode()) if version else b""
    pieces: list[Piece] = []
    for encoding in encodings:
        if not isinstance(encoding, SplitResource):
            pieces.append((encoding, _any_framing(any_type_url, len(encoding)), encoding))
            continue
        size = len(encoding.head) + sum(len(prefix) + len(data) for _, prefix, data in encoding.pieces)
        framing = _any_framing(any_type_url, size) + encoding.head
        if pieces:
            pieces.append((b"", framing, b""))
        else:
            head += framing
        pieces.extend(encoding.pieces)
    if type_url:
        pieces.append((b"", length_delimited(4, type_url.encode()), b""))
    return SnapshotFile(head, pieces)


class SnapshotFiles(Mapping[str, bytes]):
    """The files of one snapshot, built on first read.

    The snapshot ConfigMaps of a version that did not change are reused by
    their renderer (``kubernetes/envoy_snapshot.py``), which then never looks
    at the files: a pass that changed nothing Envoy sees builds no JSON. Once
    built, the builder (and the resources it holds) is dropped. The renderer
    reads ``layouts`` (heads and pieces); reading a file's bytes joins them.
    """

    def __init__(self, version: str, build: Callable[[], dict[str, SnapshotFile]]) -> None:
        self.version = version
        self._build: Callable[[], dict[str, SnapshotFile]] | None = build
        self._files: dict[str, SnapshotFile] | None = None

    def layouts(self) -> dict[str, SnapshotFile]:
        if self._files is None:
            assert self._build is not None
            self._files, self._build = self._build(), None
        return self._files

    def __getitem__(self, name: str) -> bytes:
        return self.layouts()[name].content()

    def __iter__(self) -> Iterator[str]:
        return iter(self.layouts())

    def __len__(self) -> int:
        return len(self.layouts())


__all__ = [
    "JSON_MAX_PB_BYTES",
    "Piece",
    "SnapshotFile",
    "SnapshotFiles",
    "SplitResource",
    "discovery_response_bytes",
    "discovery_response_file",
    "discovery_response_json",
    "discovery_response_json_file",
    "resource_text",
    "snapshot_files",
]
