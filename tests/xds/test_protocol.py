"""The ADS server speaks the xDS protocol: SotW and delta, ACK/NACK, nonces, ordering, VHDS, reconnects.

Every test drives the real server (``apx.operator.xds.XdsServer`` on a free
loopback port) with the proto-only client of ``adsclient.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import generate_latest

from apx.controllers.memo import Caches
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.translate import translate
from apx.operator.xds import XdsServer, XdsSnapshot
from apx.operator.xds.server import _built
from tests.xds.adsclient import CDS, LDS, RDS, VHDS, DeltaStream, SotwStream, channel, node, unpack
from tests.xds.conftest import NAMESPACE, edit_route, render, sample_docs, start_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

LEGACY = f"{NAMESPACE}/payments-legacy"
NEW_BACKEND = {"service": {"name": "legacy-v2", "port": 8080}}


def _moved(docs: list[dict[str, Any]]) -> XdsSnapshot:
    """The samples with payments-legacy moved to a new Service backend (a new cluster)."""
    return XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", backend=NEW_BACKEND)))


def _timeout(docs: list[dict[str, Any]], timeout: str) -> XdsSnapshot:
    return XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout=timeout)))


def _names(response: Any) -> set[str]:
    return {unpack(response.type_url, r).name for r in response.resources}


def _delta_names(response: Any) -> set[str]:
    return {r.name for r in response.resources}


async def _sotw_subscribe_all(stream: SotwStream) -> dict[str, Any]:
    stream.send(CDS)
    stream.send(LDS)
    stream.send(RDS, ["apx-routes"])
    got = {}
    for _ in range(3):
        response = await stream.next()
        got[response.type_url] = response
        stream.ack(response, ["apx-routes"] if response.type_url == RDS else ())
    return got


async def test_sotw_client_gets_wildcard_listeners_and_clusters_and_the_named_route_configuration(
    server: XdsServer,
) -> None:
    expected = render(sample_docs())
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        got = await _sotw_subscribe_all(stream)
        assert _names(got[CDS]) == {c.name for c in expected.clusters}
        assert _names(got[LDS]) == {listener.name for listener in expected.listeners}
        config = unpack(RDS, got[RDS].resources[0])
        assert config == expected.route_configurations[0]  # inline virtual hosts, byte-equal content
        for response in got.values():
            assert response.version_info and response.nonce
        await stream.close()


async def test_sotw_responses_of_held_subscriptions_are_encoded_off_the_loop_and_shared_by_every_stream(
    server: XdsServer,
) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        streams = [SotwStream(ch, node(f"sotw-{i}")) for i in range(3)]
        for stream in streams:
            await _sotw_subscribe_all(stream)
        held = server.sotw_subscriptions()
        assert held == {(CDS, None), (LDS, None), (RDS, frozenset({"apx-routes"}))}
        # What the operator's builder thread does with the next pass's output (server.submit).
        built = _built(render(edit_route(docs, "payments-legacy", timeout="7s")), server.snapshot, held)
        assert set(built._sotw) == held  # encoded before the event loop serves it
        prepared = built._sotw[(RDS, frozenset({"apx-routes"}))]
        server.set_snapshot(built)
        sent = set()
        for stream in streams:
            response = await stream.next()
            assert response.type_url == RDS
            assert response.SerializeToString() == prepared.response  # the bytes encoded off the loop
            assert response.version_info == prepared.version
            sent.add(response.nonce)
            stream.ack(response, ["apx-routes"])
        assert sent == {prepared.nonce}  # one response, one nonce, for every stream
        assert (
            unpack(RDS, response.resources[0])
            == render(edit_route(docs, "payments-legacy", timeout="7s")).route_configurations[0]
        )
        for stream in streams:
            await stream.close()


async def test_sotw_route_configuration_not_requested_is_never_sent(server: XdsServer) -> None:
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        stream.send(RDS, ["some-other-config"])
        await stream.nothing_for(0.5)
        stream.send(RDS, [])  # an empty RDS subscription is not a wildcard
        await stream.nothing_for(0.3)
        await stream.close()


async def test_sotw_ack_is_not_answered_and_an_unchanged_type_is_not_pushed_again(server: XdsServer) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        await _sotw_subscribe_all(stream)
        await stream.nothing_for(0.3)
        # A timeout change touches only the route configuration.
        server.set_snapshot(XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="5s"))))
        response = await stream.next()
        assert response.type_url == RDS
        stream.ack(response, ["apx-routes"])
        await stream.nothing_for(0.3)
        await stream.close()


async def test_sotw_pushes_new_cluster_before_the_route_that_uses_it(server: XdsServer) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        await _sotw_subscribe_all(stream)
        server.set_snapshot(_moved(docs))
        first = await stream.next()
        assert first.type_url == CDS
        assert "svc/shop/legacy-v2:8080" in _names(first)
        stream.ack(first)
        second = await stream.next()
        assert second.type_url == RDS
        await stream.close()


async def test_sotw_keeps_a_removed_cluster_until_the_routes_that_used_it_are_accepted(
    server: XdsServer,
) -> None:
    """Make before break: a SotW cluster set never drops a cluster routes the proxy holds still name."""
    docs = sample_docs()
    moved = _moved(docs)
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        initial = await _sotw_subscribe_all(stream)
        removed = _names(initial[CDS]) - set(moved.names(CDS))
        assert removed  # the old backend's cluster
        server.set_snapshot(moved)
        first = await stream.next()
        assert first.type_url == CDS
        assert removed <= _names(first) and "svc/shop/legacy-v2:8080" in _names(first)
        stream.ack(first)
        routes = await stream.next()
        assert routes.type_url == RDS
        stream.ack(routes, ["apx-routes"])
        # Only now, with the new routes accepted, the cluster set goes without the removed ones.
        last = await stream.next()
        assert last.type_url == CDS
        assert not removed & _names(last) and "svc/shop/legacy-v2:8080" in _names(last)
        stream.ack(last)
        await stream.close()


async def test_sotw_stale_nonce_is_ignored(server: XdsServer) -> None:
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        stream.send(CDS)
        first = await stream.next()
        stream.ack(first)
        server.set_snapshot(
            XdsSnapshot.from_envoy(render(edit_route(sample_docs(), "payments-legacy", backend=NEW_BACKEND)))
        )
        second = await stream.next()
        assert second.nonce != first.nonce
        # A request still answering the first response is stale: no response, no state change.
        stream.send(CDS, ["only-this"], first.version_info, first.nonce)
        await stream.nothing_for(0.4)
        stream.ack(second)
        await stream.nothing_for(0.3)
        await stream.close()


async def test_sotw_nack_is_reported_for_the_routes_and_not_resent_until_a_new_version(
    server: XdsServer,
) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node("proxy-a"))
        got = await _sotw_subscribe_all(stream)
        server.set_snapshot(XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="5s"))))
        response = await stream.next()
        stream.nack(response, "route: invalid timeout", ["apx-routes"], version=got[RDS].version_info)
        await stream.nothing_for(0.4)  # the rejected version is not sent again
        rejections = server.rejections()
        assert rejections == {("Route", LEGACY): "route: invalid timeout"}
        metrics = generate_latest(server.metrics.registry).decode()
        assert 'apx_xds_nacks_total{type="RouteConfiguration"} 1.0' in metrics
        assert server.acks.nodes["proxy-a"].acked[RDS] == got[RDS].version_info
        # A newer version is sent; its ACK clears the rejection.
        server.set_snapshot(XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="7s"))))
        fixed = await stream.next()
        stream.ack(fixed, ["apx-routes"])
        await asyncio.sleep(0.2)
        assert server.rejections() == {}
        await stream.close()


async def test_delta_envoy_gets_vhds_route_configuration_and_virtual_hosts(server: XdsServer) -> None:
    expected = render(sample_docs()).route_configurations[0]
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node(envoy=True))
        stream.send(RDS, ["apx-routes"])
        response = await stream.next()
        stream.ack(response)
        config = unpack(RDS, response.resources[0].resource)
        assert not config.virtual_hosts
        assert config.vhds.config_source.HasField("ads")
        stream.send(VHDS, ["apx-routes"])  # what Envoy's VHDS subscription asks for
        hosts = await stream.next()
        stream.ack(hosts)
        by_name = {r.name: unpack(VHDS, r.resource) for r in hosts.resources}
        assert set(by_name) == {f"apx-routes/{vh.domains[0]}" for vh in expected.virtual_hosts}
        for vh in expected.virtual_hosts:
            served = by_name[f"apx-routes/{vh.domains[0]}"]
            assert served.name == f"apx-routes/{vh.domains[0]}"
            assert list(served.routes) == list(vh.routes)
        await stream.close()


async def _delta_subscribe_all(stream: DeltaStream, envoy: bool = True) -> dict[str, Any]:
    stream.send(CDS)
    stream.send(LDS)
    stream.send(RDS, ["apx-routes"])
    got: dict[str, Any] = {}
    for _ in range(3):
        response = await stream.next()
        got[response.type_url] = response
        stream.ack(response)
    if envoy:
        stream.send(VHDS, ["apx-routes"])
        response = await stream.next()
        got[VHDS] = response
        stream.ack(response)
    return got


async def test_delta_one_route_change_sends_one_virtual_host_and_its_new_cluster_then_removes_the_old(
    server: XdsServer,
) -> None:
    docs = sample_docs()
    before = render(docs)
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node(envoy=True))
        await _delta_subscribe_all(stream)
        await stream.nothing_for(0.3)
        server.set_snapshot(_moved(docs))
        added_cluster = await stream.next()
        assert added_cluster.type_url == CDS
        assert _delta_names(added_cluster) == {"svc/shop/legacy-v2:8080"}
        assert not added_cluster.removed_resources
        stream.ack(added_cluster)
        host = await stream.next()
        assert host.type_url == VHDS
        assert _delta_names(host) == {"apx-routes/legacy.payments.example.com"}
        stream.ack(host)
        removal = await stream.next()
        assert removal.type_url == CDS
        assert not removal.resources
        after = render(edit_route(docs, "payments-legacy", backend=NEW_BACKEND))
        old = {c.name for c in before.clusters} - {c.name for c in after.clusters}
        assert set(removal.removed_resources) == old
        stream.ack(removal)
        await stream.nothing_for(0.3)
        await stream.close()


async def test_delta_reconnect_with_initial_versions_gets_only_what_differs(server: XdsServer) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node(envoy=True))
        got = await _delta_subscribe_all(stream)
        await stream.close()
    versions = {t: {r.name: r.version for r in response.resources} for t, response in got.items()}
    server.set_snapshot(XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="5s"))))
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node(envoy=True))
        stream.send(CDS, initial=versions[CDS])
        stream.send(VHDS, ["apx-routes"], initial=versions[VHDS])
        responses = [await stream.next(), await stream.next()]
        by_type = {r.type_url: r for r in responses}
        assert not by_type[CDS].resources and not by_type[CDS].removed_resources  # nothing differs
        assert _delta_names(by_type[VHDS]) == {"apx-routes/legacy.payments.example.com"}
        await stream.close()


async def test_delta_client_without_vhds_gets_inline_route_configuration(server: XdsServer) -> None:
    expected = render(sample_docs()).route_configurations[0]
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node(envoy=False))
        got = await _delta_subscribe_all(stream, envoy=False)
        assert unpack(RDS, got[RDS].resources[0].resource) == expected
        await stream.close()


async def test_delta_unknown_names_are_answered_as_absent(server: XdsServer) -> None:
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node(envoy=True))
        stream.send(CDS, ["no-such-cluster"])
        response = await stream.next()
        assert list(response.removed_resources) == ["no-such-cluster"]
        stream.ack(response)
        stream.send(VHDS, ["apx-routes/unknown.example.com"])  # an on-demand VHDS lookup
        response = await stream.next()
        assert [r.name for r in response.resources] == ["apx-routes/unknown.example.com"]
        assert not response.resources[0].HasField("resource")
        await stream.close()


async def test_delta_nack_marks_the_routes_of_the_virtual_host_and_an_ack_clears_it(
    server: XdsServer,
) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node("proxy-b", envoy=True))
        await _delta_subscribe_all(stream)
        server.set_snapshot(XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="5s"))))
        host = await stream.next()
        stream.nack(host, "virtual host rejected")
        await asyncio.sleep(0.2)
        assert server.rejections() == {("Route", LEGACY): "virtual host rejected"}
        server.set_snapshot(XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="6s"))))
        again = await stream.next()
        stream.ack(again)
        await asyncio.sleep(0.2)
        assert server.rejections() == {}
        await stream.close()


async def test_delta_unsubscribe_then_subscribe_sends_the_resource_again(server: XdsServer) -> None:
    async with channel(server.port) as ch:
        stream = DeltaStream(ch, node())
        stream.send(RDS, ["apx-routes"])
        first = await stream.next()
        stream.ack(first)
        stream.send(RDS, unsubscribe=["apx-routes"])
        await stream.nothing_for(0.3)
        stream.send(RDS, ["apx-routes"])
        again = await stream.next()
        assert _delta_names(again) == {"apx-routes"}
        await stream.close()


async def test_fifty_concurrent_streams_all_get_the_change(server: XdsServer) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        streams: list[Any] = [DeltaStream(ch, node(f"d{i}", envoy=True)) for i in range(25)]
        streams += [SotwStream(ch, node(f"s{i}")) for i in range(25)]
        await asyncio.gather(
            *(_delta_subscribe_all(s) for s in streams if isinstance(s, DeltaStream)),
            *(_sotw_subscribe_all(s) for s in streams if isinstance(s, SotwStream)),
        )
        assert server.stream_count == 50
        server.set_snapshot(XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="5s"))))
        responses = await asyncio.gather(*(s.next() for s in streams))
        assert {r.type_url for r in responses[:25]} == {VHDS}
        assert {r.type_url for r in responses[25:]} == {RDS}
        await asyncio.gather(*(s.close() for s in streams))


async def test_a_reconnecting_client_gets_the_current_state_at_once(server: XdsServer) -> None:
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        await _sotw_subscribe_all(stream)
        await stream.close()
    server.set_snapshot(_timeout(sample_docs(), "5s"))
    async with channel(server.port) as ch:
        stream = SotwStream(ch, node())
        got = await _sotw_subscribe_all(stream)
        config = unpack(RDS, got[RDS].resources[0])
        legacy = next(vh for vh in config.virtual_hosts if vh.domains[0] == "legacy.payments.example.com")
        assert legacy.routes[0].route.timeout.seconds == 5
        await stream.close()


async def _settled(stream: DeltaStream, state: dict[str, dict[str, str]]) -> int:
    """Read and ACK responses until the stream is quiet; apply them to ``state``; how many."""
    count = 0
    while True:
        try:
            response = await stream.next(timeout=0.5)
        except TimeoutError:
            return count
        count += 1
        held = state.setdefault(response.type_url, {})
        for resource in response.resources:
            if resource.HasField("resource"):
                held[resource.name] = resource.version
            else:
                held.pop(resource.name, None)
        for name in response.removed_resources:
            held.pop(name, None)
        stream.ack(response)


async def test_delta_streams_in_step_diff_only_the_changed_names_and_end_where_a_full_diff_ends() -> None:
    docs = sample_docs()
    without = [d for d in docs if not (d["kind"] == "Route" and d["metadata"]["name"] == "payments-legacy")]
    steps = [
        edit_route(docs, "payments-legacy", timeout="5s"),
        edit_route(docs, "payments-legacy", backend=NEW_BACKEND),  # a new cluster, the old one goes
        without,  # a virtual host goes
        docs,  # and comes back
    ]
    caches = Caches()  # as in the operator: unchanged resources are the very same bytes objects
    server = await start_server(None)
    server.set_snapshot(_built(render_envoy(translate(docs).ir, caches=caches), server.snapshot))
    full_diffs = 0
    original = server._delta_candidates

    def counted(*args: Any) -> Any:
        nonlocal full_diffs
        full_diffs += 1
        return original(*args)

    server._delta_candidates = counted  # type: ignore[method-assign]
    try:
        async with channel(server.port) as ch:
            stream = DeltaStream(ch, node(envoy=True))
            state: dict[str, dict[str, str]] = {}
            stream.send(CDS)
            stream.send(LDS)
            stream.send(RDS, ["apx-routes"])
            stream.send(VHDS, ["apx-routes"])
            await _settled(stream, state)
            assert full_diffs == 4  # the first answer of each subscription
            for step in steps:
                full_diffs = 0
                output = render_envoy(translate(step).ir, caches=caches)
                server.set_snapshot(_built(output, server.snapshot, (), False))
                assert await _settled(stream, state) >= 1
                assert full_diffs == 0
                snapshot = server.snapshot
                for type_url in (CDS, LDS, VHDS):
                    expected = {n: snapshot.get(type_url, n).version for n in snapshot.names(type_url)}  # type: ignore[union-attr]
                    assert state[type_url] == expected, type_url
                vhds_form = snapshot.get(RDS, "apx-routes", vhds=True)
                assert vhds_form is not None and state[RDS] == {"apx-routes": vhds_form.version}
            await stream.close()
    finally:
        await server.stop()


async def test_the_route_table_is_assembled_inline_only_while_a_stream_takes_it_so(server: XdsServer) -> None:
    docs = sample_docs()
    async with channel(server.port) as ch:
        envoy = DeltaStream(ch, node("envoy-1", envoy=True))
        await _delta_subscribe_all(envoy)
        assert not server.inline_wanted()
        server.submit(render(edit_route(docs, "payments-legacy", timeout="5s")))
        await server.wait_built()
        assert not server.snapshot._inline  # Envoy takes VHDS: nobody needs the whole table
        plain = DeltaStream(ch, node("grpc-client", envoy=False))  # a delta client without VHDS
        plain.send(RDS, ["apx-routes"])
        response = await plain.next()
        assert unpack(RDS, response.resources[0].resource).virtual_hosts  # assembled on first use
        assert server.inline_wanted()
        server.submit(render(edit_route(docs, "payments-legacy", timeout="6s")))
        await server.wait_built()
        assert "apx-routes" in server.snapshot._inline  # now built off the event loop
        await envoy.close()
        await plain.close()
