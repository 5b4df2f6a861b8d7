"""Prometheus metrics of the operator, named like controller-runtime's so existing dashboards work.

Registered by ``apx.operator.main`` and updated by the reconciler. Labels are
low-cardinality: ``controller`` (product | route | policybundle), ``result``
(success | error | requeue), ``dependency`` (kubernetes | redis | pubsub).
The canary controller's metrics carry ``namespace`` and ``route`` (bounded by
the Routes that exist, never by traffic) and ``result`` (the decision kinds).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    """The operator's metrics in their own registry (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller.",
            ["controller", "result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller.",
            ["controller"],
            registry=self.registry,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller.",
            ["controller"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.workqueue_depth = Gauge(
            "workqueue_depth", "Current depth of the work queue.", ["name"], registry=self.registry
        )
        self.workqueue_adds = Counter(
            "workqueue_adds_total",
            "Total number of adds handled by the work queue.",
            ["name"],
            registry=self.registry,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller.",
            ["controller"],
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "apx_operator_dependency_up",
            "1 when the last call to the dependency succeeded, else 0.",
            ["dependency"],
            registry=self.registry,
        )
        self.pass_duration = Histogram(
            "apx_operator_pass_seconds",
            "Duration of one reconcile pass over all resources.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "apx_canary_weight",
            "Current canary traffic weight of a Route, in percent.",
            ["namespace", "route"],
            registry=self.registry,
        )
        self.canary_checks = Counter(
            "apx_canary_checks_total",
            "Canary analysis checks, by decision: advance, hold, promote, rollback, no-data, halt, manual.",
            ["result"],
            registry=self.registry,
        )
        self.canary_rollbacks = Counter(
            "apx_canary_rollbacks_total",
            "Automated canary rollbacks.",
            ["namespace", "route"],
            registry=self.registry,
        )
        self.canary_frozen = Gauge(
            "apx_canary_frozen",
            "1 while a Route's automated canary changes are frozen by the circuit breaker.",
            ["namespace", "route"],
            registry=self.registry,
        )
        self.canary_metrics_up = Gauge(
            "apx_canary_metrics_up",
            "1 when the last query of the canary metrics backend succeeded, else 0.",
            ["provider"],
            registry=self.registry,
        )
