"""The significance tests: exact tails, low-count decisions, answers at the edges, the 5 % level held."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apx.controllers.canary import stats


def exact_upper_tail(k: int, n: int, p: Fraction) -> Fraction:
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)), Fraction(0))


@given(
    n=st.integers(min_value=1, max_value=300),
    k_share=st.floats(min_value=0.0, max_value=1.0),
    p=st.sampled_from(
        [Fraction(1, 1000), Fraction(1, 100), Fraction(1, 20), Fraction(1, 3), Fraction(9, 10)]
    ),
)
def test_binomial_upper_tail_matches_exact_rational_arithmetic(n: int, k_share: float, p: Fraction) -> None:
    k = round(k_share * n)
    expected = float(exact_upper_tail(k, n, p))
    assert math.isclose(stats.binomial_upper_tail(k, n, float(p)), expected, rel_tol=1e-9, abs_tol=1e-300)


def test_binomial_upper_tail_of_a_large_window_is_close_to_the_normal_tail() -> None:
    n, p = 10_000_000, 0.01
    sd = math.sqrt(n * p * (1 - p))
    k = math.ceil(n * p + 2 * sd)
    assert math.isclose(stats.binomial_upper_tail(k, n, p), stats.normal_sf(2.0), rel_tol=0.05)


@pytest.mark.parametrize(
    ("events", "trials", "ceiling", "significant"),
    [
        (2, 100, 0.01, False),  # 2 % observed against a 1 % ceiling: p ≈ 0.26, noise
        (30, 100, 0.01, True),  # 30 % against 1 %: p ≈ 1e-35
        (4, 100, 0.01, True),  # P(X ≥ 4 | n=100, p=0.01) ≈ 0.018
        (3, 100, 0.01, False),  # P(X ≥ 3) ≈ 0.079
        (0, 100, 0.01, False),
        (0, 0, 0.01, False),  # no trials: nothing to judge
        (1, 100, 0.0, True),  # a zero ceiling: one event is proof
        (100, 100, 1.0, False),  # a ceiling of 100 %: nothing exceeds it
        (150, 100, 0.01, True),  # more events than trials are capped at the trials
        (2.4, 100.3, 0.01, False),  # fractional counts (increase() extrapolates) are rounded
        (-5, 100, 0.01, False),
        (math.nan, math.nan, 0.01, False),
    ],
)
def test_binomial_exceeds_decides_low_counts_by_the_exact_tail(
    events: float, trials: float, ceiling: float, significant: bool
) -> None:
    result = stats.binomial_exceeds(events, trials, ceiling)
    assert result.significant is significant
    assert 0.0 <= result.p_value <= 1.0


@pytest.mark.parametrize(
    ("canary", "stable", "margin", "significant"),
    [
        ((30, 100), (1, 1000), 0.01, True),  # hard failure
        ((2, 100), (0, 1000), 0.01, False),  # 2 % against 0 % with a 1 % margin: noise at n=100
        ((300, 10_000), (50, 10_000), 0.01, True),  # 3 % against 0.5 %: 2.5 points worse
        ((120, 10_000), (50, 10_000), 0.01, False),  # 0.7 points worse: within the margin
        ((0, 1000), (500, 1000), 0.0, False),  # the canary is better
        ((0, 0), (0, 0), 0.0, False),  # no data at all
        ((0, 0), (0, 1000), 0.0, False),  # no canary data
        ((100, 100), (0, 100), 0.0, True),  # every canary request failed, none of stable's
        ((100, 100), (100, 100), 0.0, False),  # both always fail: no difference
        ((0, 100), (0, 100), 0.0, False),  # both never fail
        ((50, 100), (0, 100), 0.9, False),  # a margin nothing can exceed
    ],
)
def test_difference_exceeds_table(
    canary: tuple[float, float], stable: tuple[float, float], margin: float, significant: bool
) -> None:
    result = stats.difference_exceeds(canary[0], canary[1], stable[0], stable[1], margin)
    assert result.significant is significant
    assert math.isfinite(result.statistic)


@given(
    st.floats(allow_nan=True),
    st.floats(allow_nan=True),
    st.floats(allow_nan=True),
    st.floats(allow_nan=True),
    st.floats(allow_nan=True),
)
def test_difference_exceeds_answers_for_any_input(
    a: float, b: float, c: float, d: float, margin: float
) -> None:
    result = stats.difference_exceeds(a, b, c, d, margin)
    assert 0.0 <= result.p_value <= 1.0


def test_normal_sf_at_the_critical_value_is_five_percent() -> None:
    assert math.isclose(stats.normal_sf(stats.Z_CRITICAL), 0.05, rel_tol=1e-9)


@pytest.mark.parametrize(("rate", "n"), [(0.001, 200), (0.01, 500), (0.05, 2000)])
def test_difference_test_holds_its_five_percent_level_at_the_margin(rate: float, n: int) -> None:
    """Canary exactly `margin` worse than stable (H0 true at its edge): at most ~5 % rejections."""
    rng = random.Random(20261206)
    margin, trials, rejections = 0.01, 2000, 0
    for _ in range(trials):
        stable_errors = sum(rng.random() < rate for _ in range(n))
        canary_errors = sum(rng.random() < rate + margin for _ in range(n))
        rejections += stats.difference_exceeds(canary_errors, n, stable_errors, n, margin).significant
    assert rejections / trials <= 0.065


def test_exact_binomial_test_holds_its_level_at_the_ceiling() -> None:
    rng = random.Random(7)
    n, ceiling, trials = 150, 0.01, 3000
    rejections = sum(
        stats.binomial_exceeds(sum(rng.random() < ceiling for _ in range(n)), n, ceiling).significant
        for _ in range(trials)
    )
    assert rejections / trials <= 0.05
