"""Where an accepted request is published: its region, its topic, and the residency check before it.

Pure; called by ``apx.dataplane.gateway.app`` after the caller is
authenticated and the track is chosen. Topic ids and regions come from the
route table entry (``topics``: track → region → topic, ``tenant_topics``:
tenant → track → region → topic, as ``pubsub_plan.route_topics`` created them).

The region:

1. the tenant's home region (``region`` of its ``tenant:<id>`` rule in the
   product's rule set), when it has one — its data never goes elsewhere, so
   a home region without a topic for the track is refused, not rerouted;
2. else the region this gateway runs in (``--region``), when the Route has a
   topic there (no cross-region hop);
3. else the first of the product's regions that has a topic (the product's
   order is its preference order).

The topic: the tenant's own topic in that region (``namespace``/``dedicated``
isolation) when the route table lists one, else the shared topic.

Residency is checked on the final region with the same rule the Product
model and the Pub/Sub renderer use (``apx.contracts.residency.region_allowed``), whatever produced
it: a rule set, route table or gateway flag that disagrees with the
product's residency yields ``ResidencyRefused`` (HTTP 451), never a publish.
"""

from __future__ import annotations

from dataclasses import dataclass

from apx.contracts.residency import region_allowed
from apx.dataplane.common.routetable import RouteEntry


class ResidencyRefused(Exception):
    """Publishing would take the request outside its product's residency (HTTP 451)."""

    def __init__(self, residency: str, region: str, reason: str) -> None:
        super().__init__(reason)
        self.residency = residency
        self.region = region


class NoTopic(Exception):
    """The Route has no topic for the chosen track (route table and track disagree)."""


@dataclass(frozen=True, slots=True)
class Placement:
    region: str
    topic: str
    tenant_topic: bool  # True: the tenant's own (isolated) topic


def place(
    entry: RouteEntry, track: str, tenant: str, home_region: str | None, local_region: str | None
) -> Placement:
    """The region and topic for one request; raises ``ResidencyRefused`` or ``NoTopic``."""
    shared = entry.topics.get(track) or {}
    own = (entry.tenant_topics.get(tenant) or {}).get(track) or {}
    if home_region:
        region = home_region
        if not region_allowed(entry.residency, region):
            raise ResidencyRefused(
                entry.residency,
                region,
                f"tenant home region {region} is outside the {entry.residency} residency of {entry.product}",
            )
        topic = own.get(region) or shared.get(region)
        if topic is None:
            raise ResidencyRefused(
                entry.residency,
                region,
                f"route {entry.key} has no {track} topic in the tenant's home region {region}",
            )
        return Placement(region, topic, region in own)
    candidates = [local_region] if local_region else []
    candidates += [r for r in entry.regions if r != local_region]
    for region in candidates:
        topic = own.get(region) or shared.get(region)
        if topic is None:
            continue
        if not region_allowed(entry.residency, region):
            raise ResidencyRefused(
                entry.residency, region, f"topic region {region} is outside the {entry.residency} residency"
            )
        return Placement(region, topic, region in own)
    raise NoTopic(f"route {entry.key} has no topic for track {track}")
