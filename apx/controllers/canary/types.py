"""Values exchanged between the canary loop, the metrics providers and the decision function.

Pure data (plus one typing ``Protocol``). Produced by the metrics providers
(``apx.controllers.providers``), consumed by ``apx.controllers.canary.decide``
and the operator's canary loop (``apx.operator.canary``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, Track] = ("stable", "canary")

# Commands people give through ``apx rollout`` (written to ``status.canary.request``).
CommandAction = Literal["promote", "abort", "retry", "pause", "resume"]


@dataclass(frozen=True, slots=True)
class TrackWindow:
    """What one track of one Route did during one analysis window.

    ``latency_buckets`` is a cumulative histogram over the window: ``(upper
    bound in milliseconds, requests at or below it)`` sorted by bound, the last
    bound ``float('inf')`` (its count equals ``requests`` when the histogram and
    the counter agree). Empty when the source has no latency histogram.
    """

    requests: float
    errors: float
    latency_buckets: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """Everything a provider needs to find one Route's metrics.

    ``route`` is ``<namespace>/<name>`` (the worker's ``route`` label);
    ``clusters`` maps each track to its Envoy cluster name for sync Routes
    (per-track clusters, see ``apx.controllers.renderers.envoy``), empty for
    async Routes.
    """

    namespace: str
    name: str
    mode: Literal["sync", "async"]
    clusters: tuple[tuple[Track, str], ...] = ()

    @property
    def route(self) -> str:
        return f"{self.namespace}/{self.name}"

    def cluster(self, track: Track) -> str:
        return dict(self.clusters)[track]


@dataclass(frozen=True, slots=True)
class Command:
    """A person's instruction from ``apx rollout``: handled once, identified by ``id``."""

    action: CommandAction
    id: str
    full: bool = False  # promote: straight to 100 % instead of the next step


class MetricsUnavailable(Exception):
    """The metrics backend could not answer (unreachable, timeout, query error); the message names it."""


class MetricsProvider(Protocol):
    """A source of per-track analysis windows (Prometheus is one file; another backend is one more)."""

    name: str

    async def query(self, target: RouteTarget, track: Track, window_seconds: int) -> TrackWindow:
        """The track's numbers over the last ``window_seconds``; raises ``MetricsUnavailable``."""
        ...

    async def healthy(self) -> bool:
        """True when the backend answers at all (used for the condition that names it)."""
        ...
