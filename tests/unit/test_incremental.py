"""Incremental and from-scratch compilation give byte-identical output after every edit.

The operator keeps one ``apx.controllers.memo.Caches`` for its whole life and
passes it to every pass; ``apx translate`` and the periodic full resync compile
from scratch. These tests drive random (seeded, so reproducible) sequences of
the edits users make — change a Route's timeout, hosts, match, canary weight,
delete and add Routes, change a Product's limits, apply a new PolicyBundle
version, break a spec, reorder the input — and compare, after every step,
every output of the cached path with a from-scratch compile of the same
objects: the IR, the statuses, the Redis rule sets and route table, the Envoy
resources (serialized bytes and version), the Pub/Sub plan and the
Kubernetes manifests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apx.contracts.documents import VERSION_LENGTH, canonical_json
from apx.controllers.memo import Caches, PassMemo
from apx.controllers.pipeline import Compiled, compile_resources, finish, first_stage
from apx.controllers.renderers.redis_rules import _joined_version, render_route_table
from apx.controllers.translate import translate

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]


def _workload(routes: int, products: int) -> list[Doc]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from workload import generate_documents
    finally:
        sys.path.remove(str(ROOT / "bench"))
    documents: list[Doc] = generate_documents(routes, products)
    for index, document in enumerate(documents):
        # Creation order decides match conflicts; give every object a distinct one.
        document["metadata"]["creationTimestamp"] = f"2026-01-01T00:{index // 60:02d}:{index % 60:02d}Z"
        document["metadata"]["uid"] = f"uid-{index}"
    return documents


def _outputs(compiled: Compiled) -> dict[str, Any]:
    return {
        "ir": compiled.ir,
        "statuses": {key: status.to_dict("t") for key, status in compiled.statuses.items()},
        "redis": compiled.redis.to_json(),
        "envoy": compiled.envoy.serialize(),
        "envoy_version": compiled.envoy.version,
        "envoy_errors": compiled.envoy.errors,
        "pubsub": compiled.pubsub.to_json(),
        "kubernetes": compiled.kubernetes.to_json(),
    }


def _routes(documents: list[Doc]) -> list[int]:
    return [i for i, d in enumerate(documents) if d["kind"] == "Route"]


def _replace(documents: list[Doc], index: int, change: Callable[[Doc], None]) -> None:
    # The operator's store holds a new dict for every change; edits never mutate a stored body.
    document = copy.deepcopy(documents[index])
    change(document)
    document["metadata"]["generation"] = int(document["metadata"].get("generation", 1)) + 1
    documents[index] = document


EDITS = (
    "timeout", "hosts", "path", "canary_weight", "delete", "add", "product", "bundle", "break", "same",
    "reorder", "conflict", "methods", "repoint",
)  # fmt: skip
# Edits of one Route's body: what the stages' delta paths (``apx.controllers.delta``) handle.
ROUTE_EDITS = ("timeout", "hosts", "path", "canary_weight", "methods", "same", "repoint")


def _edit(
    rng: random.Random, documents: list[Doc], counter: list[int], kinds: tuple[str, ...] = EDITS
) -> str:
    routes = _routes(documents)
    kind = rng.choice(kinds)
    index = rng.choice(routes)
    if kind == "timeout":
        _replace(documents, index, lambda d: d["spec"].__setitem__("timeout", f"{rng.randint(1, 60)}s"))
    elif kind == "hosts":
        _replace(
            documents,
            index,
            lambda d: d["spec"]["match"].__setitem__("hosts", [f"h{rng.randint(0, 5)}.example.com"]),
        )
    elif kind == "path":

        def path(d: Doc) -> None:
            d["spec"]["match"].pop("path", None)
            d["spec"]["match"]["pathPrefix"] = f"/p{rng.randint(0, 20)}"

        _replace(documents, index, path)
    elif kind == "methods":
        _replace(
            documents,
            index,
            lambda d: d["spec"]["match"].__setitem__("methods", rng.choice([[], ["GET"], ["GET", "POST"]])),
        )
    elif kind == "repoint":

        def repoint(d: Doc) -> None:
            # Another (or a missing) Product, and a served, unserved or no longer served policy version.
            d["spec"]["productRef"]["name"] = f"product-{rng.randint(0, 6):03d}"
            d["spec"]["policyRef"]["version"] = rng.choice(["1.0.0", "1.1.0", "1.1.1", "0.9.0"])

        _replace(documents, index, repoint)
    elif kind == "canary_weight":

        def weight(d: Doc) -> None:
            if d["spec"].get("canary") is None:
                return
            revision = (d.get("status") or {}).get("canary", {}).get("revision")
            canary = {"phase": "Progressing", "step": 1, "weight": rng.choice([5, 10, 25, 50])}
            if revision is not None:
                canary["revision"] = revision
            d["status"] = {"canary": canary}

        _replace(documents, index, weight)
    elif kind == "delete":
        if len(routes) > 5:
            del documents[index]
    elif kind == "add":
        counter[0] += 1

        def rename(d: Doc) -> None:
            d["metadata"]["name"] = f"added-{counter[0]}"
            d["metadata"]["uid"] = f"uid-added-{counter[0]}"
            d["metadata"]["creationTimestamp"] = f"2026-02-01T00:00:{counter[0] % 60:02d}Z"
            d["spec"]["match"]["hosts"] = [f"added{counter[0]}.example.com"]

        document = copy.deepcopy(documents[index])
        rename(document)
        documents.append(document)
    elif kind == "product":
        products = [i for i, d in enumerate(documents) if d["kind"] == "Product"]

        def limits(d: Doc) -> None:
            d["spec"]["plans"][0]["rateLimit"] = {"requestsPerSecond": rng.randint(1, 9), "burst": 20}

        _replace(documents, rng.choice(products), limits)
    elif kind == "bundle":
        bundles = [i for i, d in enumerate(documents) if d["kind"] == "PolicyBundle"]

        def sample_rate(d: Doc) -> None:
            d["spec"].setdefault("observability", {})["sampleRate"] = rng.choice([0.1, 0.2, 0.5])
            major, minor, patch = (int(p) for p in str(d["spec"]["version"]).split("."))
            d["spec"]["version"] = f"{major}.{minor}.{patch + 1}"

        _replace(documents, rng.choice(bundles), sample_rate)
    elif kind == "break":

        def broken(d: Doc) -> None:
            d["spec"]["match"]["headers"] = [{"name": "x-bad", "regex": "(unclosed"}]

        _replace(documents, index, broken)
    elif kind == "conflict":
        other = documents[rng.choice(routes)]

        def copy_match(d: Doc) -> None:
            d["spec"]["match"] = copy.deepcopy(other["spec"]["match"])

        _replace(documents, index, copy_match)
    elif kind == "reorder":
        rng.shuffle(documents)
    return kind


def _compile(documents: list[Doc], caches: Caches | None, snapshot_configmaps: bool) -> Compiled:
    stage = first_stage(documents, caches=caches)
    return finish(stage, snapshot_configmaps=snapshot_configmaps)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(8))
def test_incremental_output_equals_from_scratch_output_after_every_edit(seed: int) -> None:
    rng = random.Random(seed)
    documents = _workload(60, 6)
    caches = Caches()
    counter = [0]
    # Odd seeds leave the snapshot ConfigMaps out of the Kubernetes output, as the operator does.
    snapshot_configmaps = seed % 2 == 0
    for step in range(14):
        kind = _edit(rng, documents, counter) if step else "initial"
        incremental = _outputs(_compile(documents, caches, snapshot_configmaps))
        caches.end_pass()
        scratch = _outputs(_compile(copy.deepcopy(documents), None, snapshot_configmaps))
        for name in scratch:
            assert incremental[name] == scratch[name], f"seed {seed}, step {step} ({kind}): {name} differs"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(4))
def test_output_after_many_one_route_edits_in_a_row_equals_from_scratch_output(seed: int) -> None:
    # Long runs of one-Route edits keep every stage on its delta path, pass after pass.
    rng = random.Random(1000 + seed)
    documents = _workload(60, 6)
    caches = Caches()
    counter = [0]
    for step in range(24):
        kind = _edit(rng, documents, counter, ROUTE_EDITS) if step else "initial"
        if step % 5 == 4:  # now and then two Routes at once
            _edit(rng, documents, counter, ROUTE_EDITS)
        incremental = _outputs(_compile(documents, caches, seed % 2 == 0))
        caches.end_pass()
        scratch = _outputs(_compile(copy.deepcopy(documents), None, seed % 2 == 0))
        for name in scratch:
            assert incremental[name] == scratch[name], f"seed {seed}, step {step} ({kind}): {name} differs"


def test_unchanged_objects_keep_their_ir_objects_and_a_changed_route_gets_a_new_one() -> None:
    documents = _workload(30, 3)
    caches = Caches()
    first = translate(documents, caches=caches)
    caches.end_pass()
    index = _routes(documents)[0]
    _replace(documents, index, lambda d: d["spec"].__setitem__("timeout", "3s"))
    second = translate(documents, caches=caches)
    changed = documents[index]["metadata"]["name"]
    for before, after in zip(first.ir.routes, second.ir.routes, strict=True):
        assert (before is after) == (before.ref.name != changed)
    assert all(a is b for a, b in zip(first.ir.products, second.ir.products, strict=True))


def test_caches_drop_what_a_whole_pass_did_not_use() -> None:
    documents = _workload(20, 2)
    caches = Caches()
    compile_resources(documents, caches=caches)
    caches.end_pass()
    full = caches.sizes()
    routes = _routes(documents)
    for index in sorted(routes[10:], reverse=True):
        del documents[index]
    compile_resources(documents, caches=caches)
    caches.end_pass()
    compile_resources(documents, caches=caches)
    caches.end_pass()
    assert caches.sizes()["routes"] == 10 < full["routes"]
    assert caches.sizes()["envoy_routes"] == 10


def test_pass_memo_keeps_entries_used_in_the_last_pass_only() -> None:
    memo: PassMemo[str, int] = PassMemo()
    memo.put("a", 1)
    memo.put("b", 2)
    memo.end_pass()
    assert memo.get("a") == 1
    memo.end_pass()
    assert memo.get("a") == 1
    assert memo.get("b") is None


def test_route_table_version_from_kept_encodings_equals_the_one_from_the_documents() -> None:
    result = translate(_workload(25, 3))
    table = render_route_table(result.ir.routes, Caches())
    documents = table.documents()
    members = [canonical_json({key: documents[key]})[1:-1].encode() for key in sorted(documents)]
    expected = hashlib.sha256(b"".join(hashlib.sha256(m).digest() for m in members)).hexdigest()
    assert table.version == expected[:VERSION_LENGTH]
    assert table.version == render_route_table(result.ir.routes).version  # without caches


def test_the_kept_envoy_context_holds_only_the_clusters_the_last_render_used() -> None:
    documents = _workload(40, 4)
    caches = Caches()
    compile_resources(documents, caches=caches)
    caches.end_pass()
    state = caches.envoy_context[0]
    before = len(state.backend_clusters)
    # Every Route moves to the first Route's backend: most backend clusters are no longer used.
    shared = documents[_routes(documents)[0]]["spec"]["backend"]
    for index in _routes(documents)[1:]:
        _replace(documents, index, lambda d: d["spec"].__setitem__("backend", copy.deepcopy(shared)))
    compiled = compile_resources(documents, caches=caches)
    assert caches.envoy_context[0] is state  # the same context, kept across the renders
    used = {t.backend for r in compiled.ir.routes if r.mode == "sync" for t in r.tracks}
    assert set(state.backend_clusters) <= used
    assert len(state.backend_clusters) < before
    assert len(state.listeners) == 1


def _stalled_keys(statuses: dict[tuple[str, str], Any]) -> tuple[tuple[str, str], ...]:
    return tuple(key for key, status in statuses.items() if key[0] in ("Product", "Route") and status.stalled)


@pytest.mark.timeout(300)
def test_kept_stalled_keys_are_the_stalled_products_and_routes_in_status_order() -> None:
    # ``TranslateResult.stalled_keys`` is what the pipeline looks at instead of every status: the
    # delta updates it for the edited Routes, which break and mend here ("break", then other edits).
    rng = random.Random(7)
    documents = _workload(60, 6)
    caches = Caches()
    counter = [0]
    kept = 0
    for step in range(30):
        if step:
            _edit(rng, documents, counter, (*ROUTE_EDITS, "break", "break"))
        result = translate(documents, caches=caches)
        caches.end_pass()
        if result.stalled_keys is not None:
            kept += 1
            assert result.stalled_keys == _stalled_keys(result.statuses), f"step {step}"
    assert kept > 20  # the kept keys were in use, pass after pass


@pytest.mark.timeout(300)
def test_a_summarised_status_equal_to_last_passs_is_last_passs_object() -> None:
    # The operator looks again only at statuses that are new objects: after an edit, every Product's
    # and async Route's status that did not change is the very object of last pass, and every other
    # equals the from-scratch one (``pipeline._summaries_delta`` makes only those again).
    rng = random.Random(11)
    documents = _workload(60, 6)
    caches = Caches()
    counter = [0]
    before = _compile(documents, caches, False).statuses
    caches.end_pass()
    reused = 0
    for step in range(16):
        kind = _edit(rng, documents, counter, (*ROUTE_EDITS, "product", "break"))
        compiled = _compile(documents, caches, False)
        caches.end_pass()
        scratch = _compile(copy.deepcopy(documents), None, False).statuses
        summarised = [("Product", p.key) for p in compiled.ir.products]
        summarised += [("Route", r.key) for r in compiled.ir.routes if r.mode == "async"]
        for key in summarised:
            status = compiled.statuses[key]
            assert status == scratch[key], f"step {step} ({kind}): {key}"
            if before.get(key) == status:
                assert status is before[key], f"step {step} ({kind}): {key} is a new object"
                reused += 1
        before = compiled.statuses
    assert reused > 200  # most of the 6 Products and ~14 async Routes, pass after pass


def test_the_route_table_version_is_the_hash_of_its_members_digests_with_any_characters() -> None:
    # The definition REDIS_KEYS.md states, computed by hand: per member ``"<key>":<entry>`` of the
    # table's canonical JSON its sha256, then the sha256 of those digests in key order.
    entries = (("default/b", "{}"), ("default/c", '{"x":1}'), ("default/caf\u00e9", '{"path":"/\u00fc"}'))
    members = [f"{json.dumps(key, ensure_ascii=False)}:{value}".encode() for key, value in entries]
    expected = hashlib.sha256(b"".join(hashlib.sha256(m).digest() for m in members)).hexdigest()
    assert _joined_version(entries) == expected[:VERSION_LENGTH]
    assert _joined_version(()) == hashlib.sha256(b"").hexdigest()[:VERSION_LENGTH]
    # Each member counts once, where it is: a swap of two entries' values is another version.
    swapped = ((entries[0][0], entries[1][1]), (entries[1][0], entries[0][1]), entries[2])
    assert _joined_version(swapped) != _joined_version(entries)


def test_the_envoy_version_is_the_digest_of_the_resources_digests() -> None:
    # The definition both renders share (``envoy.incremental.version_of``), computed here by hand
    # from the from-scratch render's messages, and checked against the incremental render's.
    def sha(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    documents = _workload(30, 3)
    scratch = compile_resources(copy.deepcopy(documents)).envoy
    (configuration,) = scratch.route_configurations
    head = type(configuration)(name=configuration.name).SerializeToString(deterministic=True)
    hosts = b"".join(sha(host.SerializeToString(deterministic=True)) for host in configuration.virtual_hosts)
    joined = (
        f"{len(scratch.listeners)},1,{len(scratch.clusters)};".encode()
        + b"".join(sha(listener.SerializeToString(deterministic=True)) for listener in scratch.listeners)
        + sha(head + hosts)
        + b"".join(sha(cluster.SerializeToString(deterministic=True)) for cluster in scratch.clusters)
    )
    assert scratch.version == "sha256:" + hashlib.sha256(joined).hexdigest()
    caches = Caches()
    assert compile_resources(documents, caches=caches).envoy.version == scratch.version
    caches.end_pass()
    # One Route's timeout: one virtual host changes, and so does the version, on both paths.
    _replace(documents, _routes(documents)[0], lambda d: d["spec"].__setitem__("timeout", "7s"))
    edited = compile_resources(documents, caches=caches).envoy.version
    assert edited != scratch.version
    assert edited == compile_resources(copy.deepcopy(documents)).envoy.version
