"""The xDS snapshot: encoded once, unchanged resources shared, both route forms equal to the render."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import any_pb2

from apx.controllers.memo import Caches
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps, render_envoy_snapshot
from apx.controllers.status import ready, with_rejection
from apx.controllers.translate import translate
from apx.operator.xds.snapshot import CLUSTER, LISTENER, ROUTE_CONFIGURATION, VIRTUAL_HOST, XdsSnapshot
from tests.xds.conftest import NAMESPACE, edit_route, render, sample_docs

pytestmark = pytest.mark.timeout(60)


def _unpack_route(entry_bytes: bytes) -> route_pb2.RouteConfiguration:
    packed = any_pb2.Any.FromString(entry_bytes)
    assert packed.type_url == ROUTE_CONFIGURATION
    return route_pb2.RouteConfiguration.FromString(packed.value)


def test_inline_route_configuration_is_the_rendered_one_and_vhds_form_has_no_hosts() -> None:
    output = render(sample_docs())
    snapshot = XdsSnapshot.from_envoy(output)
    inline = snapshot.get(ROUTE_CONFIGURATION, "apx-routes")
    assert inline is not None
    assert _unpack_route(inline.any_bytes) == output.route_configurations[0]
    vhds = snapshot.get(ROUTE_CONFIGURATION, "apx-routes", vhds=True)
    assert vhds is not None
    config = _unpack_route(vhds.any_bytes)
    assert not config.virtual_hosts and config.vhds.config_source.HasField("ads")
    for vh in output.route_configurations[0].virtual_hosts:
        entry = snapshot.get(VIRTUAL_HOST, f"apx-routes/{vh.domains[0]}")
        assert entry is not None
        served = route_components_pb2.VirtualHost.FromString(any_pb2.Any.FromString(entry.any_bytes).value)
        assert served.name == entry.name
        assert list(served.routes) == list(vh.routes) and list(served.domains) == list(vh.domains)


def test_unchanged_resources_keep_the_previous_entries_and_one_edit_changes_one_host() -> None:
    docs = sample_docs()
    first = XdsSnapshot.from_envoy(render(docs))
    second = XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="5s")), first)
    changed = [n for n, e in second.virtual_hosts.items() if first.virtual_hosts[n] is not e]
    assert changed == ["apx-routes/legacy.payments.example.com"]
    assert all(second.clusters[n] is first.clusters[n] for n in first.clusters)
    assert second.listeners["apx-http"] is first.listeners["apx-http"]


def test_incremental_render_encodings_give_the_same_snapshot() -> None:
    docs = sample_docs()
    plain = XdsSnapshot.from_envoy(render(docs))
    incremental = XdsSnapshot.from_envoy(render_envoy(translate(docs).ir, caches=Caches()))
    for type_url in (LISTENER, CLUSTER, VIRTUAL_HOST, ROUTE_CONFIGURATION):
        assert set(plain.names(type_url)) == set(incremental.names(type_url))
        for name in plain.names(type_url):
            a, b = plain.get(type_url, name), incremental.get(type_url, name)
            assert a is not None and b is not None and a.version == b.version


def test_snapshot_from_the_configmap_form_equals_the_one_from_the_render() -> None:
    output = render(sample_docs())
    stored = decode_configmaps(render_envoy_snapshot(output.snapshot_document(), "apx-system"))
    assert stored is not None
    restored = XdsSnapshot.from_any(stored, output.version)
    direct = XdsSnapshot.from_envoy(output)
    assert restored.version == direct.version
    for type_url in (LISTENER, CLUSTER, VIRTUAL_HOST):
        assert {n: direct.get(type_url, n).version for n in direct.names(type_url)} == {  # type: ignore[union-attr]
            n: restored.get(type_url, n).version
            for n in restored.names(type_url)  # type: ignore[union-attr]
        }


def test_virtual_hosts_know_their_routes_and_clusters_map_back_to_routes() -> None:
    snapshot = XdsSnapshot.from_envoy(render(sample_docs()))
    legacy = snapshot.routes_of_virtual_host("vh/legacy.payments.example.com")
    assert legacy == (f"{NAMESPACE}/payments-legacy",)
    assert f"{NAMESPACE}/payments-charges" in snapshot.route_keys()
    assert snapshot.routes_using_cluster("apx-gateway") == (f"{NAMESPACE}/ledger-exports",)


def test_a_rejection_adds_programmed_false_and_keeps_the_phase() -> None:
    status = with_rejection(ready("Route", f"{NAMESPACE}/payments-legacy", 3, "serving"), "Envoy says no")
    document = status.to_dict("2026-01-01T00:00:00Z")
    conditions = {c["type"]: c for c in document["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Programmed"] == {
        "type": "Programmed",
        "status": "False",
        "reason": "Rejected",
        "message": "Envoy says no",
        "observedGeneration": 3,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    assert with_rejection(status, None) is status
    assert "Programmed" not in {
        c["type"] for c in ready("Route", f"{NAMESPACE}/payments-legacy", 3, "ok").to_dict()["conditions"]
    }


def test_a_cached_render_is_served_without_parsing_its_route_configuration_and_equals_it() -> None:
    docs = sample_docs()
    caches = Caches()
    render_envoy(translate(docs).ir, caches=caches)
    output = render_envoy(translate(edit_route(docs, "payments-legacy", timeout="5s")).ir, caches=caches)
    snapshot = XdsSnapshot.from_envoy(output)
    # Built from the encodings alone: the several-MB message of a big installation is not parsed.
    assert "not parsed yet" in repr(output.route_configurations)
    inline = snapshot.get(ROUTE_CONFIGURATION, "apx-routes")
    assert inline is not None
    assert _unpack_route(inline.any_bytes) == output.route_configurations[0]
    assert output.route_configurations == [
        route_pb2.RouteConfiguration.FromString(output.encoded.route_configurations[0])
    ]
