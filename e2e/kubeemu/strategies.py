"""Kind-specific mutations of writes, like the real API server's "strategies".

Namespaces get ``spec.finalizers: [kubernetes]`` and ``status.phase``
(``Active``/``Terminating``); Secrets fold ``stringData`` into base64 ``data``;
Services get a stable fake ``clusterIP``; CustomResourceDefinitions get the
``customresourcecleanup`` finalizer and the status the real server writes
(``acceptedNames``, ``NamesAccepted`` and ``Established`` conditions,
``storedVersions``), so ``kubectl wait --for=condition=Established`` works.
Called by :class:`.base.StoreBase` on every create, update and deletion mark.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from .registry import CRD_CLEANUP_FINALIZER, CRD_RESOURCE, NAMESPACE_RESOURCE, Kind


def _terminating(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _namespace(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("finalizers", ["kubernetes"])
    obj["status"] = {"phase": "Terminating" if _terminating(obj) else "Active"}


def _secret(obj: dict[str, Any]) -> None:
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    obj.setdefault("type", "Opaque")


def _service(obj: dict[str, Any], old: dict[str, Any] | None, next_cluster_ip: Callable[[], str]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    if spec["type"] == "ExternalName" or spec.get("clusterIP"):
        return
    # The address is immutable in the real API; an update without it keeps the old one.
    old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
    spec["clusterIP"] = old_ip or next_cluster_ip()
    spec["clusterIPs"] = [spec["clusterIP"]]


def _condition(kind: str, reason: str, message: str, now: str) -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}


def _crd(crd: dict[str, Any], now: str) -> None:
    meta = crd.setdefault("metadata", {})
    finalizers = meta.setdefault("finalizers", [])
    if CRD_CLEANUP_FINALIZER not in finalizers and not _terminating(crd):
        finalizers.append(CRD_CLEANUP_FINALIZER)
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    if names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    conditions = [
        _condition("NamesAccepted", "NoConflicts", "no conflicts found", now),
        _condition("Established", "InitialNamesAccepted", "the initial names have been accepted", now),
    ]
    if _terminating(crd):
        message = "CustomResource deletion is in progress"
        conditions.append(_condition("Terminating", "InstanceDeletionInProgress", message, now))
    old_conditions = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
    for condition in conditions:
        previous = old_conditions.get(condition["type"])
        if previous and previous.get("status") == condition["status"]:
            condition["lastTransitionTime"] = previous.get("lastTransitionTime", now)
    crd["status"] = {
        "acceptedNames": names,
        "conditions": conditions,
        "storedVersions": [v.get("name") for v in spec.get("versions") or [] if v.get("storage")],
    }


def prepare(
    kind: Kind,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    *,
    now: str,
    next_cluster_ip: Callable[[], str],
) -> None:
    """Apply the kind's strategy to ``obj`` (the new state; ``old`` is the stored one)."""
    if kind.resource == NAMESPACE_RESOURCE:
        _namespace(obj)
    elif kind.resource == CRD_RESOURCE:
        _crd(obj, now)
    elif kind.group == "" and kind.plural == "secrets":
        _secret(obj)
    elif kind.group == "" and kind.plural == "services":
        _service(obj, old, next_cluster_ip)
