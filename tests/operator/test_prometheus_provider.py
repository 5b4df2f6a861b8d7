"""The Prometheus provider against a real Prometheus scraping real exposition every second.

A small HTTP server (``prometheus_client``) exposes the worker's own metrics
(``WorkerMetrics``) for the two tracks of an async Route and Envoy's stat
names for the two per-track clusters of a sync Route. Every series is exported
at 0 before the first scrape (``increase()`` ignores a series' first value),
then a known amount of traffic is recorded, and the provider must return it.

``increase()`` extrapolates to the end of the window (at most about one
scrape interval past the last sample), so absolute numbers may come out a
little high, never low; all series are scraped together, so the
errors/requests and bucket/requests ratios are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from apx.controllers.canary.types import MetricsUnavailable, RouteTarget, Track, TrackWindow
from apx.controllers.providers.prometheus import PrometheusProvider
from apx.controllers.providers.queries import DEFAULT_QUERIES, parse_queries
from apx.dataplane.worker.metrics import DURATION_BUCKETS, WorkerMetrics
from e2e.services import Service, free_port

pytestmark = pytest.mark.timeout(120)

# Envoy's default histogram buckets (milliseconds for upstream_rq_time).
ENVOY_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
WINDOW = 60
# increase() may extrapolate by up to ~1.1 scrape intervals past the last sample;
# over the ≥5 s the fixture's series span, that is at most ~25 %.
EXTRAPOLATION = 1.25

ASYNC_TARGET = RouteTarget(namespace="shop", name="jobs", mode="async")
SYNC_TARGET = RouteTarget(
    namespace="shop",
    name="checkout",
    mode="sync",
    clusters=(("stable", "shop_checkout_stable"), ("canary", "shop_checkout_canary")),
)

# What each track did: (latency, status code) → requests. Latencies avoid bucket bounds.
ASYNC_TRAFFIC = {
    "stable": {(0.02, "200"): 200, (0.2, "200"): 87, (1.5, "200"): 10, (0.2, "503"): 3},
    "canary": {(0.04, "200"): 100, (3.0, "200"): 35, (3.0, "503"): 15},
}
SYNC_TRAFFIC = {
    "shop_checkout_stable": {(3.0, "2"): 300, (40.0, "2"): 98, (40.0, "5"): 2},
    "shop_checkout_canary": {(3.0, "2"): 50, (700.0, "2"): 40, (700.0, "5"): 10},
}


@dataclass(frozen=True)
class Expected:
    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # milliseconds, cumulative, +Inf last


def _expected(
    traffic: dict[tuple[float, str], int], bounds_ms: Sequence[float], to_ms: float, error: str
) -> Expected:
    bounds = [*bounds_ms, math.inf]
    buckets = tuple(
        (bound, float(sum(n for (latency, _), n in traffic.items() if latency * to_ms <= bound)))
        for bound in bounds
    )
    errors = sum(n for (_, code), n in traffic.items() if code.startswith(error))
    return Expected(float(sum(traffic.values())), float(errors), buckets)


class Exposition:
    """The scrape target: worker metrics and Envoy stat names in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.worker = WorkerMetrics(self.registry)
        # prometheus_client adds ``_total`` to counters: this is Envoy's envoy_cluster_upstream_rq_total.
        self.rq_total = Counter(
            "envoy_cluster_upstream_rq", "rq", ["envoy_cluster_name"], registry=self.registry
        )
        # Envoy exposes upstream_rq_xx without a _total suffix; a gauge keeps the name as is
        # (increase() reads any series the same way).
        self.rq_xx = Gauge(
            "envoy_cluster_upstream_rq_xx",
            "rq by class",
            ["envoy_cluster_name", "envoy_response_code_class"],
            registry=self.registry,
        )
        self.rq_time = Histogram(
            "envoy_cluster_upstream_rq_time",
            "ms",
            ["envoy_cluster_name"],
            buckets=ENVOY_BUCKETS_MS,
            registry=self.registry,
        )
        # Every series exists at 0 before the first scrape.
        for track, traffic in ASYNC_TRAFFIC.items():
            for _, code in traffic:
                self.worker.requests.labels(ASYNC_TARGET.route, track, "pro", code)
                self.worker.duration.labels(ASYNC_TARGET.route, track, "pro", code)
        for cluster in SYNC_TRAFFIC:
            self.rq_total.labels(cluster)
            self.rq_time.labels(cluster)
            for code_class in ("2", "5"):
                self.rq_xx.labels(cluster, code_class)

    def record_all(self) -> None:
        for track, traffic in ASYNC_TRAFFIC.items():
            for (latency, code), count in traffic.items():
                for _ in range(count):
                    self.worker.requests.labels(ASYNC_TARGET.route, track, "pro", code).inc()
                    self.worker.duration.labels(ASYNC_TARGET.route, track, "pro", code).observe(latency)
        for cluster, traffic in SYNC_TRAFFIC.items():
            for (latency, code_class), count in traffic.items():
                for _ in range(count):
                    self.rq_total.labels(cluster).inc()
                    self.rq_xx.labels(cluster, code_class).inc()
                    self.rq_time.labels(cluster).observe(latency)


def _instant(prometheus: Service, promql: str) -> float | None:
    url = f"http://{prometheus.address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _wait_for(prometheus: Service, promql: str, done: Callable[[float | None], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    value: float | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            value = _instant(prometheus, promql)
            if done(value):
                return
        time.sleep(0.25)
    raise AssertionError(f"Prometheus: {promql} was {value} after {timeout}s")


@pytest.fixture(scope="module")
def prometheus(prometheus_scraping: Callable[[Sequence[str]], Service]) -> Iterator[Service]:
    """A Prometheus that has scraped the zeros, then all of the traffic."""
    exposition = Exposition()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=exposition.registry)
    try:
        service = prometheus_scraping([f"127.0.0.1:{port}"])
        # Three scrapes of the zeros, so the window starts at 0 for every series.
        _wait_for(service, "min(count_over_time(apx_requests_total[1m]))", lambda v: (v or 0) >= 3, 30)
        exposition.record_all()
        total_async = sum(sum(t.values()) for t in ASYNC_TRAFFIC.values())
        total_sync = sum(sum(t.values()) for t in SYNC_TRAFFIC.values())
        _wait_for(service, "sum(apx_requests_total)", lambda v: v == total_async, 30)
        _wait_for(service, "sum(envoy_cluster_upstream_rq_total)", lambda v: v == total_sync, 30)
        # Two more scrapes at the final values keep the extrapolation small.
        time.sleep(2.2)
        yield service
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _assert_window(window: TrackWindow, expected: Expected) -> None:
    assert expected.requests <= window.requests <= expected.requests * EXTRAPOLATION
    scale = window.requests / expected.requests  # the same for every series of the target
    assert window.errors == pytest.approx(expected.errors * scale, rel=1e-6)
    assert [bound for bound, _ in window.latency_buckets] == [bound for bound, _ in expected.buckets]
    for (_, got), (_, want) in zip(window.latency_buckets, expected.buckets, strict=True):
        assert got == pytest.approx(want * scale, rel=1e-6)
    assert window.latency_buckets[-1][1] == pytest.approx(window.requests, rel=1e-6)


@pytest.mark.asyncio
@pytest.mark.parametrize("track", ["stable", "canary"])
async def test_async_track_windows_match_the_workers_traffic(prometheus: Service, track: Track) -> None:
    provider = PrometheusProvider(f"http://{prometheus.address}")
    try:
        window = await provider.query(ASYNC_TARGET, track, WINDOW)
    finally:
        await provider.close()
    _assert_window(window, _expected(ASYNC_TRAFFIC[track], [b * 1000 for b in DURATION_BUCKETS], 1000, "5"))


@pytest.mark.asyncio
@pytest.mark.parametrize("track", ["stable", "canary"])
async def test_sync_track_windows_match_envoys_per_cluster_stats(prometheus: Service, track: Track) -> None:
    provider = PrometheusProvider(f"http://{prometheus.address}")
    try:
        window = await provider.query(SYNC_TARGET, track, WINDOW)
    finally:
        await provider.close()
    cluster = SYNC_TARGET.cluster(track)
    _assert_window(window, _expected(SYNC_TRAFFIC[cluster], ENVOY_BUCKETS_MS, 1, "5"))


@pytest.mark.asyncio
async def test_the_canary_is_told_apart_from_stable_on_both_route_modes(prometheus: Service) -> None:
    provider = PrometheusProvider(f"http://{prometheus.address}")
    try:
        for target in (ASYNC_TARGET, SYNC_TARGET):
            stable = await provider.query(target, "stable", WINDOW)
            canary = await provider.query(target, "canary", WINDOW)
            assert canary.errors / canary.requests > 5 * (stable.errors / stable.requests)
    finally:
        await provider.close()


@pytest.mark.asyncio
async def test_a_route_without_series_answers_zero_traffic_not_an_error(prometheus: Service) -> None:
    provider = PrometheusProvider(f"http://{prometheus.address}")
    quiet_sync = RouteTarget(
        "shop", "quiet", "sync", (("stable", "shop_quiet_stable"), ("canary", "shop_quiet_canary"))
    )
    try:
        for target in (RouteTarget("shop", "quiet", "async"), quiet_sync):
            assert await provider.query(target, "canary", WINDOW) == TrackWindow(0.0, 0.0, ())
    finally:
        await provider.close()


@pytest.mark.asyncio
async def test_a_bad_template_is_unavailable_with_prometheus_reason(prometheus: Service) -> None:
    queries = parse_queries(
        'async: {requests: "sum(increase(apx_requests_total{route=\\"$route\\"}[$window])"}'
    )
    provider = PrometheusProvider(f"http://{prometheus.address}", queries)
    try:
        with pytest.raises(MetricsUnavailable) as caught:
            await provider.query(ASYNC_TARGET, "stable", WINDOW)
    finally:
        await provider.close()
    message = str(caught.value)
    assert message.startswith(f"Prometheus at {prometheus.address}: query failed (bad_data: ")
    assert "\n" not in message


@pytest.mark.asyncio
async def test_a_nan_answer_is_unavailable(prometheus: Service) -> None:
    queries = parse_queries("async: {errors: vector(NaN)}")
    provider = PrometheusProvider(f"http://{prometheus.address}", queries)
    try:
        with pytest.raises(MetricsUnavailable, match=r"answered NaN"):
            await provider.query(ASYNC_TARGET, "stable", WINDOW)
    finally:
        await provider.close()


@pytest.mark.asyncio
async def test_a_stopped_prometheus_is_unavailable_named_without_credentials(
    prometheus_scraping: Callable[[Sequence[str]], Service],
) -> None:
    service = prometheus_scraping([f"127.0.0.1:{free_port()}"])
    provider = PrometheusProvider(f"http://admin:s3cret-pw@{service.address}/", timeout_seconds=2)
    try:
        assert await provider.healthy() is True
        service.stop()
        assert await provider.healthy() is False
        with pytest.raises(MetricsUnavailable) as caught:
            await provider.query(ASYNC_TARGET, "canary", WINDOW)
    finally:
        await provider.close()
    message = str(caught.value)
    assert message.startswith(f"Prometheus at {service.address}: unreachable (")
    assert "s3cret-pw" not in message and "admin" not in message


# --- HTTP-level behaviour against small local servers --------------------------------


@contextlib.asynccontextmanager
async def _server(handler: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_credentials_in_the_url_go_as_basic_auth_and_never_into_errors() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Basic YWRtaW46czNjcmV0":  # admin:s3cret
            return web.Response(status=401, text="Unauthorized")
        # Requests and errors answer 7; the latency query (a histogram) answers nothing.
        bucket = "bucket" in str((await request.post())["query"])
        result = [] if bucket else [{"metric": {}, "value": [0, "7"]}]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return web.json_response(body)

    async with _server(handler) as port:
        good = PrometheusProvider(f"http://admin:s3cret@127.0.0.1:{port}")
        bad = PrometheusProvider(f"http://admin:wrong-pw@127.0.0.1:{port}")
        try:
            window = await good.query(ASYNC_TARGET, "stable", WINDOW)
            with pytest.raises(MetricsUnavailable) as caught:
                await bad.query(ASYNC_TARGET, "stable", WINDOW)
        finally:
            await good.close()
            await bad.close()
    assert (window.requests, window.errors) == (7.0, 7.0)
    assert "Basic YWRtaW46czNjcmV0" in seen
    assert (
        str(caught.value)
        == f"Prometheus at 127.0.0.1:{port}: HTTP 401 with a body that is not Prometheus JSON"
    )


@pytest.mark.asyncio
async def test_a_server_that_never_answers_is_unavailable_after_the_timeout() -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    async with _server(handler) as port:
        provider = PrometheusProvider(f"http://127.0.0.1:{port}", timeout_seconds=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(MetricsUnavailable, match=r"no answer within 0\.3s"):
                await provider.query(ASYNC_TARGET, "stable", WINDOW)
            elapsed = time.monotonic() - started
        finally:
            await provider.close()
            release.set()
    # The three queries run concurrently: one timeout, not three.
    assert elapsed < 0.85


@pytest.mark.asyncio
async def test_latency_buckets_in_seconds_become_milliseconds_sorted_with_inf_last() -> None:
    async def handler(request: web.Request) -> web.Response:
        query = (await request.post())["query"]
        if "bucket" in str(query):
            samples = [("+Inf", "10"), ("0.25", "9"), ("0.005", "2"), ("0.1", "8.9"), ("0.05", "9")]
            result = [{"metric": {"le": le}, "value": [0, v]} for le, v in samples]
        else:
            result = [{"metric": {}, "value": [0, "10"]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    async with _server(handler) as port:
        provider = PrometheusProvider(f"http://127.0.0.1:{port}", DEFAULT_QUERIES)
        try:
            window = await provider.query(ASYNC_TARGET, "stable", WINDOW)
        finally:
            await provider.close()
    # 8.9 after 9: extrapolated per series, made cumulative again.
    assert window.latency_buckets == ((5.0, 2.0), (50.0, 9.0), (100.0, 9.0), (250.0, 9.0), (math.inf, 10.0))
