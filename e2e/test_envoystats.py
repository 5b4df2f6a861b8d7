"""The Envoy stand-in (``e2e.envoystats``): routing by the operator's snapshot, Envoy's stat names.

The snapshot is rendered by the real pipeline (translate → Envoy renderer →
snapshot ConfigMap) and stored in the emulated Kubernetes API, where the
emulator reads it as it reads the operator's; the backends are two aiohttp
servers on loopback ports (the Route's ``backend.url`` and
``canary.backend.url``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from apx.controllers.appliers.kube import Connection, KubeClient
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.renderers.kubernetes.envoy_snapshot import render_envoy_snapshot
from apx.controllers.translate import translate
from e2e.envoystats import ENVOY_BUCKETS_MS, EnvoyEmulator, configmap_source, stat_identity
from e2e.kubeemu.testing import RunningEmulator, running_emulator
from e2e.services import start_prometheus

HOST = "api.example.com"
NAMESPACE = "apx-system"


@pytest.fixture(scope="module")
def kubeemu() -> Iterator[RunningEmulator]:
    with running_emulator() as running:
        yield running


# --- a snapshot rendered by the real pipeline ---------------------------------------------


def _documents(
    stable_port: int, canary_port: int, weight: int, methods: list[str] | None
) -> list[dict[str, Any]]:
    match: dict[str, Any] = {"hosts": [HOST], "pathPrefix": "/r/"}
    if methods:
        match["methods"] = methods
    return [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {
                "residency": "GLOBAL",
                "regions": ["us-central1"],
                "plans": [{"name": "basic", "tier": "free", "rateLimit": {"requestsPerSecond": 10}}],
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "pol", "namespace": "default"},
            "spec": {
                "version": "1.0.0",
                "auth": {"allowAnonymous": True},
                "authz": {"defaultAction": "allow"},
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {
                "productRef": {"name": "shop"},
                "policyRef": {"name": "pol", "version": "1.0.0"},
                "match": match,
                "backend": {"url": f"http://127.0.0.1:{stable_port}"},
                "timeout": "1s",
                "canary": {"backend": {"url": f"http://127.0.0.1:{canary_port}"}},
            },
            "status": {"canary": {"phase": "Progressing", "step": 0, "weight": weight}},
        },
    ]


def snapshot_configmap(
    stable_port: int, canary_port: int, weight: int, methods: list[str] | None = None
) -> list[dict[str, Any]]:
    """The snapshot ConfigMaps (index and parts) the operator would write for the test Routes."""
    result = translate(_documents(stable_port, canary_port, weight, methods))
    assert not result.stalled, [s.message for s in result.stalled]
    return render_envoy_snapshot(render_envoy(result.ir).snapshot_document(), NAMESPACE)


async def store(kube: KubeClient, configmaps: list[dict[str, Any]]) -> None:
    for configmap in configmaps:
        await kube.apply(copy.deepcopy(configmap))


# --- backends and the emulator ------------------------------------------------------------


@asynccontextmanager
async def backend(name: str) -> AsyncIterator[tuple[int, Counter[str]]]:
    """A loopback upstream answering its name; ``/r/fail`` → 500, ``/r/slow`` sleeps 2 s."""
    seen: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        seen[request.path] += 1
        seen["x-apx-track:" + request.headers.get("x-apx-track", "")] += 1
        if request.path == "/r/fail":
            return web.Response(status=500, text=name)
        if request.path == "/r/slow":
            await asyncio.sleep(2)
        return web.Response(text=name, headers={"x-seen-host": request.headers.get("Host", "")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


@asynccontextmanager
async def stack(kubeemu: RunningEmulator, weight: int, **options: Any) -> AsyncIterator[dict[str, Any]]:
    async with (
        KubeClient(Connection(server=kubeemu.url)) as kube,
        backend("stable") as (stable_port, stable_seen),
        backend("canary") as (canary_port, canary_seen),
    ):
        if await kube.get("Namespace", None, NAMESPACE) is None:
            await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        await store(kube, snapshot_configmap(stable_port, canary_port, weight, **options))
        emulator = EnvoyEmulator(configmap_source(kube, NAMESPACE), rng=random.Random(7))
        await emulator.start()
        try:
            async with aiohttp.ClientSession() as client:
                yield {
                    "kube": kube,
                    "emulator": emulator,
                    "client": client,
                    "ports": (stable_port, canary_port),
                    "seen": {"stable": stable_seen, "canary": canary_seen},
                }
        finally:
            await emulator.stop()
            for configmap in await kube.list("ConfigMap", NAMESPACE):
                if configmap["metadata"]["name"].startswith("apx-envoy-snapshot"):
                    await kube.delete("ConfigMap", NAMESPACE, configmap["metadata"]["name"])


async def send(s: dict[str, Any], count: int, path: str = "/r/x", **headers: str) -> Counter[str]:
    """``count`` requests through the emulator, 25 at a time; answers counted by body (or status)."""
    answers: Counter[str] = Counter()

    async def one() -> None:
        async with s["client"].get(s["emulator"].proxy_url + path, headers={"Host": HOST, **headers}) as r:
            answers[await r.text() if r.status == 200 else str(r.status)] += 1

    for start in range(0, count, 25):
        await asyncio.gather(*(one() for _ in range(min(25, count - start))))
    return answers


async def scrape(s: dict[str, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with s["client"].get(s["emulator"].admin_url + "/stats/prometheus") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_traffic_splits_by_the_snapshot_weights_and_stats_carry_envoy_names(
    kubeemu: RunningEmulator,
) -> None:
    async with stack(kubeemu, weight=30) as s:
        answers = await send(s, 1000)

        assert answers["stable"] + answers["canary"] == 1000
        assert abs(answers["canary"] - 300) <= 60, answers  # 30 % ± 4 standard deviations
        # Each ClusterWeight's own headers reach the upstream it chose.
        assert s["seen"]["canary"]["x-apx-track:canary"] == answers["canary"]
        assert s["seen"]["stable"]["x-apx-track:stable"] == answers["stable"]

        stats = await scrape(s)
        for track in ("stable", "canary"):
            cluster = labels(envoy_cluster_name=f"default_r_{track}")  # the per-track alt_stat_name
            assert stats[("envoy_cluster_upstream_rq_total", cluster)] == answers[track]
            assert (
                stats[("envoy_cluster_upstream_rq_xx", cluster | {("envoy_response_code_class", "2")})]
                == (answers[track])
            )
            assert (
                stats[("envoy_cluster_upstream_rq", cluster | {("envoy_response_code", "200")})]
                == answers[track]
            )
            assert stats[("envoy_cluster_upstream_rq_time_count", cluster)] == answers[track]
            assert stats[("envoy_cluster_upstream_rq_time_sum", cluster)] > 0
            bounds = [
                float(dict(key[1])["le"])
                for key in stats
                if key[0] == "envoy_cluster_upstream_rq_time_bucket" and cluster <= key[1]
            ]
            assert sorted(bounds) == [*ENVOY_BUCKETS_MS, float("inf")]
            inf = cluster | {("le", "+Inf")}
            assert stats[("envoy_cluster_upstream_rq_time_bucket", inf)] == answers[track]


@pytest.mark.asyncio
async def test_a_changed_snapshot_changes_the_split_within_a_second(kubeemu: RunningEmulator) -> None:
    async with stack(kubeemu, weight=30) as s:
        stable_port, canary_port = s["ports"]
        await store(s["kube"], snapshot_configmap(stable_port, canary_port, weight=100))
        changed = time.monotonic()
        # The first moment 25 requests in a row all reach the canary.
        while (await send(s, 25))["canary"] != 25:
            assert time.monotonic() - changed < 5, "the new weight never took effect"
        took = time.monotonic() - changed
        assert took <= 1.2, f"new weights took {took:.2f}s"

        await store(s["kube"], snapshot_configmap(stable_port, canary_port, weight=0))
        await asyncio.sleep(1.0)
        assert await send(s, 50) == Counter({"stable": 50})


@pytest.mark.asyncio
async def test_upstream_errors_timeouts_and_refused_connections_count_as_envoy_does(
    kubeemu: RunningEmulator,
) -> None:
    async with stack(kubeemu, weight=100) as s:
        assert await send(s, 5, "/r/fail") == Counter({"500": 5})
        assert await send(s, 1, "/r/slow") == Counter({"504": 1})  # the Route's 1 s timeout
        stable_port, _ = s["ports"]
        # A canary backend nobody listens on: Envoy answers 503 and charges it to the cluster.
        await store(s["kube"], snapshot_configmap(stable_port, 1, weight=100))
        await asyncio.sleep(1.0)
        assert await send(s, 3) == Counter({"503": 3})

        stats = await scrape(s)
        canary = labels(envoy_cluster_name="default_r_canary")
        assert stats[("envoy_cluster_upstream_rq_total", canary)] == 9
        assert stats[("envoy_cluster_upstream_rq", canary | {("envoy_response_code", "500")})] == 5
        assert stats[("envoy_cluster_upstream_rq", canary | {("envoy_response_code", "504")})] == 1
        assert stats[("envoy_cluster_upstream_rq", canary | {("envoy_response_code", "503")})] == 3
        assert stats[("envoy_cluster_upstream_rq_xx", canary | {("envoy_response_code_class", "5")})] == 9
        # Only completed responses are timed (the five 500s).
        assert stats[("envoy_cluster_upstream_rq_time_count", canary)] == 5


@pytest.mark.asyncio
async def test_routing_follows_hosts_paths_and_methods(kubeemu: RunningEmulator) -> None:
    async with stack(kubeemu, weight=0, methods=["GET"]) as s:
        client, proxy = s["client"], s["emulator"].proxy_url
        for host, path, method, expected in (
            (HOST, "/r/a?q=1", "GET", 200),
            (f"{HOST}:10000", "/r/a", "GET", 200),  # the port is ignored when no domain has it
            ("API.EXAMPLE.COM", "/r/a", "GET", 200),
            ("other.example.com", "/r/a", "GET", 404),
            (HOST, "/other", "GET", 404),
            (HOST, "/r", "GET", 404),  # prefix /r/ does not take /r
            (HOST, "/r/a", "POST", 404),  # methods: [GET]
        ):
            async with client.request(method, proxy + path, headers={"Host": host}) as response:
                assert response.status == expected, (host, path, method)
                if expected == 200:
                    # URL backends get their own host (host_rewrite_literal).
                    assert response.headers["x-seen-host"] == f"127.0.0.1:{s['ports'][0]}"


@pytest.mark.asyncio
async def test_a_tenant_stays_on_one_track(kubeemu: RunningEmulator) -> None:
    async with stack(kubeemu, weight=50) as s:
        tracks_of_tenants = []
        for tenant in range(12):
            answers = await send(s, 10, **{"x-apx-tenant": f"tenant-{tenant}"})
            assert len(answers) == 1, answers  # tenant stickiness: one track for every request
            tracks_of_tenants.append(next(iter(answers)))
        assert set(tracks_of_tenants) == {"stable", "canary"}


def test_stat_names_with_dots_and_colons_are_split_like_envoy_splits_them() -> None:
    class Cluster:
        def __init__(self, name: str, alt_stat_name: str = "") -> None:
            self.name, self.alt_stat_name = name, alt_stat_name

    assert stat_identity(Cluster("track/default/r/canary", "default_r_canary")) == (
        "envoy_cluster",
        "default_r_canary",
    )
    assert stat_identity(Cluster("svc/default/charges-v1:8080")) == (
        "envoy_cluster",
        "svc/default/charges-v1_8080",
    )
    assert stat_identity(Cluster("url/http/127.0.0.1:9001")) == ("envoy_cluster_0_0_1_9001", "url/http/127")


@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_real_prometheus_scrapes_the_stats_and_rates_work(
    kubeemu: RunningEmulator, tmp_path: Path
) -> None:
    async with stack(kubeemu, weight=50) as s:
        admin = s["emulator"].admin_url.removeprefix("http://")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "envoy",
                    "metrics_path": "/stats/prometheus",
                    "static_configs": [{"targets": [admin]}],
                }
            ],
        }
        prometheus = await asyncio.to_thread(start_prometheus, tmp_path / "prometheus", json.dumps(config))
        try:
            answers = await send(s, 200)
            query = (
                "sum by (envoy_cluster_name) "
                '(increase(envoy_cluster_upstream_rq_xx{envoy_response_code_class="2"}[1m]))'
            )
            results: dict[str, float] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and set(results) != {"default_r_stable", "default_r_canary"}:
                await asyncio.sleep(1)
                # Keep the counters moving so increase() has two scrapes with new samples.
                answers += await send(s, 20)
                url = f"http://{prometheus.address}/api/v1/query?" + urllib.parse.urlencode({"query": query})
                body = await asyncio.to_thread(_read, url)
                results = {
                    r["metric"]["envoy_cluster_name"]: float(r["value"][1])
                    for r in json.loads(body)["data"]["result"]
                }
            assert set(results) == {"default_r_stable", "default_r_canary"}, results
            assert all(value > 0 for value in results.values())
        finally:
            prometheus.stop()


def _read(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: bytes = response.read()
    return data
