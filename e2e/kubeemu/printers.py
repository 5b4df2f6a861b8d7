"""The ``kubectl get`` columns of built-in kinds, as the real server's table printers give them.

A real API server renders built-in kinds with hand-written printers
(``pkg/printers/internalversion``), not JSONPath columns: Deployments show
READY ``ready/desired``, UP-TO-DATE and AVAILABLE; ConfigMaps and Secrets
count their DATA; Services show TYPE, CLUSTER-IP, EXTERNAL-IP and PORT(S);
Events show LAST SEEN, TYPE, REASON, OBJECT and MESSAGE (their name only
with ``-o wide``). Each :class:`Column` here pairs the column definition the
server sends with the function that computes its cell. Columns with
``priority`` 1 are shown by ``kubectl get -o wide`` only. Called by
:mod:`.tables` for kinds without CRD printer columns.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import attrs

Cell = Callable[[dict[str, Any], datetime.datetime], Any]
AgeOf = Callable[[str, datetime.datetime], str]


@attrs.frozen
class Column:
    name: str
    type: str
    cell: Cell
    priority: int = 0
    description: str = ""
    format: str = ""

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _int(obj: dict[str, Any], *path: str) -> int:
    value = _get(obj, *path)
    return value if isinstance(value, int) else 0


def _text(*path: str, default: str = "") -> Cell:
    """A cell showing the string at ``path`` (``default`` when absent)."""

    def cell(obj: dict[str, Any], now: datetime.datetime) -> str:
        value = _get(obj, *path)
        return str(value) if value not in (None, "") else default

    return cell


def _deployment_ready(obj: dict[str, Any], now: datetime.datetime) -> str:
    return f"{_int(obj, 'status', 'readyReplicas')}/{_int(obj, 'spec', 'replicas')}"


def _age_cell(age: AgeOf, *path: str) -> Cell:
    def cell(obj: dict[str, Any], now: datetime.datetime) -> str:
        value = _get(obj, *path)
        return age(value, now) if isinstance(value, str) and value else "<unknown>"

    return cell


def _name(obj: dict[str, Any], now: datetime.datetime) -> str:
    return str(_get(obj, "metadata", "name") or "")


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    found = _get(obj, "spec", "template", "spec", "containers")
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def _selector(labels: Any) -> str:
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _service_selector(obj: dict[str, Any], now: datetime.datetime) -> str:
    return _selector(_get(obj, "spec", "selector"))


def _service_ports(obj: dict[str, Any], now: datetime.datetime) -> str:
    ports = _get(obj, "spec", "ports")
    shown = []
    for port in ports if isinstance(ports, list) else []:
        if not isinstance(port, dict):
            continue
        protocol = port.get("protocol") or "TCP"
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        shown.append(f"{port.get('port', '')}{node}/{protocol}")
    return ",".join(shown) or "<none>"


def _external_ip(obj: dict[str, Any], now: datetime.datetime) -> str:
    spec = obj.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return str(spec.get("externalName") or "<none>")
    ips = [str(ip) for ip in spec.get("externalIPs") or ()]
    ingress = _get(obj, "status", "loadBalancer", "ingress")
    for entry in ingress if isinstance(ingress, list) else []:
        if isinstance(entry, dict) and (entry.get("ip") or entry.get("hostname")):
            ips.append(str(entry.get("ip") or entry.get("hostname")))
    if ips:
        return ",".join(ips)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _pod_ready(obj: dict[str, Any], now: datetime.datetime) -> str:
    containers = _get(obj, "spec", "containers")
    statuses = _get(obj, "status", "containerStatuses")
    ready = sum(1 for item in statuses or () if isinstance(item, dict) and item.get("ready"))
    return f"{ready}/{len(containers) if isinstance(containers, list) else 0}"


def _restarts(obj: dict[str, Any], now: datetime.datetime) -> int:
    statuses = _get(obj, "status", "containerStatuses")
    return sum(int(item.get("restartCount") or 0) for item in statuses or () if isinstance(item, dict))


def _involved(obj: dict[str, Any], now: datetime.datetime) -> str:
    target = obj.get("involvedObject") or obj.get("regarding") or {}
    kind = str(target.get("kind") or "").lower()
    return f"{kind}/{target.get('name', '')}"


def _last_seen(age: AgeOf) -> Cell:
    def cell(obj: dict[str, Any], now: datetime.datetime) -> str:
        for field in ("lastTimestamp", "eventTime", "deprecatedLastTimestamp", "firstTimestamp"):
            value = obj.get(field)
            if isinstance(value, str) and value:
                return age(value.split(".")[0].removesuffix("Z") + "Z", now)
        return age(str(_get(obj, "metadata", "creationTimestamp") or ""), now)

    return cell


def _event_columns(age: AgeOf) -> tuple[Column, ...]:
    return (
        Column("Last Seen", "string", _last_seen(age)),
        Column("Type", "string", lambda obj, now: str(obj.get("type") or "")),
        Column("Reason", "string", lambda obj, now: str(obj.get("reason") or "")),
        Column("Object", "string", _involved),
        Column("Message", "string", lambda obj, now: str(obj.get("message") or obj.get("note") or "")),
        Column("Name", "string", _name, priority=1, format="name"),
    )


def builtin_columns(group: str, plural: str, age: AgeOf) -> tuple[Column, ...] | None:
    """The columns of a built-in resource (the Name column included), or None to use the defaults."""
    name = Column("Name", "string", _name, format="name", description="Name must be unique in its namespace.")
    created = Column("Age", "string", _age_cell(age, "metadata", "creationTimestamp"))
    match (group, plural):
        case ("apps", "deployments"):
            return (
                name,
                Column("Ready", "string", _deployment_ready),
                Column("Up-to-date", "integer", lambda obj, now: _int(obj, "status", "updatedReplicas")),
                Column("Available", "integer", lambda obj, now: _int(obj, "status", "availableReplicas")),
                created,
                Column(
                    "Containers",
                    "string",
                    lambda obj, now: ",".join(str(c.get("name", "")) for c in _containers(obj)),
                    priority=1,
                ),
                Column(
                    "Images",
                    "string",
                    lambda obj, now: ",".join(str(c.get("image", "")) for c in _containers(obj)),
                    priority=1,
                ),
                Column(
                    "Selector",
                    "string",
                    lambda obj, now: _selector(_get(obj, "spec", "selector", "matchLabels")),
                    priority=1,
                ),
            )
        case ("", "configmaps"):
            return (
                name,
                Column(
                    "Data",
                    "integer",
                    lambda obj, now: len(obj.get("data") or {}) + len(obj.get("binaryData") or {}),
                ),
                created,
            )
        case ("", "secrets"):
            return (
                name,
                Column("Type", "string", lambda obj, now: str(obj.get("type") or "Opaque")),
                Column("Data", "integer", lambda obj, now: len(obj.get("data") or {})),
                created,
            )
        case ("", "services"):
            return (
                name,
                Column("Type", "string", _text("spec", "type", default="ClusterIP")),
                Column("Cluster-IP", "string", _text("spec", "clusterIP", default="<none>")),
                Column("External-IP", "string", _external_ip),
                Column("Port(s)", "string", _service_ports),
                created,
                Column("Selector", "string", _service_selector, priority=1),
            )
        case ("", "pods"):
            return (
                name,
                Column("Ready", "string", _pod_ready),
                Column("Status", "string", _text("status", "phase", default="Pending")),
                Column("Restarts", "string", _restarts),
                created,
                Column("IP", "string", _text("status", "podIP", default="<none>"), priority=1),
                Column("Node", "string", _text("spec", "nodeName", default="<none>"), priority=1),
            )
        case ("", "serviceaccounts"):
            return (
                name,
                Column("Secrets", "integer", lambda obj, now: len(obj.get("secrets") or ())),
                created,
            )
        case ("", "events") | ("events.k8s.io", "events"):
            return _event_columns(age)
        case ("coordination.k8s.io", "leases"):
            return (
                name,
                Column("Holder", "string", _text("spec", "holderIdentity")),
                created,
            )
        case ("apiextensions.k8s.io", "customresourcedefinitions"):
            return (
                name,
                Column(
                    "Created At",
                    "date",
                    lambda obj, now: str(_get(obj, "metadata", "creationTimestamp") or ""),
                ),
            )
    return None
