"""Prometheus metrics of the worker; created by ``main`` (or a test) and updated by ``processor``.

These are what the canary analysis compares between the stable and canary
tracks of a Route: ``apx_requests_total`` and ``apx_request_duration_seconds``
(upstream calls, by ``code``), ``apx_queue_latency_seconds`` (publish to start
of work) and ``apx_in_flight_requests``. Labels stay low-cardinality: ``route``
and ``track`` come from the worker's own settings (one Deployment serves one
Route track), ``tenant_tier`` is one of the Product tiers (anything else is
``unknown``), and ``code`` is the upstream's HTTP status, ``504`` for a timeout
and ``502`` for a connection failure. Never the tenant id, request id or path.
``apx_worker_messages_total`` counts how each message was settled.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from apx.dataplane.common.metrics import service_registry

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
KNOWN_TIERS = frozenset({"free", "pro", "enterprise", "internal"})
OUTCOMES = ("acked", "retried", "dead_lettered", "duplicate", "invalid", "drained")


def tier_label(tier: str | None) -> str:
    return tier if tier in KNOWN_TIERS else "unknown"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or service_registry()
        self.requests = Counter(
            "apx_requests_total",
            "Upstream calls made for async requests, by Route, track, tenant tier and upstream status code.",
            ["route", "track", "tenant_tier", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "apx_request_duration_seconds",
            "Duration of upstream calls for async requests.",
            ["route", "track", "tenant_tier", "code"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_latency = Histogram(
            "apx_queue_latency_seconds",
            "Time from publish (Pub/Sub publish time) to the start of work on a request.",
            ["route", "track", "tenant_tier"],
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "apx_in_flight_requests",
            "Upstream calls in progress.",
            ["route", "track"],
            registry=self.registry,
        )
        self.messages = Counter(
            "apx_worker_messages_total",
            "Messages settled, by outcome: acked (done or failed for good), retried (nacked for "
            "redelivery), dead_lettered (last delivery failed), duplicate (already done), invalid, "
            "drained (nacked on shutdown).",
            ["route", "track", "outcome"],
            registry=self.registry,
        )
        self.upstream_too_large = Counter(
            "apx_worker_upstream_responses_too_large_total",
            "Upstream answers refused for size (the call fails with 502), by the part over its bound: "
            "body (--max-result-bytes) or head (--max-response-head-bytes).",
            ["part"],
            registry=self.registry,
        )
        self.outstanding = Gauge(
            "apx_worker_outstanding_messages",
            "Messages held (pulled, not yet acked or nacked); bounded by max outstanding messages.",
            registry=self.registry,
        )
