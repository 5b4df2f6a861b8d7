"""Benchmark: the Envoy snapshot ConfigMaps (DiscoveryResponse .pb + proto3 JSON) at 10,000 Routes.

    python bench/bench_snapshot_configmaps.py [--routes 10000] [--products 1000] [--all-json]
                                              [--json-format-baseline]

Baselines measured in the same run: the previous ConfigMap form (every
resource packed in ``Any``, length-delimited, gzip — 0.1's
``snapshot_document``) and raw protobuf serialisation of the snapshot. Then:

* ``snapshot_document`` cold (first render in the process: every Route's JSON
  is built) and after a one-Route edit (the other Routes' JSON is reused),
  plus the unchanged-version case (the previous files are returned);
* ``render_envoy_snapshot`` (gzip and split into parts): time, parts, the
  largest part's payload against the 1 MiB limit, and how many ConfigMaps
  (and bytes) a one-Route edit rewrites beside what is stored;
* ``decode_configmaps`` (what a restarted operator does before serving);
* with ``--all-json``: the same with JSON for every type (by default a type
  whose binary response exceeds ``JSON_MAX_PB_BYTES``, the 10,000-Route route
  table, is stored as binary only);
* with ``--json-format-baseline``: ``json_format.MessageToDict`` of every
  resource, the conversion the readable form replaces (slow: tens of seconds).
"""

from __future__ import annotations

import argparse
import base64
import copy
import gc
import gzip
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import generate_documents

from apx.controllers.renderers.envoy import _delimited, discovery_json, render_envoy
from apx.controllers.renderers.envoy.common import pack
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps, render_envoy_snapshot
from apx.controllers.translate import translate

T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _payload(configmap: dict[str, Any]) -> int:
    data = sum(len(v.encode()) for v in (configmap.get("data") or {}).values())
    return data + sum(len(base64.b64decode(v)) for v in (configmap.get("binaryData") or {}).values())


def _line(kind: str, what: str, seconds: float, extra: str = "") -> None:
    print(f"{kind:9} {what:48} {seconds * 1000:8.0f} ms  {extra}", flush=True)


def _edited(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same documents with one Route's timeout changed."""
    edited = copy.deepcopy(documents)
    route = next(d for d in edited if d["kind"] == "Route")
    route["spec"]["timeout"] = "17s" if route["spec"].get("timeout") != "17s" else "18s"
    return edited


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=1_000)
    parser.add_argument("--json-format-baseline", action="store_true")
    parser.add_argument(
        "--all-json", action="store_true", help="JSON for every type, however large (JSON_MAX_PB_BYTES off)"
    )
    args = parser.parse_args()
    if args.all_json:
        discovery_json.JSON_MAX_PB_BYTES = 1 << 62

    documents = generate_documents(args.routes, args.products)
    envoy = render_envoy(translate(documents).ir)
    print(
        f"{args.routes} Routes: {sum(1 for _ in envoy.resources())} resources, version {envoy.version[:19]}…"
    )

    raw_s, raw = _timed(envoy.serialize)
    _line("baseline", "protobuf serialisation of the snapshot", raw_s, f"{len(raw) / 1e6:.2f} MB")
    old_s, old = _timed(lambda: gzip.compress(_delimited(pack(r) for r in envoy.resources()), 6, mtime=0))
    _line("baseline", "previous form (Any stream + gzip), 1 ConfigMap", old_s, f"{len(old) / 1e6:.2f} MB")

    def cold() -> dict[str, Any]:
        document = envoy.snapshot_document()
        document["files"].layouts()  # built here, read by the render below
        return document

    cold_s, document = _timed(cold)
    layouts = document["files"].layouts()
    sizes = ", ".join(f"{name} {layout.size / 1e6:.2f}" for name, layout in layouts.items())
    _line("new", "snapshot_document, cold", cold_s, f"({sizes} MB)")
    split_s, configmaps = _timed(lambda: render_envoy_snapshot(document, "apx-system"))
    largest = max(_payload(c) for c in configmaps)
    stored = sum(_payload(c) for c in configmaps)
    _line(
        "new",
        "render_envoy_snapshot (gzip + split)",
        split_s,
        f"{len(configmaps) - 1} parts + index, {stored / 1e6:.2f} MB, largest part {largest / 1024:.0f} KiB",
    )
    same_s, _ = _timed(lambda: render_envoy_snapshot(envoy.snapshot_document(), "apx-system"))
    _line("new", "document + ConfigMaps, same version (reused)", same_s)
    edited = render_envoy(translate(_edited(documents)).ir)
    assert edited.version != envoy.version
    warm_s, rewritten = _timed(lambda: render_envoy_snapshot(edited.snapshot_document(), "apx-system"))
    _line("new", "document + ConfigMaps, one Route edited", warm_s)
    # What the operator sends for that edit: the ConfigMaps whose content changed (a part's name
    # is its content's digest, so a changed part is a new name), beside all it stores.
    before = {c["metadata"]["name"]: c for c in configmaps}
    changed = [c for c in rewritten if before.get(c["metadata"]["name"]) != c]
    print(
        f"{'new':9} {'ConfigMaps a one-Route edit rewrites':48} {len(changed):5} of {len(rewritten)}"
        f"  ({sum(_payload(c) for c in changed) / 1024:.0f} KiB of {stored / 1024:.0f} KiB stored)",
        flush=True,
    )
    decode_s, decoded = _timed(lambda: decode_configmaps(configmaps))
    assert decoded is not None and len(decoded) == sum(1 for _ in envoy.resources())
    _line("new", "decode_configmaps (restart path)", decode_s)
    print(
        f"ratios: full new render (cold + split) / previous form {(cold_s + split_s) / old_s:.1f}x; "
        f"one Route edited / previous form {warm_s / old_s:.1f}x"
    )
    if args.json_format_baseline:
        from google.protobuf import json_format

        plain_s, _ = _timed(lambda: [json_format.MessageToDict(pack(r)) for r in envoy.resources()])
        _line("baseline", "json_format.MessageToDict of every resource", plain_s)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
