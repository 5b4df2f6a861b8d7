"""How the operator runs its xDS server: start, feeds (ConfigMap, reconciler), NACK → status and Events.

Called by ``apx.operator.main.run_operator`` (``start_xds`` / ``XdsFeed.close``)
when ``--xds-port`` is not 0. Every replica serves (see ``XDS.md``,
"Replicas"):

* before anything else, the snapshot ConfigMap the leader last wrote is
  decoded and served, so a restarted operator (or a standby) never answers an
  Envoy with an empty configuration;
* the reconciler's passes (leader only) feed the server through
  ``Reconciler.envoy_listeners``;
* until this process has served a snapshot of its own pass, the ConfigMap is
  read again every ``poll_seconds`` (a standby follows the leader's output).

NACKs: the reconciler asks ``XdsServer.rejections()`` while building
statuses (``Programmed=False``, reason ``Rejected``); this module posts one
Warning Event per affected Route when a rejection appears, and asks the
reconciler for a pass so the status shows it (and again when it clears).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from apx.controllers import names
from apx.controllers.appliers.kube import KubeClient, KubeError
from apx.controllers.renderers.kubernetes.envoy_snapshot import decode_configmaps

from ..events import post_event
from ..reconciler import Reconciler
from ..settings import OperatorSettings
from .server import XdsServer
from .snapshot import TYPE_NAMES, XdsSnapshot

logger = logging.getLogger("apx.operator.xds")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def load_configmap_snapshot(
    kube: KubeClient, namespace: str, previous: XdsSnapshot | None = None, instance: str = ""
) -> XdsSnapshot | None:
    """The snapshot stored in the operator namespace's snapshot ConfigMap(s), or None.

    ``previous`` is returned as is when the ConfigMaps' content is the one it was
    read from (a standby polls: it decodes only what changed). ``instance``: the
    operator instance whose snapshot is read (several may share the namespace).
    """
    try:
        configmaps = await kube.list("ConfigMap", namespace)
    except KubeError as exc:
        logger.info("cannot read the Envoy snapshot ConfigMap yet: %s", exc)
        return None
    index = names.envoy_snapshot_configmap(instance)
    parts = names.envoy_snapshot_part_prefix(instance)
    stored = sorted(
        (
            c
            for c in configmaps
            if (name := str((c.get("metadata") or {}).get("name", ""))) == index or name.startswith(parts)
        ),
        key=lambda c: str(c["metadata"]["name"]),
    )
    # The content decides the version: the same stored bytes give the same version.
    digest = hashlib.sha256()
    for configmap in stored:
        for field in ("data", "binaryData"):
            for key, value in sorted((configmap.get(field) or {}).items()):
                digest.update(f"{configmap['metadata']['name']}/{key}\0".encode())
                digest.update(str(value).encode())
    version = "configmap:" + digest.hexdigest()[:16]
    if previous is not None and previous.version == version:
        return previous
    resources = await asyncio.to_thread(decode_configmaps, stored, instance)
    if resources is None:
        return None
    return await asyncio.to_thread(_from_any, resources, version, previous)


def _from_any(resources: list[Any], version: str, previous: XdsSnapshot | None) -> XdsSnapshot:
    return XdsSnapshot.from_any(resources, version, previous).prepare()


class XdsFeed:
    """The running server and the tasks feeding it."""

    def __init__(
        self,
        server: XdsServer,
        reconciler: Reconciler,
        kube: KubeClient,
        namespace: str,
        poll_seconds: float = 10.0,
        instance: str = "",
    ) -> None:
        self.server = server
        self.reconciler = reconciler
        self.kube = kube
        self.namespace = namespace
        self.instance = instance
        self.poll_seconds = poll_seconds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._reported: set[tuple[str, str, str]] = set()  # (node, type, route key) with an Event posted

    async def start(self) -> None:
        snapshot = await load_configmap_snapshot(self.kube, self.namespace, instance=self.instance)
        if snapshot is not None:
            self.server.set_snapshot(snapshot, "configmap")
            logger.info("serving the stored Envoy snapshot %s until the first pass", snapshot.version)
        self.reconciler.envoy_listeners.append(self.server.submit)
        self.reconciler.envoy_waits.append(self.server.built)
        self.reconciler.xds_rejections = self.server.rejections
        self.server.on_rejection.append(self._rejected)
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while self.server.snapshot_source != "reconcile":
            await asyncio.sleep(self.poll_seconds)
            if self.server.snapshot_source == "reconcile":
                return
            snapshot = await load_configmap_snapshot(
                self.kube, self.namespace, self.server.snapshot, self.instance
            )
            if snapshot is not None and self.server.snapshot_source != "reconcile":
                self.server.set_snapshot(snapshot, "configmap")

    def _rejected(self, node: str, type_url: str, message: str, affected: tuple[str, ...]) -> None:
        # Any change of rejections (new NACK, cleared by an ACK, proxy gone) shows in status next pass.
        self.reconciler.request_pass()
        if not message:
            self._reported = {r for r in self._reported if r[0] != node or (type_url and r[1] != type_url)}
            return
        for key in affected:
            marker = (node, type_url, key)
            if marker in self._reported:
                continue
            self._reported.add(marker)
            body = self.reconciler.objects.get(("Route", key))
            if body is None:
                continue
            text = f"Envoy rejected the {TYPE_NAMES.get(type_url, 'xDS')} update: {message}"
            task = asyncio.get_running_loop().create_task(
                post_event(self.kube, "Route", body, "Warning", "Rejected", text, _now())
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.stop()


async def start_xds(
    settings: OperatorSettings,
    reconciler: Reconciler,
    kube: KubeClient,
    registry: CollectorRegistry | None = None,
) -> XdsFeed:
    """Start the ADS server on ``--xds-host:--xds-port`` and connect it to the reconciler."""
    server = XdsServer(settings.xds_host, settings.xds_port, registry=registry)
    feed = XdsFeed(server, reconciler, kube, settings.operator_namespace, instance=settings.instance)
    await server.start()
    await feed.start()
    return feed
