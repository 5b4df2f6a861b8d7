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
from apx.operator.xds.snapshot import (
    CLUSTER,
    LISTENER,
    ROUTE_CONFIGURATION,
    VIRTUAL_HOST,
    XdsSnapshot,
    short_version,
)
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


def test_a_vhds_host_keeps_the_renders_bytes_not_a_second_copy_and_its_version_is_its_any_digest() -> None:
    snapshot = XdsSnapshot.from_envoy(render_envoy(translate(sample_docs()).ir, caches=Caches()))
    for parts in snapshot._host_parts.values():
        entry = parts.vhds
        assert entry.tail is parts.full  # the very object the render keeps
        assert len(entry.head) < 200 and entry.size == len(entry.any_bytes)
        # Content-determined like every other version: the sha256 of the whole Any.
        assert entry.version == short_version(entry.any_bytes)
        assert any_pb2.Any.FromString(entry.any_bytes).value.endswith(parts.body)


def test_unchanged_resources_keep_the_previous_entries_and_one_edit_changes_one_host() -> None:
    docs = sample_docs()
    first = XdsSnapshot.from_envoy(render(docs))
    second = XdsSnapshot.from_envoy(render(edit_route(docs, "payments-legacy", timeout="5s")), first)
    changed = [n for n, e in second.virtual_hosts.items() if first.virtual_hosts[n] is not e]
    assert changed == ["apx-routes/legacy.payments.example.com"]
    # Serialized here (no cached render): an unchanged host keeps its first bytes, not a second copy.
    kept = [n for n, h in second._host_parts.items() if first._host_parts[n] is h]
    assert sorted(kept) == sorted(set(second.virtual_hosts) - set(changed))
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


def _cached_renders(*variants: list[dict[str, object]]) -> list[object]:
    """The operator's renders of successive object sets: one ``Caches`` kept across them."""
    caches = Caches()
    return [render_envoy(translate(docs).ir, caches=caches) for docs in variants]


def test_a_snapshot_built_from_the_last_names_what_changed_and_chains_its_type_versions() -> None:
    docs = sample_docs()
    edited = edit_route(docs, "payments-legacy", timeout="5s")
    first_output, second_output, same_output = _cached_renders(docs, edited, edited)
    first = XdsSnapshot.from_envoy(first_output).prepare()
    second = XdsSnapshot.from_envoy(second_output, first).prepare()
    host = "apx-routes/legacy.payments.example.com"
    assert second.changes_since(VIRTUAL_HOST, first.type_version(VIRTUAL_HOST)) == {host}
    routes_before = first.type_version(ROUTE_CONFIGURATION)
    assert second.changes_since(ROUTE_CONFIGURATION, routes_before) == {"apx-routes"}
    for type_url in (LISTENER, CLUSTER):
        assert second.changes_since(type_url, first.type_version(type_url)) == frozenset()
        assert second.type_version(type_url) == first.type_version(type_url)
    for type_url in (VIRTUAL_HOST, ROUTE_CONFIGURATION):
        assert second.type_version(type_url) != first.type_version(type_url)
    # A stream that is not in step with the snapshot this one was built from diffs everything.
    assert second.changes_since(VIRTUAL_HOST, "") is None
    assert second.changes_since(VIRTUAL_HOST, "0123456789abcdef") is None
    # Built again from an unchanged render: nothing changed, every type version kept.
    third = XdsSnapshot.from_envoy(same_output, second).prepare()
    for type_url in (LISTENER, CLUSTER, ROUTE_CONFIGURATION, VIRTUAL_HOST):
        assert third.changes_since(type_url, second.type_version(type_url)) == frozenset()
        assert third.type_version(type_url) == second.type_version(type_url)


def test_a_removed_virtual_host_is_a_change_and_every_host_holds_the_renders_own_bytes() -> None:
    docs = sample_docs()
    without = [d for d in docs if not (d["kind"] == "Route" and d["metadata"]["name"] == "payments-legacy")]
    first_output, second_output = _cached_renders(docs, without)
    first = XdsSnapshot.from_envoy(first_output).prepare()
    second = XdsSnapshot.from_envoy(second_output, first).prepare()
    host = "apx-routes/legacy.payments.example.com"
    assert host in first.virtual_hosts and host not in second.virtual_hosts
    assert host in (second.changes_since(VIRTUAL_HOST, first.type_version(VIRTUAL_HOST)) or ())
    # No second copy of a virtual host's bytes: the snapshot keeps the render's objects.
    rendered = dict(second_output.encoded.virtual_hosts)  # type: ignore[attr-defined]
    hosts = second.routes["apx-routes"].hosts
    assert hosts and all(parts.full is rendered[parts.vhds.name.split("/", 1)[1]] for parts in hosts)


def test_the_inline_route_table_is_assembled_only_when_asked_and_versions_by_content() -> None:
    docs = sample_docs()
    edited = edit_route(docs, "payments-legacy", timeout="5s")
    first_output, second_output, same_output = _cached_renders(docs, edited, edited)
    first = XdsSnapshot.from_envoy(first_output).prepare()
    second = XdsSnapshot.from_envoy(second_output, first).prepare(inline=False)
    assert not second._inline  # no stream wants the whole table inline: nothing assembled it
    inline = second.get(ROUTE_CONFIGURATION, "apx-routes")
    assert inline is not None
    encoded = second_output.encoded.route_configurations[0]  # type: ignore[attr-defined]
    expected = route_pb2.RouteConfiguration.FromString(encoded)
    assert _unpack_route(inline.any_bytes) == expected
    before = first.get(ROUTE_CONFIGURATION, "apx-routes")
    assert before is not None and before.version != inline.version
    again = XdsSnapshot.from_envoy(same_output).prepare()  # another history, the same content
    assert again.get(ROUTE_CONFIGURATION, "apx-routes").version == inline.version  # type: ignore[union-attr]
