"""Translation of a pass in which only a few Routes' bodies changed: last pass's result, updated.

Called by ``translate`` when it has the operator's ``Caches``: ``translate_delta``
first (``None`` when it does not apply), and ``remember`` after every full
translation. The result equals a full translation of the same documents
(``tests/unit/test_incremental.py``), including the order of ``statuses``.

It applies when the documents are last pass's, position by position, except
for a few Route bodies replaced by bodies of the same Route that parse and
name the same Product, PolicyBundle and policy versions; last pass had no
duplicate Product or Route and no match conflict; and the canary controller's
overrides are the same. Then no Product, PolicyBundle or other Route can
translate differently (their inputs are the same objects), so only the
changed Routes are translated again, their match claims moved, and the
sorted Routes, the Routes by Product and the statuses updated in place of
rebuilt. A changed Route that claims a match someone else holds sends the
pass to the full translation, which decides by age. Pure.

The statuses of unchanged objects are last pass's very objects, shared with
what is kept here for the next pass: a caller copies a status before changing
it (the pipeline does, to add the output summaries). The keys of the stalled
Products and Routes are kept too and updated for the changed ones
(``TranslateResult.stalled_keys``), so the pipeline does not look at every
status to find them.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

from ..delta import MAX_CHANGES, SortedRows
from ..ir import IR, RouteIR
from ..memo import Caches
from ..models.route import CanaryStatus
from ..status import ResourceStatus, ready
from .context import StatusKey, TranslateResult, TranslationContext
from .facts import RouteFacts
from .parse import _generation, _parse_cached
from .routes import RouteError, error_status, route_ir_cached

_STAGE = "translate"


@dataclass(slots=True)
class _Assembled:
    documents: list[Mapping[str, Any]]
    canary_states: dict[str, CanaryStatus]
    ctx: TranslationContext  # its ``statuses`` belong to the caller: ``statuses`` is the kept copy
    statuses: dict[StatusKey, ResourceStatus]
    route_irs: SortedRows[RouteIR]
    ir: IR
    ignored: list[tuple[str, str]]
    position: dict[StatusKey, int]  # each status key's position in ``statuses`` (the delta keeps the order)
    stalled: tuple[StatusKey, ...]  # ``TranslateResult.stalled_keys``
    stalled_set: frozenset[StatusKey]  # the same keys, to look up


def _stalled(key: StatusKey, status: ResourceStatus) -> bool:
    return key[0] in ("Product", "Route") and status.stalled


def remember(ctx: TranslationContext, documents: list[Mapping[str, Any]], result: TranslateResult) -> None:
    """Keep a full translation for the next pass's delta, when one can start from it."""
    caches = ctx.caches
    assert caches is not None
    objects = sum(1 for kind, _ in ctx.generations if kind != "PolicyBundle")
    if ctx.conflicts or objects != ctx.apx_documents:
        caches.assembled.pop(_STAGE, None)
        return
    result.stalled_keys = tuple(key for key, status in result.statuses.items() if _stalled(key, status))
    caches.assembled[_STAGE] = _Assembled(
        documents,
        dict(ctx.canary_states),
        ctx,
        dict(result.statuses),
        SortedRows([(route.key, route) for route in result.ir.routes]),
        result.ir,
        list(result.ignored),
        {key: index for index, key in enumerate(result.statuses)},
        result.stalled_keys,
        frozenset(result.stalled_keys),
    )


def _key(document: Mapping[str, Any]) -> tuple[str, str]:
    meta = document.get("metadata") or {}
    return str(document.get("kind", "")), f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def _same_references(left: RouteFacts, right: RouteFacts) -> bool:
    references = (left.product_key, left.bundle_key, left.pinned)
    return references == (right.product_key, right.bundle_key, right.pinned)


def translate_delta(
    documents: Sequence[Mapping[str, Any]], canary_states: Mapping[str, CanaryStatus], caches: Caches
) -> TranslateResult | None:
    """Last pass's translation updated for the changed Route bodies, or ``None`` (see module doc)."""
    state = caches.assembled.get(_STAGE)
    if not isinstance(state, _Assembled) or dict(canary_states) != state.canary_states:
        return None
    before = state.documents
    if len(documents) != len(before):
        return None
    changed = list(compress(range(len(documents)), map(operator.is_not, documents, before)))
    if len(changed) > MAX_CHANGES:
        return None
    old = state.ctx
    ctx = dataclasses.replace(
        old,
        canary_states=canary_states,
        caches=caches,
        statuses=dict(state.statuses),
        generations=dict(old.generations),
        routes=dict(old.routes),
        route_models={},
        claimed=dict(old.claimed),
        route_irs=[],
        routes_by_product={},
    )
    edits: list[tuple[RouteFacts, RouteFacts]] = []
    for index in changed:
        old_document, document = before[index], documents[index]
        kind, key = _key(document)
        if kind != "Route" or _key(old_document) != (kind, key):
            return None
        old_facts = old.routes.get(key)
        facts = _parse_cached(ctx, kind, document)
        if old_facts is None or old_facts.raw is not old_document or not isinstance(facts, RouteFacts):
            return None  # a body that did not parse, before or now: the full translation reports it
        if not _same_references(old_facts, facts):
            return None
        ctx.generations[("Route", key)] = _generation(document)
        ctx.routes[key] = facts
        edits.append((old_facts, facts))
    route_irs = state.route_irs.copy() if edits else state.route_irs
    by_product = dict(state.ir.routes_by_product)
    for old_facts, facts in edits:
        if not _translate_one(ctx, old_facts, facts, route_irs, by_product):
            return None
    for old_facts, _ in edits:
        caches.parsed.forget(old_facts.raw)
    for memo in (caches.parsed, caches.routes, caches.products, caches.bundles):
        memo.carry()
    ir = IR(products=state.ir.products, policies=state.ir.policies, routes=route_irs.values(),
            routes_by_product=by_product)  # fmt: skip
    stalled_keys, stalled_set = _stalled_after(state, ctx.statuses, [facts for _, facts in edits])
    # Statuses shared with the kept state: the pipeline copies one before adding summaries to it.
    result = TranslateResult(ir, ctx.statuses, list(state.ignored), stalled_keys)  # fmt: skip
    caches.assembled[_STAGE] = _Assembled(
        list(documents), state.canary_states, ctx, dict(ctx.statuses), route_irs, ir, state.ignored,
        state.position, stalled_keys, stalled_set,
    )  # fmt: skip
    return result


def _stalled_after(
    state: _Assembled, statuses: Mapping[StatusKey, ResourceStatus], edited: list[RouteFacts]
) -> tuple[tuple[StatusKey, ...], frozenset[StatusKey]]:
    """The stalled keys of the delta's statuses: last pass's, updated for the edited Routes' keys.

    Only the edited Routes' and their Products' statuses are other objects
    (``_translate_one``), and the delta keeps the order of ``statuses``. With
    the references unchanged, an edited Route rarely goes from Ready to
    Stalled or back here, but the keys are updated whenever one does.
    """
    touched = {key for facts in edited for key in (("Route", facts.key), ("Product", facts.product_key))}
    flipped = {
        key
        for key in touched
        if (key in statuses and _stalled(key, statuses[key])) != (key in state.stalled_set)
    }
    if not flipped:
        return state.stalled, state.stalled_set
    stalled_set = state.stalled_set ^ flipped
    return tuple(sorted(stalled_set, key=state.position.__getitem__)), stalled_set


def _translate_one(
    ctx: TranslationContext,
    old_facts: RouteFacts,
    facts: RouteFacts,
    route_irs: SortedRows[RouteIR],
    by_product: dict[str, tuple[RouteIR, ...]],
) -> bool:
    """Translate one changed Route into ``ctx``; ``False`` when it claims a match another Route holds."""
    key = facts.key
    claimed = ctx.claimed
    if route_irs.get(key) is not None:  # it served last pass: its claims go
        for match_key in old_facts.match_keys:
            if claimed.get(match_key) == key:
                del claimed[match_key]
    generation = ctx.generation("Route", key)
    built: RouteIR | None = None
    try:
        built, message, summary = route_ir_cached(ctx, facts, ctx.canary_states.get(key))
    except RouteError as exc:
        status = error_status(key, generation, exc)
    else:
        if any(match_key in claimed for match_key in facts.match_keys):
            return False  # who wins is decided by age, in the full translation
        for match_key in facts.match_keys:
            claimed[match_key] = key
        status = ready("Route", key, generation, message, dict(summary))
    ctx.statuses[("Route", key)] = status
    if built is None:
        route_irs.remove(key)
    elif not route_irs.replace(key, built):
        route_irs.insert(key, built)
    product_key = facts.product_key
    routes = tuple(r for r in by_product.get(product_key, ()) if r.key != key)
    if built is not None:
        routes = tuple(sorted((*routes, built), key=lambda r: r.key))
    if routes:
        by_product[product_key] = routes
    else:
        by_product.pop(product_key, None)
    product_status = ctx.statuses.get(("Product", product_key))
    if product_key in ctx.product_irs and product_status is not None:
        summary = {**product_status.summary, "routes": len(routes)}
        ctx.statuses[("Product", product_key)] = dataclasses.replace(product_status, summary=summary)
    return True
