"""The ConfigMap holding the Envoy snapshot, in the operator's namespace.

Pure. Called by ``render_kubernetes`` (this package) with the document the
Envoy renderer produced. The xDS server serves the same snapshot; the
ConfigMap lets Envoys without ADS (and people) read it, and lets a restarted
operator serve the last good snapshot before its first reconcile.

It has no ownerReferences on purpose: it aggregates Routes of every
namespace, and an ownerReference cannot point across namespaces. Its lifetime
is the operator installation's.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from ... import names
from ...policy_artifacts import canonical_json
from .common import MANAGED_BY, metadata


def snapshot_version(snapshot: dict[str, Any], content: str) -> str:
    """The snapshot's own ``version`` when it has one, else a hash of its stored content."""
    version = snapshot.get("version")
    if isinstance(version, str | int) and not isinstance(version, bool) and str(version):
        return str(version)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def render_envoy_snapshot(snapshot: dict[str, Any], operator_namespace: str) -> dict[str, Any]:
    labels = {**MANAGED_BY, "app.kubernetes.io/name": "apx", "app.kubernetes.io/component": "envoy-snapshot"}
    binary = snapshot.get("binary")
    if isinstance(binary, bytes):
        # The Envoy renderer's compact form (see EnvoyOutput.snapshot_document): a
        # large snapshot as JSON would exceed the 1 MiB a ConfigMap may hold.
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(names.envoy_snapshot_configmap(), operator_namespace, labels),
            "data": {
                "version": str(snapshot.get("version", "")),
                "encoding": str(snapshot.get("encoding", "")),
                "counts.json": canonical_json(snapshot.get("counts") or {}),
            },
            "binaryData": {"snapshot.pb.gz": base64.b64encode(binary).decode("ascii")},
        }
    # Compact canonical JSON: a ConfigMap holds at most 1 MiB.
    content = canonical_json(snapshot)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(names.envoy_snapshot_configmap(), operator_namespace, labels),
        "data": {"snapshot.json": content, "version": snapshot_version(snapshot, content)},
    }
