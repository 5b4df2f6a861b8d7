"""Last good spec: which Products and Routes are rendered from an earlier body, and which are left out.

Used by ``apx.controllers.pipeline`` (so by the operator's reconciler and by
``apx translate``). Pure.

The guarantee it implements: a Product or Route whose new spec fails at any
stage (translation, Redis rule rendering, Envoy rendering and validation,
Kubernetes manifest rendering) is reported Stalled with the field named, and
what it served before keeps being served, rendered from its last good body.
Without a last good body (a new object, or ``apx translate`` offline) the
failing object is left out of every output, so the targets never disagree
about which objects exist.

The pipeline works in rounds: render, collect the failures attributed to one
object each, substitute (or leave out) those objects, translate again. Each
object fails at most twice (its spec, then its last good body), so a few
rounds always settle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .ir import IR
from .renderers import redis_rules
from .status import ResourceStatus, stalled

Key = tuple[str, str]
SUBSTITUTABLE = ("Product", "Route")


def document_key(document: Mapping[str, Any]) -> Key:
    meta = document.get("metadata") or {}
    return (str(document.get("kind")), f"{meta.get('namespace') or 'default'}/{meta.get('name')}")


@dataclass(slots=True)
class Fallback:
    """What the pipeline renders in place of failing specs.

    ``last_good`` maps a Product or Route to the body whose spec last rendered
    without error (the operator keeps it; offline it is empty). ``failures``
    holds the Stalled status of each object not rendered from its own spec,
    and ``left_out`` those rendered not at all (no usable last good body).
    ``keyed``: the documents by key when the caller keeps them so (the
    operator): ``substituted`` then finds the failing ones without computing
    every document's key.
    """

    last_good: Mapping[Key, Mapping[str, Any]] = field(default_factory=dict)
    failures: dict[Key, ResourceStatus] = field(default_factory=dict)
    left_out: set[Key] = field(default_factory=set)
    keyed: Mapping[Key, Mapping[str, Any]] | None = None

    def record(self, key: Key, status: ResourceStatus, current: Mapping[str, Any] | None) -> None:
        """``key`` failed with ``status``: serve its last good body, or leave it out if that failed too."""
        if key in self.failures or not self.can_substitute(key, current):
            self.left_out.add(key)
        # The first failure is the one the user's spec caused; keep reporting it.
        self.failures.setdefault(key, status)

    def can_substitute(self, key: Key, current: Mapping[str, Any] | None) -> bool:
        """True when ``key`` has a last good body with another spec than ``current``.

        Specs are compared, not bodies: the stored body changes with every
        status write, and the same spec rendered again would fail again.
        """
        good = self.last_good.get(key)
        return good is not None and (current is None or good.get("spec") != current.get("spec"))

    def substituted(self, documents: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """``documents`` with failing objects replaced by their last good body (or removed)."""
        if not self.failures:
            return list(documents)  # the usual pass: nothing to substitute, no key to compute
        chosen: list[Mapping[str, Any]] = []
        if self.keyed is not None:
            # The failing documents by identity: one lookup per document instead of its key.
            failing = {
                id(self.keyed[key]): key
                for key in self.failures
                if key[0] in SUBSTITUTABLE and key in self.keyed
            }
            for document in documents:
                key = failing.get(id(document))
                if key is None:
                    chosen.append(document)
                elif key not in self.left_out:
                    chosen.append(self.last_good[key])
            return chosen
        for document in documents:
            key = document_key(document)
            if key[0] not in SUBSTITUTABLE or key not in self.failures:
                chosen.append(document)
            elif key not in self.left_out:
                chosen.append(self.last_good[key])
        return chosen


def render_failure(kind: str, key: str, generation: int, message: str) -> ResourceStatus:
    """The status of an object whose spec translated but could not be rendered."""
    return stalled(kind, key, generation, "RenderError", message)


def redis_failures(ir: IR) -> dict[Key, str]:
    """After ``render_redis`` raised: the Products and Routes whose own rules fail to render."""
    found: dict[Key, str] = {}
    for route in ir.routes:
        try:
            redis_rules.route_rule(route)
            redis_rules.route_entry(route)
        except (ValueError, KeyError, TypeError) as exc:
            found[("Route", route.key)] = f"Redis rules: {exc}"
    for product in ir.products:
        try:
            redis_rules.render_rule_set(product, ())
        except (ValueError, KeyError, TypeError) as exc:
            found[("Product", product.key)] = f"Redis rules: {exc}"
    return found
