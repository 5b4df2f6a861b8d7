"""Leader election over a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Used by ``apx.operator.leader_run`` when ``APX_LEADER_ELECTION`` is on: of the
operator replicas, the one holding the Lease reconciles, runs the canary
loop and writes; the others wait as warm standbys.

The protocol (the same as controller-runtime's, so ``kubectl get lease`` reads
the same way):

* a candidate creates the Lease, or takes it over with a PUT carrying the
  ``resourceVersion`` it read (optimistic concurrency: of two candidates
  racing, the API server accepts one and answers the other 409);
* a Lease held by someone else counts as expired when its record
  (holder, renewTime, resourceVersion) has not changed for
  ``leaseDurationSeconds`` of *this* process's monotonic clock — the holder's
  ``renewTime`` is never compared with our wall clock, so clock skew between
  nodes does not matter;
* the holder renews every ``renew_seconds``; when it cannot renew for
  ``renew_deadline`` (two thirds of the duration, client-go's ratio) it steps
  down before anyone may take over, so two leaders never overlap while clocks
  run at the same rate;
* on a clean shutdown the holder releases the Lease (empty holder, 1 s
  duration) so the standby takes over at its next retry instead of after a
  full lease duration.

Take-over after the holder dies without releasing (SIGKILL, node loss) takes
at most ``duration + retry_seconds`` (plus one API round trip).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apx.controllers.appliers.kube import Conflict, KubeClient, KubeError, ResourceKind

from .settings import OperatorSettings

logger = logging.getLogger("apx.operator.leader")

LEASES = ResourceKind("coordination.k8s.io/v1", "Lease", "leases")


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Where the Lease lives, who we are, and the timing (seconds)."""

    namespace: str
    name: str
    identity: str
    duration: float = 15.0
    renew_seconds: float = 2.0
    retry_seconds: float = 2.0

    @property
    def renew_deadline(self) -> float:
        return self.duration * 2 / 3


def _micro_time(now: datetime.datetime) -> str:
    """A ``MicroTime`` as the API writes it."""
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Acquires, renews and releases one Lease for ``settings.identity``."""

    def __init__(
        self,
        kube: KubeClient,
        settings: LeaseSettings,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.kube = kube
        self.settings = settings
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renewed = 0.0
        self.is_leader = False
        self.holder: str | None = None

    @property
    def _path(self) -> str:
        return LEASES.path(self.settings.namespace, self.settings.name)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        now = self._monotonic()
        try:
            lease = await self.kube.request("GET", self._path)
            if lease is None:
                created = await self.kube.request(
                    "POST", LEASES.path(self.settings.namespace), body=self._lease_body(None, None)
                )
                return self._won(created, now)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or None
            record = (holder, spec.get("renewTime"), (lease.get("metadata") or {}).get("resourceVersion"))
            if record != self._observed:
                self._observed, self._observed_at = record, now
            self.holder = holder
            duration = float(spec.get("leaseDurationSeconds") or self.settings.duration)
            if holder not in (None, self.settings.identity) and now < self._observed_at + duration:
                self.is_leader = False
                return False
            replaced = await self.kube.request("PUT", self._path, body=self._lease_body(lease, holder))
            return self._won(replaced, now)
        except Conflict:
            self.is_leader = False  # another candidate wrote first; read again at the next attempt
            return False
        except KubeError as exc:
            logger.warning("cannot read or write Lease %s: %s", self.settings.name, exc)
            if self.is_leader and now - self._last_renewed >= self.settings.renew_deadline:
                self.is_leader = False
            return self.is_leader

    def _won(self, lease: dict[str, Any] | None, now: float) -> bool:
        spec = (lease or {}).get("spec") or {}
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            (lease or {}).get("metadata", {}).get("resourceVersion"),
        )
        self._observed, self._observed_at = record, now
        self.holder = self.settings.identity
        self._last_renewed = now
        self.is_leader = True
        return True

    def _lease_body(self, current: dict[str, Any] | None, holder: str | None) -> dict[str, Any]:
        now = _micro_time(self._wall_clock())
        spec = dict((current or {}).get("spec") or {})
        taking_over = holder != self.settings.identity
        spec.update(
            holderIdentity=self.settings.identity,
            leaseDurationSeconds=max(1, round(self.settings.duration)),
            renewTime=now,
        )
        if taking_over:
            spec["acquireTime"] = now
            if current is not None:
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            else:
                spec["leaseTransitions"] = 0
        metadata: dict[str, Any] = {"name": self.settings.name, "namespace": self.settings.namespace}
        if current is not None:
            metadata["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
            metadata["labels"] = (current.get("metadata") or {}).get("labels") or {}
        return {"apiVersion": LEASES.api_version, "kind": LEASES.kind, "metadata": metadata, "spec": spec}

    async def acquire(self) -> None:
        """Return once we hold the Lease (retries every ``retry_seconds``)."""
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.settings.retry_seconds)
        logger.warning("became the leader (Lease %s/%s)", self.settings.namespace, self.settings.name)

    async def hold(self) -> None:
        """Renew until a renewal fails for ``renew_deadline`` or another holder is seen; then return."""
        while True:
            await asyncio.sleep(self.settings.renew_seconds)
            if not await self.try_acquire_or_renew():
                logger.error(
                    "lost the Lease %s/%s (holder now: %s)",
                    self.settings.namespace,
                    self.settings.name,
                    self.holder,
                )
                return

    async def release(self) -> None:
        """Give the Lease up (clean shutdown), so a standby takes over at its next retry."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self.kube.request("GET", self._path)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.settings.identity:
                return
            spec = {**(lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.kube.request("PUT", self._path, body={**lease, "spec": spec})
        except KubeError as exc:
            logger.warning("cannot release the Lease %s: %s", self.settings.name, exc)


def lease_settings(settings: OperatorSettings) -> LeaseSettings:
    """The Lease of ``settings``; identity: the pod name (``POD_NAME``, downward API), else host and PID."""
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return LeaseSettings(
        namespace=settings.operator_namespace,
        name=settings.lease_name,
        identity=identity,
        duration=settings.lease_duration_seconds,
        renew_seconds=settings.lease_renew_seconds,
        retry_seconds=settings.lease_renew_seconds,
    )
