"""The Envoy snapshot parts through the reconciler: written whole, pruned when the snapshot shrinks.

Emulated Kubernetes API, real Redis and Pub/Sub emulator (``tests/conftest.py``).
The part size is lowered so the samples' snapshot needs several parts; raising
it back makes one part enough, and the reconciler must delete the others (they
have no ownerReference, so the owner-based pruning would leave them).
"""

from __future__ import annotations

import asyncio

import pytest

from apx.controllers import names
from apx.controllers.appliers.kube import KubeClient
from apx.controllers.renderers.kubernetes import envoy_snapshot
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps
from e2e.services import Service
from tests.operator.test_reconciler import _reconciler_with_samples

pytestmark = pytest.mark.timeout(120)


async def _snapshot_configmaps(kube: KubeClient) -> list[str]:
    prefix = names.envoy_snapshot_configmap()
    listed = await kube.list("ConfigMap", "apx-system")
    return sorted(c["metadata"]["name"] for c in listed if c["metadata"]["name"].startswith(prefix))


@pytest.mark.asyncio
async def test_shrinking_from_several_parts_to_one_deletes_the_extra_parts(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 2 * 1024)
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=7
    )
    many = await _snapshot_configmaps(kube)
    assert len(many) >= 4, many  # the index and at least three parts
    assert decode_configmaps(await kube.list("ConfigMap", "apx-system"))

    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 768 * 1024)
    report = await reconciler.reconcile_once(full=True)
    assert await _snapshot_configmaps(kube) == ["apx-envoy-snapshot", "apx-envoy-snapshot-0"]
    assert report.manifests_pruned >= len(many) - 2
    resources = decode_configmaps(await kube.list("ConfigMap", "apx-system"))
    assert resources is not None
    assert {r.type_url.rsplit(".", 1)[-1] for r in resources} == {"Listener", "RouteConfiguration", "Cluster"}


@pytest.mark.asyncio
async def test_parts_are_pruned_without_waiting_for_a_full_pass(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 2 * 1024)
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=8
    )
    assert len(await _snapshot_configmaps(kube)) >= 4
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 4 * 1024)
    # Not a full pass: the parts changed (new sizes), and their number went down.
    await reconciler.reconcile_once(full=False)
    remaining = await _snapshot_configmaps(kube)
    assert decode_configmaps(await kube.list("ConfigMap", "apx-system")) is not None
    index = await kube.get("ConfigMap", "apx-system", names.envoy_snapshot_configmap())
    assert index is not None
    assert remaining == sorted([names.envoy_snapshot_configmap(), *index["data"]["parts"].split()])


@pytest.mark.asyncio
async def test_snapshot_configmaps_follow_xds_at_most_every_snapshot_configmap_seconds(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xDS gets every pass's snapshot at once; the ConfigMaps lag by at most the interval, never forever."""
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=9
    )
    served: list[str] = []
    reconciler.envoy_listeners.append(lambda output: served.append(output.version))
    reconciler.settings = reconciler.settings.model_copy(update={"snapshot_configmap_seconds": 0.6})

    async def stored_version() -> str:
        index = await kube.get("ConfigMap", "apx-system", names.envoy_snapshot_configmap())
        assert index is not None
        return str(index["data"]["version"])

    async def edit(timeout: str) -> None:
        body = await kube.get("Route", "default", "payments-charges")
        assert body is not None
        updated = await kube.apply(
            {
                "apiVersion": body["apiVersion"],
                "kind": "Route",
                "metadata": {"name": "payments-charges", "namespace": "default"},
                "spec": {**body["spec"], "timeout": timeout},
            }
        )
        reconciler.observe("Route", {**updated, "kind": "Route"})

    # The samples' last pass wrote them; a change within the interval goes to xDS only.
    await edit("11s")
    await reconciler.reconcile_once()
    # The timer asks for the pass that writes them once the interval has passed (the
    # reconciler's loop is not running here). Watched from before the pass that sets it:
    # on a loaded machine the rest of that pass can outlast the interval.
    asked = asyncio.Event()
    request_pass = reconciler.request_pass

    def record_request() -> None:
        asked.set()
        request_pass()

    monkeypatch.setattr(reconciler, "request_pass", record_request)
    await edit("12s")
    await reconciler.reconcile_once()
    assert served and await stored_version() != served[-1]
    await asyncio.wait_for(asked.wait(), timeout=5)
    await reconciler.reconcile_once()
    assert await stored_version() == served[-1]
    assert decode_configmaps(await kube.list("ConfigMap", "apx-system")) is not None
