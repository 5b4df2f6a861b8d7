"""Services exposing each worker Deployment's metrics port, for Prometheus scraping.

Pure. Called by ``render_kubernetes`` (this package). One headless Service per
worker Deployment, selecting exactly that Deployment's pods (route, track and
pool labels), so a ServiceMonitor or the ``prometheus.io/*`` annotations scrape
every worker pod and the ``apx.dev/track`` label tells canary from stable.
Headless because nothing load-balances to a worker; Prometheus discovers the
pods through the Service's endpoints.
"""

from __future__ import annotations

from typing import Any

from .common import METRICS_PORT, METRICS_PORT_NAME, metadata
from .workers import WorkerPool, pool_labels, selector_labels


def render_service(pool: WorkerPool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            pool.name,
            pool.route.ref.namespace,
            pool_labels(pool),
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
            },
            owner=pool.route.ref,
        ),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(pool),
            "ports": [
                {
                    "name": METRICS_PORT_NAME,
                    "port": METRICS_PORT,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_services(pools: list[WorkerPool]) -> list[dict[str, Any]]:
    return [render_service(pool) for pool in pools]
