"""Reconciler benchmark: what one Route edit costs the operator's reconciler at 10,000 Routes.

Run by `make bench` (or `python bench/bench_reconciler.py [--routes 10000 --products 1000 --edits 40]`).
No services: the reconciler (``apx/operator/reconciler.py``, everything a pass
does: store, translation documents, the pure pipeline, the Redis, Pub/Sub and
Kubernetes syncs, statuses, phase counts, the heap keeper) runs against the
in-memory targets of ``e2e/memory_targets.py`` over the benchmark workload
(``bench/workload.py``), and prints, each beside the baseline measured in the
same run:

* the process CPU of one ordinary pass after a one-Route edit (p50 / p99 over
  ``--edits`` edits of different Routes), and its phases (median ms), beside
  the CPU of one periodic full pass (the resync: caches cleared, everything
  compiled and compared again) over the same objects (target: <= 5 %);
* that the edits left nothing for the full pass to correct (no status to write,
  the same phase counts): the incremental bookkeeping matched a from-scratch one.

``bench_incremental.py`` measures the pure pipeline alone; ``bench_operator.py``
the operator end to end with the emulated API, Redis and the Pub/Sub emulator
sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workload import generate_documents

from e2e.memory_targets import edited, memory_reconciler


def _edit(index: int) -> dict[str, Any]:
    return {"timeout": f"{20 + index % 40}s"}


async def run(routes: int, products: int, edits: int) -> dict[str, Any]:
    reconciler, kube, _ = memory_reconciler(generate_documents(routes, products))
    figures: dict[str, Any] = {"routes": routes, "products": products, "objects": len(reconciler.objects)}
    await reconciler.reconcile_once(full=True)
    for _ in range(5):  # the status writes of the first pass come back as changed bodies
        if (await reconciler.reconcile_once()).statuses_written == 0:
            break
    # The baseline: the periodic resync (``Scheduler``: caches cleared, a full pass).
    reconciler._rebuild_requested = True
    started = time.process_time()
    await reconciler.reconcile_once(full=True)
    figures["full_pass_cpu_s"] = time.process_time() - started

    route_keys = sorted(key for key in reconciler.objects if key[0] == "Route")
    cpu: list[float] = []
    phases: dict[str, list[float]] = {}
    for n in range(edits):
        key = route_keys[(n * 7919) % len(route_keys)]
        reconciler.observe("Route", edited(reconciler, key, kube, **_edit(n)))
        started = time.process_time()
        report = await reconciler.reconcile_once()
        cpu.append(time.process_time() - started)
        for name, value in report.phases.items():
            phases.setdefault(name, []).append(value)
        if (
            reconciler.objects[key]["status"]["observedGeneration"]
            != reconciler.objects[key]["metadata"]["generation"]
        ):
            raise SystemExit(f"the edit of Route {key[1]} did not reach its status")
    cpu.sort()
    figures["edit_cpu_p50_ms"] = statistics.median(cpu) * 1000
    figures["edit_cpu_p99_ms"] = cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))] * 1000
    figures["phases_ms"] = {name: statistics.median(values) for name, values in phases.items()}

    counts = {k: v for k, v in reconciler._phase_totals.items() if v}
    reconciler._rebuild_requested = True
    resync = await reconciler.reconcile_once(full=True)
    figures["resync_statuses_written"] = resync.statuses_written
    figures["same_counts"] = counts == {k: v for k, v in reconciler._phase_totals.items() if v}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10000)
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=40)
    args = parser.parse_args()
    figures = asyncio.run(run(args.routes, args.products, args.edits))
    full_ms = figures["full_pass_cpu_s"] * 1000
    print(f"{figures['routes']} Routes / {figures['products']} Products ({figures['objects']} objects)")
    print(f"one periodic full pass (baseline): {full_ms:.0f} ms CPU")
    p50, p99 = figures["edit_cpu_p50_ms"], figures["edit_cpu_p99_ms"]
    print(
        f"one-Route edit, ordinary pass: p50 {p50:.0f} ms, p99 {p99:.0f} ms CPU = "
        f"p50 {p50 / full_ms * 100:.1f} %, p99 {p99 / full_ms * 100:.1f} % of the full pass (target <= 5 %)"
    )
    print("  phases (median ms): " + ", ".join(f"{k} {v:.0f}" for k, v in figures["phases_ms"].items()))
    corrected, same = figures["resync_statuses_written"], figures["same_counts"]
    print(f"full pass after the edits: {corrected} statuses to correct, same phase counts: {same}")
    return 0 if corrected == 0 and figures["same_counts"] else 1


if __name__ == "__main__":
    sys.exit(main())
