"""Immutable ConfigMaps holding compiled PolicyBundle artifacts (N and N-1).

Pure. Called by ``render_kubernetes`` (this package). One ConfigMap per
served version, named after bundle, version and digest, so a new version is a
new object and a served one never changes (``immutable: true``: the API
server refuses edits to its data, and kubelets stop watching it).
``policy.json`` is the canonical compiled content whose sha256 is the
artifact's digest; the renderer recompiles and checks it, so a ConfigMap can
never carry content that does not match its name.

Deletion follows the bundle's ``deletionPolicy`` (the current version's):
with ``Delete`` each artifact carries a controller ownerReference to the
PolicyBundle and goes with it; with ``Retain`` (the default) it carries none,
so garbage collection cannot remove an artifact the user asked to keep.
Retired versions (older than N-1) are pruned by the applier through the
``apx.dev/policy-bundle`` label, not by garbage collection.
"""

from __future__ import annotations

import functools
from typing import Any

from ... import names
from ...ir import PolicyIR
from ...memo import Caches
from ...policy_artifacts import compile_policy
from .common import MANAGED_BY, metadata


class ArtifactMismatch(ValueError):
    """Recompiling a policy gave content whose digest is not the artifact's."""


def render_policy_artifact(policy: PolicyIR, deletion_policy: str) -> dict[str, Any]:
    bundle = policy.bundle
    compiled = compile_policy(bundle.name, policy.spec)
    if compiled.digest != policy.digest:
        raise ArtifactMismatch(
            f"PolicyBundle {bundle.key} version {policy.version}: content compiles to {compiled.digest}, "
            f"artifact says {policy.digest}"
        )
    labels = {
        **MANAGED_BY,
        "app.kubernetes.io/name": "apx",
        "app.kubernetes.io/component": "policy-artifact",
        "apx.dev/policy-bundle": names.k8s_label_value(bundle.name),
        "apx.dev/policy-version": names.k8s_label_value(policy.version),
    }
    annotations = {"apx.dev/policy-artifact": policy.artifact, "apx.dev/deletion-policy": deletion_policy}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            names.policy_artifact_configmap(bundle.name, policy.version, policy.digest),
            bundle.namespace,
            labels,
            annotations,
            owner=bundle if deletion_policy == "Delete" else None,
        ),
        "immutable": True,
        "data": {
            "policy.json": compiled.content,
            "artifact": policy.artifact,
            "digest": policy.digest,
            "version": policy.version,
            "compat": policy.compat,
        },
    }


def _artifact(policy: PolicyIR, deletion_policy: str) -> tuple[str, dict[str, Any]]:
    return deletion_policy, render_policy_artifact(policy, deletion_policy)


def render_policy_artifacts(
    policies: tuple[PolicyIR, ...], caches: Caches | None = None
) -> list[dict[str, Any]]:
    """One immutable ConfigMap per served policy version; reused while the PolicyIR is the same object."""
    current = {p.bundle.key: p.spec.deletion_policy for p in policies if p.current}
    manifests = []
    for policy in policies:
        deletion_policy = current.get(policy.bundle.key, policy.spec.deletion_policy)
        if caches is None:
            manifests.append(render_policy_artifact(policy, deletion_policy))
            continue
        cached = caches.kubernetes_policies.get(policy, functools.partial(_artifact, policy, deletion_policy))
        if cached[0] != deletion_policy:
            cached = (deletion_policy, render_policy_artifact(policy, deletion_policy))
        manifests.append(cached[1])
    return manifests
