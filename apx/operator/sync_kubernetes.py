"""Kubernetes sync: server-side apply of changed manifests, pruning, and the Envoy snapshot ConfigMaps.

Mixed into ``apx.operator.reconciler.Reconciler`` (``KubernetesSync``).
Manifests are applied when their digest differs from what was applied (an
unchanged manifest is the very dict of the last pass and keeps its digest);
children no longer wanted are pruned on full passes (only labelled ones whose
APX owner exists); the snapshot ConfigMaps are written after the xDS push, at
most every ``snapshot_configmap_seconds``, and their extra parts pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from apx.controllers import names
from apx.controllers.appliers.kube import KINDS, Invalid, KubeError, Unavailable
from apx.controllers.pipeline import Compiled
from apx.controllers.renderers.envoy import EnvoyOutput
from apx.controllers.renderers.kubernetes.envoy_snapshot import (
    INSTANCE_LABEL,
    ROLE_LABEL,
    render_envoy_snapshot,
)
from apx.dataplane.common.redact import redact_url

from .reconcile_state import (
    CONTROLLERS,
    MANAGED_BY,
    PRUNABLE_KINDS,
    DependencyProblem,
    PassReport,
    ReconcilerState,
    _digest,
    logger,
)

Identity = tuple[str, str, str]


class KubernetesSync(ReconcilerState):
    """Kubernetes sync of the reconciler (a mixin of ``Reconciler``)."""

    async def _apply_kubernetes(self, compiled: Compiled, report: PassReport, full: bool) -> None:
        manifests = [*compiled.kubernetes.manifests, *self._dataplane_settings(compiled)]
        desired = await self._apply_manifests(manifests, report, remember=True)
        if full or self.deleting:
            await self._prune(desired, report)

    async def _apply_envoy_snapshot(self, compiled: Compiled, report: PassReport, full: bool) -> None:
        """Write the Envoy snapshot ConfigMaps after the xDS push, at most every few seconds.

        They are the readable and restart copy of what xDS serves, not the
        way Envoy gets a change, and at 10,000 Routes rendering them (JSON,
        gzip: ~400 ms of CPU) costs more than the rest of a one-Route change: a
        burst of changes writes them once. Full passes, and passes run on their
        own (tests, ``apx`` tools), write them in line; one that finds them due
        too early leaves a timer that asks for one more pass when they are.
        Under the reconciler's loop (``Scheduler.run``) an ordinary pass only
        hands its snapshot over (``_snapshot_latest``): a background task writes
        the latest one when due (``_write_latest_snapshot``), so no pass waits
        for the write and none runs just to make it.
        """
        envoy = compiled.envoy
        self._snapshot_latest = envoy
        version, written_at = self._snapshot_written
        if envoy.version == version and not full:
            return  # a full pass writes them again: that is how a deleted or edited part is repaired
        if self._background_snapshots and not full:
            self._write_latest_snapshot()
            return
        wait = written_at + self.settings.snapshot_configmap_seconds - time.monotonic()
        if wait > 0 and not full:
            if self._snapshot_timer is None:
                self._snapshot_timer = asyncio.get_running_loop().call_later(wait, self._snapshot_due)
            return
        await self.snapshot_written()  # one in flight is older: it goes first
        await self._write_envoy_snapshot(envoy, report, full)

    def _write_latest_snapshot(self) -> None:
        """Start writing the latest snapshot in the background: if not written yet, due, and none running."""
        envoy = self._snapshot_latest
        version, written_at = self._snapshot_written
        if envoy is None or envoy.version == version:
            return
        if self._snapshot_writer is not None and not self._snapshot_writer.done():
            return  # the write in flight looks again when it is done
        wait = written_at + self.settings.snapshot_configmap_seconds - time.monotonic()
        if wait > 0:
            if self._snapshot_timer is None:
                self._snapshot_timer = asyncio.get_running_loop().call_later(wait, self._snapshot_due)
            return
        self._snapshot_writer = asyncio.get_running_loop().create_task(
            self._write_envoy_snapshot(envoy, PassReport(), False, background=True)
        )

    async def snapshot_written(self) -> None:
        """Wait until a snapshot ConfigMap write in flight is done (tests, full passes, shutdown)."""
        writer = self._snapshot_writer
        if writer is not None and not writer.done():
            await asyncio.gather(asyncio.shield(writer), return_exceptions=True)

    async def _write_envoy_snapshot(
        self, envoy: EnvoyOutput, report: PassReport, full: bool, background: bool = False
    ) -> None:
        try:
            instance = self.settings.instance
            manifests = await asyncio.to_thread(
                render_envoy_snapshot, envoy.snapshot_document(), self.settings.operator_namespace, instance
            )
            desired = await self._apply_manifests(manifests, report)
            index = ("ConfigMap", self.settings.operator_namespace, names.envoy_snapshot_configmap(instance))
            if index in self._applied_manifests:
                await self._prune_snapshot_parts(desired, report, full)
                self._snapshot_written = (envoy.version, time.monotonic())
        except Exception:
            if not background:
                raise
            # In line, the pass fails and is retried with back-off; here the next change or
            # the resync tries again (trying again now could fail the same way in a loop).
            logger.exception("cannot write the Envoy snapshot ConfigMaps; the next change tries again")
            return
        if background and self._snapshot_written[0] == envoy.version:
            # A newer snapshot served meanwhile is written when due, once this task is done.
            # (Not after a refused write: the next change or the resync tries again, not a loop.)
            asyncio.get_running_loop().call_soon(self._write_latest_snapshot)

    def _snapshot_due(self) -> None:
        self._snapshot_timer = None
        if self._background_snapshots:
            self._write_latest_snapshot()
        else:
            self.request_pass()

    async def _apply_manifests(
        self, manifests: list[dict[str, Any]], report: PassReport, remember: bool = False
    ) -> set[tuple[str, str, str]]:
        """Apply the manifests that differ from what was applied; returns every manifest's identity."""
        semaphore = asyncio.Semaphore(self.settings.worker_limit)

        async def apply_one(manifest: Mapping[str, Any], identity: tuple[str, str, str], digest: str) -> None:
            owner_kind = (_owner_key(manifest) or ("Route", ""))[0]
            async with semaphore, self._active(CONTROLLERS[owner_kind]):
                try:
                    await self.kube.apply(manifest)
                except Invalid as exc:
                    owner = _owner_key(manifest)
                    if owner is not None:
                        report.problems[owner] = DependencyProblem(
                            "ManifestRejected",
                            f"{identity[0]} {identity[1]}/{identity[2]}: {exc.message}",
                            True,
                        )
                    return
                except Unavailable as exc:
                    self.metrics.dependency_up.labels(dependency="kubernetes").set(0)
                    owner = _owner_key(manifest)
                    problem = DependencyProblem("KubernetesUnavailable", f"{exc}; retrying")
                    if owner is not None:
                        report.problems[owner] = problem
                    return
                except KubeError as exc:
                    # Refused for another reason (403 from RBAC, 413 too large, ...): its owner
                    # says so and the pass goes on, so every other object still gets its status.
                    owner = _owner_key(manifest)
                    message = f"{identity[0]} {identity[1]}/{identity[2]}: {exc}; retrying"
                    if owner is not None:
                        report.problems[owner] = DependencyProblem("ManifestRefused", message)
                    else:  # the Envoy snapshot ConfigMaps: the next pass writes them again
                        logger.warning("cannot apply %s", message)
                    return
            self.metrics.dependency_up.labels(dependency="kubernetes").set(1)
            self._applied_manifests[identity] = digest
            report.manifests_applied += 1

        digested = await asyncio.to_thread(self._digested, manifests, remember)
        await asyncio.gather(
            *(
                apply_one(manifest, identity, digest)
                for manifest, identity, digest in digested
                if self._applied_manifests.get(identity) != digest
            )
        )
        return {identity for _, identity, _ in digested}

    def _digested(
        self, manifests: list[dict[str, Any]], remember: bool
    ) -> list[tuple[dict[str, Any], Identity, str]]:
        """Each manifest with its identity and digest.

        Unchanged manifests are the very dicts of the last pass (the renderers'
        caches): with ``remember`` (the Routes' and Products' manifests, not the
        snapshot ConfigMaps) the last pass's rows are kept by the manifest's
        identity (``_manifest_rows``), so an unchanged manifest costs one lookup,
        no JSON encoding and no identity built again.
        """
        before = self._manifest_rows if remember else {}
        digests = self.caches.digests
        rows: list[tuple[dict[str, Any], Identity, str]] = []
        for manifest in manifests:
            row = before.get(id(manifest))
            if row is None or row[0] is not manifest:
                digest = digests.get(manifest, functools.partial(_digest, manifest))
                row = (manifest, _identity(manifest), digest)
            rows.append(row)
        if remember:
            self._manifest_rows = {id(row[0]): row for row in rows}
        return rows

    async def _prune_snapshot_parts(
        self, desired: set[tuple[str, str, str]], report: PassReport, full: bool
    ) -> None:
        """Delete Envoy snapshot parts the current index no longer names (the snapshot shrank).

        They have no ownerReference (the snapshot spans namespaces), so ``_prune``
        leaves them. Runs once the new index is applied (a reader following the
        old index finds an incomplete set and waits, rather than a mixed one), on
        full passes and whenever the number of parts went down.
        """
        namespace = self.settings.operator_namespace
        instance = self.settings.instance
        prefix = names.envoy_snapshot_part_prefix(instance)
        parts = {i for i in desired if i[0] == "ConfigMap" and i[1] == namespace and i[2].startswith(prefix)}
        shrank = bool(self._snapshot_parts - parts)
        self._snapshot_parts = parts
        if not (full or shrank):
            return
        try:
            items = await self.kube.list("ConfigMap", namespace, label_selector="apx.dev/envoy-snapshot=part")
        except KubeError as exc:
            logger.warning("cannot list Envoy snapshot parts for pruning: %s", exc)
            return
        for item in items:
            meta = item.get("metadata") or {}
            identity = ("ConfigMap", namespace, str(meta.get("name")))
            labels = meta.get("labels") or {}
            # The label selector is checked here too: not every API (the emulated one) applies it.
            if labels.get(ROLE_LABEL) != "part" or identity in desired:
                continue
            # Another operator instance's parts (several may share the operator namespace).
            if labels.get(INSTANCE_LABEL, "") != instance or not identity[2].startswith(prefix):
                continue
            await self.kube.delete("ConfigMap", namespace, identity[2])
            self._applied_manifests.pop(identity, None)
            report.manifests_pruned += 1

    def _dataplane_settings(self, compiled: Compiled) -> list[dict[str, Any]]:
        """Per namespace with async Routes: where workers find Redis and Pub/Sub (a ConfigMap and a Secret).

        Not owned by any one Route (several share them), so they carry the
        managed-by label but no ownerReference and are never pruned.
        """
        labels = {"app.kubernetes.io/managed-by": "apx", "app.kubernetes.io/part-of": "apx"}
        data = {"pubsub-project": self.settings.pubsub_project}
        if self.settings.pubsub_emulator_host:
            # A ConfigMap is no place for a credential (the emulator has no authentication anyway).
            data["pubsub-emulator-host"] = redact_url(self.settings.pubsub_emulator_host)
        namespaces = tuple(sorted({r.ref.namespace for r in compiled.ir.routes if r.mode == "async"}))
        kept = self._dataplane_manifests
        if kept is not None and kept[0] == (namespaces, self.settings):
            return kept[1]  # the very dicts of the last pass: their digests are kept (``_digested``)
        manifests: list[dict[str, Any]] = []
        for namespace in namespaces:
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": names.dataplane_configmap(),
                        "namespace": namespace,
                        "labels": labels,
                    },
                    "data": data,
                }
            )
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": names.dataplane_secret(), "namespace": namespace, "labels": labels},
                    "type": "Opaque",
                    "stringData": {"redis-url": self.settings.redis_url},
                }
            )
        self._dataplane_manifests = ((namespaces, self.settings), manifests)
        return manifests

    async def _prune(self, desired: set[tuple[str, str, str]], report: PassReport) -> None:
        existing_owners = {
            str((body.get("metadata") or {}).get("uid"))
            for key, body in self.objects.items()
            if key not in self.deleting
        }
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        for kind in PRUNABLE_KINDS:
            for namespace in namespaces:
                try:
                    items = await self.kube.list(kind, namespace, label_selector=MANAGED_BY)
                except KubeError as exc:
                    logger.warning("cannot list %s for pruning: %s", kind, exc)
                    return
                for item in items:
                    meta = item.get("metadata") or {}
                    identity = (kind, str(meta.get("namespace", "")), str(meta.get("name")))
                    if identity in desired:
                        continue
                    owner_uids = {
                        str(ref.get("uid"))
                        for ref in meta.get("ownerReferences") or []
                        if str(ref.get("apiVersion", "")).startswith("apx.dev/")
                    }
                    # Only prune children of live owners; a deleted owner's children go by garbage collection.
                    if not owner_uids or not owner_uids <= existing_owners:
                        continue
                    await self.kube.delete(kind, identity[1], identity[2])
                    self._applied_manifests.pop(identity, None)
                    report.manifests_pruned += 1

    @contextlib.asynccontextmanager
    async def _active(self, controller: str) -> AsyncIterator[None]:
        """Count one worker of ``controller`` as busy (``controller_runtime_active_workers``) meanwhile."""
        gauge = self.metrics.active_workers.labels(controller=controller)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = manifest["metadata"]
    return (str(manifest["kind"]), str(meta.get("namespace", "")), str(meta["name"]))


def _owner_key(manifest: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = manifest.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if str(ref.get("apiVersion", "")).startswith("apx.dev/") and ref.get("kind") in KINDS:
            return (str(ref["kind"]), f"{meta.get('namespace', 'default')}/{ref['name']}")
    return None
