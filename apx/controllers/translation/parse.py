"""Step 1 of translation: raw Kubernetes objects → validated models in the translation context.

Called by ``apx.controllers.translation.translate`` before any per-kind step.
A document that is not an APX object is listed as ignored; one that fails
its model gets a Stalled ``InvalidSpec`` status naming the fields at fault
and is left out of what the later steps see. A later document of the same
Product or Route replaces an earlier one (like a second apply); the
documents of a PolicyBundle accumulate, as its version history. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from pydantic import ValidationError

from ..models.resources import RESOURCE_MODELS, PolicyBundle, Product, Route
from ..status import stalled
from .context import TranslationContext
from .errors import format_validation_error
from .facts import RouteFacts

APX_KINDS = frozenset(RESOURCE_MODELS)
# Marks a PolicyBundle document as an earlier apply of the same object (the
# operator passes versions it served before, so they stay N-1).
HISTORY_ANNOTATION = "apx.dev/applied-before"

Parsed = Product | Route | PolicyBundle

# The only status fields translation reads: a Route's canary progress (the
# fields the traffic split follows) and a PolicyBundle's served versions. The
# rest of a status (conditions, topics, deployments, the canary's check
# bookkeeping, kopf's own fields) is what the operator wrote and is not
# parsed: a malformed one cannot fail translation, parsing stays cheap, and
# the operator's store runs no pass when only such fields change
# (``apx.operator.store``: a canary check every interval on a thousand Routes
# must not re-render anything).
_STATUS_FIELDS_READ: dict[str, tuple[str, ...]] = {
    "Product": (),
    "Route": ("canary",),
    "PolicyBundle": ("servedVersions",),
}
_CANARY_FIELDS_READ = ("revision", "phase", "step", "weight")


def status_read_by_translation(kind: str, status: Any) -> dict[str, Any]:
    """The part of an object's ``status`` translation reads (empty when none)."""
    if not isinstance(status, Mapping):
        return {}
    read = {key: status[key] for key in _STATUS_FIELDS_READ.get(kind, ()) if key in status}
    canary = read.get("canary")
    if isinstance(canary, Mapping):
        read["canary"] = {key: canary[key] for key in _CANARY_FIELDS_READ if key in canary}
    return read


def parse_resources(ctx: TranslationContext, resources: Iterable[Mapping[str, Any]]) -> None:
    """Parse every document into ``ctx`` (models, generations, ignored documents, parse errors)."""
    for raw in resources:
        kind = str(raw.get("kind", ""))
        meta = raw.get("metadata") or {}
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"
        if kind not in APX_KINDS:
            ctx.ignored.append((kind, key))
            continue
        if kind != "PolicyBundle":  # a bundle's documents are its history; others are one per object
            ctx.apx_documents += 1
        generation = _generation(raw)
        is_history = (meta.get("annotations") or {}).get(HISTORY_ANNOTATION) == "true"
        # An earlier apply replayed as history does not set the object's generation.
        if not is_history or (kind, key) not in ctx.generations:
            ctx.generations[(kind, key)] = generation
        parsed = _parse_cached(ctx, kind, raw)
        if isinstance(parsed, list):
            ctx.statuses[(kind, key)] = stalled(kind, key, generation, "InvalidSpec", "; ".join(parsed))
            _forget(ctx, kind, key)
            continue
        # A valid document after an invalid one of the same object: the error no longer stands.
        ctx.statuses.pop((kind, key), None)
        _remember(ctx, key, parsed)


def _parse_cached(
    ctx: TranslationContext, kind: str, raw: Mapping[str, Any]
) -> Product | PolicyBundle | RouteFacts | list[str]:
    # The caches hold the raw body they parsed (``memo.IdentityMemo``): the
    # operator replaces a body when it changes, so the same body parses the same.
    # A Route is kept as its facts (``facts.py``); its model lives for this pass only.
    def parse() -> Product | PolicyBundle | RouteFacts | list[str]:
        parsed = parse_or_error(kind, raw)
        if isinstance(parsed, Route):
            ctx.route_models[parsed.key] = parsed
            return RouteFacts.of(parsed, raw)
        return parsed

    if ctx.caches is None:
        return parse()
    return cast("Product | PolicyBundle | RouteFacts | list[str]", ctx.caches.parsed.get(raw, parse))


def _forget(ctx: TranslationContext, kind: str, key: str) -> None:
    """An invalid document drops what an earlier document of the same object said."""
    if kind == "Product":
        ctx.products.pop(key, None)
    elif kind == "Route":
        ctx.routes.pop(key, None)
    else:
        ctx.bundle_applies.pop(key, None)


def _remember(ctx: TranslationContext, key: str, parsed: Product | PolicyBundle | RouteFacts) -> None:
    if isinstance(parsed, Product):
        ctx.products[key] = parsed
    elif isinstance(parsed, RouteFacts):
        ctx.routes[key] = parsed
    else:
        ctx.bundle_applies.setdefault(key, []).append(parsed)


def _generation(obj: Mapping[str, Any]) -> int:
    value = (obj.get("metadata") or {}).get("generation")
    return int(value) if isinstance(value, int) else 1


def _for_translation(kind: str, raw: Mapping[str, Any]) -> Mapping[str, Any]:
    status = raw.get("status")
    if not isinstance(status, Mapping):
        return raw
    return {**raw, "status": status_read_by_translation(kind, status) or None}


def parse_document(kind: str, raw: Mapping[str, Any]) -> Parsed:
    """One raw object as its model; raises ``ValidationError``."""
    # Parsed afresh on every call without caches: a memo of models by
    # resourceVersion saved ~35 ms per 1,300-object operator pass but held
    # ~10 MiB of models between passes, which the operator's memory budget
    # cannot spare. The operator's ``Caches`` keep only what the last pass used.
    return RESOURCE_MODELS[kind].model_validate(_for_translation(kind, raw))


def parse_or_error(kind: str, raw: Mapping[str, Any]) -> Parsed | list[str]:
    """The model, or the messages of what is wrong with the object."""
    try:
        return parse_document(kind, raw)
    except ValidationError as exc:
        return format_validation_error(exc)
