"""Prometheus metrics of the async gateway; created by ``main`` (or a test) and updated by ``app``.

Low-cardinality labels only: ``route`` (``<ns>/<name>`` of a Route in the
table, or ``none`` for unmatched requests), ``track`` (``stable|canary``, or
``none`` before one is chosen), ``tenant_tier`` (a Product tier or
``unknown``) and ``code`` (the HTTP status answered). Never the tenant id,
the request id or a raw path; those go to logs and traces. Each gateway owns
its ``CollectorRegistry`` so several can run in one process (tests, bench).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from apx.dataplane.common.metrics import service_registry

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
KNOWN_TIERS = frozenset({"free", "pro", "enterprise", "internal"})


def tier_label(tier: str | None) -> str:
    return tier if tier in KNOWN_TIERS else "unknown"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or service_registry()
        self.submissions = Counter(
            "apx_gateway_requests_total",
            "Async submissions answered, by Route, track, tenant tier and HTTP status (202 = queued).",
            ["route", "track", "tenant_tier", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "apx_gateway_request_duration_seconds",
            "Time to answer a submission (authentication, Redis, Pub/Sub publish included).",
            ["route", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publish_duration = Histogram(
            "apx_gateway_publish_duration_seconds",
            "Time from handing a message to the Pub/Sub client to its acknowledgement.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.status_reads = Counter(
            "apx_gateway_status_reads_total",
            "GET /status and /status/{id}/stream answers, by kind (poll|stream) and HTTP status.",
            ["kind", "code"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "apx_gateway_connections_refused_total",
            "Client connections cut off or requests refused by the listener's limits, by reason "
            "(header_timeout, body_timeout, connection_limit, body_too_large, malformed_request).",
            ["reason"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "apx_gateway_status_streams",
            "Server-Sent Event streams open.",
            registry=self.registry,
        )
