"""Canary track choice of the async gateway: a deterministic hash into 10,000 buckets.

Pure; called by ``apx.dataplane.gateway.app`` for each accepted request.

The key is the tenant id when the Route is sticky by tenant (so a tenant stays
on one track for the whole rollout) and the request id otherwise (an
independent draw per request). ``bucket = first 8 bytes of blake2b(key) mod
10,000``; the canary serves buckets ``[0, weight x 100)``. As the canary weight
grows, the tenants already on the canary stay there (their bucket stays below
the threshold), and at weight 0 or 100 nobody is split. Blake2b is used
because Python's ``hash()`` is salted per process: every gateway replica must
agree on a tenant's track.

Envoy splits the same Routes with its own hash before the request gets here
(``x-apx-track``); the gateway does not rely on that header, because the
track also decides which policy authenticates the caller and which topic the
request goes to, and it must follow from verified identity only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def bucket(key: str) -> int:
    """The key's bucket in ``[0, BUCKETS)``."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose_track(weights: Sequence[tuple[str, int]], key: str) -> str:
    """The track for ``key`` given ``(track, weight percent)`` pairs, stable first.

    Tracks after the first take consecutive bucket ranges from 0 upwards
    (with one canary: ``[0, weight x 100)``); the first track takes the rest.
    """
    if len(weights) == 1:
        return weights[0][0]
    point = bucket(key)
    start = 0
    for name, weight in weights[1:]:
        end = start + max(0, min(100, weight)) * (BUCKETS // 100)
        if point < end:
            return name
        start = end
    return weights[0][0]
