"""Latency quantiles and exceedance counts from a cumulative histogram, the way Prometheus reads one.

Called by ``apx.controllers.canary.judge`` with ``TrackWindow.latency_buckets``
(``(upper bound in ms, cumulative count)``, last bound ``+inf``), and by the
decision benchmark.

``quantile`` reproduces PromQL's ``histogram_quantile`` (``promql/quantile.go:
bucketQuantile``) so the p99 in ``status.canary`` matches what people see on
their dashboards:

* buckets with the same bound are merged (counts added), counts are made
  monotonic (each at least the one before, as ``ensureMonotonic`` does);
* no ``+Inf`` bucket, fewer than two buckets, or zero observations: no answer
  (``None`` here, ``NaN`` in PromQL);
* rank = q x total; the answer lies in the first bucket whose cumulative count
  reaches the rank, interpolated linearly between the bucket's lower bound
  (the previous bound, or 0 for the first bucket) and its upper bound;
* when the rank falls in the ``+Inf`` bucket the answer is the highest finite
  bound; when the first bucket's bound is ≤ 0 the answer is that bound.

``count_above`` is the inverse reading: how many requests were slower than a
threshold, interpolated linearly inside the bucket that holds the threshold,
so that ``quantile(q) > T`` exactly when ``count_above(T) > (1 - q) x total``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Buckets = tuple[tuple[float, float], ...]


def normalise(buckets: Iterable[tuple[float, float]]) -> Buckets:
    """Sorted, merged, monotonic buckets; empty when unusable (no ``+Inf`` bucket, NaN bound)."""
    merged: dict[float, float] = {}
    for bound, count in buckets:
        if math.isnan(bound):
            return ()
        # A NaN or negative count carries no observations.
        merged[bound] = merged.get(bound, 0.0) + (count if count > 0 and not math.isnan(count) else 0.0)
    ordered = sorted(merged.items())
    if len(ordered) < 2 or ordered[-1][0] != math.inf:
        return ()
    result: list[tuple[float, float]] = []
    running = 0.0
    for bound, count in ordered:
        # A scrape can catch buckets mid-update; PromQL takes the running maximum.
        running = max(running, count)
        result.append((bound, running))
    return tuple(result)


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """``histogram_quantile(q, …)`` of the buckets, in their unit (ms); ``None`` when undefined."""
    return quantile_of_normalised(q, normalise(buckets))


def count_at_or_below(threshold: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Estimated requests no slower than ``threshold`` (interpolated); ``None`` when unusable."""
    return at_or_below_of_normalised(threshold, normalise(buckets))


def count_above(threshold: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Estimated requests slower than ``threshold`` (interpolated); ``None`` when unusable."""
    return above_of_normalised(threshold, normalise(buckets))


# The ``*_of_normalised`` functions take the output of ``normalise`` so that a
# caller reading one histogram several times normalises it once.


def quantile_of_normalised(q: float, sane: Buckets) -> float | None:
    """``quantile`` of buckets already passed through ``normalise``."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if not sane:
        return None
    total = sane[-1][1]
    if total == 0:
        return None
    rank = q * total
    # First bucket (the +Inf one excluded) whose cumulative count reaches the rank.
    index = next((i for i, (_, count) in enumerate(sane[:-1]) if count >= rank), len(sane) - 1)
    if index == len(sane) - 1:
        return sane[-2][0]
    if index == 0 and sane[0][0] <= 0:
        return sane[0][0]
    upper, count = sane[index]
    lower = 0.0
    if index > 0:
        lower, below = sane[index - 1]
        count -= below
        rank -= below
    return lower + (upper - lower) * (rank / count)


def at_or_below_of_normalised(threshold: float, sane: Buckets) -> float | None:
    """``count_at_or_below`` of buckets already passed through ``normalise``."""
    if not sane or math.isnan(threshold):
        return None
    highest_finite = sane[-2][0]
    if threshold >= highest_finite:
        # Beyond the histogram's range nothing is known about the +Inf bucket;
        # like histogram_quantile (which never answers above the highest finite
        # bound), treat every request as within the threshold.
        return sane[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in sane[:-1]:
        if threshold < upper:
            if threshold <= lower:
                return below
            return below + (cumulative - below) * (threshold - lower) / (upper - lower)
        lower, below = upper, cumulative
    return below  # not reached: threshold < highest_finite is inside some bucket


def above_of_normalised(threshold: float, sane: Buckets) -> float | None:
    """``count_above`` of buckets already passed through ``normalise``."""
    within = at_or_below_of_normalised(threshold, sane)
    if within is None:
        return None
    return max(0.0, sane[-1][1] - within)
