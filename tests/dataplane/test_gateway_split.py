"""Canary track choice of the async gateway (pure): weights within 1 %, sticky by tenant, monotone."""

from __future__ import annotations

import pytest

from apx.dataplane.gateway.split import BUCKETS, bucket, choose_track

REQUESTS = 100_000


@pytest.mark.parametrize("weight", [1, 5, 10, 25, 50, 90])
def test_split_is_within_one_percent_of_the_weight_over_100k_tenants(weight: int) -> None:
    tracks = [("stable", 100 - weight), ("canary", weight)]
    canary = sum(choose_track(tracks, f"tenant-{i}") == "canary" for i in range(REQUESTS))
    assert abs(canary / REQUESTS - weight / 100) <= 0.01


def test_split_by_request_id_is_within_one_percent_too() -> None:
    tracks = [("stable", 80), ("canary", 20)]
    canary = sum(choose_track(tracks, f"0f5e{i:012x}-req") == "canary" for i in range(REQUESTS))
    assert abs(canary / REQUESTS - 0.20) <= 0.01


def test_a_tenant_stays_on_its_track_and_canary_tenants_stay_as_the_weight_grows() -> None:
    tenants = [f"t{i}" for i in range(5_000)]
    previous: set[str] = set()
    for weight in (0, 10, 25, 50, 100):
        tracks = [("stable", 100 - weight), ("canary", weight)]
        on_canary = {t for t in tenants if choose_track(tracks, t) == "canary"}
        assert on_canary == {t for t in tenants if choose_track(tracks, t) == "canary"}  # deterministic
        assert previous <= on_canary
        previous = on_canary
    assert previous == set(tenants)
    assert not any(choose_track([("stable", 100), ("canary", 0)], t) == "canary" for t in tenants)


def test_single_track_and_bucket_range() -> None:
    assert choose_track([("stable", 100)], "anyone") == "stable"
    assert all(0 <= bucket(f"k{i}") < BUCKETS for i in range(1000))
    # The hash is fixed (not Python's salted hash()): every replica agrees on a tenant's bucket.
    assert (
        bucket("acme")
        == int.from_bytes(__import__("hashlib").blake2b(b"acme", digest_size=8).digest()) % BUCKETS
    )
