"""The operator side of xDS: restart from the snapshot ConfigMaps, standby refresh, NACK → status, Event.

The server is real (loopback port) and the clients are the proto-only ones;
the Kubernetes API is a small in-memory stand-in for the two calls the wiring
makes (list ConfigMaps, create an Event), and the reconciler a stand-in with
the hooks the wiring uses.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from apx.controllers.renderers.kubernetes.envoy_snapshot import render_envoy_snapshot
from apx.operator.xds import XdsServer
from apx.operator.xds.wiring import XdsFeed
from tests.xds.adsclient import RDS, SotwStream, channel, node, unpack
from tests.xds.conftest import NAMESPACE, edit_route, render, sample_docs

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

LEGACY = f"{NAMESPACE}/payments-legacy"


class FakeKube:
    def __init__(self, configmaps: list[dict[str, Any]]) -> None:
        self.configmaps = configmaps
        self.created: list[dict[str, Any]] = []

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Any]:
        assert kind == "ConfigMap" and namespace == "apx-system"
        return list(self.configmaps)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.created.append(manifest)
        return manifest


def _reconciler() -> Any:
    passes: list[int] = []
    route = {"metadata": {"name": "payments-legacy", "namespace": NAMESPACE}, "kind": "Route"}
    return SimpleNamespace(
        objects={("Route", LEGACY): route},
        envoy_listeners=[],
        envoy_waits=[],
        xds_rejections=None,
        request_pass=lambda: passes.append(1),
        passes=passes,
    )


def _configmaps(timeout: str) -> list[dict[str, Any]]:
    output = render(edit_route(sample_docs(), "payments-legacy", timeout=timeout))
    return render_envoy_snapshot(output.snapshot_document(), "apx-system")


def _legacy_timeout(response: Any) -> int:
    config = unpack(RDS, response.resources[0])
    host = next(vh for vh in config.virtual_hosts if vh.domains[0] == "legacy.payments.example.com")
    return int(host.routes[-1].route.timeout.seconds)


async def _start(kube: FakeKube, reconciler: Any, poll: float = 10.0) -> XdsFeed:
    server = XdsServer("127.0.0.1", 0, registry=CollectorRegistry())
    feed = XdsFeed(server, reconciler, kube, "apx-system", poll_seconds=poll)  # type: ignore[arg-type]
    await server.start()
    await feed.start()
    return feed


async def test_a_restarted_operator_serves_the_stored_snapshot_before_its_first_pass() -> None:
    kube, reconciler = FakeKube(_configmaps("5s")), _reconciler()
    feed = await _start(kube, reconciler)
    try:
        assert feed.server.snapshot_source == "configmap"
        assert reconciler.envoy_listeners == [feed.server.submit]
        async with channel(feed.server.port) as ch:
            stream = SotwStream(ch, node())
            stream.send(RDS, ["apx-routes"])
            response = await stream.next()
            assert _legacy_timeout(response) == 5
            stream.ack(response, ["apx-routes"])
            # The first pass replaces it; the pass can wait until it is served.
            assert reconciler.envoy_waits == [feed.server.built]
            output = render(edit_route(sample_docs(), "payments-legacy", timeout="8s"))
            feed.server.submit(output)
            await feed.server.built()
            assert feed.server.snapshot.version == output.version
            pushed = await stream.next()
            assert _legacy_timeout(pushed) == 8
            assert feed.server.snapshot_source == "reconcile"
            await stream.close()
    finally:
        await feed.close()


async def test_a_standby_follows_the_snapshot_configmap_until_it_runs_passes() -> None:
    kube, reconciler = FakeKube(_configmaps("5s")), _reconciler()
    feed = await _start(kube, reconciler, poll=0.2)
    try:
        async with channel(feed.server.port) as ch:
            stream = SotwStream(ch, node())
            stream.send(RDS, ["apx-routes"])
            first = await stream.next()
            stream.ack(first, ["apx-routes"])
            kube.configmaps = _configmaps("9s")  # the leader wrote a new snapshot
            followed = await stream.next(5)
            assert _legacy_timeout(followed) == 9
            await stream.close()
    finally:
        await feed.close()


async def test_a_nack_posts_one_warning_event_per_route_and_asks_for_a_pass() -> None:
    kube, reconciler = FakeKube(_configmaps("5s")), _reconciler()
    feed = await _start(kube, reconciler)
    try:
        assert reconciler.xds_rejections == feed.server.rejections
        async with channel(feed.server.port) as ch:
            stream = SotwStream(ch, node("proxy"))
            stream.send(RDS, ["apx-routes"])
            first = await stream.next()
            stream.nack(first, "unknown cluster", ["apx-routes"])
            for _ in range(50):
                if kube.created:
                    break
                await asyncio.sleep(0.05)
            events = [e for e in kube.created if e["reason"] == "Rejected"]
            assert [e["involvedObject"]["name"] for e in events] == ["payments-legacy"]
            assert events[0]["type"] == "Warning" and "unknown cluster" in events[0]["message"]
            assert reconciler.passes
            assert reconciler.xds_rejections()[("Route", LEGACY)] == "unknown cluster"
            await stream.close()
    finally:
        await feed.close()
