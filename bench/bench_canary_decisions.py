"""Benchmark: decision quality of the canary analysis over a seeded matrix of simulated rollouts.

    python bench/bench_canary_decisions.py [--runs 200] [--seed 1]

Run by `make bench`. Pure simulation (no services): each run walks one canary
through a full rollout with the default settings (steps 10/25/50/100 %, 1m
step interval, 10s checks over a sliding 1m window, minSamples 100,
failureThreshold 2, maxNoDataChecks 5) by calling the real
``apx.controllers.canary.decide`` whenever ``due_in`` says a check is due.

Traffic is simulated in 10 s buckets: arrivals are Poisson, split between the
tracks by the current weight (Poisson thinning), each request fails with the
track's error probability (Bernoulli) and has a log-normal latency binned into
the worker's histogram buckets (``apx.dataplane.worker.metrics.DURATION_BUCKETS``,
seconds → ms). The weight a decision sets applies from the next bucket.

For every scenario it counts false rollbacks (the canary was within tolerance
and was rolled back) and missed rollbacks (a truly bad canary was promoted),
and for the bad scenarios the time from the canary turning bad to weight 0.
Baselines, measured in the same run on the same seeded traffic with the same
state machine: ``point`` judges point estimates only (a limit broken by the
window's numbers fails the check, no significance test: what a threshold-only
analysis does); ``per-test`` runs every significance test at 5 % on its own
instead of holding 5 % for the whole check. Targets: 0 false and 0 missed
rollbacks with the analysis (``tests``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from apx.controllers.canary import judge, stats
from apx.controllers.canary.decide import decide, due_in, start
from apx.controllers.canary.types import TrackWindow
from apx.controllers.models.route import Canary
from apx.dataplane.worker.metrics import DURATION_BUCKETS

BUCKET_SECONDS = 10
WINDOW_BUCKETS = 6  # the default 1m analysis window
MAX_SECONDS = 15 * 60  # a run that has not finished by then is reported as unfinished
BOUNDS_MS = (*(b * 1000.0 for b in DURATION_BUCKETS), math.inf)
SPEC = Canary.model_validate({"policyVersion": "1.3.0"})
REVISION = "bench"


@dataclass(frozen=True)
class Track:
    """What one track really is: error probability and a log-normal latency (median ms, sigma)."""

    error_rate: float
    median_ms: float = 40.0
    sigma: float = 0.6

    def bucket_shares(self) -> tuple[float, ...]:
        """Probability of each histogram bucket (non-cumulative), from the log-normal CDF."""
        cdf = [
            0.5 * math.erfc(-(math.log(b / self.median_ms)) / (self.sigma * math.sqrt(2)))
            for b in BOUNDS_MS[:-1]
        ]
        cumulative = [*cdf, 1.0]
        return tuple(c - p for c, p in zip(cumulative, [0.0, *cumulative[:-1]], strict=True))

    @property
    def p99_ms(self) -> float:
        return self.median_ms * math.exp(self.sigma * 2.3263478740408408)


@dataclass(frozen=True)
class Scenario:
    name: str
    rps: Callable[[random.Random, int], float]  # total requests per second in the bucket starting at t
    stable: Track
    canary: Track
    truly_bad: bool
    bad_from: int = 0  # seconds after the start when the canary turns bad (bad scenarios)
    healthy_canary: Track | None = None  # the canary before bad_from


def steady(rate: float) -> Callable[[random.Random, int], float]:
    return lambda rng, t: rate


def spiky(rng: random.Random, t: int) -> float:
    """A quiet baseline with lulls and 15x bursts, drawn per 10 s bucket."""
    draw = rng.random()
    return 150.0 if draw < 0.15 else 1.0 if draw < 0.35 else 10.0


STABLE = Track(error_rate=0.001)
SCENARIOS = (
    Scenario("identical", steady(50), STABLE, STABLE, truly_bad=False),
    Scenario("low traffic (0.5 rps)", steady(0.5), STABLE, STABLE, truly_bad=False),
    Scenario("spiky traffic", spiky, STABLE, STABLE, truly_bad=False),
    Scenario("slightly better", steady(50), STABLE, Track(0.0005, median_ms=36.0), truly_bad=False),
    Scenario("0.5 pt worse (drop limit 1 pt)", steady(50), STABLE, Track(0.006), truly_bad=False),
    Scenario(
        "p99 1.3x stable (limit 1.5x)", steady(50), STABLE, Track(0.001, median_ms=52.0), truly_bad=False
    ),
    Scenario(
        "latency-only: p99 3x stable", steady(50), STABLE, Track(0.001, median_ms=120.0), truly_bad=True
    ),
    Scenario("hard failure (30 % errors)", steady(50), STABLE, Track(0.30), truly_bad=True),
    Scenario(
        "hard failure at step 3",
        steady(50),
        STABLE,
        Track(0.30),
        truly_bad=True,
        bad_from=150,
        healthy_canary=STABLE,
    ),
    Scenario("hard failure, 5 rps", steady(5), STABLE, Track(0.30), truly_bad=True),
)


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw: multiplication method below 10, Hörmann's PTRS above (O(1), as NumPy does)."""
    if lam <= 0:
        return 0
    if lam < 10:
        limit, k, product = math.exp(-lam), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b) <= -lam + k * loglam - math.lgamma(
            k + 1
        ):
            return k


@dataclass
class Bucket:
    """One track's traffic in one 10 s bucket."""

    requests: int
    errors: int
    latency: list[int]  # per histogram bucket, not cumulative


def simulate_bucket(rng: random.Random, rate: float, track: Track, shares: tuple[float, ...]) -> Bucket:
    """Poisson thinning: every (latency bucket, ok/error) cell is an independent Poisson count."""
    latency, errors = [], 0
    for share in shares:
        ok = poisson(rng, rate * BUCKET_SECONDS * share * (1 - track.error_rate))
        failed = poisson(rng, rate * BUCKET_SECONDS * share * track.error_rate)
        latency.append(ok + failed)
        errors += failed
    return Bucket(sum(latency), errors, latency)


def window_of(buckets: deque[Bucket]) -> TrackWindow:
    requests = sum(b.requests for b in buckets)
    errors = sum(b.errors for b in buckets)
    running, cumulative = 0.0, []
    for index, bound in enumerate(BOUNDS_MS):
        running += sum(b.latency[index] for b in buckets)
        cumulative.append((bound, running))
    return TrackWindow(requests=float(requests), errors=float(errors), latency_buckets=tuple(cumulative))


@dataclass
class RunResult:
    phase: str
    seconds: int
    checks: int
    rolled_back_at: int | None
    first_conclusive_bad_check: int | None


def run_once(scenario: Scenario, seed: int) -> RunResult:
    rng = random.Random(seed)
    shares = {
        track: track.bucket_shares()
        for track in {scenario.stable, scenario.canary, scenario.healthy_canary}
        if track
    }
    stable_buckets: deque[Bucket] = deque(maxlen=WINDOW_BUCKETS)
    canary_buckets: deque[Bucket] = deque(maxlen=WINDOW_BUCKETS)
    # One window of stable-only traffic before the canary starts.
    for t in range(-WINDOW_BUCKETS * BUCKET_SECONDS, 0, BUCKET_SECONDS):
        rate = scenario.rps(rng, t)
        stable_buckets.append(simulate_bucket(rng, rate, scenario.stable, shares[scenario.stable]))
        canary_buckets.append(Bucket(0, 0, [0] * len(BOUNDS_MS)))
    status = start(SPEC, REVISION, None, 0.0).status
    checks, first_bad_check = 0, None
    for t in range(0, MAX_SECONDS, BUCKET_SECONDS):
        canary_track = scenario.canary
        if scenario.healthy_canary is not None and t < scenario.bad_from:
            canary_track = scenario.healthy_canary
        rate, weight = scenario.rps(rng, t), status.weight / 100
        stable_buckets.append(
            simulate_bucket(rng, rate * (1 - weight), scenario.stable, shares[scenario.stable])
        )
        canary_buckets.append(simulate_bucket(rng, rate * weight, canary_track, shares[canary_track]))
        now = float(t + BUCKET_SECONDS)
        if due_in(SPEC, status, now) > 0:
            continue
        outcome = decide(SPEC, REVISION, status, window_of(stable_buckets), window_of(canary_buckets), now)
        status = outcome.status
        checks += outcome.check_ran
        decision = outcome.decision.result
        failing = decision in ("rollback", "hold") and outcome.status.failed_checks > 0
        if scenario.truly_bad and first_bad_check is None and now > scenario.bad_from and failing:
            first_bad_check = int(now)
        if status.phase in ("Promoted", "RolledBack"):
            rolled = int(now) if status.phase == "RolledBack" else None
            return RunResult(status.phase, int(now), checks, rolled, first_bad_check)
    return RunResult(status.phase, MAX_SECONDS, checks, None, first_bad_check)


class _PointEstimates:
    """Stand-in for ``stats`` in the first baseline: every broken limit counts, however few the samples."""

    @staticmethod
    def binomial_exceeds(events: float, trials: float, ceiling: float, alpha: float) -> stats.TestResult:
        return stats.TestResult(statistic=events / trials if trials else 0.0, p_value=0.0, significant=True)

    @staticmethod
    def difference_exceeds(*args: float) -> stats.TestResult:
        return stats.TestResult(statistic=math.inf, p_value=0.0, significant=True)


class _EachTestAtFivePercent(judge.Level):
    """The second baseline: every test of a check at 5 % on its own (no correction for the 2-4 tests)."""

    @property
    def alpha(self) -> float:
        return 0.05


@contextlib.contextmanager
def analysis(variant: str) -> Iterator[None]:
    """Run the real analysis (``tests``) or one of the baselines in its place."""
    namespace = vars(judge)  # the judge module's globals, swapped for the baselines and restored
    original = {name: namespace[name] for name in ("stats", "Level")}
    if variant == "point":
        namespace["stats"] = _PointEstimates
    elif variant == "per-test":
        namespace["Level"] = _EachTestAtFivePercent
    try:
        yield
    finally:
        namespace.update(original)


VARIANTS = {
    "tests": "significance tests, 95 % per check (the analysis)",
    "per-test": "baseline: each test at 95 % on its own",
    "point": "baseline: point estimates, no significance test",
}


@dataclass
class Summary:
    promoted: int = 0
    rolled_back: int = 0
    unfinished: int = 0
    false_rollbacks: int = 0
    missed_rollbacks: int = 0
    to_rollback: list[int] | None = None
    conclusive_to_rollback: list[int] | None = None
    to_promote: list[int] | None = None
    checks: int = 0


def summarise(scenario: Scenario, results: list[RunResult]) -> Summary:
    summary = Summary(to_rollback=[], conclusive_to_rollback=[], to_promote=[])
    assert summary.to_rollback is not None and summary.conclusive_to_rollback is not None
    assert summary.to_promote is not None
    for result in results:
        summary.checks += result.checks
        if result.phase == "Promoted":
            summary.promoted += 1
            summary.to_promote.append(result.seconds)
            summary.missed_rollbacks += scenario.truly_bad
        elif result.phase == "RolledBack":
            summary.rolled_back += 1
            summary.false_rollbacks += not scenario.truly_bad
            if scenario.truly_bad and result.rolled_back_at is not None:
                summary.to_rollback.append(result.rolled_back_at - scenario.bad_from)
                if result.first_conclusive_bad_check is not None:
                    summary.conclusive_to_rollback.append(
                        result.rolled_back_at - result.first_conclusive_bad_check
                    )
        else:
            summary.unfinished += 1
    return summary


def spread(values: list[int] | None) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return f"{statistics.median(ordered):.0f}/{p95}/{ordered[-1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="seeded runs per scenario")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    print(
        f"{args.runs} seeded runs per scenario; defaults: steps {SPEC.steps}, interval {SPEC.interval}, "
        f"checks every {SPEC.analysis.check_interval} over {SPEC.analysis.window}, "
        f"minSamples {SPEC.analysis.min_samples}, failureThreshold {SPEC.analysis.failure_threshold}"
    )
    header = (
        f"{'scenario':32} {'analysis':8} {'promoted':>8} {'rolled':>6} {'unfin.':>6} {'false':>5} "
        f"{'missed':>6} {'bad->0% s':>12} {'1st fail->0%':>12} {'to promote s':>13}"
    )
    print(header)
    print("-" * len(header))
    totals = {variant: [0, 0] for variant in VARIANTS}
    checks_run, seconds = 0, 0.0
    for index, scenario in enumerate(SCENARIOS):
        seeds = [args.seed * 1_000_003 + index * 10_007 + run for run in range(args.runs)]
        for variant in VARIANTS:
            started = time.perf_counter()
            with analysis(variant):
                results = [run_once(scenario, seed) for seed in seeds]
            if variant == "tests":
                seconds += time.perf_counter() - started
                checks_run += sum(r.checks for r in results)
            summary = summarise(scenario, results)
            totals[variant][0] += summary.false_rollbacks
            totals[variant][1] += summary.missed_rollbacks
            print(
                f"{scenario.name if variant == 'tests' else '':32} {variant:8} {summary.promoted:8d} "
                f"{summary.rolled_back:6d} {summary.unfinished:6d} {summary.false_rollbacks:5d} "
                f"{summary.missed_rollbacks:6d} {spread(summary.to_rollback):>12} "
                f"{spread(summary.conclusive_to_rollback):>12} {spread(summary.to_promote):>13}"
            )
    print("-" * len(header))
    runs = args.runs * len(SCENARIOS)
    for variant, name in VARIANTS.items():
        false, missed = totals[variant]
        print(f"{name:52} false rollbacks {false:4d}, missed rollbacks {missed:4d} (of {runs} runs)")
    print(
        f"simulated {checks_run} checks in {seconds:.1f}s with the analysis "
        f"({seconds / max(checks_run, 1) * 1e6:.0f} µs per check, traffic simulation included)"
    )
    print(
        "times are median/p95/max; 'bad->0%' from the canary turning bad (its start, or 150 s in at step 3), "
        "'1st fail->0%' from the first check with enough samples that failed; "
        "in production add up to one scrape interval"
    )
    print("'unfin.': neither promoted nor rolled back within 15 min (halted: too little traffic to judge)")
    target_met = totals["tests"] == [0, 0]
    print(f"target 0 false / 0 missed rollbacks: {'met' if target_met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
