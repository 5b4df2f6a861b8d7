"""The xDS snapshot: every resource the ADS server serves, encoded once and shared by every stream.

Built by ``XdsServer`` (``apx.operator.xds.server``) from the reconciler's
``EnvoyOutput`` (``XdsSnapshot.from_envoy``) or from the ``google.protobuf.Any``
messages of the snapshot ConfigMap (``XdsSnapshot.from_any``). Pure: no gRPC,
no I/O, no clock.

Shape. Per type URL, a map name → ``Entry`` (its version — a short sha256 of
its bytes — and the serialized ``google.protobuf.Any``). Four types:

* ``Listener`` and ``Cluster``: one entry per rendered resource;
* ``VirtualHost`` (VHDS): one entry per virtual host of each
  RouteConfiguration, named ``<route configuration>/<host>`` as Envoy's VHDS
  names them; the message's own ``name`` is that same string, because Envoy
  keys VHDS virtual hosts by ``VirtualHost.name`` when it applies
  ``removed_resources``;
* ``RouteConfiguration``, in two forms: ``inline`` (the virtual hosts inside,
  for state-of-the-world clients and delta clients without VHDS) and ``vhds``
  (no virtual hosts, ``vhds { config_source { ads {} } }``, for Envoy delta
  clients). The inline form is assembled from the cached virtual-host field
  encodings (field 2 of RouteConfiguration is ``repeated VirtualHost``), so an
  unchanged host is never serialized again.

Reuse. ``from_envoy(output, previous)`` serializes each resource once (that
is how a change is detected) and keeps the previous snapshot's ``Entry`` —
the very same bytes object — when the bytes are equal, so memory and the
per-stream diffs see one object per unchanged resource. The cached render
hands over the very bytes objects of unchanged resources: those are
recognised by identity, without comparing or packing them. The snapshot
records per type which names changed since ``previous``
(``changes_since``): the server diffs only those for streams in step, and
the type versions chain from ``previous``'s.

Which APX objects a resource carries (for NACK reports): a virtual host
knows the Route keys (``namespace/name``) of its routes; clusters are mapped
to Routes lazily (``routes_using_cluster``), only when a NACK needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, KeysView, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from apx.controllers.names import virtual_host_name

# The pure core's wire encoders (the one varint encoder: tests use it from here).
from apx.controllers.renderers.envoy.incremental import length_delimited, varint

TYPE_PREFIX = "type.googleapis.com/"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
VIRTUAL_HOST = TYPE_PREFIX + "envoy.config.route.v3.VirtualHost"
# Push order on a change: nothing may be referenced before it exists (clusters before the
# listeners and routes that name them, listeners before the route configurations they load).
PUSH_ORDER = (CLUSTER, LISTENER, ROUTE_CONFIGURATION, VIRTUAL_HOST)
SERVED_TYPES = frozenset(PUSH_ORDER)
# Short names for metric labels and logs (a closed set).
TYPE_NAMES = {
    LISTENER: "Listener",
    ROUTE_CONFIGURATION: "RouteConfiguration",
    CLUSTER: "Cluster",
    VIRTUAL_HOST: "VirtualHost",
}
# Wildcard-capable types: an empty first subscription means "everything" (xDS legacy wildcard).
# RouteConfiguration is always named: a client gets only the route configurations it asks for.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER, VIRTUAL_HOST})

# Route names the renderer gives that are not APX Routes, and the suffix of CORS preflight routes.
_STATUS_ROUTE_PREFIX = "apx-status/"
# Field tags: RouteConfiguration.virtual_hosts (2) and google.protobuf.Any.value (2), length-delimited.
_RC_VIRTUAL_HOST_TAG = b"\x12"
_ANY_VALUE_TAG = b"\x12"
_PREFLIGHT_SUFFIX = "/cors-preflight"


def short_version(data: bytes) -> str:
    """The version of a resource: 16 hex digits of the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def pack_bytes(type_url: str, value: bytes) -> bytes:
    """Serialized ``google.protobuf.Any`` (type_url = field 1, value = field 2) without re-encoding."""
    return length_delimited(1, type_url.encode()) + length_delimited(2, value)


def sotw_version(entries: Iterable[Entry]) -> str:
    """The ``version_info`` of a SotW response: a digest of its resources' names and versions."""
    hasher = hashlib.sha256()
    for entry in entries:
        hasher.update(entry.name.encode())
        hasher.update(b"\0")
        hasher.update(entry.version.encode())
        hasher.update(b"\n")
    return hasher.hexdigest()[:16]


def sotw_response(type_url: str, version: str, entries: Iterable[Entry], nonce: str) -> bytes:
    """A serialized ``DiscoveryResponse`` (version_info, resources, type_url, nonce) in one copy.

    The resources are already-encoded ``Any`` messages; a route configuration is tens of
    megabytes at 10,000 Routes, so the pieces are joined once instead of concatenated field
    by field.
    """
    pieces: list[bytes | memoryview] = [length_delimited(1, version.encode())]
    for entry in entries:
        pieces += (varint(2 << 3 | 2) + varint(entry.size), entry.head)
        if entry.tail:
            pieces.append(memoryview(entry.tail)[entry.tail_from :])
    pieces.append(length_delimited(4, type_url.encode()))
    pieces.append(length_delimited(5, nonce.encode()))
    return b"".join(pieces)


# A SotW subscription: the type and the names asked for (None: the wildcard, every resource).
SotwKey = tuple[str, frozenset[str] | None]


@dataclass(frozen=True, slots=True)
class SotwBody:
    """What every SotW stream with one subscription is sent for one snapshot, encoded once."""

    version: str
    entries: tuple[Entry, ...]
    nonce: str
    response: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """One named resource of one type: its version and its serialized ``Any``.

    The ``Any`` is ``head`` followed by ``tail[tail_from:]``. Most entries keep it whole
    in ``head``. A VHDS virtual host's ``tail`` is the render's own encoding of the host
    (``HostParts.full``), which the render's caches hold anyway: the entry keeps only the
    few bytes that differ (the ``Any`` header and the VHDS name) instead of a second copy
    of every host (23 MiB for the 2,909 hosts of 10,000 Routes). The whole ``Any`` is
    joined when a response is built, and is garbage once sent.
    """

    name: str
    version: str
    head: bytes
    # APX Route keys (namespace/name) served by this resource (virtual hosts, route configurations).
    routes: tuple[str, ...] = ()
    tail: bytes = b""
    tail_from: int = 0

    @property
    def any_bytes(self) -> bytes:
        if not self.tail:
            return self.head
        return b"".join((self.head, memoryview(self.tail)[self.tail_from :]))

    @property
    def size(self) -> int:
        """``len(any_bytes)`` without joining it."""
        return len(self.head) + len(self.tail) - self.tail_from


@dataclass(frozen=True, slots=True)
class HostParts:
    """A virtual host as rendered, shared by the inline form and the VHDS form's source."""

    host_name: str  # the renderer's name (vh/<host>), used in the inline form
    # The VirtualHost as the renderer encoded it (field 1, ``host_name``, first): the very
    # bytes object the render keeps, so an unchanged host is recognised by identity and its
    # bytes are held once, not once more without the name.
    full: bytes
    routes: tuple[str, ...]
    vhds: Entry  # the VirtualHost resource named <route configuration>/<host>

    @property
    def body(self) -> bytes:
        """VirtualHost fields 2.. (the name stripped): the VHDS form sets its own name."""
        return _strip_name(self.full, self.host_name)


@dataclass(frozen=True, slots=True)
class RouteParts:
    """A RouteConfiguration split for serving: its fields but virtual hosts, and its hosts."""

    name: str
    base: bytes  # every field but virtual_hosts (and vhds)
    hosts: tuple[HostParts, ...]


def _route_keys(virtual_host: Any) -> tuple[str, ...]:
    keys: dict[str, None] = {}
    for route in virtual_host.routes:
        name = route.name
        if not name or name.startswith(_STATUS_ROUTE_PREFIX):
            continue
        keys[name.removesuffix(_PREFLIGHT_SUFFIX)] = None
    return tuple(keys)


def _name_field_size(encoded: bytes, name: str) -> int:
    """How many bytes a message's field 1 (``name``) takes; deterministic output puts it first."""
    prefix = length_delimited(1, name.encode()) if name else b""
    if not encoded.startswith(prefix):  # pragma: no cover - protobuf always writes field 1 first
        raise ValueError(f"unexpected encoding of {name!r}")
    return len(prefix)


def _strip_name(encoded: bytes, name: str) -> bytes:
    """The encoding of a message without its field 1 (``name``)."""
    return encoded[_name_field_size(encoded, name) :]


def _route_base(config: Any) -> bytes:
    """Every field of a RouteConfiguration except ``virtual_hosts`` and ``vhds``, serialized."""
    base = route_pb2.RouteConfiguration()
    for descriptor, value in config.ListFields():
        if descriptor.name in ("virtual_hosts", "vhds"):
            continue
        target = getattr(base, descriptor.name)
        if descriptor.is_repeated:
            if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if descriptor.message_type.fields_by_name["value"].message_type is None:
                        target[key] = item
                    else:
                        target[key].CopyFrom(item)
            else:
                target.extend(value)
        elif descriptor.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(base, descriptor.name, value)
    encoded: bytes = base.SerializeToString(deterministic=True)
    return encoded


VHDS_FIELD = length_delimited(
    9,
    route_pb2.Vhds(
        config_source=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.ApiVersion.V3,
        )
    ).SerializeToString(deterministic=True),
)


def vhds_name(route_configuration: str, host: str) -> str:
    """Envoy's VHDS resource name of a virtual host: ``<route configuration name>/<host>``."""
    return f"{route_configuration}/{host}"


def _hosts_of(
    config: Any, previous: Mapping[str, HostParts], encoded: Sequence[bytes] | None = None
) -> tuple[HostParts, ...]:
    parts: list[HostParts] = []
    for index, virtual_host in enumerate(config.virtual_hosts):
        full = encoded[index] if encoded is not None else virtual_host.SerializeToString(deterministic=True)
        domain = virtual_host.domains[0] if virtual_host.domains else virtual_host.name
        name = vhds_name(config.name, domain)
        # Bytes serialized here are nobody else's: an equal host keeps the previous ones.
        parts.append(_host_parts(name, virtual_host.name, full, previous, virtual_host, encoded is not None))
    return tuple(parts)


def _hosts_of_encoded(
    config_name: str,
    virtual_hosts: Sequence[tuple[str, bytes]],
    previous: Mapping[str, HostParts],
    by_full: Mapping[int, HostParts],
) -> tuple[HostParts, ...]:
    """``_hosts_of`` from the cached render's (host, encoded VirtualHost) pairs; parses new hosts only.

    The renderer names each virtual host ``vh/<host>`` with ``<host>`` its one
    domain (``names.virtual_host_name``); ``_strip_name`` checks the name.
    ``by_full``: the previous hosts of this route configuration by the identity of
    their bytes; the very bytes object (its name inside) is the very host.
    """
    parts: list[HostParts] = []
    for domain, full in virtual_hosts:
        kept = by_full.get(id(full))
        if kept is None or kept.full is not full:
            name = vhds_name(config_name, domain)
            kept = _host_parts(name, virtual_host_name(domain), full, previous, None)
        parts.append(kept)
    return tuple(parts)


def _host_parts(
    name: str,
    host_name: str,
    full: bytes,
    previous: Mapping[str, HostParts],
    virtual_host: Any | None,
    rendered: bool = True,
) -> HostParts:
    """``rendered``: ``full`` is the render's own object (kept by its caches), not a serialization here."""
    old = previous.get(name)
    # The cached render hands over the very bytes object of an unchanged host: no comparison
    # of its bytes (at 10,000 Routes that was a 16 MB compare and copy per one-Route edit).
    if old is not None and old.host_name == host_name and (old.full is full or old.full == full):
        # Equal bytes of another render object (the render started afresh): the same entry,
        # holding the render's object so the bytes are in memory once.
        return dataclasses.replace(old, full=full) if rendered and old.full is not full else old
    body_from = _name_field_size(full, host_name)
    if virtual_host is None:
        virtual_host = route_components_pb2.VirtualHost.FromString(full)
    # The VirtualHost resource: its own name (field 1), then the render's fields 2.. as they are.
    name_field = length_delimited(1, name.encode())
    size = len(name_field) + len(full) - body_from
    head = length_delimited(1, VIRTUAL_HOST.encode()) + _ANY_VALUE_TAG + varint(size) + name_field
    hasher = hashlib.sha256(head)
    hasher.update(memoryview(full)[body_from:])
    routes = _route_keys(virtual_host)
    entry = Entry(name, hasher.hexdigest()[:16], head, routes, full, body_from)
    return HostParts(host_name, full, routes, entry)


@dataclass(frozen=True, slots=True)
class XdsSnapshot:
    """An immutable set of xDS resources with per-resource versions."""

    version: str
    listeners: Mapping[str, Entry]
    clusters: Mapping[str, Entry]
    routes: Mapping[str, RouteParts]
    virtual_hosts: Mapping[str, Entry]
    # Derived forms of the route configurations, built on first use (SotW / VHDS clients).
    _inline: dict[str, Entry] = field(default_factory=dict, compare=False, repr=False)
    _vhds: dict[str, Entry] = field(default_factory=dict, compare=False, repr=False)
    _host_parts: dict[str, HostParts] = field(default_factory=dict, compare=False, repr=False)
    _type_versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _sorted: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    _sotw: dict[SotwKey, SotwBody] = field(default_factory=dict, compare=False, repr=False)
    # Per type: the type_version of the snapshot this one was built from, and the names whose
    # entry is not that snapshot's (new, changed or gone). A stream in step with that snapshot
    # diffs these names only; the type version follows from it without rehashing every entry.
    _changes: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict, compare=False, repr=False)
    # The encodings listeners and clusters were packed from (the render's own bytes objects), by
    # identity, with their names: the next build keeps an entry whose encoding is the very same
    # object without packing it or reading the message's name. Each holds its bytes, so an id
    # here is never reused by another object while this snapshot lives.
    _values: dict[str, dict[int, tuple[str, bytes]]] = field(default_factory=dict, compare=False, repr=False)
    # Per route configuration: its hosts by the identity of their rendered bytes (as above).
    _hosts_by_full: dict[str, dict[int, HostParts]] = field(default_factory=dict, compare=False, repr=False)
    _route_digests: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # --- building ---------------------------------------------------------------

    @classmethod
    def empty(cls) -> XdsSnapshot:
        return cls("", {}, {}, {}, {})

    @classmethod
    def from_envoy(cls, output: Any, previous: XdsSnapshot | None = None) -> XdsSnapshot:
        """The snapshot of an ``EnvoyOutput``; unchanged resources keep ``previous``'s entries.

        A cached render's output (``encoded`` with the route configuration's head)
        is read from its encodings alone: its RouteConfiguration message is never
        parsed (``on_demand.ParsedOnUse``), and only new or changed virtual hosts are.
        """
        encoded = getattr(output, "encoded", None)
        if encoded is None:
            return cls.from_messages(
                output.listeners, output.route_configurations, output.clusters, output.version, previous
            )
        encodings = _Encodings(
            encoded.listeners, encoded.clusters, tuple(b for _, b in encoded.virtual_hosts)
        )
        if encoded.route_head and len(encoded.route_configurations) == 1:
            before = previous or cls.empty()
            head = route_pb2.RouteConfiguration.FromString(encoded.route_head)
            hosts = _hosts_of_encoded(
                head.name,
                encoded.virtual_hosts,
                before._host_parts,
                before._hosts_by_full.get(head.name, {}),
            )
            route_parts = {head.name: RouteParts(head.name, _route_base(head), hosts)}
            return cls._assembled(
                output.listeners, output.clusters, route_parts, output.version, before, encodings
            )
        return cls.from_messages(
            output.listeners,
            output.route_configurations,
            output.clusters,
            output.version,
            previous,
            encodings,
        )

    @classmethod
    def from_any(
        cls, resources: Iterable[Any], version: str, previous: XdsSnapshot | None = None
    ) -> XdsSnapshot:
        """The snapshot of ``google.protobuf.Any`` messages (the snapshot ConfigMap's content)."""
        listeners: list[Any] = []
        routes: list[Any] = []
        clusters: list[Any] = []
        for packed in resources:
            if packed.type_url == LISTENER:
                listeners.append(listener_pb2.Listener.FromString(packed.value))
            elif packed.type_url == ROUTE_CONFIGURATION:
                routes.append(route_pb2.RouteConfiguration.FromString(packed.value))
            elif packed.type_url == CLUSTER:
                clusters.append(cluster_pb2.Cluster.FromString(packed.value))
        return cls.from_messages(listeners, routes, clusters, version, previous)

    @classmethod
    def from_messages(
        cls,
        listeners: Sequence[Any],
        route_configurations: Sequence[Any],
        clusters: Sequence[Any],
        version: str,
        previous: XdsSnapshot | None = None,
        encodings: _Encodings | None = None,
    ) -> XdsSnapshot:
        """The snapshot of the renderer's messages; ``encodings``: their bytes when the render kept them."""
        before = previous or cls.empty()
        route_parts: dict[str, RouteParts] = {}
        host_bytes = (
            encodings.virtual_hosts if encodings is not None and len(route_configurations) == 1 else None
        )
        for config in route_configurations:
            usable = (
                host_bytes
                if host_bytes is not None and len(host_bytes) == len(config.virtual_hosts)
                else None
            )
            hosts = _hosts_of(config, before._host_parts, usable)
            route_parts[config.name] = RouteParts(config.name, _route_base(config), hosts)
        return cls._assembled(listeners, clusters, route_parts, version, before, encodings)

    @classmethod
    def _assembled(
        cls,
        listeners: Sequence[Any],
        clusters: Sequence[Any],
        route_parts: dict[str, RouteParts],
        version: str,
        before: XdsSnapshot,
        encodings: _Encodings | None,
    ) -> XdsSnapshot:
        virtual_hosts = {h.vhds.name: h.vhds for parts in route_parts.values() for h in parts.hosts}
        listener_entries, listener_values, listeners_changed = _entries(
            LISTENER, listeners, before, encodings.listeners if encodings else None
        )
        cluster_entries, cluster_values, clusters_changed = _entries(
            CLUSTER, clusters, before, encodings.clusters if encodings else None
        )
        snapshot = cls(version, listener_entries, cluster_entries, route_parts, virtual_hosts)
        snapshot._values.update({LISTENER: listener_values, CLUSTER: cluster_values})
        snapshot._host_parts.update({h.vhds.name: h for parts in route_parts.values() for h in parts.hosts})
        for name, parts in route_parts.items():
            snapshot._hosts_by_full[name] = {id(h.full): h for h in parts.hosts}
        routes_changed = [name for name in before.routes if name not in route_parts]
        # Route configurations whose parts did not change keep their assembled forms.
        for name, parts in route_parts.items():
            old = before.routes.get(name)
            if old is not None and old.base == parts.base and old.hosts == parts.hosts:
                for kept, now in ((before._inline, snapshot._inline), (before._vhds, snapshot._vhds)):
                    if name in kept:
                        now[name] = kept[name]
                if name in before._route_digests:
                    snapshot._route_digests[name] = before._route_digests[name]
            else:
                routes_changed.append(name)
        kept_hosts = before.virtual_hosts
        hosts_changed = [name for name, entry in virtual_hosts.items() if kept_hosts.get(name) is not entry]
        hosts_changed += [name for name in before.virtual_hosts if name not in virtual_hosts]
        changes = {
            LISTENER: listeners_changed,
            CLUSTER: clusters_changed,
            ROUTE_CONFIGURATION: routes_changed,
            VIRTUAL_HOST: hosts_changed,
        }
        for type_url, changed in changes.items():
            snapshot._changes[type_url] = (before.type_version(type_url), frozenset(changed))
            snapshot._carry_names(type_url, before, changed)
        return snapshot

    def _carry_names(self, type_url: str, before: XdsSnapshot, changed: Iterable[str]) -> None:
        """Keep ``before``'s sorted names of a type whose names are the same."""
        mine, theirs = self._mapping(type_url), before._mapping(type_url)
        if len(mine) != len(theirs) or any(name not in mine or name not in theirs for name in changed):
            return
        for key, names in before._sorted.items():
            if key == type_url or key.startswith(type_url + " "):
                self._sorted[key] = names

    # --- serving ---------------------------------------------------------------------

    def _inline_entry(self, name: str) -> Entry:
        entry = self._inline.get(name)
        if entry is None:
            parts = self.routes[name]
            # One join for the whole Any: the inline form is the route table (16 MB at
            # 10,000 Routes), so no intermediate copy of it is made. A virtual host's
            # field in the RouteConfiguration is its rendered encoding, name included.
            pieces = [b"", parts.base]
            size = len(parts.base)
            for host in parts.hosts:
                head = _RC_VIRTUAL_HOST_TAG + varint(len(host.full))
                pieces += (head, host.full)
                size += len(head) + len(host.full)
            pieces[0] = length_delimited(1, ROUTE_CONFIGURATION.encode()) + _ANY_VALUE_TAG + varint(size)
            any_bytes = b"".join(pieces)
            routes = tuple(dict.fromkeys(key for h in parts.hosts for key in h.routes))
            entry = Entry(name, self._route_digest(name), any_bytes, routes)
            self._inline[name] = entry
        return entry

    def _route_digest(self, name: str) -> str:
        """The inline form's version without hashing it: a digest of its fields and hosts' versions.

        Content-determined like every version (a host's VHDS version is the sha256 of its
        bytes), and a few kilobytes to hash instead of the whole route table.
        """
        digest = self._route_digests.get(name)
        if digest is None:
            parts = self.routes[name]
            hasher = hashlib.sha256(b"inline\0" + parts.base)
            for host in parts.hosts:
                hasher.update(f"\n{host.host_name}\0{host.vhds.version}".encode())
            digest = hasher.hexdigest()[:16]
            self._route_digests[name] = digest
        return digest

    def _vhds_entry(self, name: str) -> Entry:
        entry = self._vhds.get(name)
        if entry is None:
            any_bytes = pack_bytes(ROUTE_CONFIGURATION, self.routes[name].base + VHDS_FIELD)
            entry = Entry(name, short_version(any_bytes), any_bytes)
            self._vhds[name] = entry
        return entry

    def type_version(self, type_url: str) -> str:
        """A digest of every resource of ``type_url`` (names and versions): equal means nothing changed.

        Streams compare it before diffing a type, so a change to one type costs
        the others nothing. Route configurations count by their parts (fields and
        hosts), whatever form a stream gets. A snapshot built from another one
        chains from that one's type version and the changed entries only (equal
        content reached along another history has another version: a stream then
        diffs and finds nothing to send).
        """
        cached = self._type_versions.get(type_url)
        if cached is None:
            hasher = hashlib.sha256()
            change = self._changes.get(type_url)
            if change is not None:
                base, changed = change
                if not changed:
                    self._type_versions[type_url] = base
                    return base
                hasher.update(f"after {base}\n".encode())
                for name in sorted(changed):
                    hasher.update(f"{name}\0{self._content_version(type_url, name)}\n".encode())
            elif type_url == ROUTE_CONFIGURATION:
                for name in sorted(self.routes):
                    parts = self.routes[name]
                    hasher.update(f"{name}\0{short_version(parts.base)}\n".encode())
                    for host in parts.hosts:
                        hasher.update(f"{host.host_name}\0{host.vhds.version}\n".encode())
            else:
                entries = {LISTENER: self.listeners, CLUSTER: self.clusters, VIRTUAL_HOST: self.virtual_hosts}
                mapping = entries.get(type_url, {})
                for name in sorted(mapping):
                    hasher.update(f"{name}\0{mapping[name].version}\n".encode())
            cached = hasher.hexdigest()[:16]
            self._type_versions[type_url] = cached
        return cached

    def _content_version(self, type_url: str, name: str) -> str:
        """A resource's version whatever form it is served in (``-`` when it does not exist)."""
        if type_url == ROUTE_CONFIGURATION:
            return self._route_digest(name) if name in self.routes else "-"
        entry = self.get(type_url, name)
        return "-" if entry is None else entry.version

    def changes_since(self, type_url: str, synced: str) -> frozenset[str] | None:
        """The names of ``type_url`` that changed since a stream was in step at ``synced``.

        ``None`` when this snapshot was not built from the one of that type version
        (the stream must diff every name it is interested in).
        """
        change = self._changes.get(type_url)
        if change is None or not synced or change[0] != synced:
            return None
        return change[1]

    def prepare(self, sotw: Iterable[SotwKey] = (), inline: bool = True) -> XdsSnapshot:
        """Build the derived forms now (off the event loop): inline and VHDS routes, type versions.

        ``sotw``: the subscriptions SotW streams hold now; their responses are encoded here
        too, so the event loop only hands the same bytes to every such stream (a SotW route
        configuration is the whole route table: tens of megabytes at 10,000 Routes).

        ``inline=False`` leaves the inline route configurations to be assembled on first
        use: the server asks for them only while a stream that gets them is connected
        (Envoy's own delta streams take the VHDS form).
        """
        for name in self.routes:
            if inline:
                self._inline_entry(name)
            self._vhds_entry(name)
        for type_url in PUSH_ORDER:
            self.type_version(type_url)
            self.sorted_names(type_url)
        for type_url, names in sotw:
            self.sotw(type_url, names)
        return self

    def sotw(self, type_url: str, names: frozenset[str] | None) -> SotwBody:
        """The SotW response for a subscription to ``names`` of ``type_url`` (None: every resource).

        Encoded once per snapshot and subscription and shared by every stream holding it,
        nonce included: the nonce only has to tell one response from another on one stream,
        and the server gives a stream a nonce of its own when it would see the same one twice.
        """
        key = (type_url, names)
        cached = self._sotw.get(key)
        if cached is None:
            selected = self.sorted_names(type_url) if names is None else sorted(names)
            entries = tuple(e for e in (self.get(type_url, n) for n in selected) if e is not None)
            version = sotw_version(entries)
            nonce = f"{self.version or 'empty'}.{len(self._sotw)}"
            cached = SotwBody(version, entries, nonce, sotw_response(type_url, version, entries, nonce))
            self._sotw[key] = cached
        return cached

    def sorted_names(self, type_url: str, namespace: str | None = None) -> tuple[str, ...]:
        """The names of ``type_url`` in order (those under ``namespace/`` only, when given)."""
        key = type_url if namespace is None else f"{type_url} {namespace}"
        cached = self._sorted.get(key)
        if cached is None:
            names = sorted(self.names(type_url))
            if namespace is not None:
                names = [n for n in names if n.rsplit("/", 1)[0] == namespace]
            cached = tuple(names)
            self._sorted[key] = cached
        return cached

    def names(self, type_url: str) -> KeysView[str]:
        """The names of every resource of ``type_url``."""
        return self._mapping(type_url).keys()

    def _mapping(self, type_url: str) -> Mapping[str, object]:
        if type_url == LISTENER:
            return self.listeners
        if type_url == CLUSTER:
            return self.clusters
        if type_url == ROUTE_CONFIGURATION:
            return self.routes
        if type_url == VIRTUAL_HOST:
            return self.virtual_hosts
        return {}

    def get(self, type_url: str, name: str, vhds: bool = False) -> Entry | None:
        """One resource; route configurations in their VHDS form when ``vhds``."""
        if type_url == LISTENER:
            return self.listeners.get(name)
        if type_url == CLUSTER:
            return self.clusters.get(name)
        if type_url == ROUTE_CONFIGURATION:
            if name not in self.routes:
                return None
            return self._vhds_entry(name) if vhds else self._inline_entry(name)
        if type_url == VIRTUAL_HOST:
            return self.virtual_hosts.get(name)
        return None

    def route_keys(self) -> tuple[str, ...]:
        """Every APX Route key served by any virtual host."""
        return tuple(dict.fromkeys(k for e in self.virtual_hosts.values() for k in e.routes))

    def routes_of_virtual_host(self, inline_name: str) -> tuple[str, ...]:
        """Route keys of a virtual host named as in the inline form (``vh/<host>``) or as VHDS names it."""
        parts = self._host_parts.get(inline_name)
        if parts is not None:
            return parts.routes
        for candidate in self._host_parts.values():
            if candidate.host_name == inline_name:
                return candidate.routes
        return ()

    def routes_using_cluster(self, cluster: str) -> tuple[str, ...]:
        """Route keys whose routes send traffic to ``cluster`` (decodes virtual hosts: NACK path only)."""
        found: dict[str, None] = {}
        for parts in self._host_parts.values():
            host = route_components_pb2.VirtualHost.FromString(parts.body)
            for route in host.routes:
                action = route.route
                targets = {action.cluster, *(w.name for w in action.weighted_clusters.clusters)}
                if cluster in targets and route.name and not route.name.startswith(_STATUS_ROUTE_PREFIX):
                    found[route.name.removesuffix(_PREFLIGHT_SUFFIX)] = None
        return tuple(found)

    def total_bytes(self) -> int:
        """Size of every resource once, route configurations inline: what one full SotW push carries."""
        return (
            sum(e.size for e in self.listeners.values())
            + sum(e.size for e in self.clusters.values())
            + sum(self._inline_entry(name).size for name in self.routes)
        )


@dataclass(frozen=True, slots=True)
class _Encodings:
    """Deterministic encodings the renderer kept (``EnvoyOutput.encoded``), in message order."""

    listeners: Sequence[bytes]
    clusters: Sequence[bytes]
    virtual_hosts: Sequence[bytes]


def _entries(
    type_url: str, messages: Sequence[Any], before: XdsSnapshot, encoded: Sequence[bytes] | None
) -> tuple[dict[str, Entry], dict[int, tuple[str, bytes]], list[str]]:
    """The entries of ``messages``, the encodings they were packed from, and the names changed.

    An entry whose encoding is the very bytes object ``before`` packed is kept as is; one
    whose bytes are equal is kept too (the same entry object: the streams' diffs and memory
    see one object per unchanged resource).
    """
    previous = before.listeners if type_url == LISTENER else before.clusters
    previous_values = before._values.get(type_url, {})
    entries: dict[str, Entry] = {}
    values: dict[int, tuple[str, bytes]] = {}
    changed: list[str] = []
    usable = encoded is not None and len(encoded) == len(messages)
    for index, message in enumerate(messages):
        if usable and encoded is not None:
            value = encoded[index]
            known = previous_values.get(id(value))
            if known is not None and known[1] is value and known[0] in previous:
                values[id(value)] = known
                entries[known[0]] = previous[known[0]]
                continue
        else:
            value = message.SerializeToString(deterministic=True)
        name = message.name
        if usable:  # only the render's own objects can come again; a serialization here cannot
            values[id(value)] = (name, value)
        old = previous.get(name)
        any_bytes = pack_bytes(type_url, value)
        if old is not None and old.any_bytes == any_bytes:
            entries[name] = old
        else:
            entries[name] = Entry(name, short_version(any_bytes), any_bytes)
            changed.append(name)
    changed += [name for name in previous if name not in entries]
    return entries, values, changed
