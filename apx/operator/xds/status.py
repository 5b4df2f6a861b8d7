"""ACK / NACK bookkeeping of the xDS server: per node, per type, and the metrics they feed.

Used by ``apx.operator.xds.server`` (every ACK and NACK a stream receives)
and read by the operator (``XdsServer.rejections()`` → the ``Programmed``
condition of the affected Routes, Warning Events). Pure bookkeeping: the
time of an event is passed in.

Metrics (registered in the registry the operator passes in, labels from a
closed set — never a node id or an object name):

* ``apx_xds_connected_proxies``: distinct node ids with at least one stream;
* ``apx_xds_nacks_total{type}``: NACKs received, per resource type;
* ``apx_xds_push_seconds{type}``: from a response being written to its ACK.

A NACK names the APX objects it affects (``affected``: Route keys); the
rejection is kept until the same node ACKs a later response of that type.
A node's record goes when its last stream closes: a proxy that is gone no
longer rejects anything, and the records stay bounded by the connected
proxies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .snapshot import TYPE_NAMES

PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class XdsMetrics:
    """The server's metrics, in the registry given (the operator's)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.registry = registry
        self.connected = Gauge(
            "apx_xds_connected_proxies",
            "Proxies (distinct node ids) with an open ADS stream.",
            registry=registry,
        )
        self.nacks = Counter(
            "apx_xds_nacks_total", "xDS responses a proxy rejected (NACK), per resource type.", ["type"],
            registry=registry,
        )  # fmt: skip
        self.push_seconds = Histogram(
            "apx_xds_push_seconds", "Time from an xDS response being written to its ACK.", ["type"],
            buckets=PUSH_BUCKETS, registry=registry,
        )  # fmt: skip
        for name in TYPE_NAMES.values():
            self.nacks.labels(type=name)
            self.push_seconds.labels(type=name)


@dataclass(slots=True)
class Rejection:
    """The last NACK of one type by one node."""

    version: str
    message: str
    affected: tuple[str, ...]  # Route keys (namespace/name)


@dataclass(slots=True)
class NodeRecord:
    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # type URL → version
    rejected: dict[str, Rejection] = field(default_factory=dict)  # type URL → last NACK


class AckTracker:
    """Per node id: streams, last ACKed version per type, last NACK per type."""

    def __init__(self, metrics: XdsMetrics) -> None:
        self.metrics = metrics
        self.nodes: dict[str, NodeRecord] = {}

    def connected(self, node: str) -> None:
        record = self.nodes.setdefault(node, NodeRecord())
        record.streams += 1
        self.metrics.connected.set(len(self.nodes))

    def disconnected(self, node: str) -> bool:
        """Forget a stream; True when the node's last stream closed and it had rejections."""
        record = self.nodes.get(node)
        if record is None:
            return False
        record.streams -= 1
        if record.streams > 0:
            return False
        del self.nodes[node]
        self.metrics.connected.set(len(self.nodes))
        return bool(record.rejected)

    def ack(self, node: str, type_url: str, version: str, pushed_seconds: float | None) -> bool:
        """Record an ACK; True when it cleared a rejection."""
        record = self.nodes.get(node)
        if record is None:
            return False
        record.acked[type_url] = version
        if pushed_seconds is not None:
            self.metrics.push_seconds.labels(type=TYPE_NAMES.get(type_url, "other")).observe(pushed_seconds)
        return record.rejected.pop(type_url, None) is not None

    def nack(self, node: str, type_url: str, version: str, message: str, affected: tuple[str, ...]) -> None:
        self.metrics.nacks.labels(type=TYPE_NAMES.get(type_url, "other")).inc()
        record = self.nodes.get(node)
        if record is not None:
            record.rejected[type_url] = Rejection(version, message, affected)

    def rejections(self) -> dict[tuple[str, str], str]:
        """Current NACK messages per APX object (``("Route", "ns/name")`` → message)."""
        found: dict[tuple[str, str], str] = {}
        for node in sorted(self.nodes):
            for type_url in sorted(self.nodes[node].rejected):
                rejection = self.nodes[node].rejected[type_url]
                for key in rejection.affected:
                    found.setdefault(("Route", key), rejection.message)
        return found
