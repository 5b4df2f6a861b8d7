"""What translation needs of a Route between passes, without its parsed model.

Called by ``parse`` (step 1 derives the facts when a Route's body is new),
``policybundles`` (the versions Routes pin) and ``routes`` (order, conflicts,
the references a cached ``RouteIR`` depends on). The operator's caches keep a
Route's facts, not its pydantic model: at 10,000 Routes the models were ~75
MiB of the operator's memory, the facts are a few hundred bytes each. The
model is parsed again from the body (which the store holds anyway) only
when the Route must be translated again. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..models.resources import Route


@dataclass(frozen=True, slots=True, eq=False)
class RouteFacts:
    """A Route as the translation steps see it when its body has not changed (identity is meaning)."""

    key: str
    namespace: str
    product_key: str
    bundle_key: str
    policy_version: str
    canary_policy_version: str | None
    order: tuple[str, str]  # (creationTimestamp, key): who is older wins a match conflict
    match_keys: tuple[tuple[Any, ...], ...]
    raw: Mapping[str, Any]  # the body the facts were read from

    @classmethod
    def of(cls, route: Route, raw: Mapping[str, Any]) -> RouteFacts:
        spec = route.spec
        namespace = route.metadata.namespace
        return cls(
            key=route.key,
            namespace=namespace,
            product_key=f"{namespace}/{spec.product_ref.name}",
            bundle_key=f"{namespace}/{spec.policy_ref.name}",
            policy_version=spec.policy_ref.version,
            canary_policy_version=spec.canary.policy_version if spec.canary is not None else None,
            order=(created(route), route.key),
            match_keys=tuple(match_key(route, host) for host in spec.match.hosts),
            raw=raw,
        )

    @property
    def pinned(self) -> set[str]:
        versions = {self.policy_version}
        if self.canary_policy_version is not None:
            versions.add(self.canary_policy_version)
        return versions


def created(route: Route) -> str:
    return str((route.metadata.model_extra or {}).get("creationTimestamp") or "")


def match_key(route: Route, host: str) -> tuple[Any, ...]:
    """What two Routes must share to conflict on ``host``: path, methods and headers, order aside."""
    match = route.spec.match
    headers = tuple(sorted((h.name.lower(), h.exact, h.prefix, h.regex, h.present) for h in match.headers))
    return (host, match.path, match.effective_path_prefix, tuple(sorted(match.methods)), headers)


def pins_by_bundle(routes: Iterable[RouteFacts]) -> dict[str, dict[str, list[str]]]:
    """Bundle key → version → keys of the Routes that pin it (sorted)."""
    pins: dict[str, dict[str, set[str]]] = {}
    for route in routes:
        for version in route.pinned:
            pins.setdefault(route.bundle_key, {}).setdefault(version, set()).add(route.key)
    return {b: {v: sorted(keys) for v, keys in by.items()} for b, by in pins.items()}
