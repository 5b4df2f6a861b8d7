"""One-sided significance tests that decide whether a canary is really worse, not just unlucky.

Called by ``apx.controllers.canary.judge`` for every analysis check (and by
the decision benchmark). Pure functions of counts; every test answers
"significant at 95 %, one-sided" and never divides by zero: empty samples,
zero counts and rates of exactly 0 or 1 all have defined answers.

Counts may be fractional (Prometheus' ``increase()`` extrapolates to the
window edges, and histogram exceedance counts are interpolated); the exact
binomial test rounds them to whole requests, the z-test uses them as they are.

Two tests:

* ``binomial_exceeds`` — is a rate above a fixed ceiling? Exact binomial tail
  (for the absolute ``minSuccessRate`` and ``maxLatencyP99Ms`` limits).
* ``difference_exceeds`` — is the canary's rate above stable's by more than a
  margin? Two-proportion z-test with the Agresti-Caffo adjustment (for
  ``maxSuccessRateDrop`` and the relative latency limit ``maxLatencyRatio``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
# Φ⁻¹(0.95): the one-sided 95 % critical value of the standard normal.
Z_CRITICAL = 1.6448536269514722

# The tail sum stops once a term adds less than this share of what is summed so far.
_TAIL_TOLERANCE = 1e-15
# Above this binomial variance the normal approximation replaces the exact sum.
_EXACT_VARIANCE_LIMIT = 1e6


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of one test: the statistic, its one-sided p-value and the verdict at ``ALPHA``."""

    statistic: float
    p_value: float
    significant: bool


def normal_sf(z: float) -> float:
    """P(Z ≥ z) for a standard normal Z, ``½·erfc(z/√2)`` (accurate far into the tail)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _whole(value: float) -> int:
    if math.isnan(value) or value <= 0:
        return 0
    return round(min(value, 1e15))


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), summed exactly term by term.

    The first term comes from ``math.lgamma`` (log-space, no overflow); the
    next ones from the ratio pmf(i+1)/pmf(i) = (n-i)/(i+1) · p/(1-p). The sum
    runs away from the mean (upwards from k when k is above it, otherwise it
    sums the lower tail downwards from k-1 and returns its complement), so the
    terms only shrink and it stops when they no longer change the total: a
    few standard deviations of work whatever ``n`` is. Past a variance of
    10⁶ (tens of millions of requests in one window) the normal approximation
    with continuity correction is used instead; it is exact to many digits there.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    mean = n * p
    variance = mean * (1.0 - p)
    if variance > _EXACT_VARIANCE_LIMIT:
        return normal_sf((k - 0.5 - mean) / math.sqrt(variance))
    if k > mean:
        return min(1.0, _tail_sum(k, n, p, upwards=True))
    return max(0.0, 1.0 - _tail_sum(k - 1, n, p, upwards=False))


def _tail_sum(start: int, n: int, p: float, *, upwards: bool) -> float:
    """Σ pmf(i) from ``start`` away from the mean (to n upwards, to 0 downwards)."""
    term = math.exp(
        math.lgamma(n + 1)
        - math.lgamma(start + 1)
        - math.lgamma(n - start + 1)
        + start * math.log(p)
        + (n - start) * math.log1p(-p)
    )
    total = term
    odds = p / (1.0 - p)
    if upwards:
        for i in range(start, n):
            term *= (n - i) / (i + 1) * odds
            total += term
            if term <= total * _TAIL_TOLERANCE:
                break
    else:
        for i in range(start, 0, -1):
            term *= i / (n - i + 1) / odds
            total += term
            if term <= total * _TAIL_TOLERANCE:
                break
    return total


def binomial_exceeds(events: float, trials: float, ceiling: float, alpha: float = ALPHA) -> TestResult:
    """Exact one-sided binomial test of H0: rate ≤ ``ceiling`` against H1: rate > ``ceiling``.

    With x events in n trials the p-value is P(X ≥ x | X ~ Binomial(n, ceiling));
    significant when p ≤ ``alpha``. The statistic reported is the observed rate x/n.

    Why exact rather than a normal approximation: the absolute limits matter
    most at the smallest sample sizes the analysis accepts (``minSamples``,
    100 by default) and at small ceilings (1 % errors, 1 % of requests above
    the p99 limit), exactly where the normal approximation of the binomial is
    poor (np ≈ 1). The exact tail is cheap because the sum stops a few
    standard deviations past the observed count. Example: 2 errors in 100
    against a 1 % ceiling gives p ≈ 0.26 (noise, not significant); 30 in 100
    gives p ≈ 10⁻³⁵.
    """
    n = _whole(trials)
    x = min(_whole(events), n)
    if n == 0:
        return TestResult(statistic=0.0, p_value=1.0, significant=False)
    ceiling = min(max(ceiling, 0.0), 1.0) if not math.isnan(ceiling) else 1.0
    p_value = binomial_upper_tail(x, n, ceiling)
    return TestResult(statistic=x / n, p_value=p_value, significant=p_value <= alpha)


def difference_exceeds(
    canary_events: float,
    canary_trials: float,
    stable_events: float,
    stable_trials: float,
    margin: float,
    z_critical: float = Z_CRITICAL,
) -> TestResult:
    """One-sided two-proportion z-test of H0: p_canary - p_stable ≤ ``margin``.

    With the Agresti-Caffo adjustment (one event and one non-event added to
    each sample) the estimates are p̃ = (x + 1) / (n + 2), and the statistic is

        z = (p̃_canary - p̃_stable - margin) / √(p̃_c(1 - p̃_c)/(n_c + 2) + p̃_s(1 - p̃_s)/(n_s + 2))

    with the unpooled standard error (the null is a difference of ``margin``,
    not equal rates, so a pooled estimate would be wrong). Significant when
    z ≥ ``z_critical`` (1.645: 95 %, one-sided). The adjustment keeps the
    standard error above zero when a sample has no events or only events
    (the plain Wald test would call 1 error in 100 against 0 in 1,000
    "infinitely significant" when both rates round to 0 or 1), and makes
    the test hold its 5 % level at small counts, where the Wald test rejects
    far too often. ``n = 0`` gives p̃ = ½ with a wide error: never significant
    on its own.
    """
    n_c, n_s = _clean(canary_trials), _clean(stable_trials)
    x_c, x_s = min(_clean(canary_events), n_c), min(_clean(stable_events), n_s)
    p_c = (x_c + 1.0) / (n_c + 2.0)
    p_s = (x_s + 1.0) / (n_s + 2.0)
    margin = 0.0 if math.isnan(margin) else margin
    standard_error = math.sqrt(p_c * (1.0 - p_c) / (n_c + 2.0) + p_s * (1.0 - p_s) / (n_s + 2.0))
    z = (p_c - p_s - margin) / standard_error
    return TestResult(statistic=z, p_value=normal_sf(z), significant=z >= z_critical)


def _clean(value: float) -> float:
    if math.isnan(value) or value <= 0:
        return 0.0
    return min(value, 1e15)
