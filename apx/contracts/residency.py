"""Data residency: which regions a Product's ``residency`` allows.

Used by the Product model's validation and the Pub/Sub renderer (operator
side) and by the async gateway's placement (dataplane side), so a request is
never published to a region the operator would refuse.
"""

from __future__ import annotations

RESIDENCIES = ("US", "EU", "ASIA", "GLOBAL")

# Region prefixes (Google Cloud region names) allowed for each residency; GLOBAL allows every region.
RESIDENCY_REGION_PREFIXES: dict[str, tuple[str, ...]] = {
    "US": ("us-",),
    "EU": ("europe-",),
    "ASIA": ("asia-", "australia-"),
}


def region_allowed(residency: str, region: str) -> bool:
    """True when ``region`` satisfies ``residency``."""
    prefixes = RESIDENCY_REGION_PREFIXES.get(residency)
    return prefixes is None or region.startswith(prefixes)
