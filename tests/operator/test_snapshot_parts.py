"""The Envoy snapshot parts through the reconciler: written whole, pruned when the snapshot shrinks.

Emulated Kubernetes API, real Redis and Pub/Sub emulator (``tests/conftest.py``).
The part size is lowered so the samples' snapshot needs several parts; raising
it back makes one part enough, and the reconciler must delete the others (they
have no ownerReference, so the owner-based pruning would leave them).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from apx.controllers import names
from apx.controllers.appliers.kube import KubeClient
from apx.controllers.renderers.kubernetes import envoy_snapshot
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps
from apx.operator import sync_kubernetes
from apx.operator.reconciler import Reconciler
from e2e.memory_targets import edited
from e2e.services import Service
from tests.operator.test_incremental_pass import _settled
from tests.operator.test_reconciler import _reconciler_with_samples

pytestmark = pytest.mark.timeout(120)


async def _snapshot_configmaps(kube: KubeClient) -> list[str]:
    prefix = names.envoy_snapshot_configmap()
    listed = await kube.list("ConfigMap", "apx-system")
    return sorted(c["metadata"]["name"] for c in listed if c["metadata"]["name"].startswith(prefix))


async def _stored_version(kube: KubeClient) -> str:
    """The Envoy snapshot version the index ConfigMap holds."""
    index = await kube.get("ConfigMap", "apx-system", names.envoy_snapshot_configmap())
    assert index is not None
    return str(index["data"]["version"])


async def _edit_timeout(kube: KubeClient, reconciler: Reconciler, timeout: str) -> None:
    """Apply a new timeout to the samples' payments-charges Route and hand the result to the reconciler."""
    body = await kube.get("Route", "default", "payments-charges")
    assert body is not None
    metadata = {"name": "payments-charges", "namespace": "default"}
    spec = {**body["spec"], "timeout": timeout}
    updated = await kube.apply(
        {"apiVersion": body["apiVersion"], "kind": "Route", "metadata": metadata, "spec": spec}
    )
    reconciler.observe("Route", {**updated, "kind": "Route"})


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
async def test_a_route_edit_writes_the_parts_it_changed_then_the_index_then_deletes_what_they_replaced(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content-named parts: the untouched ones are not sent again, and no part is listed to prune."""
    monkeypatch.setattr(envoy_snapshot, "PART_BYTES", 2 * 1024)
    monkeypatch.setattr(envoy_snapshot, "PART_MIN_BYTES", 256)
    monkeypatch.setattr(envoy_snapshot, "PART_CUT_ONE_IN", 2)
    monkeypatch.setattr(envoy_snapshot, "CHUNK_MIN_BYTES", 256)
    monkeypatch.setattr(envoy_snapshot, "CHUNK_CUT_ONE_IN", 2)
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=11
    )
    before = await _snapshot_configmaps(kube)
    assert len(before) >= 6, before
    served: list[str] = []
    reconciler.envoy_listeners.append(lambda output: served.append(output.version))
    calls: list[tuple[str, str]] = []
    apply, delete, listed = kube.apply, kube.delete, kube.list

    async def recording_apply(manifest: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(("apply", str(manifest["metadata"]["name"])))
        return await apply(manifest, *args, **kwargs)

    async def recording_delete(kind: str, namespace: str | None, name: str) -> bool:
        calls.append(("delete", name))
        return await delete(kind, namespace, name)

    async def recording_list(kind: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(("list", kind))
        return await listed(kind, *args, **kwargs)

    monkeypatch.setattr(kube, "apply", recording_apply)
    monkeypatch.setattr(kube, "delete", recording_delete)
    monkeypatch.setattr(kube, "list", recording_list)
    await _edit_timeout(kube, reconciler, "13s")
    calls.clear()
    await reconciler.reconcile_once()
    during, calls[:] = list(calls), []

    after = await _snapshot_configmaps(kube)
    prefix = names.envoy_snapshot_configmap()
    written = [name for verb, name in during if verb == "apply" and name.startswith(prefix)]
    deleted = [name for verb, name in during if verb == "delete"]
    assert written[-1] == prefix  # the index last, once its parts are there
    assert set(written[:-1]) == set(after) - set(before)
    assert 1 <= len(written) - 1 <= len(after) // 2, (written, after)
    assert sorted(deleted) == sorted(set(before) - set(after))
    assert ("list", "ConfigMap") not in during  # the replaced parts are known: deleted by name
    assert await _stored_version(kube) == served[-1]
    assert decode_configmaps(await kube.list("ConfigMap", "apx-system")) is not None  # whole


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

    # The samples' last pass wrote them; a change within the interval goes to xDS only.
    await _edit_timeout(kube, reconciler, "11s")
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
    await _edit_timeout(kube, reconciler, "12s")
    await reconciler.reconcile_once()
    assert served and await _stored_version(kube) != served[-1]
    await asyncio.wait_for(asked.wait(), timeout=5)
    await reconciler.reconcile_once()
    assert await _stored_version(kube) == served[-1]
    assert decode_configmaps(await kube.list("ConfigMap", "apx-system")) is not None


@pytest.mark.asyncio
async def test_under_the_loop_a_pass_does_not_wait_for_the_configmaps_and_the_newest_snapshot_is_written(
    kube: KubeClient, redis_service: Service, pubsub_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow ConfigMap write runs beside the passes; the snapshot served last is the one stored at last."""
    reconciler, _ = await _reconciler_with_samples(
        kube, redis_service, pubsub_service, monkeypatch, database=10
    )
    served: list[str] = []
    reconciler.envoy_listeners.append(lambda output: served.append(output.version))
    writes: list[str] = []

    def slow_render(document: dict[str, Any], namespace: str, instance: str = "") -> list[dict[str, Any]]:
        writes.append(document["version"])
        time.sleep(1.0)  # a 10,000-Route snapshot on a busy machine
        return envoy_snapshot.render_envoy_snapshot(document, namespace, instance)

    monkeypatch.setattr(sync_kubernetes, "render_envoy_snapshot", slow_render)

    stop = asyncio.Event()
    passes = reconciler.passes
    loop = asyncio.create_task(reconciler.run(stop))
    try:
        while reconciler.passes == passes:  # the loop's first pass is a full one: written in line
            await asyncio.sleep(0.02)
        writes.clear()
        served.clear()
        passes = reconciler.passes
        await _edit_timeout(kube, reconciler, "21s")
        while reconciler.passes == passes:
            await asyncio.sleep(0.02)
        # The pass is over, its snapshot served, and its ConfigMaps are still being written.
        assert served and len(writes) == 1 and await _stored_version(kube) != served[-1]
        passes = reconciler.passes
        await _edit_timeout(kube, reconciler, "22s")  # served while the first write is still going on
        while reconciler.passes == passes:
            await asyncio.sleep(0.02)
        assert len(served) == 2
        passes = reconciler.passes
        deadline = time.monotonic() + 15
        while await _stored_version(kube) != served[-1]:
            assert time.monotonic() < deadline, "the newest snapshot never reached the ConfigMaps"
            await asyncio.sleep(0.1)
        assert writes[-1] == served[-1]
        assert reconciler.passes == passes  # written by the background task, not by a pass run for it
    finally:
        stop.set()
        reconciler.request_pass()
        await asyncio.wait_for(loop, 10)


@pytest.mark.asyncio
async def test_a_slow_snapshot_write_stretches_the_wait_before_the_next_one_up_to_a_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writing the ConfigMaps takes at most a twentieth of the time, and the wait never exceeds the cap."""
    reconciler, kube, _ = await _settled(60, 6)  # the benchmark's workload, in-memory targets
    reconciler.settings = reconciler.settings.model_copy(update={"snapshot_configmap_seconds": 1.0})
    reconciler._snapshot_write_seconds = 0.0
    assert reconciler._snapshot_spacing() == 1.0  # a quick write: the setting

    def slow_render(document: dict[str, Any], namespace: str, instance: str = "") -> list[dict[str, Any]]:
        time.sleep(0.3)  # a 10,000-Route snapshot
        return envoy_snapshot.render_envoy_snapshot(document, namespace, instance)

    monkeypatch.setattr(sync_kubernetes, "render_envoy_snapshot", slow_render)
    await reconciler.reconcile_once(full=True)  # writes them in line
    took = reconciler._snapshot_write_seconds
    assert took >= 0.3
    stretched = took * (1 / sync_kubernetes.SNAPSHOT_WRITE_SHARE - 1)
    assert reconciler._snapshot_spacing() == pytest.approx(stretched)
    # An ordinary pass within the stretched wait serves xDS and leaves the ConfigMaps for later.
    served: list[str] = []
    reconciler.envoy_listeners.append(lambda output: served.append(output.version))
    written = reconciler._snapshot_written
    route = next(
        key
        for key, body in sorted(reconciler.objects.items())
        if key[0] == "Route"
        and body["spec"].get("mode", "sync") == "sync"
        and reconciler._phases.get(key) == "Ready"
    )
    reconciler.observe("Route", edited(reconciler, route, kube, timeout="41s"))
    await asyncio.sleep(1.2)  # past the setting, within the stretched wait
    await reconciler.reconcile_once()
    assert served and served[-1] != written[0]
    assert reconciler._snapshot_written == written
    assert reconciler._snapshot_timer is not None
    reconciler._snapshot_timer.cancel()

    reconciler._snapshot_write_seconds = 3600.0  # an API server that took an hour to answer
    assert reconciler._snapshot_spacing() == sync_kubernetes.SNAPSHOT_SPACING_MAX_SECONDS
    reconciler.settings = reconciler.settings.model_copy(update={"snapshot_configmap_seconds": 0})
    assert reconciler._snapshot_spacing() == 0.0  # 0 writes on every pass, unstretched
