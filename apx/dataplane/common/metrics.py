"""What every APX service's Prometheus registry has in common: process metrics, no ``_created`` series.

Called by the metrics classes of the operator (``apx.operator.metrics``) and
of the three dataplane services (``apx.dataplane.*.metrics``) to create their
own ``CollectorRegistry``. Each service keeps a registry of its own (tests
and benchmarks run several in one process), so the default registry's
``process_*`` collector is not there: it is added here, reading the current
process (``/proc/self``; on systems without ``/proc`` it yields nothing).

Naming: APX's own metrics are ``apx_<component>_…`` (``apx_operator_``,
``apx_ratelimit_``, ``apx_gateway_``, ``apx_worker_``, ``apx_canary_``).
Two groups keep other names on purpose: the operator's
``controller_runtime_*`` and ``workqueue_*`` (controller-runtime's names, so
its dashboards and alerts work unchanged) and the worker's
``apx_requests_total`` / ``apx_request_duration_seconds`` /
``apx_queue_latency_seconds`` / ``apx_in_flight_requests`` (the per-track
series the canary analysis queries; their names are a contract with the
canary queries in ``apx/controllers/providers/queries.py`` and the chart).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

# ``<name>_created`` series (one per counter, histogram and labelled child) double the series count
# for a timestamp Prometheus itself does not use; the OpenMetrics exposition keeps them off too.
disable_created_metrics()  # type: ignore[no-untyped-call]


def service_registry() -> CollectorRegistry:
    """A fresh registry with the ``process_*`` metrics of this process."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry
