"""Shared pieces of the Kubernetes manifests: labels, ownerReferences, metadata.

Imported by the feature modules of ``apx.controllers.renderers.kubernetes``
(workers, services, ConfigMaps). Pure.
"""

from __future__ import annotations

from typing import Any

from ...ir import ObjectRef

MANAGED_BY = {"app.kubernetes.io/managed-by": "apx"}
WORKER_APP = "apx-worker"
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"


def owner_reference(ref: ObjectRef) -> dict[str, Any]:
    """The controller ownerReference to an APX object (same namespace only, as Kubernetes requires)."""
    return {
        "apiVersion": ref.api_version,
        "kind": ref.kind,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    name: str,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    owner: ObjectRef | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(sorted(labels.items()))}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def sort_key(manifest: dict[str, Any]) -> tuple[str, str, str]:
    meta = manifest["metadata"]
    return (str(meta.get("namespace", "")), str(manifest["kind"]), str(meta["name"]))
