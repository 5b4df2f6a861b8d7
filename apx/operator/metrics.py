"""Prometheus metrics of the operator, named like controller-runtime's so existing dashboards work.

Registered by ``apx.operator.main`` and updated by the reconciler. Labels are
low-cardinality: ``controller`` (product | route | policybundle), ``result``
(success | error | requeue), ``dependency`` (kubernetes | redis | pubsub).
The canary controller's metrics carry ``namespace`` and ``route`` (bounded by
the Routes that exist, never by traffic) and ``result`` (the decision kinds).

What each controller-runtime name means here (one reconcile pass covers every
changed object of all three kinds):

* ``workqueue_depth{name}``: objects changed (watch events) and not yet taken
  by a pass, per controller — pending work, not the size of the store;
* ``controller_runtime_reconcile_time_seconds{controller}``: the duration of
  each pass that reconciled changes of that controller's kind;
* ``controller_runtime_active_workers{controller}``: status writes and
  Kubernetes applies in flight for that controller (bounded by
  ``--worker-limit``).

Readiness is counted, ``apx_operator_objects{kind,phase}`` (three kinds by
three kstatus phases, whatever the number of objects), and also given per
object, ``apx_operator_object_ready{kind,namespace,name}`` (1 Ready, 0 not),
in the manner of kube-state-metrics' per-object gauges, so an alert can name
the object: one series per APX object (no reason or message label, which
would multiply it), removed when the object is deleted. The reason is in its
status, its Events and the reconcile span.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from apx.dataplane.common.metrics import service_registry

CONTROLLER_NAMES = ("product", "route", "policybundle")
OBJECT_KINDS = ("Product", "Route", "PolicyBundle")
PHASES = ("Ready", "Reconciling", "Stalled")
DEPENDENCIES = ("kubernetes", "redis", "pubsub")


class OperatorMetrics:
    """The operator's metrics in their own registry (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or service_registry()
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
            "workqueue_depth",
            "Objects changed and not yet taken by a reconcile pass, per controller.",
            ["name"],
            registry=self.registry,
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
        self.object_ready = Gauge(
            "apx_operator_object_ready",
            "1 when the APX object is Ready after the last pass, else 0; one series per object.",
            ["kind", "namespace", "name"],
            registry=self.registry,
        )
        self.objects = Gauge(
            "apx_operator_objects",
            "APX objects by kind and phase (Ready, Reconciling, Stalled) after the last pass.",
            ["kind", "phase"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "apx_operator_leader",
            "1 while this replica holds the leader Lease (or runs without leader election), else 0.",
            registry=self.registry,
        )
        self.role = "leader"
        self.leader.set(1)
        # Every bounded child exists from the start: a dashboard or an alert sees 0, not "no data".
        for controller in CONTROLLER_NAMES:
            self.workqueue_depth.labels(name=controller).set(0)
            self.active_workers.labels(controller=controller).set(0)
        self.set_object_phases({})

    def set_role(self, role: str) -> None:
        """``leader``, ``standby`` or ``stopped`` (leader election); shown by ``/healthz`` too."""
        self.role = role
        self.leader.set(1 if role == "leader" else 0)

    def set_object_ready(self, kind: str, key: str, ready: bool | None) -> None:
        """Set (or with ``None`` remove) one object's ``apx_operator_object_ready`` series."""
        namespace, name = key.split("/", 1)
        if ready is None:
            with contextlib.suppress(KeyError):
                self.object_ready.remove(kind, namespace, name)
            return
        self.object_ready.labels(kind=kind, namespace=namespace, name=name).set(1 if ready else 0)

    def set_object_phases(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set ``apx_operator_objects`` from (kind, phase) counts; absent combinations read 0."""
        for kind in OBJECT_KINDS:
            for phase in PHASES:
                self.objects.labels(kind=kind, phase=phase).set(counts.get((kind, phase), 0))


class PendingChanges:
    """The work queue ``workqueue_depth`` reports: distinct objects changed since the last pass.

    The reconciler is level-triggered (a pass takes every change at once), so
    the queue is a set of object keys per controller, emptied when a pass
    starts; adding a key that is already pending does not deepen it.
    """

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics
        self._pending: dict[str, set[str]] = {controller: set() for controller in CONTROLLER_NAMES}

    def add(self, controller: str, key: str) -> None:
        keys = self._pending[controller]
        if key not in keys:
            keys.add(key)
            self._metrics.workqueue_depth.labels(name=controller).set(len(keys))

    def take(self) -> list[str]:
        """Empty the queue; returns the controllers that had pending changes."""
        taken = [controller for controller, keys in self._pending.items() if keys]
        for controller in taken:
            self._pending[controller] = set()
            self._metrics.workqueue_depth.labels(name=controller).set(0)
        return taken
