"""Rollback time of the canary controller at default settings, on the real local stack.

Run by ``make bench`` (``bench/run.py``), or alone: ``python bench/bench_canary.py [--mode async|sync]``.

An async Route (or a sync one through the Envoy stand-in) starts a canary with
the default ``canary`` block: steps 10/25/50/100, 1 m step interval, checks
every 10 s over a sliding 1 m window, ``failureThreshold`` 2, ``minSamples``
100. Traffic flows from 100 tenants; once the canary has run healthy for a
while its upstream starts failing every request. The figures are the seconds
from the first failing canary request to weight 0 in the Redis route table
(what the gateway serves from) and in the Envoy snapshot ConfigMap (what
Envoy gets), printed beside the floor of the same run: Prometheus' scrape
interval + ``failureThreshold`` x ``checkInterval`` (the earliest a rollback
can be decided once bad requests exist: they must be scraped, then fail two
consecutive checks). Target: ≤ 30 s and ≤ 1.5 x the floor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from e2e.canaryrig import canary_rig
from e2e.harness import Kubectl
from e2e.kubeemu.testing import running_emulator

ROOT = Path(__file__).resolve().parent.parent
SCRAPE_SECONDS = 5
CHECK_SECONDS = 10  # analysis.checkInterval default
FAILURE_THRESHOLD = 2  # analysis.failureThreshold default


def _wait(predicate: object, timeout: float, interval: float = 0.05) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return time.time()
        time.sleep(interval)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("async", "sync"), default="async")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second, all tenants")
    parser.add_argument(
        "--healthy-seconds", type=float, default=40.0, help="healthy canary time before failing"
    )
    args = parser.parse_args()
    floor = SCRAPE_SECONDS + FAILURE_THRESHOLD * CHECK_SECONDS
    with (
        tempfile.TemporaryDirectory(prefix="apx-bench-canary-") as tmp,
        running_emulator(crds=ROOT / "crds") as emulator,
    ):
        workdir = Path(tmp)
        kubectl = Kubectl(emulator.kubeconfig, workdir / "kubecache")
        namespace = "bench-canary"
        kubectl.run("create", "namespace", "apx-system")
        kubectl.run("create", "namespace", namespace)
        # The default canary block: only the backend (and, async, the worker image) change.
        with canary_rig(
            workdir,
            kubectl,
            emulator.kubeconfig,
            namespace,
            {},
            mode=args.mode,
            scrape_interval=f"{SCRAPE_SECONDS}s",
            rate=args.rate,
        ) as rig:
            rig.wait_phase("Progressing", timeout=60)
            started = time.monotonic()
            # Healthy first, so the analysis has judged the canary good at least once.
            while time.monotonic() - started < args.healthy_seconds:
                decision = rig.canary_status().get("lastDecision") or {}
                if decision.get("result") not in (None, "no-data") and time.monotonic() - started > 25:
                    break
                time.sleep(0.5)
            before = rig.canary_status()
            rig.canary.error_ratio = 1.0
            first_bad = _wait(rig.canary.first_failure, timeout=30)
            if first_bad is None:
                print("the canary upstream received no request after the switch", file=sys.stderr)
                return 1
            at_redis = _wait(lambda: rig.route_table_weights().get("canary") == 0, timeout=120)
            at_envoy = _wait(lambda: rig.snapshot_weights().get("canary") == 0, timeout=30)
            after = rig.canary_status()
    if at_redis is None or at_envoy is None:
        print(f"no rollback within 120 s; status {after}", file=sys.stderr)
        return 1
    redis_seconds, envoy_seconds = at_redis - first_bad, at_envoy - first_bad
    worst = max(redis_seconds, envoy_seconds)
    decision = after.get("lastDecision") or {}
    print(
        f"mode {args.mode}, {args.rate:.0f} rps from 100 tenants, "
        f"canary at {before.get('weight')} % when it broke"
    )
    print(f"floor (scrape {SCRAPE_SECONDS} s + {FAILURE_THRESHOLD} x check {CHECK_SECONDS} s): {floor:.1f} s")
    print(f"first failing canary request -> weight 0 in the Redis route table: {redis_seconds:.1f} s")
    print(f"first failing canary request -> weight 0 in the Envoy snapshot:    {envoy_seconds:.1f} s")
    print(f"ratio to the floor: {worst / floor:.2f} (target <= 1.5); absolute target <= 30 s")
    print(
        f"decision: {decision.get('result')} ({decision.get('reason')}); "
        f"canary {decision.get('canary')}; stable {decision.get('stable')}"
    )
    met = worst <= 30 and worst <= 1.5 * floor
    print("targets met" if met else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
