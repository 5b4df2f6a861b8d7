"""Quantiles and exceedance counts read from cumulative histograms as PromQL's histogram_quantile does.

Expected values are worked out by hand in the comments next to each case.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from apx.controllers.canary import histogram

INF = math.inf
# 50 requests ≤ 10 ms, 40 in (10, 20], 9 in (20, 50], 1 above 50 ms.
SAMPLE = ((10.0, 50.0), (20.0, 90.0), (50.0, 99.0), (INF, 100.0))


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, SAMPLE, 10.0),  # rank 50 reached by the first bucket exactly: 0 + 10 * 50/50
        (0.25, SAMPLE, 5.0),  # rank 25 in the first bucket, lower bound 0: 10 * 25/50
        (0.7, SAMPLE, 15.0),  # rank 70: 10 + 10 * (70-50)/(90-50)
        (0.9, SAMPLE, 20.0),  # rank 90: 10 + 10 * 40/40
        (0.99, SAMPLE, 50.0),  # rank 99: 20 + 30 * 9/9
        (0.98, SAMPLE, 20.0 + 30.0 * 8.0 / 9.0),  # rank 98: 20 + 30 * (98-90)/9
        (0.995, SAMPLE, 50.0),  # rank 99.5 lies in +Inf: the highest finite bound
        (1.0, SAMPLE, 50.0),  # rank 100 lies in +Inf too
        (0.0, SAMPLE, 0.0),  # rank 0: the first bucket, interpolated from 0
        # Bounds given out of order and a bucket given twice (counts added, as PromQL merges series).
        (0.5, ((INF, 100.0), (10.0, 25.0), (20.0, 90.0), (10.0, 25.0)), 10.0),
        # Counts that go down (a scrape mid-update) become monotonic: (10, 60), (20, 60); 10 * 50/60.
        (0.5, ((10.0, 60.0), (20.0, 50.0), (INF, 100.0)), 10.0 * 50.0 / 60.0),
        # A first bucket whose bound is <= 0 answers that bound.
        (0.25, ((0.0, 10.0), (10.0, 20.0), (INF, 20.0)), 0.0),
        # Everything in +Inf: the highest finite bound.
        (0.5, ((5.0, 0.0), (10.0, 0.0), (INF, 7.0)), 10.0),
    ],
)
def test_quantile_matches_histogram_quantile(
    q: float, buckets: tuple[tuple[float, float], ...], expected: float
) -> None:
    result = histogram.quantile(q, buckets)
    assert result is not None
    assert math.isclose(result, expected, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize(
    "buckets",
    [
        (),  # no histogram
        ((10.0, 5.0), (20.0, 9.0)),  # no +Inf bucket
        ((INF, 10.0),),  # a single bucket
        ((math.nan, 1.0), (INF, 2.0)),  # a bound that is not a number
    ],
)
def test_quantile_of_an_unusable_histogram_is_none(buckets: tuple[tuple[float, float], ...]) -> None:
    assert histogram.quantile(0.99, buckets) is None
    assert histogram.count_above(100.0, buckets) is None


@pytest.mark.parametrize(("q", "expected"), [(-0.1, -INF), (1.5, INF)])
def test_quantile_outside_zero_one_is_infinite_like_promql(q: float, expected: float) -> None:
    assert histogram.quantile(q, SAMPLE) == expected


def test_a_histogram_without_observations_has_no_quantile_and_nothing_above() -> None:
    empty = ((10.0, 0.0), (INF, 0.0))
    assert histogram.quantile(0.99, empty) is None
    assert histogram.count_above(5.0, empty) == 0.0


def test_quantile_of_nan_is_none() -> None:
    assert histogram.quantile(math.nan, SAMPLE) is None


@pytest.mark.parametrize(
    ("threshold", "expected_above"),
    [
        (15.0, 30.0),  # at or below 15: 50 + 40 * 5/10 = 70
        (5.0, 75.0),  # 50 * 5/10 = 25 at or below
        (10.0, 50.0),  # exactly a bound: the bucket's count
        (35.0, 5.5),  # 90 + 9 * 15/30 = 94.5 at or below
        (0.0, 100.0),  # nothing is faster than 0
        (-3.0, 100.0),
        (50.0, 0.0),  # the highest finite bound: nothing known above it (as histogram_quantile)
        (1_000.0, 0.0),
    ],
)
def test_count_above_interpolates_inside_the_bucket(threshold: float, expected_above: float) -> None:
    result = histogram.count_above(threshold, SAMPLE)
    assert result is not None
    assert math.isclose(result, expected_above, rel_tol=1e-12, abs_tol=1e-12)


finite_bounds = st.lists(
    st.floats(min_value=1.0, max_value=10_000.0, allow_nan=False), min_size=1, max_size=8, unique=True
).map(sorted)


@given(
    bounds=finite_bounds,
    increments=st.lists(st.integers(min_value=0, max_value=1000), min_size=9, max_size=9),
    q=st.floats(min_value=0.01, max_value=0.999),
    threshold=st.floats(min_value=0.0, max_value=12_000.0),
)
def test_quantile_above_threshold_exactly_when_enough_requests_are_slower(
    bounds: list[float], increments: list[int], q: float, threshold: float
) -> None:
    running = 0.0
    buckets = []
    for bound, increment in zip([*bounds, INF], increments, strict=False):
        running += increment
        buckets.append((bound, running))
    total = buckets[-1][1]
    assume(total > 0)
    value = histogram.quantile(q, buckets)
    above = histogram.count_above(threshold, buckets)
    assert value is not None and above is not None
    allowed = (1.0 - q) * total
    # Away from the exact boundary (where rounding decides), the two readings agree.
    assume(abs(above - allowed) > 1e-6 * total and abs(value - threshold) > 1e-6 * max(threshold, 1.0))
    assert (value > threshold) == (above > allowed)
