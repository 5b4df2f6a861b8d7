"""Render the Pub/Sub plan: request topics, dead-letter topics and subscriptions of async Routes.

Pure. Called through ``apx.controllers.renderers.registry`` (golden files,
``apx translate``) and by the Pub/Sub applier, which creates or updates each
object with the admin API. ``route_topics`` is the single place that decides
which topics a Route has; the Redis route table (what the async gateway
publishes to), the worker Deployments (what workers consume) and the
translator's status summaries all call it, so they cannot disagree.

Topics of one async Route:

* one **shared** request topic per product region x track (``stable``, and
  ``canary`` whenever the Route has a canary track, even at weight 0, so the
  topic exists before the first step shifts traffic and keeps draining after
  a rollback);
* one **tenant** topic per track for every known tenant whose plan isolates it
  (``isolation: namespace`` or ``dedicated``): in the tenant's home region when
  it has one, otherwise in every product region. Namespace-isolated tenant
  topics are consumed by the Route's shared worker pool; dedicated-plan tenant
  topics are consumed by that plan's dedicated pool (``TopicPlan.pool``).
  Tenants not listed in the Product have no topic of their own and use the
  shared topic, whatever plan their credentials claim.

Every request topic gets a dead-letter topic, a worker subscription (ordering,
ack deadline, retry and dead-letter policies from the Route) and a
subscription on the dead-letter topic for inspection (without one, Pub/Sub
would drop dead letters: a topic keeps nothing for subscriptions that do not
exist), ordered by the messages' ordering keys. Both subscriptions never
expire (an idle Route must not lose its queue).

Residency is enforced twice: the Product model rejects regions outside its
residency, and every topic's ``message_storage_policy`` pins it to its region;
this module re-checks each region and raises ``ResidencyViolation`` rather
than render a topic that Pub/Sub would store outside the residency. Topics of
a product with a residency (not ``GLOBAL``) also set ``enforce_in_transit``,
so messages are published and delivered only through endpoints in that
region (gateways and workers use locational endpoints for them).

Output field names follow ``google.pubsub.v1.Topic`` / ``Subscription``
(snake_case, as the Python client accepts them); durations are
``{"seconds": n}`` (plus ``nanos`` when not whole), resource names are full
paths ``projects/<project>/topics/<id>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from .. import names
from ..ir import IR, RouteIR, TenantIR
from ..memo import Caches
from ..models.product import region_allowed

DEFAULT_PROJECT = "apx-local"

# Pub/Sub caps a subscription's retention at 7 days; a topic may keep messages
# for 31 days, and unacked messages then live for the longer of the two. A
# Route's retention (10m-744h) goes on the subscription, capped, and on the
# topic only when it exceeds the cap: topic retention also keeps *acked*
# messages, which costs storage nobody asked for below 7 days.
SUBSCRIPTION_RETENTION_MAX_SECONDS = 7 * 24 * 3600
# Dead letters are read by people, not by a worker: keep them as long as a
# subscription can and give a reader a minute per message.
DEAD_LETTER_ACK_DEADLINE_SECONDS = 60

ISOLATED = frozenset({"namespace", "dedicated"})
# Residencies that restrict where data may go: their topics also refuse
# publishes and pulls from outside the region (``enforce_in_transit``), so
# gateways and workers must use the regional endpoint of the topic's region.
RESTRICTED_RESIDENCIES = frozenset({"US", "EU", "ASIA"})


# The ``apx-kind`` label of the subscription on a dead-letter topic, read by people.
INSPECTION_KIND = "dead-letter-inspection"


class ResidencyViolation(ValueError):
    """A topic would be stored in a region its product's residency forbids."""


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """One request topic of a Route and everything derived from it (ids, not full paths)."""

    route: str  # "<ns>/<name>"
    product: str  # "<ns>/<name>"
    residency: str
    region: str
    track: str  # "stable" | "canary"
    tenant: str | None  # set for per-tenant topics
    pool: str | None  # dedicated plan whose pool consumes this topic; None: the Route's shared pool
    topic: str
    dead_letter_topic: str
    subscription: str
    dead_letter_subscription: str


def _tenant_regions(tenant: TenantIR, regions: tuple[str, ...]) -> tuple[str, ...]:
    return (tenant.region,) if tenant.region is not None else regions


def _check_residency(plan: TopicPlan) -> None:
    if not region_allowed(plan.residency, plan.region):
        raise ResidencyViolation(
            f"route {plan.route}: topic {plan.topic} would be stored in {plan.region}, "
            f"outside the {plan.residency} residency of product {plan.product}"
        )


def _topic_plan(
    route: RouteIR, region: str, track: str, tenant: TenantIR | None, pool: str | None
) -> TopicPlan:
    ref = route.ref
    topic = names.request_topic(
        ref.namespace, route.product.ref.name, ref.name, region, track, tenant.id if tenant else None
    )
    plan = TopicPlan(
        route=route.key,
        product=route.product.key,
        residency=route.product.residency,
        region=region,
        track=track,
        tenant=tenant.id if tenant else None,
        pool=pool,
        topic=topic,
        dead_letter_topic=names.dead_letter_topic(topic),
        subscription=names.worker_subscription(topic),
        dead_letter_subscription=names.dead_letter_subscription(topic),
    )
    _check_residency(plan)
    return plan


def route_topics(route: RouteIR) -> list[TopicPlan]:
    """Every request topic of a Route, sorted by topic id; empty for sync Routes.

    Raises ``ResidencyViolation`` if a topic's region lies outside the
    product's residency (which a validated Product never allows).
    """
    if route.mode != "async":
        return []
    product = route.product
    plans = {plan.name: plan for plan in product.plans}
    topics: list[TopicPlan] = []
    for track in route.tracks:
        for region in product.regions:
            topics.append(_topic_plan(route, region, track.name, None, None))
        for tenant in product.tenants:
            isolation = plans[tenant.plan].isolation
            if isolation not in ISOLATED:
                continue
            pool = tenant.plan if isolation == "dedicated" else None
            for region in _tenant_regions(tenant, product.regions):
                topics.append(_topic_plan(route, region, track.name, tenant, pool))
    return sorted(topics, key=lambda t: t.topic)


def topics_for_route(route: RouteIR) -> list[str]:
    """Request topic ids of a Route (for status summaries)."""
    return [plan.topic for plan in route_topics(route)]


def subscriptions_for_route(route: RouteIR) -> list[str]:
    """Worker subscription ids of a Route (for status summaries)."""
    return [plan.subscription for plan in route_topics(route)]


# --- admin API documents ---------------------------------------------------------


# The documents are read-only, and the parts that repeat across thousands of them are one
# object each: a duration, a storage policy, a retry policy (one per distinct value, kept by
# ``lru_cache``), the empty expiration policy, and the full path of a topic, used by its
# document and by the subscriptions on it. At 10,000 Routes (2,000 async) the documents held
# by the caches went from 39 to 23 MiB (400,000 to 192,000 blocks). Whoever needs to change
# one copies it first (the applier builds each request from a copy); a YAML dump of shared
# parts writes no aliases (``apx translate``'s dumper).
_SHARED_VALUES = 1024  # distinct values kept per kind of part; real plans have a handful
_NEVER_EXPIRES: dict[str, Any] = {}


@lru_cache(maxsize=_SHARED_VALUES)
def _duration(ms: int) -> dict[str, int]:
    seconds, rest = divmod(ms, 1000)
    value = {"seconds": seconds}
    if rest:
        value["nanos"] = rest * 1_000_000
    return value


def _topic_path(project: str, topic: str) -> str:
    return f"projects/{project}/topics/{topic}"


def _subscription_path(project: str, subscription: str) -> str:
    return f"projects/{project}/subscriptions/{subscription}"


def _labels(plan: TopicPlan, kind: str) -> dict[str, str]:
    labels = {
        "apx-managed-by": "apx",
        "apx-kind": kind,
        "apx-product": names.gcp_label_value(plan.product),
        "apx-route": names.gcp_label_value(plan.route),
        "apx-track": names.gcp_label_value(plan.track),
        "apx-region": names.gcp_label_value(plan.region),
        "apx-residency": names.gcp_label_value(plan.residency),
    }
    if plan.tenant is not None:
        labels["apx-tenant"] = names.gcp_label_value(plan.tenant)
    if plan.pool is not None:
        labels["apx-pool"] = names.gcp_label_value(plan.pool)
    return labels


@lru_cache(maxsize=_SHARED_VALUES)
def _storage_policy(region: str, enforce_in_transit: bool) -> dict[str, Any]:
    return {"allowed_persistence_regions": [region], "enforce_in_transit": enforce_in_transit}


def _topic(path: str, plan: TopicPlan, kind: str, retention_ms: int) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": path,
        "labels": _labels(plan, kind),
        "message_storage_policy": _storage_policy(plan.region, plan.residency in RESTRICTED_RESIDENCIES),
    }
    if retention_ms > SUBSCRIPTION_RETENTION_MAX_SECONDS * 1000:
        document["message_retention_duration"] = _duration(retention_ms)
    return document


@lru_cache(maxsize=_SHARED_VALUES)
def _retry_policy(minimum_ms: int, maximum_ms: int) -> dict[str, Any]:
    return {"minimum_backoff": _duration(minimum_ms), "maximum_backoff": _duration(maximum_ms)}


def _subscriptions(
    project: str, route: RouteIR, plan: TopicPlan, topic_path: str, dead_letter_path: str
) -> list[dict[str, Any]]:
    delivery = route.delivery
    retention = _duration(min(delivery.message_retention_ms, SUBSCRIPTION_RETENTION_MAX_SECONDS * 1000))
    worker = {
        "name": _subscription_path(project, plan.subscription),
        "topic": topic_path,
        "labels": _labels(plan, "worker"),
        "ack_deadline_seconds": delivery.ack_deadline_seconds,
        "enable_message_ordering": delivery.ordering,
        "retry_policy": _retry_policy(delivery.minimum_backoff_ms, delivery.maximum_backoff_ms),
        "dead_letter_policy": {
            "dead_letter_topic": dead_letter_path,
            "max_delivery_attempts": delivery.max_delivery_attempts,
        },
        "message_retention_duration": retention,
        "expiration_policy": _NEVER_EXPIRES,
    }
    inspection = {
        "name": _subscription_path(project, plan.dead_letter_subscription),
        "topic": dead_letter_path,
        "labels": _labels(plan, INSPECTION_KIND),
        "ack_deadline_seconds": DEAD_LETTER_ACK_DEADLINE_SECONDS,
        # Ordered: a person reading one tenant's dead letters sees them in the order they
        # failed (dead-lettering keeps the ordering key). It is also what lets the Pub/Sub
        # emulator hold a large plan: it runs one thread per *unordered* subscription and
        # none per ordered one until a message arrives (apx/controllers/appliers/PUBSUB.md);
        # these are idle almost always. The applier accepts an inspection subscription
        # created unordered by an earlier version as it is (ordering is immutable).
        "enable_message_ordering": True,
        "message_retention_duration": _duration(SUBSCRIPTION_RETENTION_MAX_SECONDS * 1000),
        "expiration_policy": _NEVER_EXPIRES,
    }
    return [worker, inspection]


@dataclass(frozen=True, slots=True)
class PubSubOutput:
    """Topics and subscriptions to create, each an admin API document, sorted by name."""

    project: str
    plans: tuple[TopicPlan, ...]
    topics: tuple[dict[str, Any], ...]
    subscriptions: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "topics": list(self.topics),
            "subscriptions": list(self.subscriptions),
            "routes": {
                route: sorted(p.topic for p in self.plans if p.route == route)
                for route in sorted({p.route for p in self.plans})
            },
        }


RouteDocuments = tuple[tuple[TopicPlan, ...], tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]


def route_documents(route: RouteIR, project: str) -> RouteDocuments:
    """One Route's topic plans, topics and subscriptions in ``project`` (empty for a sync Route)."""
    plans = tuple(route_topics(route))
    topics: list[dict[str, Any]] = []
    subscriptions: list[dict[str, Any]] = []
    retention = route.delivery.message_retention_ms
    for plan in plans:
        topic_path = _topic_path(project, plan.topic)
        dead_letter_path = _topic_path(project, plan.dead_letter_topic)
        topics.append(_topic(topic_path, plan, "request", retention))
        topics.append(_topic(dead_letter_path, plan, "dead-letter", retention))
        subscriptions.extend(_subscriptions(project, route, plan, topic_path, dead_letter_path))
    return plans, tuple(topics), tuple(subscriptions)


def cached_route_documents(route: RouteIR, project: str, caches: Caches | None) -> RouteDocuments:
    """``route_documents``, reused while the RouteIR is the same object (and the project the same)."""
    if caches is None:
        return route_documents(route, project)
    cached = caches.pubsub_routes.get(route, lambda: (project, route_documents(route, project)))
    if cached[0] != project:
        cached = (project, route_documents(route, project))
    return cast(RouteDocuments, cached[1])


def render_pubsub(ir: IR, project: str = DEFAULT_PROJECT, caches: Caches | None = None) -> PubSubOutput:
    """Every topic and subscription of the IR's async Routes in ``project``."""
    plans: list[TopicPlan] = []
    topics: dict[str, dict[str, Any]] = {}
    subscriptions: dict[str, dict[str, Any]] = {}
    for route in sorted(ir.routes, key=lambda r: r.key):
        if route.mode != "async":
            continue
        route_plans, route_topic_documents, route_subscriptions = cached_route_documents(
            route, project, caches
        )
        plans.extend(route_plans)
        for document in route_topic_documents:
            topics[document["name"]] = document
        for document in route_subscriptions:
            subscriptions[document["name"]] = document
    return PubSubOutput(
        project=project,
        plans=tuple(sorted(plans, key=lambda p: (p.route, p.topic))),
        topics=tuple(topics[name] for name in sorted(topics)),
        subscriptions=tuple(subscriptions[name] for name in sorted(subscriptions)),
    )
