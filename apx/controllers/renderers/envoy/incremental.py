"""Incremental Envoy rendering: ``render_envoy``'s resources, rebuilt only where their inputs changed.

Called by ``render_envoy`` when the caller passes ``caches`` (the operator's
reconciler does; ``apx translate`` and golden files do not). The output is
byte-for-byte what the from-scratch render gives for the same IR
(``tests/unit/test_incremental.py`` checks it on random edit sequences); what
changes is the work:

* the render context (JWT providers, RBAC, CORS, rate-limit descriptors and
  the serialized route fragments they feed) is kept while the IR's policies
  and products are the very same objects; a PolicyBundle or Product change
  starts a fresh one (and with it a full render: those are rare, and every
  route fragment depends on them);
* each Route's planned entries (``route_config.plan_route``) are kept per
  RouteIR object;
* each virtual host is serialized once per distinct sequence of RouteIRs on
  its host, and the RouteConfiguration's bytes are the concatenation of its
  virtual hosts' (field 2 of ``RouteConfiguration``), so an unchanged host
  costs nothing but a comparison of identities;
* clusters are serialized once per backend (and per sync canary Route for
  track clusters); the listener once per set of JWT requirements in use.

The Route's resources keep their encoded bytes beside the messages
(``EnvoyOutput.encoded``), which the snapshot and the xDS server reuse
instead of serializing again. The version (``version_of``) is a digest of
the resources' digests, the RouteConfiguration's made of its virtual hosts':
each virtual host and cluster is hashed once, when it is built, and kept.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any, cast

from envoy.config.route.v3 import route_components_pb2, route_pb2

from ... import names
from ...delta import SortedRows
from ...ir import IR, BackendIR, PolicyIR, ProductIR, RouteIR
from ...memo import Caches, same
from .clusters import dns_cluster, refused_cluster_names, route_refusals
from .common import EnvoySettings, RenderError
from .context import RenderContext
from .jwt import JwtAuthn
from .listener import build_listener
from .on_demand import JoinedOnUse, ParsedOnUse
from .route_config import order, route_entries, status_route
from .track_clusters import has_track_clusters, track_cluster_name

_RC_VIRTUAL_HOSTS_TAG = b"\x12"  # RouteConfiguration.virtual_hosts: field 2, wire type 2 (length-delimited)
_VH_ROUTES_TAG = b"\x1a"  # VirtualHost.routes: field 3, wire type 2


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2): tag, length, payload."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


@dataclass(slots=True)
class _State:
    """What the operator keeps between renders while policies and products stay the same objects."""

    settings: EnvoySettings
    port: int
    policies: tuple[PolicyIR, ...]
    products: tuple[ProductIR, ...]
    ctx: RenderContext
    backend_clusters: dict[BackendIR, tuple[Any, bytes]] = field(default_factory=dict)
    fixed_clusters: dict[str, tuple[Any, bytes]] = field(default_factory=dict)
    listeners: dict[frozenset[tuple[str, ...]], tuple[Any, bytes, dict[str, tuple[str, str, int]]]] = field(
        default_factory=dict
    )
    # What the current render used: the kept clusters and listeners are pruned to it afterwards,
    # so a context that lives for days holds only what the last render needed.
    used_backends: set[BackendIR] = field(default_factory=set)
    used_fixed: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Encoded:
    """Serialized resources of one render, in ``EnvoyOutput.resources()`` order, and the virtual hosts."""

    listeners: tuple[bytes, ...]
    # A tuple, or the cached renders' ``on_demand.JoinedOnUse`` (joined when read).
    route_configurations: Sequence[bytes]
    clusters: tuple[bytes, ...]
    # (host, serialized VirtualHost) of the one RouteConfiguration, in its order.
    virtual_hosts: tuple[tuple[str, bytes], ...] = ()
    # That RouteConfiguration's other fields (its name), serialized: with ``virtual_hosts``
    # all a reader of the encodings needs (the xDS snapshot), without parsing the whole.
    route_head: bytes = b""
    # ``EnvoyOutput.version``, computed by the render from the digests it keeps (``version_of``).
    version: str = ""

    def all(self) -> Iterable[bytes]:
        yield from self.listeners
        yield from self.route_configurations
        yield from self.clusters


def _state(ir: IR, port: int, settings: EnvoySettings, caches: Caches) -> _State:
    if caches.envoy_context:
        state = cast(_State, caches.envoy_context[0])
        if (
            state.settings == settings
            and state.port == port
            and same(state.policies, ir.policies)
            and same(state.products, ir.products)
        ):
            return state
    # Fragments and plans key on policies' and products' identities and keys: start afresh.
    caches.envoy_routes.clear()
    caches.envoy_hosts.clear()
    caches.envoy_clusters.clear()
    state = _State(settings, port, ir.policies, ir.products, RenderContext.create(ir.policies, settings))
    caches.envoy_context[:] = [state]
    return state


def _entries(route: RouteIR, ctx: RenderContext) -> list[tuple[bytes, str | None]] | str:
    """A Route's entries of a virtual host, serialized, each with its preflight path; or its error.

    The bytes are what ``build_route_configuration`` appends to each of the
    Route's hosts (they do not depend on the host), so a virtual host is the
    concatenation of its entries and the entries are kept as bytes only.
    """
    try:
        return [
            (entry.SerializeToString(deterministic=True), preflight_path)
            for entry, preflight_path in route_entries(route, ctx)
        ]
    except RenderError as exc:
        return exc.message


def _plan(route: RouteIR, state: _State, caches: Caches) -> list[tuple[bytes, str | None]] | str:
    return cast(
        "list[tuple[bytes, str | None]] | str",
        caches.envoy_routes.get(route, lambda: _entries(route, state.ctx)),
    )


def _field(tag: bytes, encoded: bytes) -> bytes:
    return tag + varint(len(encoded)) + encoded


def host_field_head(encoded: bytes) -> bytes:
    """What precedes a virtual host's bytes in the RouteConfiguration (its field's tag and length)."""
    return _host_field_head_of(len(encoded))


@lru_cache(maxsize=16384)  # hosts of similar sizes: the snapshot ConfigMaps ask for all ~2,900 on each write
def _host_field_head_of(length: int) -> bytes:
    return _RC_VIRTUAL_HOSTS_TAG + varint(length)


def _virtual_host(host: str, routes: list[RouteIR], plans: dict[str, Any]) -> bytes:
    """One host's VirtualHost, as ``route_config.build_route_configuration`` builds it, as bytes.

    Deterministic serialization writes fields in number order: ``name`` (1),
    ``domains`` (2), then every ``routes`` (3) entry; the head is serialized
    by protobuf and the entries appended, which gives the same bytes.
    """
    parts: list[bytes] = []
    if any(route.mode == "async" for route in routes):
        parts.append(_field(_VH_ROUTES_TAG, status_route(host).SerializeToString(deterministic=True)))
    preflights: set[str] = set()
    for route in routes:
        planned = plans[route.key]
        if isinstance(planned, str):
            continue
        for encoded, preflight_path in planned:
            if preflight_path is not None:
                if preflight_path in preflights:
                    continue  # Routes sharing a path share one preflight route: the most specific one's.
                preflights.add(preflight_path)
            parts.append(_field(_VH_ROUTES_TAG, encoded))
    if not parts:
        return b""  # a host whose every route failed keeps no empty virtual host
    head = route_components_pb2.VirtualHost(name=names.virtual_host_name(host), domains=[host])
    head_bytes: bytes = head.SerializeToString(deterministic=True)
    return head_bytes + b"".join(parts)


def _backend_cluster(backend: BackendIR, state: _State) -> tuple[Any, bytes]:
    state.used_backends.add(backend)
    cached = state.backend_clusters.get(backend)
    if cached is None:
        cluster = dns_cluster(
            backend.cluster,
            backend.host,
            backend.port,
            state.settings,
            logical=backend.kind == "url",
            tls=backend.tls,
        )
        cached = (cluster, cluster.SerializeToString(deterministic=True))
        state.backend_clusters[backend] = cached
    return cached


def _fixed_cluster(name: str, state: _State, build: Any) -> tuple[Any, bytes]:
    state.used_fixed.add(name)
    cached = state.fixed_clusters.get(name)
    if cached is None:
        cluster = build()
        cached = (cluster, cluster.SerializeToString(deterministic=True))
        state.fixed_clusters[name] = cached
    return cached


def _track_clusters(route: RouteIR, state: _State, caches: Caches) -> list[tuple[str, Any, bytes]]:
    def compute() -> list[tuple[str, Any, bytes]]:
        built = []
        for track in route.tracks:
            name = track_cluster_name(route, track)
            backend_cluster = _backend_cluster(track.backend, state)[0]
            cluster = type(backend_cluster)()
            cluster.CopyFrom(backend_cluster)
            cluster.name = name
            cluster.load_assignment.cluster_name = name
            cluster.alt_stat_name = names.track_stat_name(route.ref.namespace, route.ref.name, track.name)
            built.append((name, cluster, cluster.SerializeToString(deterministic=True)))
        return built

    return cast("list[tuple[str, Any, bytes]]", caches.envoy_clusters.get(route, compute))


def _clusters(
    rendered: list[RouteIR], state: _State, caches: Caches, jwks: dict[str, Any]
) -> list[tuple[str, Any, bytes]]:
    settings = state.settings
    clusters: dict[str, tuple[Any, bytes]] = {
        names.RATE_LIMIT_CLUSTER: _fixed_cluster(
            names.RATE_LIMIT_CLUSTER,
            state,
            lambda: dns_cluster(
                names.RATE_LIMIT_CLUSTER,
                settings.ratelimit_host,
                settings.ratelimit_port,
                settings,
                http2=True,
            ),
        ),
        names.ASYNC_GATEWAY_CLUSTER: _fixed_cluster(
            names.ASYNC_GATEWAY_CLUSTER,
            state,
            lambda: dns_cluster(
                names.ASYNC_GATEWAY_CLUSTER, settings.gateway_host, settings.gateway_port, settings
            ),
        ),
    }
    for route in rendered:
        if route.mode == "async":
            continue
        for track in route.tracks:
            if track.backend.cluster not in clusters:
                clusters[track.backend.cluster] = _backend_cluster(track.backend, state)
    for route in rendered:
        if has_track_clusters(route):
            for name, cluster, encoded in _track_clusters(route, state, caches):
                clusters[name] = (cluster, encoded)
    for name, (scheme, host, port) in jwks.items():
        clusters[name] = _fixed_cluster(
            f"jwks:{name}:{scheme}:{host}:{port}",
            state,
            lambda name=name, scheme=scheme, host=host, port=port: dns_cluster(
                name, host, port, settings, logical=True, tls=scheme == "https"
            ),
        )
    return [(name, *clusters[name]) for name in sorted(clusters)]


def _listener(rendered: list[RouteIR], state: _State) -> ListenerEntry:
    """The listener and the JWKS endpoints, once per set of JWT requirements the rendered Routes use.

    The from-scratch render's JWT filter lists each policy's requirement plus
    one per combination of two policies that a canary's tracks use; a fresh
    ``JwtAuthn`` given the same combinations builds the same filter.
    """
    combinations = frozenset(
        tuple(track.policy.key for track in route.tracks) for route in rendered if route.canary is not None
    )
    cached = state.listeners.get(combinations)
    if cached is None:
        jwt = listener_jwt(state.policies, state.settings, rendered)
        listener = build_listener(
            state.port, state.settings, jwt.filter_config(), state.ctx.ratelimits.filters()
        )
        cached = (listener, listener.SerializeToString(deterministic=True), dict(jwt.jwks_endpoints))
        state.listeners = {combinations: cached}  # only the current set of requirements is kept
    return cached


def listener_jwt(
    policies: Iterable[PolicyIR], settings: EnvoySettings, rendered: Iterable[RouteIR]
) -> JwtAuthn:
    """The listener's JWT providers and requirements: each policy's, plus each rendered canary's pair.

    Both renders use this, so the listener never depends on the order in
    which routes were planned, nor on a Route that failed to render.
    """
    jwt = JwtAuthn(policies, settings)
    for route in rendered:
        if route.canary is not None:
            jwt.per_route([track.policy for track in route.tracks])
    return jwt


def render_incremental(ir: IR, port: int, settings: EnvoySettings, caches: Caches) -> Rendered:
    """Listener, RouteConfiguration, clusters, errors and their encodings for ``ir`` (see module doc)."""
    state = _state(ir, port, settings, caches)
    ordered = sorted(ir.routes, key=order)
    plans: dict[str, list[tuple[bytes, str | None]] | str] = {}
    by_host: dict[str, list[RouteIR]] = {}
    errors: dict[str, str] = {}
    rendered: list[RouteIR] = []
    for route in ordered:
        planned = _plan(route, state, caches)
        plans[route.key] = planned
        if isinstance(planned, str):
            errors[route.key] = planned
        else:
            rendered.append(route)
        for host in route.match.hosts:
            by_host.setdefault(host, []).append(route)
    rows: list[HostRow] = []
    for host in sorted(by_host):
        row = host_row(host, by_host[host], plans, caches)
        if row is not None:
            rows.append(row)
    head = route_pb2.RouteConfiguration(name=names.ROUTE_CONFIG_NAME).SerializeToString(deterministic=True)
    listener_entry = _listener(rendered, state)
    clusters = all_clusters(rendered, state, caches, listener_entry[2])
    refused = refused_cluster_names((name, encoded) for name, _, encoded in clusters)
    plan_errors = dict(errors)
    errors.update(route_refusals(rendered, refused))
    kept = Assembled(
        ir.routes, state, SortedRows([(order(route), route) for route in ordered]), plans, by_host,
        SortedRows([(row[0], row) for row in rows]), plan_errors, listener_entry, clusters, refused, head,
        digest(listener_entry[1]), cluster_digests(clusters),
    )  # fmt: skip
    caches.assembled[STAGE] = kept
    config_bytes, encoded_all = encodings(kept)
    route_configurations = ParsedOnUse(route_pb2.RouteConfiguration.FromString, config_bytes)
    return listener_entry[0], route_configurations, cluster_messages(clusters), errors, encoded_all


# One virtual host of the RouteConfiguration: (host, its encoding, its field's tag and length, its digest).
HostRow = tuple[str, bytes, bytes, bytes]


def host_row(host: str, routes: list[RouteIR], plans: dict[str, Any], caches: Caches) -> HostRow | None:
    """The virtual host of ``routes`` on ``host``, kept while they are the same objects; ``None``: empty."""
    inputs = tuple(routes)
    cached = caches.envoy_hosts.get(host)
    if cached is not None and same(cached[0], inputs):
        return cast("HostRow | None", cached[1])
    encoded = _virtual_host(host, routes, plans)
    row = (host, encoded, host_field_head(encoded), digest(encoded)) if encoded else None
    caches.envoy_hosts.put(host, (inputs, row))
    return row


def cluster_messages(clusters: list[tuple[str, Any, bytes]]) -> list[Any]:
    """The cluster messages of kept ``(name, message, encoding)`` rows (``map``, in C)."""
    return list(map(_MESSAGE, clusters))


def cluster_digests(clusters: list[tuple[str, Any, bytes]]) -> bytes:
    """The clusters' digests joined, as ``version_of`` takes them (once per list of clusters)."""
    return b"".join(digest(encoded) for _, _, encoded in clusters)


_HOST_AND_ENCODING = operator.itemgetter(0, 1)
_TAG_AND_ENCODING = operator.itemgetter(2, 1)
_DIGEST = operator.itemgetter(3)
_ENCODING = operator.itemgetter(2)
_MESSAGE = operator.itemgetter(1)


def encodings(kept: Assembled) -> tuple[JoinedOnUse, Encoded]:
    """The RouteConfiguration's bytes and every encoding of the render ``kept`` describes, with the version.

    The loops over the virtual hosts and clusters are ``map``-s over kept
    rows (run in C), and the RouteConfiguration is joined only when read
    (``on_demand.JoinedOnUse``): a one-Route change costs no Python work per host.
    """
    rows = kept.hosts.values()
    head = kept.head
    config_bytes = JoinedOnUse(
        lambda: b"".join(chain((head,), chain.from_iterable(map(_TAG_AND_ENCODING, rows))))
    )
    version = version_of(
        [kept.listener_digest],
        [route_configuration_digest(kept.head, map(_DIGEST, rows))],
        kept.cluster_digests,
    )
    encoded = Encoded(
        listeners=(kept.listener[1],),
        route_configurations=config_bytes,
        clusters=tuple(map(_ENCODING, kept.clusters)),
        virtual_hosts=tuple(map(_HOST_AND_ENCODING, rows)),
        route_head=kept.head,
        version=version,
    )
    return config_bytes, encoded


def all_clusters(
    rendered: list[RouteIR], state: _State, caches: Caches, jwks: dict[str, Any]
) -> list[tuple[str, Any, bytes]]:
    """Every cluster the rendered Routes and the JWKS endpoints need; the kept ones pruned to them."""
    state.used_backends.clear()
    state.used_fixed.clear()
    clusters = _clusters(rendered, state, caches, jwks)
    state.backend_clusters = {b: c for b, c in state.backend_clusters.items() if b in state.used_backends}
    state.fixed_clusters = {n: c for n, c in state.fixed_clusters.items() if n in state.used_fixed}
    return clusters


ListenerEntry = tuple[Any, bytes, dict[str, tuple[str, str, int]]]
STAGE = "envoy"


@dataclass(slots=True)
class Assembled:
    """What the last render assembled, for the next one's delta (``incremental_delta.py``)."""

    routes: tuple[RouteIR, ...]
    state: _State
    ordered: SortedRows[RouteIR]  # by ``route_config.order``
    plans: dict[str, list[tuple[bytes, str | None]] | str]
    by_host: dict[str, list[RouteIR]]  # in ``ordered`` order; never changed once kept
    hosts: SortedRows[HostRow]  # by host
    plan_errors: dict[str, str]
    listener: ListenerEntry
    clusters: list[tuple[str, Any, bytes]]
    refused: dict[str, str]  # cluster name → why Envoy would refuse it
    head: bytes  # the RouteConfiguration without its virtual hosts
    listener_digest: bytes  # ``digest`` of the listener's encoding
    cluster_digests: bytes  # ``cluster_digests(clusters)``


Rendered = tuple[Any, Sequence[Any], list[Any], dict[str, str], Encoded]


def digest(encoded: bytes) -> bytes:
    """A resource's (or a virtual host's) digest in ``version_of``: the sha256 of its encoding."""
    return hashlib.sha256(encoded).digest()


def route_configuration_digest(head: bytes, host_digests: Iterable[bytes]) -> bytes:
    """A RouteConfiguration's digest: sha256 of its encoding without virtual hosts, then theirs, in order."""
    return hashlib.sha256(head + b"".join(host_digests)).digest()


def version_of(listeners: Sequence[bytes], route_configurations: Sequence[bytes], clusters: bytes) -> str:
    """``EnvoyOutput.version`` from the resources' digests (``clusters``: theirs joined, in order).

    The version is a digest of digests, so that a render which changed a few
    virtual hosts hashes those and 32 bytes per other resource, not the 16 MB
    RouteConfiguration of 10,000 Routes: sha256 over the numbers of listeners,
    route configurations and clusters, then each one's digest in that order
    (a listener's or cluster's is the sha256 of its encoding, a
    RouteConfiguration's ``route_configuration_digest``). Both renders use
    this definition: from the messages (``version_of_messages``) or from the
    digests the incremental render keeps.
    """
    counts = f"{len(listeners)},{len(route_configurations)},{len(clusters) // 32};".encode()
    joined = counts + b"".join(listeners) + b"".join(route_configurations) + clusters
    return "sha256:" + hashlib.sha256(joined).hexdigest()


def version_of_messages(
    listeners: Sequence[Any], route_configurations: Sequence[Any], clusters: Sequence[Any]
) -> str:
    """``version_of`` of rendered messages (the from-scratch render), serializing each part."""
    configurations = []
    for configuration in route_configurations:
        # Its other fields only: copying the whole message would copy every virtual host.
        fields = {f.name: value for f, value in configuration.ListFields() if f.name != "virtual_hosts"}
        head = type(configuration)(**fields)
        configurations.append(
            route_configuration_digest(
                head.SerializeToString(deterministic=True),
                (digest(host.SerializeToString(deterministic=True)) for host in configuration.virtual_hosts),
            )
        )
    return version_of(
        [digest(listener.SerializeToString(deterministic=True)) for listener in listeners],
        configurations,
        b"".join(digest(cluster.SerializeToString(deterministic=True)) for cluster in clusters),
    )


__all__ = ["Encoded", "listener_jwt", "render_incremental", "varint", "version_of", "version_of_messages"]
