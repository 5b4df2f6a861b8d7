"""Kubernetes sync: server-side apply of changed manifests, pruning, and the Envoy snapshot ConfigMaps.

Mixed into ``apx.operator.reconciler.Reconciler`` (``KubernetesSync``).
Manifests are applied when their digest differs from what was applied (an
unchanged manifest is the very dict of the last pass at its place and keeps
its digest; an ordinary pass checks only the others, ``positions``);
children no longer wanted are pruned on full passes (only labelled ones whose
APX owner exists); the snapshot ConfigMaps are written after the xDS push, at
most every ``snapshot_configmap_seconds`` (stretched so writing them takes at
most ``SNAPSHOT_WRITE_SHARE`` of the time), and their extra parts pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

from apx.controllers import names
from apx.controllers.appliers.kube import KINDS, Invalid, KubeError, Unavailable
from apx.controllers.ir import RouteIR
from apx.controllers.pipeline import Compiled
from apx.controllers.renderers.envoy import EnvoyOutput
from apx.controllers.renderers.kubernetes.envoy_snapshot import (
    INSTANCE_LABEL,
    ROLE_LABEL,
    render_envoy_snapshot,
)
from apx.dataplane.common.redact import redact_url

from .positions import changed_positions
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
# A manifest with its identity and digest.
Row = tuple[dict[str, Any], Identity, str]


# The most of the time writing the snapshot ConfigMaps may take: the next write waits at least
# (1 / SNAPSHOT_WRITE_SHARE - 1) times as long as the last one took. At 10,000 Routes a write
# (the document, JSON, gzip, the parts through the API) takes about half a second of CPU, much
# of it holding the interpreter the passes share; every 5 s that was a tenth of the time, and a
# change arriving meanwhile waited behind it. xDS, not these ConfigMaps, carries changes.
SNAPSHOT_WRITE_SHARE = 0.05
# However long the last write took (an API server slow for a while), the next waits no longer.
SNAPSHOT_SPACING_MAX_SECONDS = 60.0


class KubernetesSync(ReconcilerState):
    """Kubernetes sync of the reconciler (a mixin of ``Reconciler``)."""

    async def _apply_kubernetes(self, compiled: Compiled, report: PassReport, full: bool) -> None:
        manifests = [*compiled.kubernetes.manifests, *self._dataplane_settings(compiled)]
        rows = await self._apply_manifests(manifests, report, remember=True)
        if full or self.deleting:
            await self._prune({identity for _, identity, _ in rows}, report)

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
        wait = written_at + self._snapshot_spacing() - time.monotonic()
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
        wait = written_at + self._snapshot_spacing() - time.monotonic()
        if wait > 0:
            if self._snapshot_timer is None:
                self._snapshot_timer = asyncio.get_running_loop().call_later(wait, self._snapshot_due)
            return
        self._snapshot_writer = asyncio.get_running_loop().create_task(
            self._write_envoy_snapshot(envoy, PassReport(), False, background=True)
        )

    def _snapshot_spacing(self) -> float:
        """The least time between two snapshot ConfigMap writes now (``SNAPSHOT_WRITE_SHARE``).

        ``snapshot_configmap_seconds`` of 0 (tests, tools) writes them on every pass, unstretched.
        """
        least = self.settings.snapshot_configmap_seconds
        if least <= 0:
            return 0.0
        stretched = min(
            self._snapshot_write_seconds * (1 / SNAPSHOT_WRITE_SHARE - 1), SNAPSHOT_SPACING_MAX_SECONDS
        )
        return max(least, stretched)

    async def snapshot_written(self) -> None:
        """Wait until a snapshot ConfigMap write in flight is done (tests, full passes, shutdown)."""
        writer = self._snapshot_writer
        if writer is not None and not writer.done():
            await asyncio.gather(asyncio.shield(writer), return_exceptions=True)

    async def _write_envoy_snapshot(
        self, envoy: EnvoyOutput, report: PassReport, full: bool, background: bool = False
    ) -> None:
        started = time.monotonic()
        sent_before, pruned_before = report.manifests_applied, report.manifests_pruned
        try:
            instance = self.settings.instance
            # The document too is made in the thread: it counts the routes of every virtual host
            # (tens of milliseconds at 10,000 Routes), which the event loop must not wait for.
            manifests = await asyncio.to_thread(
                _snapshot_configmaps, envoy, self.settings.operator_namespace, instance
            )
            built = time.monotonic()
            # The parts first, then the index that names them: a reader never follows an index
            # to parts not written yet. Content-named parts are new names (an unchanged one is
            # skipped by its digest); the parts the old index named stay until pruned below,
            # so a reader of the old index still finds every part of it.
            rows = await self._apply_manifests(manifests[1:], report)
            applied = self._applied_manifests
            if any(applied.get(identity) != digest for _, identity, digest in rows):
                # (Why is logged per part.) The next change, or the resync, writes them again.
                logger.warning(
                    "Envoy snapshot %s: not every part was written; the index is left as it was",
                    envoy.version,
                )
                return
            rows += await self._apply_manifests(manifests[:1], report)
            desired = {identity for _, identity, _ in rows}
            index = ("ConfigMap", self.settings.operator_namespace, names.envoy_snapshot_configmap(instance))
            if index in self._applied_manifests:
                await self._prune_snapshot_parts(desired, report, full)
                done = time.monotonic()
                self._snapshot_written = (envoy.version, done)
                self._snapshot_write_seconds = done - started
                # With the pass lines, this tells whether a slow pass ran beside a snapshot write
                # (its build holds the interpreter part of the time, in a thread).
                logger.info(
                    "Envoy snapshot %s written: %d of its %d ConfigMaps sent, %d deleted, in %.0f ms"
                    " (built in %.0f ms)",
                    envoy.version,
                    report.manifests_applied - sent_before,
                    len(manifests),
                    report.manifests_pruned - pruned_before,
                    (done - started) * 1000,
                    (built - started) * 1000,
                )
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
    ) -> list[Row]:
        """Apply the manifests that differ from what was applied; returns each with identity and digest.

        ``remember``: the Routes' and Products' manifests of a pass (not the snapshot
        ConfigMaps). When the last such call left every manifest applied and nothing else
        changed ``_applied_manifests`` since (``_manifests_settled`` is ``_manifest_moves``,
        which every other change of it bumps), only the manifests that
        are other objects than last pass's at their place can be due (``_digested``): a
        one-Route edit checks its own few manifests instead of thousands. Otherwise every
        manifest is checked, as before.
        """
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

        rows, positions = await asyncio.to_thread(self._digested, manifests, remember)
        applied = self._applied_manifests
        settled = remember and positions is not None and self._manifests_settled == self._manifest_moves
        if settled:
            due = [row for row in map(rows.__getitem__, positions or ()) if applied.get(row[1]) != row[2]]
        else:
            due = [row for row in rows if applied.get(row[1]) != row[2]]
        if remember:
            self._manifests_settled = None  # until this call is done
        else:
            self._manifest_moves += 1  # the snapshot ConfigMaps: the next remembered call checks all
        moves = self._manifest_moves
        await asyncio.gather(*(apply_one(*row) for row in due))
        if not remember:
            self._manifest_moves += 1  # and once they are written (a remembered call may be running)
        if (
            remember
            and moves == self._manifest_moves
            and all(applied.get(identity) == digest for _, identity, digest in due)
        ):
            self._manifests_settled = moves
        return rows

    def _digested(
        self, manifests: list[dict[str, Any]], remember: bool
    ) -> tuple[list[Row], list[int] | None]:
        """Each manifest with its identity and digest, and where they differ from last pass's (or ``None``).

        Unchanged manifests are the very dicts of the last pass (the renderers'
        caches), at the same place: with ``remember`` (the Routes' and Products'
        manifests, not the snapshot ConfigMaps) last pass's rows are kept
        (``_manifest_row_list``) and only the places holding another dict get a
        new row (``positions``); when manifests came or went, a manifest that is
        the very dict of a last pass's row keeps that row. Either way an
        unchanged manifest costs no JSON encoding and no identity built again.
        Runs in a thread.
        """
        digests = self.caches.digests

        def row_of(manifest: dict[str, Any]) -> Row:
            digest = digests.get(manifest, functools.partial(_digest, manifest))
            return (manifest, _identity(manifest), digest)

        positions = changed_positions(self._manifest_list, manifests) if remember else None
        if positions is not None:
            rows = list(self._manifest_row_list)
            for index in positions:
                rows[index] = row_of(manifests[index])
        else:
            before = {id(row[0]): row for row in self._manifest_row_list} if remember else {}
            rows = []
            for manifest in manifests:
                row = before.get(id(manifest))
                rows.append(row if row is not None and row[0] is manifest else row_of(manifest))
        if remember:
            self._manifest_list, self._manifest_row_list = manifests, rows
        return rows, positions

    async def _prune_snapshot_parts(
        self, desired: set[tuple[str, str, str]], report: PassReport, full: bool
    ) -> None:
        """Delete Envoy snapshot parts the current index no longer names.

        They have no ownerReference (the snapshot spans namespaces), so ``_prune``
        leaves them. Runs once the new index is applied (a reader following the
        old index finds an incomplete set and waits, rather than a mixed one).
        An ordinary write deletes the parts the last write named and this one
        does not (a large snapshot's content-named parts: the one or two a
        change replaced); a full pass lists every part, so a part left by a
        crash or an earlier operator goes too.
        """
        namespace = self.settings.operator_namespace
        instance = self.settings.instance
        prefix = names.envoy_snapshot_part_prefix(instance)
        parts = {i for i in desired if i[0] == "ConfigMap" and i[1] == namespace and i[2].startswith(prefix)}
        replaced = self._snapshot_parts - parts
        self._snapshot_parts = parts
        if not full:
            for identity in sorted(replaced):
                try:
                    await self.kube.delete("ConfigMap", namespace, identity[2])
                except KubeError as exc:  # the next full pass lists and deletes it
                    logger.warning("cannot delete Envoy snapshot part %s: %s", identity[2], exc)
                    continue
                self._applied_manifests.pop(identity, None)
                self._manifest_moves += 1
                report.manifests_pruned += 1
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
            self._manifest_moves += 1
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
        namespaces = self._async_namespaces(compiled.ir.routes)
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

    def _async_namespaces(self, routes: tuple[RouteIR, ...]) -> tuple[str, ...]:
        """The namespaces with async Routes, sorted.

        Counted per namespace and, while no Route came or went, updated for the Routes at
        the positions holding another RouteIR than last pass (``positions``) instead of
        read from every Route again.
        """
        before, counts = self._async_routes, self._async_counts
        positions = self._route_positions(before, routes)
        self._async_routes = None  # until the counts are those of ``routes``
        if before is None or positions is None:
            counts = Counter(route.ref.namespace for route in routes if route.mode == "async")
        else:
            for index in positions:
                if before[index].mode == "async":
                    counts[before[index].ref.namespace] -= 1
                if routes[index].mode == "async":
                    counts[routes[index].ref.namespace] += 1
        self._async_routes, self._async_counts = routes, counts
        return tuple(sorted(namespace for namespace, count in counts.items() if count > 0))

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
                    self._manifest_moves += 1
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


def _snapshot_configmaps(envoy: EnvoyOutput, namespace: str, instance: str) -> list[dict[str, Any]]:
    return render_envoy_snapshot(envoy.snapshot_document(), namespace, instance)
