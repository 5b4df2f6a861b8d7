"""The Envoy snapshot ConfigMaps: readable without APX code, split under the size limit, decoded only whole.

Covers ``apx.controllers.renderers.kubernetes.envoy_snapshot`` (index and
parts, ``decode_configmaps``) and ``apx.controllers.renderers.envoy.discovery_json``
(the fast proto3 JSON). "Without APX code" is checked by reading the files
the way ``ENVOY_SNAPSHOT.md`` tells a person to (concatenate the slices,
gunzip) and parsing them with protobuf's own ``json_format`` / binary parser
into ``envoy.service.discovery.v3.DiscoveryResponse``.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format

from apx.controllers import names
from apx.controllers.renderers import envoy as envoy_package
from apx.controllers.renderers.envoy import EnvoyOutput, discovery_json, render_envoy
from apx.controllers.renderers.envoy.common import pack
from apx.controllers.renderers.envoy.discovery_json import (
    SplitResource,
    discovery_response_bytes,
    discovery_response_file,
    resource_text,
)
from apx.controllers.renderers.kubernetes import envoy_snapshot
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps, render_envoy_snapshot
from apx.controllers.translate import translate

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from workload import generate_documents  # noqa: E402

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "apx-system"


@pytest.fixture(scope="module")
def envoy() -> EnvoyOutput:
    """A workload with every feature the renderer has (JWT, RBAC, CORS, rate limits, canaries, headers)."""
    result = translate(generate_documents(120, 12))
    assert not result.stalled
    return render_envoy(result.ir)


def _configmaps(envoy: EnvoyOutput) -> list[dict[str, Any]]:
    return render_envoy_snapshot(envoy.snapshot_document(), NAMESPACE)


def _packed(envoy: EnvoyOutput) -> list[Any]:
    return [pack(resource) for resource in envoy.resources()]


def _read_like_a_person(configmaps: Sequence[Mapping[str, Any]], name: str) -> bytes:
    """What ENVOY_SNAPSHOT.md says: the index, then the parts in its order; the file's key in
    each, base64 -d, gunzip (which reads every member of a multi-member stream)."""
    by_name = {c["metadata"]["name"]: c for c in configmaps}
    index = by_name[names.envoy_snapshot_configmap()]
    stored = b""
    for part in [names.envoy_snapshot_configmap(), *index["data"]["parts"].split()]:
        for key in (f"{name}.gz", name):
            if key in by_name[part].get("binaryData", {}):
                stored += base64.b64decode(by_name[part]["binaryData"][key])
            elif key in (by_name[part].get("data", {}) if part != index["metadata"]["name"] else {}):
                stored += by_name[part]["data"][key].encode()
    return gzip.decompress(stored) if stored[:2] == b"\x1f\x8b" else stored


def _payload(configmap: Mapping[str, Any]) -> int:
    """Bytes the API server counts against a ConfigMap's 1 MiB: data values plus decoded binaryData."""
    data = sum(len(v.encode()) for v in (configmap.get("data") or {}).values())
    return data + sum(len(base64.b64decode(v)) for v in (configmap.get("binaryData") or {}).values())


def test_json_is_what_protobuf_json_format_writes_for_every_resource(envoy: EnvoyOutput) -> None:
    for resource in envoy.resources():
        assert json.loads(resource_text(resource)) == json_format.MessageToDict(pack(resource))


def test_small_snapshot_is_one_plain_part_envoy_can_mount_as_files(envoy: EnvoyOutput) -> None:
    small = dataclass_with(envoy, route_configurations=[], clusters=envoy.clusters[:2])
    configmaps = _configmaps(small)
    assert [c["metadata"]["name"] for c in configmaps] == ["apx-envoy-snapshot", "apx-envoy-snapshot-0"]
    part = configmaps[1]
    assert sorted(part["data"]) == ["cds.json", "lds.json", "rds.json"]
    assert sorted(part["binaryData"]) == ["cds.pb", "lds.pb", "rds.pb"]
    clusters = json_format.Parse(part["data"]["cds.json"], discovery_pb2.DiscoveryResponse())
    assert clusters.version_info == small.version
    assert clusters.type_url == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert list(clusters.resources) == _packed(small)[1:]
    assert decode_configmaps(configmaps) == _packed(small)


def test_large_snapshot_is_gzip_sliced_over_content_named_parts_each_under_the_budget(
    envoy: EnvoyOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 4 * 1024)
    configmaps = _configmaps(envoy)
    index = configmaps[0]
    parts = index["data"]["parts"].split()
    assert len(parts) > 3
    assert json.loads(index["data"]["index.json"])["format"] == "apx.dev/envoy-snapshot/v2"
    for part in parts:  # named by what they hold: a part that changes is a new name
        digest = part.removeprefix(names.envoy_snapshot_part_prefix())
        assert len(digest) == 16 and int(digest, 16) >= 0
    assert [c["metadata"]["name"] for c in configmaps[1:]] == parts
    # Every file's head (its version, and lengths that change with any resource) is in the index.
    assert sorted(index["binaryData"]) == sorted(f"{name}.gz" for name in envoy.snapshot_document()["files"])
    for part in configmaps[1:]:
        assert _payload(part) <= 4 * 1024
        assert "annotations" not in part["metadata"]  # no version: the same part serves the next one
        assert "ownerReferences" not in part["metadata"]
        kubernetes_validate.validate(part, "1.32", strict=True)
    kubernetes_validate.validate(index, "1.32", strict=True)
    # Read without APX code: binary and JSON agree with the rendered resources.
    for xds, resources in (
        ("lds", envoy.listeners),
        ("rds", envoy.route_configurations),
        ("cds", envoy.clusters),
    ):
        binary = discovery_pb2.DiscoveryResponse.FromString(_read_like_a_person(configmaps, f"{xds}.pb"))
        text = json_format.Parse(
            _read_like_a_person(configmaps, f"{xds}.json"), discovery_pb2.DiscoveryResponse()
        )
        assert binary.version_info == text.version_info == envoy.version
        assert list(binary.resources) == [pack(r) for r in resources]
        # Nested Any bytes may be ordered differently after a JSON round trip: compare as JSON.
        assert [json_format.MessageToDict(r) for r in text.resources] == [
            json_format.MessageToDict(pack(r)) for r in resources
        ]
    assert decode_configmaps(configmaps) == _packed(envoy)


def _with_route_edited(documents: list[dict[str, Any]], name: str, timeout: str) -> list[dict[str, Any]]:
    edited = copy.deepcopy(documents)
    route = next(d for d in edited if d["kind"] == "Route" and d["metadata"]["name"] == name)
    route["spec"]["timeout"] = timeout
    return edited


@pytest.fixture()
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 120-Route workload cut as a 10,000-Route one is: its route table in binary only, in
    ~20 chunks over ~10 parts."""
    monkeypatch.setattr(discovery_json, "JSON_MAX_PB_BYTES", 100_000)
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 16 * 1024)
    monkeypatch.setattr(envoy_snapshot, "PART_MIN_BYTES", 1024)
    monkeypatch.setattr(envoy_snapshot, "PART_CUT_ONE_IN", 2)
    monkeypatch.setattr(envoy_snapshot, "CHUNK_MIN_BYTES", 2 * 1024)
    monkeypatch.setattr(envoy_snapshot, "CHUNK_CUT_ONE_IN", 2)


@pytest.mark.usefixtures("small_chunks")
def test_a_one_route_change_rewrites_the_index_and_one_or_two_parts_not_the_rest() -> None:
    from apx.controllers.memo import Caches

    documents = generate_documents(120, 12)
    caches = Caches()
    first = _configmaps(render_envoy(translate(documents).ir, caches=caches))
    parts_before = {c["metadata"]["name"]: c for c in first[1:]}
    assert len(parts_before) >= 8
    # Sync Routes: an async Route's timeout is the gateway's, not in Envoy's configuration.
    routes = [
        d["metadata"]["name"]
        for d in documents
        if d["kind"] == "Route" and d["spec"].get("mode", "sync") == "sync"
    ]
    version = first[0]["data"]["version"]
    for number, name in enumerate(routes[::19]):
        documents = _with_route_edited(documents, name, f"{41 + number}s")
        output = render_envoy(translate(documents).ir, caches=caches)
        assert output.version != version
        version = output.version
        configmaps = _configmaps(output)
        parts = {c["metadata"]["name"]: c for c in configmaps[1:]}
        new = set(parts) - set(parts_before)
        assert 1 <= len(new) <= 2, (name, len(new), len(parts))
        for kept in set(parts) & set(parts_before):
            assert parts[kept] == parts_before[kept]
        # What was stored is the new snapshot, as a render from scratch gives it.
        fresh = render_envoy(translate(copy.deepcopy(documents)).ir)
        assert fresh.version == output.version
        assert decode_configmaps(configmaps) == _packed(fresh)
        assert decode_configmaps([*configmaps, *(parts_before[n] for n in set(parts_before) - set(parts))])
        parts_before = parts


@pytest.mark.usefixtures("small_chunks")
def test_a_route_added_or_removed_in_the_middle_moves_no_cut_far_from_it() -> None:
    """Its host, its cluster and the cluster's JSON line change: a part or two each, no more."""
    documents = generate_documents(120, 12)
    base = {c["metadata"]["name"]: c for c in _configmaps(render_envoy(translate(documents).ir))[1:]}
    route = next(d for d in documents if d["kind"] == "Route" and "path" in d["spec"]["match"])
    added = copy.deepcopy(route)
    added["metadata"]["name"] += "-added"
    added["spec"]["match"]["hosts"] = ["added.example.com"]
    shrunk = [d for d in documents if d is not route]
    for changed in ([*documents, added], shrunk):
        output = render_envoy(translate(changed).ir)
        configmaps = _configmaps(output)
        parts = {c["metadata"]["name"]: c for c in configmaps[1:]}
        assert len(set(parts) - set(base)) <= 4 and len(set(parts) & set(base)) >= len(base) - 4
        for kept in set(parts) & set(base):  # a name kept is the same bytes, not a part rewritten in place
            assert parts[kept] == base[kept]
        assert decode_configmaps(configmaps) == _packed(output)


def test_real_budget_keeps_every_configmap_under_one_mebibyte(envoy: EnvoyOutput) -> None:
    for configmap in _configmaps(envoy):
        assert _payload(configmap) <= envoy_snapshot.PART_BYTES < 1024 * 1024
        assert len(json.dumps(configmap)) < 1536 * 1024  # the request body, binaryData in base64


@pytest.fixture()
def split(envoy: EnvoyOutput, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 4 * 1024)
    return _configmaps(envoy)


def test_a_missing_part_gives_none(split: list[dict[str, Any]]) -> None:
    assert decode_configmaps(split) is not None
    second = split[0]["data"]["parts"].split()[1]
    assert decode_configmaps([c for c in split if c["metadata"]["name"] != second]) is None
    assert decode_configmaps(split[1:]) is None  # no index
    headless = copy.deepcopy(split)
    del headless[0]["binaryData"]  # the heads the index holds
    assert decode_configmaps(headless) is None


def test_parts_of_another_snapshot_give_none(envoy: EnvoyOutput, split: list[dict[str, Any]]) -> None:
    other = _configmaps(dataclass_with(envoy, clusters=envoy.clusters[:-1]))
    # A part of another version swapped in under the name the index knows (a part both hold,
    # the same bytes under the same name, is no mix: it serves either).
    names_here = {c["metadata"]["name"] for c in split}
    names_there = {c["metadata"]["name"] for c in other}
    theirs = next(c for c in other[1:] if c["metadata"]["name"] not in names_here)
    mixed = copy.deepcopy(split)
    ours = next(c for c in mixed[1:] if c["metadata"]["name"] not in names_there)
    ours["binaryData"] = theirs["binaryData"]
    assert decode_configmaps(mixed) is None


def test_the_one_part_form_of_another_version_gives_none(envoy: EnvoyOutput) -> None:
    """Its part, rewritten in place, says which version it was written for."""
    small = _configmaps(dataclass_with(envoy, route_configurations=[], clusters=envoy.clusters[:2]))
    small[1]["metadata"]["annotations"]["apx.dev/envoy-snapshot-version"] = "sha256:older"
    assert decode_configmaps(small) is None


def test_what_an_earlier_operator_stored_in_one_gzip_stream_per_file_is_still_read(
    envoy: EnvoyOutput,
) -> None:
    """The v1 layout of a large snapshot (APX 0.2): ordinal parts, one gzip member per file."""
    files = envoy.snapshot_document()["files"]
    part = names.envoy_snapshot_part_configmap(0)
    entries = [
        {
            "name": name,
            "compression": "gzip",
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
            "slices": [[part, f"{name}.gz"]],
        }
        for name, content in files.items()
    ]
    index_json = {
        "format": "apx.dev/envoy-snapshot/v1",
        "version": envoy.version,
        "parts": [part],
        "files": entries,
    }
    stored = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "apx-envoy-snapshot", "namespace": NAMESPACE},
            "data": {"version": envoy.version, "parts": part, "index.json": json.dumps(index_json)},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": part,
                "namespace": NAMESPACE,
                "annotations": {"apx.dev/envoy-snapshot-version": envoy.version},
            },
            "binaryData": {
                f"{name}.gz": base64.b64encode(gzip.compress(content, mtime=0)).decode()
                for name, content in files.items()
            },
        },
    ]
    assert decode_configmaps(stored) == _packed(envoy)
    stored[1]["metadata"]["annotations"]["apx.dev/envoy-snapshot-version"] = "sha256:older"
    assert decode_configmaps(stored) is None


def test_a_corrupt_or_truncated_slice_gives_none(split: list[dict[str, Any]]) -> None:
    corrupt = copy.deepcopy(split)
    key = next(iter(corrupt[1]["binaryData"]))
    raw = bytearray(base64.b64decode(corrupt[1]["binaryData"][key]))
    raw[len(raw) // 2] ^= 0xFF
    corrupt[1]["binaryData"][key] = base64.b64encode(bytes(raw)).decode()
    assert decode_configmaps(corrupt) is None
    truncated = copy.deepcopy(split)
    truncated[1]["binaryData"][key] = base64.b64encode(bytes(raw[:100])).decode()
    assert decode_configmaps(truncated) is None
    garbage = copy.deepcopy(split)
    garbage[0]["data"]["index.json"] = "{not json"
    assert decode_configmaps(garbage) is None
    duplicated = [*split, {**split[1], "metadata": {**split[1]["metadata"], "namespace": "other"}}]
    assert decode_configmaps(duplicated) is None


def test_a_file_inflating_past_the_limit_gives_none(
    split: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envoy_snapshot, "MAX_FILE_BYTES", 1024)
    assert decode_configmaps(split) is None


def test_a_stream_of_many_gzip_members_is_inflated_whole_and_bounded_in_total(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = [gzip.compress(bytes([n]) * 300, mtime=0) for n in range(10)]
    assert envoy_snapshot._gunzip(b"".join(members)) == b"".join(bytes([n]) * 300 for n in range(10))
    assert envoy_snapshot._gunzip(b"".join(members)[:-3]) is None  # the last member truncated
    assert envoy_snapshot._gunzip(b"".join(members) + b"\x1f") is None  # trailing garbage
    assert envoy_snapshot._gunzip(b"") is None
    # The limit holds over the members together, also when it is reached exactly at a boundary.
    monkeypatch.setattr(envoy_snapshot, "MAX_FILE_BYTES", 900)
    assert envoy_snapshot._gunzip(b"".join(members[:3])) is not None
    assert envoy_snapshot._gunzip(b"".join(members[:4])) is None
    assert envoy_snapshot._gunzip(b"".join(members[:3]) + gzip.compress(b"", mtime=0)) is None


def test_unrelated_configmaps_are_ignored(split: list[dict[str, Any]], envoy: EnvoyOutput) -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}, "data": {}}
    assert decode_configmaps([other, *split]) == _packed(envoy)


def test_the_previous_single_configmap_form_is_still_read(envoy: EnvoyOutput) -> None:
    from apx.controllers.renderers.envoy import _delimited

    legacy = gzip.compress(_delimited(_packed(envoy)), mtime=0)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "apx-envoy-snapshot", "namespace": NAMESPACE},
        "data": {"version": envoy.version},
        "binaryData": {"snapshot.pb.gz": base64.b64encode(legacy).decode()},
    }
    assert decode_configmaps([configmap]) == _packed(envoy)
    # Once the new form is written, a 0.1 key left beside it is ignored.
    stale = [copy.deepcopy(c) for c in _configmaps(dataclass_with(envoy, clusters=envoy.clusters[:1]))]
    stale[0]["binaryData"] = {**stale[0].get("binaryData", {}), **configmap["binaryData"]}
    assert decode_configmaps(stale) == _packed(dataclass_with(envoy, clusters=envoy.clusters[:1]))


def test_rendering_is_deterministic(envoy: EnvoyOutput, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 4 * 1024)
    first = _configmaps(envoy)
    fresh = render_envoy(translate(generate_documents(120, 12)).ir)
    assert fresh.version == envoy.version
    monkeypatch.setattr(envoy_snapshot, "_last_render", None)  # really render again
    assert render_envoy_snapshot(fresh.snapshot_document(), NAMESPACE) == first


def test_json_of_a_type_whose_binary_form_is_large_is_left_out_and_said_so(
    envoy: EnvoyOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {name: len(content) for name, content in envoy.snapshot_document()["files"].items()}
    monkeypatch.setattr(discovery_json, "JSON_MAX_PB_BYTES", sizes["rds.pb"] - 1)
    monkeypatch.setattr(envoy_snapshot, "JSON_MAX_PB_BYTES", sizes["rds.pb"] - 1)
    monkeypatch.setattr(envoy_snapshot, "_last_render", None)
    configmaps = _configmaps(envoy)
    index = json.loads(configmaps[0]["data"]["index.json"])
    assert [f["name"] for f in index["files"]] == ["lds.pb", "rds.pb", "cds.pb", "lds.json", "cds.json"]
    assert index["jsonOmitted"]["types"] == ["rds"]
    assert decode_configmaps(configmaps) == _packed(envoy)


def test_an_unchanged_version_reuses_the_configmaps_without_building_any_file(envoy: EnvoyOutput) -> None:
    first = _configmaps(envoy)
    document = envoy.snapshot_document()
    again = render_envoy_snapshot(document, NAMESPACE)
    assert all(a is b for a, b in zip(again, first, strict=True))
    assert document["files"]._files is None  # the JSON was never built
    other = render_envoy_snapshot(document, "elsewhere")
    assert other[0]["metadata"]["namespace"] == "elsewhere"


def dataclass_with(envoy: EnvoyOutput, **changes: Any) -> EnvoyOutput:
    """A smaller output built the way the renderer builds one (its own version)."""
    fields = {
        "listeners": envoy.listeners,
        "route_configurations": envoy.route_configurations,
        "clusters": envoy.clusters,
        **changes,
    }
    return EnvoyOutput.create(fields["listeners"], fields["route_configurations"], fields["clusters"], {})


def test_a_cached_render_writes_the_same_configmaps_without_parsing_its_route_configuration(
    envoy: EnvoyOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apx.controllers.memo import Caches

    cached = render_envoy(translate(generate_documents(120, 12)).ir, caches=Caches())
    assert cached.version == envoy.version
    document = cached.snapshot_document()
    assert document["counts"] == envoy.snapshot_document()["counts"]
    assert document["counts"]["routes"] > document["counts"]["virtual_hosts"] > 0
    # Counted from the kept encodings: the whole route table was not parsed (the ConfigMap
    # writer runs beside the passes; a 16 MB parse holds the interpreter all along).
    assert "not parsed yet" in repr(cached.route_configurations)
    # With no JSON to write (a large table's), the binary files are framed from the encodings.
    monkeypatch.setattr(discovery_json, "JSON_MAX_PB_BYTES", 0)
    files = dict(document["files"])
    assert "not parsed yet" in repr(cached.route_configurations)
    assert sorted(files) == ["cds.pb", "lds.pb", "rds.pb"]
    assert files == {name: envoy.snapshot_document()["files"][name] for name in files}
    rds = discovery_pb2.DiscoveryResponse.FromString(files["rds.pb"])
    assert list(rds.resources) == [pack(r) for r in envoy.route_configurations]


def test_binary_files_are_the_bytes_protobuf_serializes_for_the_same_discovery_response(
    envoy: EnvoyOutput,
) -> None:
    """Framed from the encodings (no message built): equal to ``SerializeToString(deterministic=True)``."""
    encodings = [r.SerializeToString(deterministic=True) for r in envoy.resources()]
    big = envoy.route_configurations[0].SerializeToString(deterministic=True)
    assert len(big) > 16384  # a multi-byte length prefix
    for version, type_url, resources in (
        (envoy.version, "type.googleapis.com/envoy.config.cluster.v3.Cluster", encodings),
        ("", "type.googleapis.com/envoy.config.listener.v3.Listener", encodings[:1]),
        ("v1", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", [big, b"", big]),
        ("v2", "type.googleapis.com/envoy.config.cluster.v3.Cluster", []),
        ("", "", [b"", b"\x0a\x01x"]),
    ):
        expected = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            resources=[any_pb2.Any(type_url=type_url, value=value) for value in resources],
        ).SerializeToString(deterministic=True)
        assert discovery_response_bytes(version, type_url, resources) == expected
        # A resource given as its head and pieces frames the same bytes.
        split = [
            SplitResource(r[:1], [(b"k", r[1:2], r[2:]), (b"", b"", b"")]) if len(r) > 2 else r
            for r in resources
        ]
        assert discovery_response_bytes(version, type_url, split) == expected
        assert discovery_response_file(version, type_url, split).size == len(expected)


def test_route_counts_of_unchanged_hosts_are_kept_and_a_changed_host_is_counted_again() -> None:
    from apx.controllers.memo import Caches

    documents = generate_documents(120, 12)
    caches = Caches()
    first = render_envoy(translate(documents).ir, caches=caches)
    counted = first.snapshot_document()["counts"]
    route = next(d for d in documents if d["kind"] == "Route" and "path" in d["spec"]["match"])
    edited = copy.deepcopy(route)
    edited["spec"]["match"]["methods"] = ["GET", "POST", "DELETE"]
    extra = copy.deepcopy(edited)
    extra["metadata"]["name"] += "-extra"
    extra["spec"]["match"]["path"] += "/extra"
    documents += [extra]
    second = render_envoy(translate(documents).ir, caches=caches)
    fresh = render_envoy(translate(copy.deepcopy(documents)).ir)
    assert second.snapshot_document()["counts"] == fresh.snapshot_document()["counts"]
    assert second.snapshot_document()["counts"]["routes"] > counted["routes"]
    # Only the current hosts' counts are kept (the memo does not grow with the edits).
    assert second.encoded is not None
    assert set(envoy_package._host_route_counts) == {host for _, host in second.encoded.virtual_hosts}
