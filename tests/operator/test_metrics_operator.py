"""The operator's ``/metrics`` as Prometheus scrapes it: every declared family has samples after real work.

The reconciler runs in-process against the emulated Kubernetes API, real
Redis and the Pub/Sub emulator (as in ``test_reconciler``); its registry is
served by prometheus_client's HTTP server on a loopback port and scraped over
HTTP, so what is asserted is the exposition a Prometheus would read.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from apx.controllers.appliers.kube import KubeClient
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier
from apx.operator.metrics import CONTROLLER_NAMES, OperatorMetrics
from apx.operator.reconciler import Reconciler
from apx.operator.settings import OperatorSettings
from e2e.services import Service, free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = [
    d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> tuple[str, Samples]:
    """GET /metrics: the raw text and every sample by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return text, samples


def value(samples: Samples, metric: str, **labels: str) -> float:
    found_samples = samples.get(metric, [])
    matching = [v for found, v in found_samples if all(found.get(k) == x for k, x in labels.items())]
    assert matching, (metric, labels, found_samples)
    return sum(matching)


async def _apply_samples_before_last_pass(kube: KubeClient, reconciler: Reconciler) -> None:
    """Apply the samples in order, with a pass after each PolicyBundle version; the Routes stay pending."""
    for document in SAMPLES:
        meta = document["metadata"]
        if await kube.get(document["kind"], "default", meta["name"]) is None:
            await kube.create(document)
        else:
            await kube.apply({**document, "metadata": {**meta, "namespace": "default"}})
        body = await kube.get(document["kind"], "default", meta["name"])
        assert body is not None
        reconciler.observe(document["kind"], {**body, "kind": document["kind"]})
        if document["kind"] == "PolicyBundle":
            await reconciler.reconcile_once()


@pytest.mark.asyncio
async def test_operator_metrics_scrape_has_samples_for_every_family_and_queue_depth_counts_pending_changes(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_service.address)
    url = f"redis://{redis_service.address}/7"
    settings = OperatorSettings(
        redis_url=url,
        pubsub_project=f"apx-test-{uuid.uuid4().hex[:8]}",
        resync_seconds=3600,
        snapshot_configmap_seconds=0,
    )
    metrics = OperatorMetrics()
    reconciler = Reconciler(
        settings, kube, RedisApplier(url, keep_versions=3), PubSubApplier(), metrics=metrics
    )
    busy_during_writes: list[float] = []
    patch_status = kube.patch_status

    async def watched_patch_status(*args: Any, **kwargs: Any) -> Any:
        busy_during_writes.append(metrics.active_workers.labels(controller="route")._value.get())
        await asyncio.sleep(0)
        return await patch_status(*args, **kwargs)

    monkeypatch.setattr(kube, "patch_status", watched_patch_status)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        # Before any pass: bounded children exist at 0, the queue is empty.
        _, before = scrape(port)
        assert all(value(before, "workqueue_depth", name=c) == 0 for c in CONTROLLER_NAMES)
        assert value(before, "apx_operator_objects", kind="Route", phase="Ready") == 0

        await _apply_samples_before_last_pass(kube, reconciler)
        # The same Route observed again (a second watch event) is one pending change, not two.
        route = await kube.get("Route", "default", "payments-charges")
        assert route is not None
        reconciler.observe("Route", {**route, "kind": "Route"})
        _, pending = scrape(port)
        routes = sum(1 for d in SAMPLES if d["kind"] == "Route")
        assert value(pending, "workqueue_depth", name="route") == routes
        assert value(pending, "workqueue_depth", name="product") == 0  # taken by the PolicyBundle passes
        assert value(pending, "workqueue_adds_total", name="route") >= routes

        await reconciler.reconcile_once()
        text, after = scrape(port)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        await reconciler.redis.close()
        reconciler.pubsub.close()

    assert all(value(after, "workqueue_depth", name=c) == 0 for c in CONTROLLER_NAMES)
    for controller in CONTROLLER_NAMES:
        assert value(after, "controller_runtime_reconcile_time_seconds_count", controller=controller) >= 1
        assert value(after, "controller_runtime_reconcile_total", controller=controller) >= 1
        assert value(after, "controller_runtime_active_workers", controller=controller) == 0
    # Workers were counted while status writes were in flight.
    assert busy_during_writes and max(busy_during_writes) >= 1
    assert value(after, "apx_operator_objects", kind="Route", phase="Ready") == routes
    assert value(after, "apx_operator_objects", kind="Product", phase="Ready") == 2
    # Per object too: one series per APX object, 1 when Ready.
    for document in SAMPLES:
        namespace = document["metadata"].get("namespace", "default")
        labels = {"kind": document["kind"], "namespace": namespace, "name": document["metadata"]["name"]}
        assert value(after, "apx_operator_object_ready", **labels) == 1, labels
    assert not before.get("apx_operator_object_ready")  # no series before the first pass
    for dependency in ("kubernetes", "redis", "pubsub"):
        assert value(after, "apx_operator_dependency_up", dependency=dependency) == 1
    assert value(after, "apx_operator_pass_seconds_count") >= 2
    assert value(after, "process_cpu_seconds_total") > 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert "_created" not in text
