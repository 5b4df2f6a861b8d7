"""Prometheus metrics of the rate-limit service; created by ``main`` and updated by ``server``.

Labels are low-cardinality by construction: ``domain`` (one per Envoy
filter, ``apx``), ``tier`` (the plan tiers the Product schema allows),
``code`` (OK/OVER_LIMIT), ``limit`` (which limit refused: rate, api_key,
quota, concurrency, credits, or none), ``failure_mode`` (open/closed) and
``decided_by`` (service/envoy), ``reason`` (why the gRPC transport refused a
peer: a closed set, ``grpcserver.REJECT_REASONS``). Never the tenant, the product, an API key or a
path: those go to logs and traces.

Each service instance owns a ``CollectorRegistry`` so several can live in one
process (tests, benchmark); ``main`` serves it on ``--metrics-port``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from apx.dataplane.common.metrics import service_registry

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class RateLimitMetrics:
    """The service's metric families in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or service_registry()
        self.decisions = Counter(
            "apx_ratelimit_decisions_total",
            "Rate-limit decisions, by the tier of the rule applied, the answer and the limit that refused.",
            ["domain", "tier", "code", "limit"],
            registry=self.registry,
        )
        self.failures = Counter(
            "apx_ratelimit_failures_total",
            "Requests the service could not judge (Redis down, no rule set, bad request), by the failure "
            "mode the product's policies ask for and by who applied it (envoy: the service answered an "
            "error and Envoy's per-route filter instance decided; service: the service answered itself).",
            ["failure_mode", "decided_by", "reason"],
            registry=self.registry,
        )
        self.overload = Counter(
            "apx_ratelimit_overload_total",
            "Requests answered by the failure mode because every pooled Redis connection stayed busy past "
            "the wait deadline or the wait queue was full (Redis itself answered), by the product's failure "
            "mode and by who applied it.",
            ["failure_mode", "decided_by"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "apx_ratelimit_decision_seconds",
            "Time to answer ShouldRateLimit, Redis round trip included.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "apx_ratelimit_redis_up",
            "1 when the last Redis call or health probe succeeded.",
            registry=self.registry,
        )
        self.rule_set_loads = Counter(
            "apx_ratelimit_rule_set_loads_total",
            "Rule-set versions the service switched to (hot reloads, first loads included).",
            registry=self.registry,
        )
        self.connections = Gauge(
            "apx_ratelimit_grpc_connections",
            "HTTP/2 connections open to the service (Envoy opens one per worker thread).",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "apx_ratelimit_grpc_calls_in_flight",
            "Calls received and not yet answered.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "apx_ratelimit_grpc_rejected_total",
            "Connections or streams the gRPC transport refused or closed to protect itself, by reason "
            "(max_connections, handshake_timeout, idle_timeout, refused_stream, malformed_request, "
            "reset_rate, header_block, message_size, protocol_error, internal_error).",
            ["reason"],
            registry=self.registry,
        )
        self._decision_children: dict[tuple[str, str, str, str], Counter] = {}

    def rejected_peer(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def decided(self, domain: str, tier: str, code: str, limit: str) -> None:
        key = (domain, tier, code, limit)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        child.inc()
