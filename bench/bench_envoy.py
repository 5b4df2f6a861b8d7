"""Benchmark: translate + render_envoy for a big cluster, against raw protobuf serialisation.

    python bench/bench_envoy.py --routes 10000 [--products 100] [--repeat 3]

Prints translate time, render time, the baseline (``SerializeToString`` of
every resource the render produced — what protobuf alone costs for the same
output), the ratio render / baseline, and peak RSS. Targets: translate +
render ≤ 2 s for 10,000 routes over 100 products, ≤ 5 times the baseline. Also
printed: how much of translate is validating the documents with the pydantic
models alone, the part no translator that validates its input can skip.
Times are the best of ``--repeat`` runs (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import generate_documents

from apx.controllers.gcpause import collector_paused
from apx.controllers.models.resources import RESOURCE_MODELS
from apx.controllers.renderers.envoy import render_envoy
from apx.controllers.translate import translate

T = TypeVar("T")


def _best(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    best = float("inf")
    result: T | None = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, help="one size; default: 1,000 then 10,000")
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.routes is None:
        # Separate processes so each size's peak RSS is its own.
        for size in (1_000, 10_000):
            command = [sys.executable, __file__, "--routes", str(size), "--products", str(args.products)]
            command += ["--repeat", str(args.repeat)]
            if subprocess.run(command, check=False).returncode != 0:
                return 1
            print()
        return 0

    documents = generate_documents(args.routes, args.products)
    translate_s, result = _best(lambda: translate(documents), args.repeat)
    stalled = result.stalled
    if stalled:
        print(f"workload has {len(stalled)} Stalled objects, e.g. {stalled[0].message}", file=sys.stderr)
        return 1

    def validate() -> list[object]:
        # With the collector paused, as translate runs.
        with collector_paused():
            return [RESOURCE_MODELS[doc["kind"]].model_validate(doc) for doc in documents]

    validate_s, _ = _best(validate, args.repeat)
    render_s, output = _best(lambda: render_envoy(result.ir), args.repeat)
    resources = list(output.resources())
    serialize_s, encoded = _best(lambda: [r.SerializeToString() for r in resources], args.repeat)
    deterministic_s, _ = _best(
        lambda: [r.SerializeToString(deterministic=True) for r in resources], args.repeat
    )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    routes = sum(len(vh.routes) for rc in output.route_configurations for vh in rc.virtual_hosts)
    size_mb = sum(len(b) for b in encoded) / 1e6
    print(f"input: {args.routes} Routes, {args.products} Products, {len(documents)} documents")
    print(
        f"output: {routes} Envoy routes, {len(output.clusters)} clusters, {size_mb:.1f} MB, "
        f"{len(output.errors)} errors"
    )
    print(f"translate:            {translate_s * 1000:8.1f} ms")
    print(
        f"  of which validation: {validate_s * 1000:8.1f} ms   "
        f"(the documents through the pydantic models alone: {validate_s / serialize_s:.1f}x the baseline)"
    )
    print(f"render_envoy:         {render_s * 1000:8.1f} ms")
    print(f"translate + render:   {(translate_s + render_s) * 1000:8.1f} ms   (target <= 2000 ms)")
    print(f"baseline serialize:   {serialize_s * 1000:8.1f} ms   (SerializeToString of every resource)")
    print(f"  deterministic:      {deterministic_s * 1000:8.1f} ms")
    print(f"render / baseline:    {render_s / serialize_s:8.1f} x    (target <= 5x)")
    print(f"(translate + render) / baseline: {(translate_s + render_s) / serialize_s:.1f} x")
    print(f"peak RSS:             {peak_rss_mb:8.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
