"""A test stand-in for Envoy: routes by the operator's snapshot and exposes Envoy's cluster stats.

Envoy itself cannot be installed on the development and CI machines, yet the
canary controller of sync Routes judges the tracks by Envoy's own Prometheus
stats. This emulator lets sync-Route canary tests (the operator's closed-loop
e2e tests, ``e2e/test_envoystats.py``) run the whole loop: the operator writes
weights into the Envoy snapshot, traffic splits by them, Prometheus scrapes
Envoy-named stats, the controller queries them.

What it reproduces of Envoy:

* **Configuration** from the snapshot ConfigMaps the operator writes
  (``apx-envoy-snapshot`` and its parts in the operator namespace, read with
  ``apx.controllers.renderers.kubernetes.envoy_snapshot.decode_configmaps``),
  re-read every ``refresh_seconds`` (0.5 s) and swapped in whole
  when it changed, as an xDS update would be; the last good snapshot keeps
  serving while the API is unreachable or a new one cannot be decoded.
* **Routing**: virtual host by the Host header (exact domain, then the longest
  ``*.suffix``, ``prefix.*`` and ``*``; with the port, then without), the
  first matching route in order (``prefix``, ``path``, ``safe_regex``,
  ``path_separated_prefix``; header matchers including ``:method``, exact /
  prefix / suffix / contains / regex / present, ``invert_match``), then the
  action: one ``cluster`` or ``weighted_clusters`` picked by weight (a random
  number, or with ``use_hash_policy`` the hash of the first ``hash_policy``
  header present, walked over the clusters in order like Envoy), the route
  ``timeout`` (504 when exceeded), ``prefix_rewrite``,
  ``host_rewrite_literal`` and literal ``request_headers_to_add`` /
  ``request_headers_to_remove`` of the virtual host, route and chosen
  ClusterWeight; ``direct_response``. No route → 404, unknown cluster → 503.
* **Upstream**: the cluster's ``load_assignment`` socket address (a random
  endpoint when there are several), https when it has a TLS transport socket;
  a connection failure answers 503 like Envoy's "upstream connect error".
* **Stats** at ``/stats/prometheus`` on the admin listener, per cluster under
  its stat name (``alt_stat_name``, else its name), with Envoy's names:
  ``envoy_cluster_upstream_rq_total``, ``envoy_cluster_upstream_rq_xx``
  (``envoy_response_code_class="2"`` …), ``envoy_cluster_upstream_rq``
  (``envoy_response_code="200"`` …) and the ``envoy_cluster_upstream_rq_time``
  histogram in milliseconds with Envoy's default buckets. Like Envoy, ``:``
  in a stat name becomes ``_``, and a stat name with ``.`` is split at the
  first dot: the label gets the part before it and the rest moves into the
  metric name (``envoy_cluster_0_0_1_9001_upstream_rq_total{envoy_cluster_name="url/http/127"}``),
  which is why per-track clusters need a dot-free ``alt_stat_name``. A reset
  or timeout counts in ``upstream_rq_total`` and as 503/504 in the code
  counters but adds no ``upstream_rq_time`` sample (Envoy records the time of
  completed responses only).

What it does not reproduce: every HTTP filter (JWT, RBAC, rate limits, CORS,
header mutation), retries, circuit breakers, outlier detection, health
checks, DNS re-resolution, HTTP/2 and TLS downstream, streaming (bodies are
buffered), header formatters such as ``%REQ(...)%`` (such headers are left
out), query-parameter and runtime-fraction matchers, ``x-envoy-*`` headers,
Envoy's exact hash function (stickiness holds — one tenant, one track — but
which tenants land on which track differs), ``counter`` TYPE lines for the
two counters whose names lack ``_total`` (``prometheus_client`` names every
counter ``…_total``, so ``upstream_rq_xx`` and ``upstream_rq`` are exposed
untyped: same names, labels and values, and PromQL treats them alike), and
every other stat.

Run it with ``python -m e2e.envoystats --kubeconfig K`` (see ``main``) or
in-process with :class:`EnvoyEmulator`.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

import apx.controllers.renderers.envoy  # noqa: F401  (registers every message type a snapshot packs)
from apx.controllers import names
from apx.controllers.appliers.kube import KubeClient, KubeError
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps

log = logging.getLogger("apx.envoystats")

# Envoy's default histogram bucket bounds (``stats_config.histogram_bucket_settings`` unset), in ms.
ENVOY_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
    10000, 30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip
DEFAULT_ROUTE_TIMEOUT_SECONDS = 15.0  # Envoy's when a route sets none
TLS_SOCKET = "envoy.transport_sockets.tls"
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length", "host",
    }
)  # fmt: skip
_TYPES = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": listener_pb2.Listener,
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": route_pb2.RouteConfiguration,
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": cluster_pb2.Cluster,
}


# --- the snapshot ------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The resources of one snapshot that routing needs."""

    version: str
    route_configurations: tuple[Any, ...]
    clusters: Mapping[str, Any]


def _unpack(packed: Iterable[Any]) -> Iterator[Any]:
    for resource in packed:
        message_type = _TYPES.get(resource.type_url)
        if message_type is None:
            continue
        message = message_type()
        resource.Unpack(message)
        yield message


def _content_digest(configmaps: Sequence[Mapping[str, Any]]) -> str:
    content = json.dumps(
        sorted(
            [str((c.get("metadata") or {}).get("name")), c.get("data") or {}, c.get("binaryData") or {}]
            for c in configmaps
        ),
        sort_keys=True,
    )
    return hashlib.sha256(content.encode()).hexdigest()


def snapshot_from_configmaps(configmaps: Sequence[Mapping[str, Any]]) -> Snapshot:
    """Decode the snapshot ConfigMaps (the index ``apx-envoy-snapshot`` and its parts)."""
    packed = decode_configmaps(configmaps)
    if packed is None:
        raise ValueError("the snapshot ConfigMaps are missing or incomplete")
    resources = list(_unpack(packed))
    index_name = names.envoy_snapshot_configmap()
    index = next(c for c in configmaps if (c.get("metadata") or {}).get("name") == index_name)
    return Snapshot(
        version=str((index.get("data") or {}).get("version", "")),
        route_configurations=tuple(r for r in resources if isinstance(r, route_pb2.RouteConfiguration)),
        clusters={r.name: r for r in resources if isinstance(r, cluster_pb2.Cluster)},
    )


# --- routing -----------------------------------------------------------------------


def _string_matches(matcher: Any, value: str) -> bool:
    """An ``envoy.type.matcher.v3.StringMatcher``."""
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        flags = re.IGNORECASE if matcher.ignore_case else 0
        return re.fullmatch(matcher.safe_regex.regex, value, flags) is not None
    expected = getattr(matcher, kind) if kind else ""
    if matcher.ignore_case:
        value, expected = value.lower(), expected.lower()
    if kind == "exact":
        return value == expected
    if kind == "prefix":
        return value.startswith(expected)
    if kind == "suffix":
        return value.endswith(expected)
    if kind == "contains":
        return expected in value
    return False


def _header_matches(matcher: Any, request: RequestView) -> bool:
    value = request.header(matcher.name)
    kind = matcher.WhichOneof("header_match_specifier")
    result: bool
    if kind == "present_match":
        result = (value is not None) == matcher.present_match
    elif value is None:
        result = False
    elif kind == "string_match":
        result = _string_matches(matcher.string_match, value)
    elif kind == "exact_match":
        result = value == matcher.exact_match
    elif kind == "prefix_match":
        result = value.startswith(matcher.prefix_match)
    elif kind == "suffix_match":
        result = value.endswith(matcher.suffix_match)
    elif kind == "contains_match":
        result = matcher.contains_match in value
    elif kind == "safe_regex_match":
        result = re.fullmatch(matcher.safe_regex_match.regex, value) is not None
    else:
        result = True  # no specifier: the header must be present
    return result != bool(matcher.invert_match)


def _path_matches(match: Any, path: str) -> bool:
    kind = match.WhichOneof("path_specifier")
    sensitive = not match.HasField("case_sensitive") or match.case_sensitive.value
    if not sensitive:
        path = path.lower()

    def cased(text: str) -> str:
        return text if sensitive else text.lower()

    if kind == "prefix":
        return path.startswith(cased(match.prefix))
    if kind == "path":
        return path == cased(match.path)
    if kind == "safe_regex":
        return re.fullmatch(match.safe_regex.regex, path) is not None
    if kind == "path_separated_prefix":
        prefix = cased(match.path_separated_prefix)
        return path == prefix or path.startswith(prefix + "/")
    return False


@dataclass(frozen=True)
class RequestView:
    """What matching looks at: the method, Host, path (no query) and headers."""

    method: str
    host: str
    path: str
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        if lowered == ":method":
            return self.method
        if lowered == ":authority":
            return self.host
        if lowered == ":path":
            return self.path
        return self.headers.get(lowered)


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    """How well a virtual host domain matches (lower is better), or None."""
    domain = domain.lower()
    if domain == host:
        return (0, 0)
    if domain == "*":
        return (3, 0)
    # A wildcard stands for at least one character: "*.example.com" does not match "example.com".
    longer = len(host) > len(domain) - 1
    if domain.startswith("*") and longer and host.endswith(domain[1:]):
        return (1, -len(domain))
    if domain.endswith("*") and longer and host.startswith(domain[:-1]):
        return (2, -len(domain))
    return None


class RouteTable:
    """The routing part of a snapshot, ready for requests."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.virtual_hosts = [vh for rc in snapshot.route_configurations for vh in rc.virtual_hosts]

    def virtual_host(self, host: str) -> Any | None:
        host = host.lower()
        candidates = [host]
        if ":" in host and not host.endswith("]"):
            candidates.append(host.rsplit(":", 1)[0])  # Envoy configured to strip the port
        for candidate in candidates:
            best: tuple[tuple[tuple[int, int], int], Any] | None = None
            for index, vhost in enumerate(self.virtual_hosts):
                for domain in vhost.domains:
                    rank = _domain_rank(domain, candidate)
                    if rank is not None and (best is None or (rank, index) < best[0]):
                        best = ((rank, index), vhost)
            if best is not None:
                return best[1]
        return None

    def match(self, request: RequestView) -> tuple[Any, Any] | None:
        """The virtual host and the first route of it that takes the request."""
        vhost = self.virtual_host(request.host)
        if vhost is None:
            return None
        for route in vhost.routes:
            if _path_matches(route.match, request.path) and all(
                _header_matches(h, request) for h in route.match.headers
            ):
                return vhost, route
        return None


def _stable_hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


def pick_cluster(action: Any, request: RequestView, rng: random.Random) -> tuple[str, Any | None]:
    """The cluster a RouteAction sends this request to, and the chosen ClusterWeight (if weighted)."""
    kind = action.WhichOneof("cluster_specifier")
    if kind == "cluster":
        return action.cluster, None
    if kind == "cluster_header":
        return request.header(action.cluster_header) or "", None
    if kind != "weighted_clusters":
        return "", None
    weighted = action.weighted_clusters
    total = sum(c.weight.value for c in weighted.clusters)
    if total <= 0:
        return "", None
    value: int | None = None
    if weighted.use_hash_policy.value:
        for policy in action.hash_policy:
            if policy.WhichOneof("policy_specifier") == "header":
                header = request.header(policy.header.header_name)
                if header is not None:
                    value = _stable_hash(header) % total
                    break
    if value is None:
        value = rng.randrange(total)
    for cluster_weight in weighted.clusters:
        if value < cluster_weight.weight.value:
            return cluster_weight.name, cluster_weight
        value -= cluster_weight.weight.value
    raise AssertionError("weights walked past their total")


def _apply_headers(headers: CIMultiDict[str], sources: Iterable[Any]) -> None:
    """Literal ``request_headers_to_add``/``_remove`` of the virtual host, route and ClusterWeight."""
    for source in sources:
        for name in source.request_headers_to_remove:
            headers.popall(name, None)
        for option in source.request_headers_to_add:
            value = option.header.value
            if "%" in value:
                continue  # a formatter (%REQ(...)% …) needs Envoy's request context
            append = option.append_action == base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
            if option.append_action == base_pb2.HeaderValueOption.ADD_IF_ABSENT:
                headers.setdefault(option.header.key, value)
            elif append:
                headers.add(option.header.key, value)
            else:
                headers[option.header.key] = value


# --- stats -------------------------------------------------------------------------


def stat_identity(cluster: Any) -> tuple[str, str]:
    """``(metric name prefix, envoy_cluster_name label)`` of a cluster, the way Envoy derives them."""
    name = (cluster.alt_stat_name or cluster.name).replace(":", "_")
    if "." not in name:
        return "envoy_cluster", name
    # Envoy's tag extraction takes the cluster name up to the first dot; the rest
    # stays in the stat name, which Prometheus output sanitises into the metric name.
    label, rest = name.split(".", 1)
    return "envoy_cluster_" + re.sub(r"[^a-zA-Z0-9_]", "_", rest), label


@dataclass
class _ClusterStats:
    requests: int = 0
    by_code: dict[int, int] = field(default_factory=dict)
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(ENVOY_BUCKETS_MS) + 1))
    time_sum_ms: float = 0.0
    time_count: int = 0


class EnvoyClusterStats(Collector):
    """Per-cluster upstream request stats, collected in Envoy's Prometheus names."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], _ClusterStats] = {}
        self._warned: set[str] = set()

    def _entry(self, identity: tuple[str, str]) -> _ClusterStats:
        return self._stats.setdefault(identity, _ClusterStats())

    def request(self, identity: tuple[str, str]) -> None:
        self._entry(identity).requests += 1

    def response(self, identity: tuple[str, str], code: int, elapsed_ms: float | None) -> None:
        entry = self._entry(identity)
        entry.by_code[code] = entry.by_code.get(code, 0) + 1
        if elapsed_ms is None:
            return
        entry.time_sum_ms += elapsed_ms
        entry.time_count += 1
        # Bucket i counts values up to bound i (inclusive, like Prometheus' ``le``); the last is +Inf.
        entry.bucket_counts[bisect.bisect_left(ENVOY_BUCKETS_MS, elapsed_ms)] += 1

    def warn_dotted(self, cluster: Any) -> None:
        name = cluster.alt_stat_name or cluster.name
        if "." in name and name not in self._warned:
            self._warned.add(name)
            log.warning(
                "cluster %s: its stat name %r contains '.', so Envoy's Prometheus output splits it "
                "(label %r); set a dot-free alt_stat_name",
                cluster.name, name, stat_identity(cluster)[1],
            )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        by_prefix: dict[str, list[tuple[str, _ClusterStats]]] = {}
        for (prefix, label), entry in sorted(self._stats.items()):
            by_prefix.setdefault(prefix, []).append((label, entry))
        for prefix, entries in by_prefix.items():
            total = CounterMetricFamily(
                f"{prefix}_upstream_rq", "Total requests", labels=["envoy_cluster_name"]
            )  # exposed as <prefix>_upstream_rq_total
            classes = UnknownMetricFamily(
                f"{prefix}_upstream_rq_xx",
                "Requests by response code class",
                labels=["envoy_response_code_class", "envoy_cluster_name"],
            )
            codes = UnknownMetricFamily(
                f"{prefix}_upstream_rq",
                "Requests by response code",
                labels=["envoy_response_code", "envoy_cluster_name"],
            )
            times = HistogramMetricFamily(
                f"{prefix}_upstream_rq_time", "Request time (ms)", labels=["envoy_cluster_name"]
            )
            for label, entry in entries:
                total.add_metric([label], entry.requests)
                per_class: dict[str, int] = {}
                for code, count in sorted(entry.by_code.items()):
                    codes.add_metric([str(code), label], count)
                    per_class[str(code // 100)] = per_class.get(str(code // 100), 0) + count
                for code_class, count in sorted(per_class.items()):
                    classes.add_metric([code_class, label], count)
                cumulative, buckets = 0, []
                for bound, count in zip((*ENVOY_BUCKETS_MS, float("inf")), entry.bucket_counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else _bound_text(bound), cumulative))
                times.add_metric([label], buckets, entry.time_sum_ms)
            yield total
            yield classes
            yield codes
            yield times


def _bound_text(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


# --- the server --------------------------------------------------------------------


SnapshotSource = Callable[[], Awaitable[Sequence[Mapping[str, Any]] | None]]


def configmap_source(kube: KubeClient, namespace: str) -> SnapshotSource:
    """Read the snapshot ConfigMaps the operator writes (``apx-envoy-snapshot`` and its parts)."""
    prefix = names.envoy_snapshot_configmap()

    async def fetch() -> Sequence[Mapping[str, Any]] | None:
        configmaps = await kube.list("ConfigMap", namespace)
        return [c for c in configmaps if str((c.get("metadata") or {}).get("name", "")).startswith(prefix)]

    return fetch


class EnvoyEmulator:
    """The proxy listener and the admin listener (``/stats/prometheus``, ``/ready``)."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        refresh_seconds: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self._source = source
        self._refresh_seconds = refresh_seconds
        self._rng = rng or random.Random()
        self._table = RouteTable(Snapshot("", (), {}))
        self._seen: tuple[str, str] | None = None
        self._last_error = ""
        self.stats = EnvoyClusterStats()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.stats)
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self._refresher: asyncio.Task[None] | None = None
        self.proxy_url = ""
        self.admin_url = ""
        self.updates = 0  # snapshots applied

    @property
    def version(self) -> str:
        return self._table.snapshot.version

    async def refresh(self) -> bool:
        """Read the snapshot once; True when a new one was applied."""
        try:
            configmap = await self._source()
        except KubeError as exc:
            if str(exc) != self._last_error:  # once per outage, not every half second
                log.warning("snapshot not read (keeping the last one): %s", exc)
            self._last_error = str(exc)
            return False
        self._last_error = ""
        if not configmap:
            return False
        # Hashing and decoding run beside the event loop, as Envoy applies a new
        # configuration without holding up the requests it is serving.
        seen = ("", await asyncio.to_thread(_content_digest, configmap))
        if seen == self._seen:
            return False
        try:
            table = await asyncio.to_thread(lambda: RouteTable(snapshot_from_configmaps(configmap)))
        except Exception as exc:  # a snapshot Envoy would NACK: keep serving the last one
            log.warning("snapshot not applied (keeping the last one): %s", exc)
            self._seen = seen
            return False
        for cluster in table.snapshot.clusters.values():
            self.stats.warn_dotted(cluster)
        self._table, self._seen = table, seen
        self.updates += 1
        return True

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            await self.refresh()

    async def start(self, host: str = "127.0.0.1", port: int = 0, admin_port: int = 0) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        await self.refresh()
        proxy = web.Application()
        proxy.router.add_route("*", "/{tail:.*}", self._proxy)
        admin = web.Application()
        admin.router.add_get("/stats/prometheus", self._prometheus)
        admin.router.add_get("/ready", self._ready)
        urls = []
        for app, wanted in ((proxy, port), (admin, admin_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, wanted)
            await site.start()
            self._runners.append(runner)
            bound = runner.addresses[0]
            urls.append(f"http://{host}:{bound[1]}")
        self.proxy_url, self.admin_url = urls
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EnvoyEmulator:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _ready(self, _: web.Request) -> web.Response:
        return web.Response(text="LIVE\n")

    async def _prometheus(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        table = self._table  # one snapshot for the whole request, as Envoy pins a route config
        view = RequestView(
            method=request.method,
            host=request.headers.get("Host", ""),
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
        )
        matched = table.match(view)
        if matched is None:
            return web.Response(status=404)
        vhost, route = matched
        action_kind = route.WhichOneof("action")
        if action_kind == "direct_response":
            body = route.direct_response.body.inline_string or route.direct_response.body.inline_bytes
            return web.Response(status=route.direct_response.status, body=body or None)
        if action_kind != "route":
            return web.Response(status=404)
        action = route.route
        cluster_name, cluster_weight = pick_cluster(action, view, self._rng)
        cluster = table.snapshot.clusters.get(cluster_name)
        if cluster is None:
            return web.Response(status=503, text="no healthy upstream")
        identity = stat_identity(cluster)
        self.stats.request(identity)
        endpoints = [
            lb.endpoint.address.socket_address
            for locality in cluster.load_assignment.endpoints
            for lb in locality.lb_endpoints
        ]
        if not endpoints:
            self.stats.response(identity, 503, None)
            return web.Response(status=503, text="no healthy upstream")
        address = self._rng.choice(endpoints)
        scheme = "https" if cluster.transport_socket.name == TLS_SOCKET else "http"
        path = _rewritten_path(route.match, action, request.path)
        url = f"{scheme}://{address.address}:{address.port_value}{path}"
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        _apply_headers(headers, [vhost, route] + ([cluster_weight] if cluster_weight is not None else []))
        host_rewrite = (cluster_weight.host_rewrite_literal if cluster_weight is not None else "") or (
            action.host_rewrite_literal
        )
        headers["Host"] = host_rewrite or request.headers.get("Host", "")
        timeout = _route_timeout(action)
        body = await request.read()
        assert self._session is not None
        started = time.monotonic()
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as upstream:
                payload = await upstream.read()
                elapsed_ms = (time.monotonic() - started) * 1000
                self.stats.response(identity, upstream.status, elapsed_ms)
                answer_headers = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
                )
                answer_headers["x-envoy-upstream-service-time"] = str(round(elapsed_ms))
                return web.Response(status=upstream.status, body=payload, headers=answer_headers)
        except TimeoutError:
            self.stats.response(identity, 504, None)
            return web.Response(status=504, text="upstream request timeout")
        except (aiohttp.ClientError, OSError):
            self.stats.response(identity, 503, None)
            return web.Response(status=503, text="upstream connect error or disconnect/reset before headers")


def _rewritten_path(match: Any, action: Any, path_qs: str) -> str:
    """``prefix_rewrite`` of the matched prefix (or exact path); the query string is kept."""
    path, _, query = path_qs.partition("?")
    if action.prefix_rewrite:
        kind = match.WhichOneof("path_specifier")
        if kind == "prefix":
            path = action.prefix_rewrite + path[len(match.prefix) :]
        elif kind == "path":
            path = action.prefix_rewrite
    return f"{path}?{query}" if query else path


def _route_timeout(action: Any) -> float | None:
    if not action.HasField("timeout"):
        return DEFAULT_ROUTE_TIMEOUT_SECONDS
    seconds = action.timeout.seconds + action.timeout.nanos / 1e9
    return seconds or None  # 0 disables the timeout


# --- command line ------------------------------------------------------------------


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    from apx.operator.kubeconfig import resolve

    target = resolve(args.kubeconfig, args.context)
    host, port = _address(args.listen)
    _, admin_port = _address(args.admin)
    async with KubeClient(target.connection) as kube:
        emulator = EnvoyEmulator(configmap_source(kube, args.namespace), refresh_seconds=args.refresh)
        await emulator.start(host, port, admin_port)
        print(f"envoy emulator: proxy {emulator.proxy_url}, admin {emulator.admin_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m e2e.envoystats``: serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m e2e.envoystats", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="kubeconfig of the API holding the snapshot ConfigMap")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--namespace", default="apx-system", help="operator namespace (snapshot ConfigMap)")
    parser.add_argument("--listen", default="127.0.0.1:10000", help="proxy listener host:port")
    parser.add_argument("--admin", default="127.0.0.1:9901", help="admin listener host:port")
    parser.add_argument("--refresh", type=float, default=0.5, help="seconds between snapshot reads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
