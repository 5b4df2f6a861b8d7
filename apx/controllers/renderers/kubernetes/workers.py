"""Worker Deployments of async Routes: one per track, plus dedicated pools.

Pure. Called by ``render_kubernetes`` (this package) and, for
``deployments_for_route``, by the translator's status summaries.

Which Deployment consumes which subscription is decided by
``apx.controllers.renderers.pubsub_plan.route_topics`` (``TopicPlan.pool``):

* the **shared pool** of a track (``apx-worker-<route>-<track>``) consumes the
  track's shared topics in every region and the topics of namespace-isolated
  tenants;
* a **dedicated pool** (``apx-worker-<route>-<plan>-<track>``) exists for each
  plan with ``isolation: dedicated`` that has at least one known tenant, and
  consumes exactly those tenants' topics. Tenants that are not listed in the
  Product have no topic of their own and are served by the shared pool.

Both tracks are always deployed with the replica count the Route declares,
whatever the canary weight: at weight 0 (pending, rolled back) or 100
(promoted) the idle track may still hold a backlog published before the
weight moved, and scaling it to zero would strand those messages. A dedicated
pool is sized like the track it belongs to (the Product has no per-plan sizing).

What ``apx-worker`` reads from its environment: ``APX_SUBSCRIPTIONS``
(comma-separated subscription ids in ``APX_PUBSUB_PROJECT``), ``APX_ROUTE``,
``APX_PRODUCT``, ``APX_TRACK``, ``APX_POOL``, ``APX_UPSTREAM_URL``,
``APX_TIMEOUT_MS`` (per upstream call), ``APX_RESULT_TTL_MS``,
``APX_MAX_OUTSTANDING_MESSAGES`` (flow control), ``APX_DRAIN_SECONDS`` (on
SIGTERM, how long work in flight may finish before it is nacked),
``APX_METRICS_PORT`` (serves ``/metrics``, ``/healthz``, ``/readyz``),
``APX_REDIS_URL`` and, with the emulator, ``PUBSUB_EMULATOR_HOST``. Each is
also a flag of ``apx-worker`` (``apx.dataplane.worker.config``).

Workers need, in the Route's namespace, the ConfigMap ``apx-dataplane``
(``pubsub-project``, optional ``pubsub-emulator-host``) and the Secret
``apx-dataplane`` (``redis-url``); they are not rendered here because their
values come from the installation, not from the APX objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ... import names
from ...ir import BackendIR, RouteIR, TrackIR
from ..pubsub_plan import TopicPlan, route_topics
from .common import MANAGED_BY, METRICS_PORT, METRICS_PORT_NAME, WORKER_APP, metadata

SHARED_POOL = "shared"
RUN_AS_USER = 65532
# A stopping worker stops pulling and finishes what it holds; each message
# takes at most the Route's timeout, plus time to ack and flush telemetry.
SHUTDOWN_MARGIN_SECONDS = 15
# The worker's own drain deadline: a call that started just before SIGTERM may
# take the whole Route timeout; the rest of the grace period stops the pullers
# and flushes acks before the kubelet's SIGKILL.
DRAIN_MARGIN_SECONDS = 5
TMP_SIZE_LIMIT = "64Mi"


@dataclass(frozen=True, slots=True)
class WorkerPool:
    """One worker Deployment: a track of a Route, shared or dedicated to a plan, and its topics."""

    route: RouteIR
    track: TrackIR
    pool: str | None
    topics: tuple[TopicPlan, ...]

    @property
    def name(self) -> str:
        return names.worker_deployment(self.route.ref.name, self.track.name, self.pool)

    @property
    def pool_label(self) -> str:
        return self.pool or SHARED_POOL

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return tuple(sorted(topic.subscription for topic in self.topics))


def worker_pools(route: RouteIR) -> list[WorkerPool]:
    """The worker Deployments of a Route (none for sync Routes), sorted by name."""
    if route.mode != "async":
        return []
    grouped: dict[tuple[str, str | None], list[TopicPlan]] = {}
    for topic in route_topics(route):
        grouped.setdefault((topic.track, topic.pool), []).append(topic)
    pools: list[WorkerPool] = []
    for track in route.tracks:
        if track.worker is None:
            continue
        for (track_name, pool), topics in grouped.items():
            if track_name == track.name:
                pools.append(WorkerPool(route=route, track=track, pool=pool, topics=tuple(topics)))
    return sorted(pools, key=lambda p: p.name)


def deployments_for_route(route: RouteIR) -> list[str]:
    """Names of the worker Deployments of a Route (for status summaries)."""
    return [pool.name for pool in worker_pools(route)]


def selector_labels(pool: WorkerPool) -> dict[str, str]:
    """Labels that select exactly one pool's pods (immutable once the Deployment exists)."""
    return {
        "app.kubernetes.io/name": WORKER_APP,
        "apx.dev/route": names.k8s_label_value(pool.route.ref.name),
        "apx.dev/track": pool.track.name,
        "apx.dev/pool": names.k8s_label_value(pool.pool_label),
    }


def pool_labels(pool: WorkerPool) -> dict[str, str]:
    return {
        **selector_labels(pool),
        **MANAGED_BY,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/instance": pool.name,
        "apx.dev/product": names.k8s_label_value(pool.route.product.ref.name),
    }


def upstream_url(backend: BackendIR) -> str:
    scheme = "https" if backend.tls else "http"
    default_port = 443 if backend.tls else 80
    port = "" if backend.port == default_port else f":{backend.port}"
    return f"{scheme}://{backend.host}{port}{backend.path_prefix}"


def _env(pool: WorkerPool) -> list[dict[str, Any]]:
    route = pool.route
    worker = pool.track.worker
    assert worker is not None
    plain = {
        "APX_ROUTE": route.key,
        "APX_PRODUCT": route.product.key,
        "APX_TRACK": pool.track.name,
        "APX_POOL": pool.pool_label,
        "APX_SUBSCRIPTIONS": ",".join(pool.subscriptions),
        "APX_UPSTREAM_URL": upstream_url(pool.track.backend),
        "APX_TIMEOUT_MS": str(route.timeout_ms),
        "APX_RESULT_TTL_MS": str(route.delivery.result_ttl_ms),
        "APX_MAX_OUTSTANDING_MESSAGES": str(worker.max_outstanding_messages),
        "APX_DRAIN_SECONDS": str(math.ceil(route.timeout_ms / 1000) + DRAIN_MARGIN_SECONDS),
        "APX_METRICS_PORT": str(METRICS_PORT),
    }
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in plain.items()]
    env += _ENV_FROM_INSTALLATION
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": METRICS_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


# What every worker Deployment has in common, one object each, shared by every manifest (the
# manifests are read-only: the applier sends them as they are; the Pub/Sub plan's documents
# share their common parts the same way). At 10,000 Routes (2,000 async) the manifests the
# operator keeps between passes went from 14.1 to 8.0 MiB (166,000 to 88,000 blocks).
_ENV_FROM_INSTALLATION: list[dict[str, Any]] = [
    {
        "name": "APX_PUBSUB_PROJECT",
        "valueFrom": {"configMapKeyRef": {"name": names.dataplane_configmap(), "key": "pubsub-project"}},
    },
    {
        "name": "PUBSUB_EMULATOR_HOST",
        "valueFrom": {
            "configMapKeyRef": {
                "name": names.dataplane_configmap(),
                "key": "pubsub-emulator-host",
                "optional": True,
            }
        },
    },
    {
        "name": "APX_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": names.dataplane_secret(), "key": "redis-url"}},
    },
]
_COMMAND = ["apx-worker"]
_PORTS = [{"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}]
_LIVENESS = _probe("/healthz", 10, 3)
_READINESS = _probe("/readyz", 5, 2)
_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# A read-only root needs somewhere for Python's and gRPC's temp files.
_VOLUME_MOUNTS = [{"name": "tmp", "mountPath": "/tmp"}]
_VOLUMES = [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}]
_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Never drop below the declared capacity while rolling: a queue consumer that shrinks
# during a rollout grows the backlog.
_STRATEGY = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}


def render_deployment(pool: WorkerPool) -> dict[str, Any]:
    route = pool.route
    worker = pool.track.worker
    assert worker is not None
    labels = pool_labels(pool)
    selector = selector_labels(pool)
    resources: dict[str, Any] = {}
    if worker.requests:
        resources["requests"] = dict(worker.requests)
    if worker.limits:
        resources["limits"] = dict(worker.limits)
    container = {
        "name": "worker",
        "image": worker.image,
        "command": _COMMAND,
        "env": _env(pool),
        "ports": _PORTS,
        "resources": resources,
        "livenessProbe": _LIVENESS,
        "readinessProbe": _READINESS,
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": _VOLUME_MOUNTS,
    }
    pod_spec = {
        "containers": [container],
        "securityContext": _POD_SECURITY,
        # Workers never call the Kubernetes API, and service links would only
        # add environment variables nobody reads.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": math.ceil(route.timeout_ms / 1000) + SHUTDOWN_MARGIN_SECONDS,
        "volumes": _VOLUMES,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector},
            }
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            pool.name,
            route.ref.namespace,
            labels,
            {"apx.dev/policy-artifact": pool.track.policy.artifact, "apx.dev/route-key": route.key},
            owner=route.ref,
        ),
        "spec": {
            "replicas": worker.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "strategy": _STRATEGY,
            "template": {"metadata": {"labels": dict(sorted(labels.items()))}, "spec": pod_spec},
        },
    }


def render_workers(routes: tuple[RouteIR, ...]) -> list[dict[str, Any]]:
    return [render_deployment(pool) for route in routes for pool in worker_pools(route)]
