"""Compile PolicyBundle versions into immutable artifacts and check version history.

Called by the translator for every PolicyBundle (and, through it, by the
operator and ``apx translate``). Pure.

An artifact is the canonical JSON of the policy *content* (everything that
changes how requests are treated; not operational fields such as
``deletionPolicy`` or ``rolloutWindow``) identified as
``name@version@sha256:<hex>``. Rules of a version history (each step is one
apply of the bundle):

* same version, different content → rejected (content changed without a bump);
* a lower version than the one served → rejected (roll back by pinning Routes to N-1);
* ``compat: breaking`` without a major bump → rejected (for 0.x, a minor bump
  is the major bump, as semver allows).

N and N-1 are served; older versions are retired.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import semver

from .models.policy import PolicyBundleSpec, ServedVersion

# Fields that do not change how a request is treated: changing them alone is
# not a new policy version.
OPERATIONAL_FIELDS = frozenset({"version", "deletionPolicy", "rolloutWindow"})


class PolicyHistoryError(ValueError):
    """A version transition that must be rejected; ``field`` names the spec field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One compiled version."""

    name: str
    version: str
    compat: str
    digest: str
    artifact: str
    spec: PolicyBundleSpec
    content: str  # canonical JSON, stored in the artifact ConfigMap

    def served_version(self) -> ServedVersion:
        return ServedVersion(
            version=self.version,
            digest=self.digest,
            artifact=self.artifact,
            compat="breaking" if self.compat == "breaking" else "backward",
            spec=self.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
        )


def policy_content(spec: PolicyBundleSpec) -> dict[str, Any]:
    """The part of the spec that defines behaviour, with defaults applied."""
    dumped = spec.model_dump(by_alias=True, mode="json")
    return {k: v for k, v in dumped.items() if k not in OPERATIONAL_FIELDS}


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compile_policy(name: str, spec: PolicyBundleSpec) -> CompiledPolicy:
    content = canonical_json(policy_content(spec))
    digest = "sha256:" + hashlib.sha256(content.encode()).hexdigest()
    return CompiledPolicy(
        name=name,
        version=spec.version,
        compat=spec.compat,
        digest=digest,
        artifact=f"{name}@{spec.version}@{digest}",
        spec=spec,
        content=content,
    )


def _major_bumped(previous: semver.Version, current: semver.Version) -> bool:
    if previous.major == 0 and current.major == 0:
        return current.minor > previous.minor
    return current.major > previous.major


def check_transition(previous: CompiledPolicy, current: CompiledPolicy) -> None:
    """Raise ``PolicyHistoryError`` when ``current`` may not follow ``previous``."""
    prev_v = semver.Version.parse(previous.version)
    cur_v = semver.Version.parse(current.version)
    if cur_v == prev_v:
        if current.digest != previous.digest:
            raise PolicyHistoryError(
                "spec.version",
                f"content changed without a version bump: {current.version} is already served as "
                f"{previous.digest}; bump the version",
            )
        return
    if cur_v < prev_v:
        raise PolicyHistoryError(
            "spec.version",
            f"version must not decrease: {current.version} is lower than served {previous.version}; "
            "to roll back, pin Routes to the previous version",
        )
    if current.compat == "breaking" and not _major_bumped(prev_v, cur_v):
        raise PolicyHistoryError(
            "spec.compat",
            f"a breaking change needs a major version bump: {previous.version} -> {current.version}",
        )


@dataclass(frozen=True, slots=True)
class ServedPolicies:
    """N (current) and, when there is one, N-1 (previous)."""

    current: CompiledPolicy
    previous: CompiledPolicy | None

    @property
    def versions(self) -> tuple[CompiledPolicy, ...]:
        return (self.current,) if self.previous is None else (self.current, self.previous)


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What is served after folding a history, and the first rejected apply if any.

    A rejected apply never takes down what was served before it: ``served``
    then holds the last good state (which may be ``None`` when nothing was
    ever valid).
    """

    served: ServedPolicies | None
    error: PolicyHistoryError | None


def resolve_history(name: str, applies: list[PolicyBundleSpec], served: list[ServedVersion]) -> HistoryResult:
    """Fold a bundle's history into what is served.

    ``served`` is what the live object's status says is served (N first), the
    operator's memory of earlier applies; ``applies`` are specs in the order
    they are applied (offline: several documents of one bundle, sorted by
    version; online: the single current spec).
    """
    history: list[CompiledPolicy] = []
    for entry in reversed(served[:2]):
        if entry.spec is None:
            continue
        history.append(compile_policy(name, PolicyBundleSpec.model_validate(entry.spec)))
    error: PolicyHistoryError | None = None
    for position, spec in enumerate(applies):
        compiled = compile_policy(name, spec)
        known = next((h for h in history if h.version == compiled.version), None)
        replayed = position < len(applies) - 1
        if replayed and known is not None and known is not history[-1]:
            # Re-applying a version that is already served (e.g. N-1 replayed
            # from the operator's memory) is not a new apply, unless its content changed.
            try:
                check_transition(known, compiled)
            except PolicyHistoryError as exc:
                error = exc
                break
            continue
        if history:
            try:
                check_transition(history[-1], compiled)
            except PolicyHistoryError as exc:
                error = exc
                break
            if compiled.version == history[-1].version:
                if compiled.spec == history[-1].spec:
                    # The same spec (hence the same artifact): keep the apply's compilation, whose
                    # spec model is the parsed document's, not a second model of the status copy
                    # (~20 KiB per bundle, held by the caches between passes).
                    history[-1] = compiled
                continue
        history.append(compiled)
    if not history:
        return HistoryResult(served=None, error=error or PolicyHistoryError("spec", "no version to serve"))
    previous = history[-2] if len(history) > 1 else None
    return HistoryResult(served=ServedPolicies(current=history[-1], previous=previous), error=error)
