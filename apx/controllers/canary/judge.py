"""The verdict of one analysis check: canary against the absolute limits and against stable.

Called by ``apx.controllers.canary.decide`` once per check with the two
tracks' windows, and by the decision benchmark. Pure.

A check is inconclusive (``no-data``) when either track has fewer than
``minSamples`` requests in the window: too little traffic is never a failure.
Otherwise the canary fails when a limit is broken *and* the breach is
statistically significant (one-sided, see ``apx.controllers.canary.stats``):

* success rate below ``minSuccessRate`` - exact binomial test of the error
  count against the ceiling ``1 - minSuccessRate``;
* success rate below stable's by more than ``maxSuccessRateDrop`` -
  two-proportion test of the error rates with that margin;
* p99 above ``maxLatencyP99Ms`` (T) - p99 > T exactly when more than 1 % of
  requests are slower than T: exact binomial test of the canary's count of
  requests slower than T against 1 %;
* p99 above ``maxLatencyRatio`` x stable's p99 - the share of canary requests
  slower than ``maxLatencyRatio`` x stable's p99 against the share of stable
  requests slower than stable's own p99 (1 % by definition, but its count
  carries the noise of stable's p99, on which the threshold is built):
  two-proportion test. (Comparing both tracks' shares above the *same*
  threshold would test "the canary is slower at all", not "slower by more
  than the ratio": a canary 1.3x slower with a 1.5x limit failed 4 of 200
  simulated rollouts that way, ``bench/bench_canary_decisions.py``.)

**Level.** A check runs up to four tests; each is run at 5 % / (number of
tests) (Bonferroni), so a check of a canary that is within every limit fails
with probability at most 5 %: the check, the unit that counts towards
``failureThreshold``, is a one-sided test at 95 %. With every test at 5 % on
its own, the check's false-failure rate near the limits approaches 1 - 0.95^4
≈ 19 %, and consecutive checks share most of their window (10 s checks over
1 m), so ``failureThreshold`` does not absorb it: simulated rollouts of a
canary 0.5 point worse than stable (limit 1 point) were rolled back in 1 of
200, and of a canary within the latency ratio in 4 of 200.

Latency is judged from exceedance counts rather than from the p99 values,
because a p99 estimated from one window of a histogram has no usable variance
while a count of slow requests is binomial. A track without a latency
histogram is judged on errors only.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from ..models.route import Analysis, TrackMetrics
from . import histogram, stats
from .types import TrackWindow

VerdictKind = Literal["pass", "fail", "no-data"]
P99 = 0.99
# Share of requests a p99 limit allows above it.
P99_EXCEEDANCE = 1.0 - P99
# The level of a whole check (family-wise), shared by the tests it runs.
CHECK_ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class Level:
    """Significance level of each of ``tests`` tests so that the check as a whole holds ``CHECK_ALPHA``."""

    tests: int

    @property
    def alpha(self) -> float:
        return CHECK_ALPHA / max(self.tests, 1)

    @property
    def z_critical(self) -> float:
        return statistics.NormalDist().inv_cdf(1.0 - self.alpha)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one check found: ``kind``, a sentence with the numbers, and each track's metrics."""

    kind: VerdictKind
    reason: str
    canary: TrackMetrics
    stable: TrackMetrics
    failures: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Track:
    """One window with impossible values repaired (NaN, negatives, more errors than requests)."""

    requests: float
    errors: float
    buckets: histogram.Buckets
    p99: float | None

    @classmethod
    def of(cls, window: TrackWindow) -> _Track:
        requests = _finite(window.requests)
        errors = min(_finite(window.errors), requests)
        try:
            buckets = histogram.normalise(window.latency_buckets)
        except (TypeError, ValueError):  # not pairs of numbers: no histogram
            buckets = ()
        p99 = histogram.quantile_of_normalised(P99, buckets) if buckets else None
        return cls(requests=requests, errors=errors, buckets=buckets, p99=p99)

    @property
    def success_rate(self) -> float | None:
        return None if self.requests <= 0 else 1.0 - self.errors / self.requests

    @property
    def observations(self) -> float:
        """Requests the latency histogram saw (its ``+Inf`` count)."""
        return self.buckets[-1][1] if self.buckets else 0.0

    def slower_than(self, threshold: float) -> float:
        """Requests slower than ``threshold`` ms (interpolated); 0 without a histogram."""
        return histogram.above_of_normalised(threshold, self.buckets) or 0.0

    def metrics(self) -> TrackMetrics:
        rate, p99 = self.success_rate, self.p99
        return TrackMetrics(
            requests=round(self.requests, 3),
            success_rate=None if rate is None else round(rate, 6),
            latency_p99_ms=None if p99 is None else round(p99, 1),
        )


def _finite(value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.2f}%"


def millis(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def numbers(canary: TrackMetrics, stable: TrackMetrics) -> str:
    """The sentence every decision about a check carries: both tracks' numbers."""
    return (
        f"canary success rate {percent(canary.success_rate)} (stable {percent(stable.success_rate)}), "
        f"p99 {millis(canary.latency_p99_ms)} (stable {millis(stable.latency_p99_ms)}), "
        f"samples {canary.requests or 0:.0f} canary / {stable.requests or 0:.0f} stable"
    )


def judge(
    analysis: Analysis, stable_window: TrackWindow, canary_window: TrackWindow, *, with_stable: bool = True
) -> Verdict:
    """Judge one check's windows against ``analysis``; see the module docstring for the rules.

    ``with_stable=False`` is for a canary at 100 %: stable then takes no
    traffic by design, so only the canary needs ``minSamples`` and only the
    absolute limits apply (the comparison with stable was made on the
    previous steps).
    """
    stable, canary = _Track.of(stable_window), _Track.of(canary_window)
    canary_metrics, stable_metrics = canary.metrics(), stable.metrics()
    stable_short = with_stable and stable.requests < analysis.min_samples
    if canary.requests < analysis.min_samples or stable_short:
        return Verdict(
            kind="no-data",
            reason=(
                f"not enough samples: canary {canary.requests:.0f}, stable {stable.requests:.0f} "
                f"requests in the window (minSamples {analysis.min_samples})"
            ),
            canary=canary_metrics,
            stable=stable_metrics,
        )
    level = Level(tests=4 if with_stable else 2)
    checks = [_min_success_rate(analysis, canary, level), _max_latency(analysis, canary, level)]
    if with_stable:
        checks += [
            _success_rate_drop(analysis, canary, stable, level),
            _latency_ratio(analysis, canary, stable, level),
        ]
    failures = tuple(failure for failure in checks if failure is not None)
    summary = numbers(canary_metrics, stable_metrics)
    if not with_stable:
        summary += "; stable takes no traffic at 100 %: absolute limits only"
    if failures:
        return Verdict("fail", f"{'; '.join(failures)} ({summary})", canary_metrics, stable_metrics, failures)
    return Verdict("pass", f"within limits ({summary})", canary_metrics, stable_metrics)


def _min_success_rate(analysis: Analysis, canary: _Track, level: Level) -> str | None:
    rate = canary.success_rate
    if rate is None or rate >= analysis.min_success_rate:
        return None
    test = stats.binomial_exceeds(
        canary.errors, canary.requests, 1.0 - analysis.min_success_rate, level.alpha
    )
    if not test.significant:
        return None
    return (
        f"success rate {percent(rate)} below minSuccessRate {percent(analysis.min_success_rate)} "
        f"(p={test.p_value:.2g})"
    )


def _success_rate_drop(analysis: Analysis, canary: _Track, stable: _Track, level: Level) -> str | None:
    canary_rate, stable_rate = canary.success_rate, stable.success_rate
    if canary_rate is None or stable_rate is None:
        return None
    if stable_rate - canary_rate <= analysis.max_success_rate_drop:
        return None
    test = stats.difference_exceeds(
        canary.errors,
        canary.requests,
        stable.errors,
        stable.requests,
        analysis.max_success_rate_drop,
        level.z_critical,
    )
    if not test.significant:
        return None
    return (
        f"success rate {percent(canary_rate)} is {percent(stable_rate - canary_rate)} below stable "
        f"{percent(stable_rate)}, more than maxSuccessRateDrop {percent(analysis.max_success_rate_drop)} "
        f"(z={test.statistic:.2f})"
    )


def _max_latency(analysis: Analysis, canary: _Track, level: Level) -> str | None:
    p99 = canary.p99
    limit = float(analysis.max_latency_p99_ms)
    if p99 is None or p99 <= limit:
        return None
    slow = canary.slower_than(limit)
    test = stats.binomial_exceeds(slow, canary.observations, P99_EXCEEDANCE, level.alpha)
    if not test.significant:
        return None
    return (
        f"p99 {millis(p99)} above maxLatencyP99Ms {limit:.0f} "
        f"({percent(test.statistic)} of requests slower, p={test.p_value:.2g})"
    )


def _latency_ratio(analysis: Analysis, canary: _Track, stable: _Track, level: Level) -> str | None:
    canary_p99, stable_p99 = canary.p99, stable.p99
    if canary_p99 is None or stable_p99 is None or stable_p99 <= 0:
        return None
    threshold = analysis.max_latency_ratio * stable_p99
    if canary_p99 <= threshold:
        return None
    canary_slow = canary.slower_than(threshold)
    # Stable's requests slower than its own p99: 1 % of them, counted so the
    # test carries the sampling noise of the p99 the threshold is built on.
    stable_slow = stable.slower_than(stable_p99)
    test = stats.difference_exceeds(
        canary_slow, canary.observations, stable_slow, stable.observations, 0.0, level.z_critical
    )
    if not test.significant:
        return None
    return (
        f"p99 {millis(canary_p99)} is {canary_p99 / stable_p99:.2f}x stable {millis(stable_p99)}, "
        f"above maxLatencyRatio {analysis.max_latency_ratio:g} "
        f"({percent(canary_slow / canary.observations)} of canary requests slower than {threshold:.0f} ms, "
        f"z={test.statistic:.2f})"
    )
