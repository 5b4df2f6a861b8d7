"""Availability of async Routes' worker Deployments, as their status reports it.

Fed by the Deployment watch in ``apx.operator.handlers`` (Deployments labelled
``app.kubernetes.io/managed-by: apx``) and read by the reconciler when it
writes a Route's status: an async Route is Ready only when every worker
Deployment it has (stable, canary, dedicated pools) has an available replica;
otherwise it is ``Reconciling`` with reason ``WorkersUnavailable``.
``status.workers`` shows ``{available, desired}`` per track.

A Deployment that no controller has observed yet (no ``status.observedGeneration``
and no ``availableReplicas``) has unknown availability (``available: null``)
and does not hold the Route back: on a cluster the Deployment controller
observes a new Deployment within moments (and then reports 0 available until
a Pod is ready), while the emulated API of the local stack runs no
controllers at all and would otherwise never let an async Route become Ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROUTE_KEY_ANNOTATION = "apx.dev/route-key"
TRACK_LABEL = "apx.dev/track"


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker Deployment: its track, desired replicas, and available ones (None: not observed yet)."""

    track: str
    desired: int
    available: int | None


def worker_state(body: Mapping[str, Any]) -> tuple[str, str, WorkerState] | None:
    """(route key, Deployment name, state) of a worker Deployment body; None for other Deployments."""
    meta = body.get("metadata") or {}
    route_key = (meta.get("annotations") or {}).get(ROUTE_KEY_ANNOTATION)
    track = (meta.get("labels") or {}).get(TRACK_LABEL)
    if not route_key or not track:
        return None
    status = body.get("status") or {}
    observed = status.get("observedGeneration") is not None or "availableReplicas" in status
    # Kubernetes omits availableReplicas when it is 0.
    available = int(status.get("availableReplicas") or 0) if observed else None
    desired = int((body.get("spec") or {}).get("replicas", 1))
    return str(route_key), str(meta.get("name")), WorkerState(str(track), desired, available)


class WorkerAvailability:
    """The latest observed state of every worker Deployment, by Route."""

    def __init__(self) -> None:
        self._by_route: dict[str, dict[str, WorkerState]] = {}

    def observe(self, body: Mapping[str, Any]) -> bool:
        """Record a Deployment's state; True when it changed what a Route's status says."""
        parsed = worker_state(body)
        if parsed is None:
            return False
        route_key, name, state = parsed
        known = self._by_route.setdefault(route_key, {})
        if known.get(name) == state:
            return False
        known[name] = state
        return True

    def forget(self, body: Mapping[str, Any]) -> bool:
        parsed = worker_state(body)
        if parsed is None:
            return False
        route_key, name, _ = parsed
        return self._by_route.get(route_key, {}).pop(name, None) is not None

    def summary(self, route_key: str, deployments: list[str]) -> tuple[dict[str, Any], str | None]:
        """``status.workers`` of a Route with these Deployments, and why it cannot serve (or None)."""
        known = self._by_route.get(route_key, {})
        by_track: dict[str, list[WorkerState]] = {}
        waiting: list[str] = []
        for name in deployments:
            state = known.get(name)
            if state is None:
                continue  # not seen by the watch yet
            by_track.setdefault(state.track, []).append(state)
            if state.available == 0 and state.desired > 0:
                waiting.append(f"{name} (0/{state.desired} available)")
        tracks: dict[str, Any] = {}
        for track, states in sorted(by_track.items()):
            counts = [s.available for s in states]
            tracks[track] = {
                "available": None if None in counts else sum(c or 0 for c in counts),
                "desired": sum(s.desired for s in states),
            }
        problem = None
        if waiting:
            problem = "waiting for an available worker replica: Deployment " + ", ".join(waiting)
        return tracks, problem
