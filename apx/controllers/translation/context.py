"""The translation context: what the per-kind steps of one ``translate`` call share.

Created by ``apx.controllers.translation.translate`` for one call and handed
to each step in turn (``parse`` → ``policybundles`` → ``products`` →
``routes``), in the manner of Envoy Gateway's translator: every step reads
what the earlier ones put here and adds its own part; none calls another.
Also holds ``TranslateResult`` (what the call returns) and ``object_ref``,
the owner reference every step builds the same way. Pure: no clock, no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import semver

from ..ir import IR, ObjectRef, PolicyIR, ProductIR, RouteIR
from ..memo import Caches
from ..models.resources import PolicyBundle, Product, Route
from ..models.route import CanaryStatus
from ..policy_artifacts import ServedPolicies
from ..status import ResourceStatus
from .facts import RouteFacts

# Offline objects have no uid; ownerReferences need one. A name-based UUID is
# stable across runs and clearly not a server-assigned one.
_OFFLINE_UID_NAMESPACE = uuid.UUID("6d1c5f0e-7a6b-4f43-9d7e-3a2b1c0d4e5f")

StatusKey = tuple[str, str]


@dataclass(slots=True)
class TranslateResult:
    """The IR, one status per source object, and what was not an APX object."""

    ir: IR
    statuses: dict[StatusKey, ResourceStatus]
    ignored: list[tuple[str, str]] = field(default_factory=list)
    # The keys of the stalled Product and Route statuses, in ``statuses`` order, when translation
    # kept them (with the operator's caches, ``incremental``): the pipeline then looks at those
    # instead of every status. ``None``: not kept.
    stalled_keys: tuple[StatusKey, ...] | None = None

    @property
    def stalled(self) -> list[ResourceStatus]:
        return [s for s in self.statuses.values() if s.stalled]


@dataclass(slots=True)
class TranslationContext:
    """Inputs, caches and the partial results of one translation, keyed ``namespace/name``.

    ``statuses`` is shared by every step and keeps insertion order (parse
    errors first, then PolicyBundles, Products and Routes in the order each
    step visits them), which is what callers have always seen.
    """

    # Inputs: the canary controller's override of Routes' own canary status, and the caller's caches.
    canary_states: Mapping[str, CanaryStatus] = field(default_factory=dict)
    caches: Caches | None = None
    # Built by every step.
    statuses: dict[StatusKey, ResourceStatus] = field(default_factory=dict)
    # Step 1 (parse): documents that are not APX objects, the parsed models and their generations.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    generations: dict[StatusKey, int] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    routes: dict[str, RouteFacts] = field(default_factory=dict)
    # Route models parsed during this pass (new or changed bodies), by key; others are parsed on demand.
    route_models: dict[str, Route] = field(default_factory=dict)
    # Every document of a PolicyBundle, earlier applies included (its version history).
    bundle_applies: dict[str, list[PolicyBundle]] = field(default_factory=dict)
    # Step 2 (PolicyBundles): the versions each bundle serves, and their IR by version.
    served_by_bundle: dict[str, ServedPolicies] = field(default_factory=dict)
    policy_irs: dict[str, dict[str, PolicyIR]] = field(default_factory=dict)
    # Step 3 (Products).
    product_irs: dict[str, ProductIR] = field(default_factory=dict)
    # Step 4 (Routes): sorted by key once the step ends, and grouped by Product.
    route_irs: list[RouteIR] = field(default_factory=list)
    routes_by_product: dict[str, list[RouteIR]] = field(default_factory=dict)
    # What the next pass's delta needs (``incremental.py``): Product and Route documents seen,
    # each match claimed by which Route, and how many Routes lost a match conflict.
    apx_documents: int = 0
    claimed: dict[tuple[Any, ...], str] = field(default_factory=dict)
    conflicts: int = 0

    def generation(self, kind: str, key: str) -> int:
        return self.generations[(kind, key)]

    def result(self) -> TranslateResult:
        """The frozen IR of what translated, with every status: the last step of ``translate``."""
        policy_irs = self.policy_irs
        ir = IR(
            products=tuple(self.product_irs[k] for k in sorted(self.product_irs)),
            # Bundles by key, each bundle's versions newest first.
            policies=tuple(
                policy_irs[bundle][version]
                for bundle in sorted(policy_irs)
                for version in sorted(policy_irs[bundle], key=_version_order, reverse=True)
            ),
            routes=tuple(self.route_irs),
            routes_by_product={k: tuple(v) for k, v in self.routes_by_product.items()},
        )
        return TranslateResult(ir=ir, statuses=self.statuses, ignored=self.ignored)


@lru_cache(maxsize=4096)
def _version_order(version: str) -> semver.Version:
    return semver.Version.parse(version)


def object_ref(kind: str, meta: Any) -> ObjectRef:
    """The owner reference of a parsed object; offline objects get a stable name-based uid."""
    uid = meta.uid or str(uuid.uuid5(_OFFLINE_UID_NAMESPACE, f"{kind}/{meta.namespace}/{meta.name}"))
    return ObjectRef(kind=kind, namespace=meta.namespace, name=meta.name, uid=uid)
