"""Step 2 of translation: PolicyBundles → the versions each serves, their ``PolicyIR`` and status.

Called by ``apx.controllers.translation.translate`` after parsing and before
Products and Routes (Routes resolve ``policyRef`` against what this step
serves). Every served version is compiled into its immutable artifact, the
apply history is checked (content changed without a version bump, a breaking
change without a major bump), and versions older than N-1 stay served while
Routes pin them (``apx.controllers.pinned_versions``). A rejected apply is
reported on the bundle; what it served before keeps serving. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import semver

from ..ir import ObjectRef, PolicyIR
from ..memo import same
from ..models.policy import PolicyBundleSpec, ServedVersion
from ..models.resources import PolicyBundle
from ..pinned_versions import kept_while_pinned
from ..policy_artifacts import CompiledPolicy, HistoryResult, ServedPolicies, resolve_history
from ..status import ResourceStatus, ready, stalled
from .context import TranslationContext, object_ref
from .facts import pins_by_bundle
from .parse import HISTORY_ANNOTATION
from .summaries import policy_bundle_summary, served_versions_text

BundleResult = tuple[ResourceStatus, ServedPolicies | None, dict[str, PolicyIR] | None]


def process_policy_bundles(ctx: TranslationContext) -> None:
    """Translate every PolicyBundle into ``ctx`` (status, served versions, policy IRs), by key."""
    pins = pins_by_bundle(ctx.routes.values())  # from the Routes' facts (``facts.py``)
    caches = ctx.caches
    for key, applies in sorted(ctx.bundle_applies.items()):
        generation = ctx.generation("PolicyBundle", key)
        bundle_pins = pins.get(key, {})
        # Reused while the very same parsed documents, generation and pins come in.
        inputs = tuple(applies)
        cached = caches.bundles.get(key) if caches is not None else None
        if cached is not None and same(cached[0], inputs) and cached[1] == (generation, bundle_pins):
            status, served, irs = cached[2]
        else:
            status, served, irs = translate_bundle(key, applies, generation, bundle_pins)
            if caches is not None:
                caches.bundles.put(key, (inputs, (generation, bundle_pins), (status, served, irs)))
        # A copy: later stages add to the summary, and the cached status must stay as built.
        ctx.statuses[("PolicyBundle", key)] = dataclasses.replace(status, summary=dict(status.summary))
        if served is not None and irs is not None:
            ctx.served_by_bundle[key] = served
            ctx.policy_irs[key] = irs


def translate_bundle(
    key: str, applies: list[PolicyBundle], generation: int, bundle_pins: Mapping[str, list[str]]
) -> BundleResult:
    """One PolicyBundle: compile every served version and check the history."""
    applies, current = _in_apply_order(applies)
    latest = applies[-1]
    served_status: list[ServedVersion] = latest.status.served_versions if latest.status else []
    history = resolve_history(latest.metadata.name, _replayed(applies, current, served_status), served_status)
    served = history.served
    if served is None:
        message = str(history.error) if history.error else "spec: no version to serve"
        return stalled("PolicyBundle", key, generation, "InvalidVersion", message), None, None
    ref = object_ref("PolicyBundle", latest.metadata)
    irs = {
        compiled.version: _policy_ir(ref, compiled, compiled is served.current)
        for compiled in served.versions
    }
    # Versions older than N-1 stay served while Routes pin them (``pinned_versions``).
    kept = kept_while_pinned(
        latest.metadata.name, served, [b.spec for b in applies], served_status, bundle_pins
    )
    for compiled, _ in kept:
        irs[compiled.version] = _policy_ir(ref, compiled, False)
    return _bundle_status(key, generation, history, served, kept), served, irs


def _in_apply_order(applies: list[PolicyBundle]) -> tuple[list[PolicyBundle], list[PolicyBundle]]:
    """Every document in the order it was applied, and the ones that are not remembered history."""
    # Documents marked as earlier applies (the operator's memory of versions
    # it served) come first; the rest are ordered by version, so several
    # documents of one bundle given offline read as successive applies.
    earlier = [b for b in applies if b.metadata.annotations.get(HISTORY_ANNOTATION) == "true"]
    current = [b for b in applies if b.metadata.annotations.get(HISTORY_ANNOTATION) != "true"] or earlier[-1:]
    earlier.sort(key=lambda b: semver.Version.parse(b.spec.version))
    current.sort(key=lambda b: semver.Version.parse(b.spec.version))
    return [b for b in earlier if b not in current] + current, current


def _replayed(
    applies: list[PolicyBundle], current: list[PolicyBundle], served_status: list[ServedVersion]
) -> list[PolicyBundleSpec]:
    """The applies the history check replays."""
    # Remembered applies older than what the status serves are kept only for
    # Routes that pin them (``kept_while_pinned``); replaying them would read as a downgrade.
    floor = min((semver.Version.parse(v.version) for v in served_status[:2]), default=None)
    return [
        b.spec
        for b in applies
        if b in current or floor is None or semver.Version.parse(b.spec.version) >= floor
    ]


def _bundle_status(
    key: str,
    generation: int,
    history: HistoryResult,
    served: ServedPolicies,
    kept: list[tuple[CompiledPolicy, list[str]]],
) -> ResourceStatus:
    summary = policy_bundle_summary(served, kept)
    versions = served_versions_text(served)
    if kept:
        versions += "; " + "; ".join(
            f"{c.version} kept only while pinned by Route {', '.join(r)}" for c, r in kept
        )
    if history.error is not None:
        # The rejected apply is reported; what was served before keeps serving.
        message = f"{history.error}; still serving {versions}"
        return stalled("PolicyBundle", key, generation, "InvalidVersion", message, summary)
    if kept:
        return ResourceStatus(
            "PolicyBundle", key, generation, "Ready", "VersionsPinned", f"serving {versions}", summary
        )
    return ready("PolicyBundle", key, generation, f"serving {versions}", summary)


def _policy_ir(bundle: ObjectRef, compiled: CompiledPolicy, current: bool) -> PolicyIR:
    return PolicyIR(
        bundle=bundle,
        version=compiled.version,
        digest=compiled.digest,
        artifact=compiled.artifact,
        compat=compiled.compat,
        spec=compiled.spec,
        current=current,
    )
