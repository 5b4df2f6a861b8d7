"""Incremental pass benchmark: what one Route change costs the operator's pure pipeline at 10,000 Routes.

Run by `make bench` (or `python bench/bench_incremental.py [--routes 10000 --products 1000 --edits 50]`).
No services: it drives the pipeline the reconciler runs (``first_stage`` +
``finish`` with the operator's ``Caches``, the snapshot ConfigMaps left to
their own schedule, exactly as ``apx/operator/reconciler.py`` calls it) over the
benchmark workload (``bench/workload.py``), and prints, each beside the
baseline measured in the same run:

* CPU of one incremental pass after a one-Route edit (p50 / p99 over
  ``--edits`` edits of different Routes: timeouts, path prefixes, methods)
  beside the CPU of one full pass from scratch over the same objects
  (target: ≤ 5 %);
* the Envoy snapshot version and route-table version change, and the
  incremental output equals a from-scratch compile (checked on the last edit);
* the caches' size (Python objects' memory released when they are cleared).

The operator end to end (API, Redis, Pub/Sub, xDS) is ``bench_operator.py``;
there the emulated API, the Pub/Sub emulator and the operator share two cores,
so this one measures the pure pipeline's share without them.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import generate_documents

from apx.controllers.memo import Caches
from apx.controllers.pipeline import Compiled, finish, first_stage
from apx.runtime.process import HeapKeeper, release_free_memory


def _compile(documents: list[dict[str, Any]], caches: Caches | None) -> Compiled:
    stage = first_stage(documents, caches=caches)
    compiled = finish(stage, keep_envoy_resources=True, snapshot_configmaps=False)
    if caches is not None:
        caches.end_pass()
    return compiled


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _edit(document: dict[str, Any], index: int) -> dict[str, Any]:
    edited = copy.deepcopy(document)
    spec = edited["spec"]
    choice = index % 3
    if choice == 0:
        spec["timeout"] = f"{20 + index % 40}s"
    elif choice == 1:
        spec["match"].pop("path", None)
        spec["match"]["pathPrefix"] = f"/edited/{index}/"
    else:
        spec["match"]["methods"] = ["GET"] if spec["match"].get("methods") != ["GET"] else ["GET", "POST"]
    edited["metadata"]["generation"] = int(edited["metadata"].get("generation", 1)) + 1
    return edited


def run(routes: int, products: int, edits: int) -> dict[str, Any]:
    documents = generate_documents(routes, products)
    figures: dict[str, Any] = {"routes": routes, "products": products}

    # The first compile also validates every distinct Envoy entry once (a memo by content that
    # survives passes, as in the operator): the baseline is the second, like a periodic resync.
    _compile(documents, None)
    gc.collect()
    started = time.process_time()
    scratch = _compile(documents, None)
    figures["full_pass_cpu_s"] = time.process_time() - started
    del scratch
    gc.collect()

    caches = Caches()
    started = time.process_time()
    previous = _compile(documents, caches)
    figures["first_cached_pass_cpu_s"] = time.process_time() - started

    route_indexes = [i for i, d in enumerate(documents) if d["kind"] == "Route"]
    # The operator keeps the collector off its passes (``HeapKeeper``): the same here.
    heap = HeapKeeper()
    heap.settle()
    cpu: list[float] = []
    unchanged_envoy = 0
    for n in range(edits):
        index = route_indexes[(n * 7919) % len(route_indexes)]
        documents[index] = _edit(documents[index], n)
        started = time.process_time()
        compiled = heap.build(_compile, documents, caches)
        cpu.append(time.process_time() - started)
        heap.settle()
        if (
            compiled.envoy.version == previous.envoy.version
            and documents[index]["spec"].get("mode") != "async"
        ):
            unchanged_envoy += 1
        previous = compiled
    cpu.sort()
    figures["edit_cpu_p50_ms"] = statistics.median(cpu) * 1000
    figures["edit_cpu_p99_ms"] = cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))] * 1000
    figures["sync_edits_without_new_envoy_version"] = unchanged_envoy

    reference = _compile(copy.deepcopy(documents), None)
    figures["identical"] = (
        reference.envoy.serialize() == previous.envoy.serialize()
        and reference.redis.to_json() == previous.redis.to_json()
        and reference.pubsub.to_json() == previous.pubsub.to_json()
        and reference.kubernetes.to_json() == previous.kubernetes.to_json()
    )
    del reference, previous, compiled
    gc.collect()
    release_free_memory()
    with_caches = _rss_mib()
    figures["cache_sizes"] = caches.sizes()
    caches.clear()
    gc.collect()
    release_free_memory()
    figures["caches_mib"] = with_caches - _rss_mib()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10000)
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=50)
    args = parser.parse_args()
    figures = run(args.routes, args.products, args.edits)
    full_ms = figures["full_pass_cpu_s"] * 1000
    print(f"{figures['routes']} Routes / {figures['products']} Products")
    print(f"one full pass from scratch (baseline): {full_ms:.0f} ms CPU")
    print(f"first pass with caches (fills them):   {figures['first_cached_pass_cpu_s'] * 1000:.0f} ms CPU")
    p50, p99 = figures["edit_cpu_p50_ms"], figures["edit_cpu_p99_ms"]
    print(
        f"one-Route edit, incremental pass: p50 {p50:.0f} ms, p99 {p99:.0f} ms CPU = "
        f"p50 {p50 / full_ms * 100:.1f} %, p99 {p99 / full_ms * 100:.1f} % of the full pass (target <= 5 %)"
    )
    print(f"incremental output == from-scratch output after the edits: {figures['identical']}")
    per_route = figures["caches_mib"] * 1024 / figures["routes"]
    print(f"caches: {figures['caches_mib']:.0f} MiB ({per_route:.1f} KiB per Route)")
    print(f"  entries: {figures['cache_sizes']}")
    if figures["sync_edits_without_new_envoy_version"]:
        print(f"WARNING: {figures['sync_edits_without_new_envoy_version']} sync edits left the Envoy version")
    return 0 if figures["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
