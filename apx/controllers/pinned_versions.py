"""PolicyBundle versions older than N-1 that stay served while Routes still pin them.

Called by ``apx.controllers.translation.policybundles`` (step 2; the pins
come from ``translation.facts``) and, for the pins of raw specs, by the
operator (the admission check and its history memory). Pure.

The rule: a bundle serves N and N-1; a new version moves N-1 out. If Routes
still pin that version (``policyRef.version`` or ``canary.policyVersion``),
it is kept served for them, listed in ``status.servedVersions`` with the
Routes that pin it (``pinnedBy``), and the bundle says so in its Ready
condition (reason ``VersionsPinned``) until no Route pins it any more. The
admission webhook refuses such an apply in the first place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import semver

from .models.policy import PolicyBundleSpec, ServedVersion
from .policy_artifacts import CompiledPolicy, ServedPolicies, compile_policy


def route_pins(namespace: str, bundle: str, spec: Mapping[str, object]) -> set[str]:
    """Versions of ``bundle`` a raw Route spec (in ``namespace``) pins; empty if it uses another bundle."""
    ref = spec.get("policyRef")
    if not isinstance(ref, Mapping) or ref.get("name") != bundle:
        return set()
    pins = {str(ref.get("version"))}
    canary = spec.get("canary")
    if isinstance(canary, Mapping) and canary.get("policyVersion"):
        pins.add(str(canary["policyVersion"]))
    return pins


def kept_while_pinned(
    name: str,
    served: ServedPolicies,
    applied: Iterable[PolicyBundleSpec],
    served_status: Iterable[ServedVersion],
    pins: Mapping[str, list[str]],
) -> list[tuple[CompiledPolicy, list[str]]]:
    """Versions older than N-1 still pinned by Routes, newest first, with the pinning Routes.

    Candidates are the specs applied before (the operator's memory) and the
    specs recorded in the status (so a restarted operator keeps them).
    """
    serving = {c.version for c in served.versions}
    oldest = min(semver.Version.parse(v) for v in serving)
    candidates: dict[str, PolicyBundleSpec] = {}
    for entry in served_status:
        if entry.spec is not None and entry.version not in serving:
            candidates.setdefault(entry.version, PolicyBundleSpec.model_validate(entry.spec))
    for spec in applied:
        if spec.version not in serving:
            candidates[spec.version] = spec
    kept = [
        (compile_policy(name, spec), pins[version])
        for version, spec in candidates.items()
        if pins.get(version) and semver.Version.parse(version) < oldest
    ]
    return sorted(kept, key=lambda item: semver.Version.parse(item[0].version), reverse=True)
