"""Translation: raw APX objects → one frozen ``IR`` plus the status each object would get.

The entry point of the pure core: called by the pure pipeline
(``apx.controllers.pipeline``, hence the operator's reconciler and
``apx translate``), by the canary controller's pure calls and by tests and
benchmarks. Laid out like Envoy Gateway's translator: one
``TranslationContext`` (``context``) carries the inputs and what each step
built, and one module per kind adds its part in turn:

1. ``parse`` — documents → models (errors formatted by ``errors``);
2. ``policybundles`` — served versions, compiled artifacts, history checks;
3. ``products`` — plans and tenants resolved into ``ProductIR``;
4. ``routes`` — references resolved, canary progress, match conflicts;

and ``summaries`` owns what statuses say beyond their conditions, here and
in the later stages (pipeline, operator).

An error in one object never stops the others: a bad Route is reported as
Stalled and left out of the IR; every other Route still translates. Inputs
that change over time (the canary controller's weight) come in as arguments
or from the objects' status; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..gcpause import collector_paused
from ..memo import Caches
from ..models.route import CanaryStatus
from .context import TranslateResult, TranslationContext, object_ref
from .errors import format_validation_error
from .incremental import remember, translate_delta
from .parse import APX_KINDS, HISTORY_ANNOTATION, parse_document, parse_or_error, parse_resources
from .policybundles import process_policy_bundles, translate_bundle
from .products import process_products, product_ir
from .routes import WAITING_REASONS, RouteError, canary_revision, process_routes, route_ir

__all__ = [
    "APX_KINDS",
    "HISTORY_ANNOTATION",
    "WAITING_REASONS",
    "RouteError",
    "TranslateResult",
    "TranslationContext",
    "canary_revision",
    "format_validation_error",
    "object_ref",
    "parse_document",
    "parse_or_error",
    "parse_resources",
    "process_policy_bundles",
    "process_products",
    "process_routes",
    "product_ir",
    "route_ir",
    "translate",
    "translate_bundle",
]


def translate(
    resources: Iterable[Mapping[str, Any]],
    canary_states: Mapping[str, CanaryStatus] | None = None,
    caches: Caches | None = None,
) -> TranslateResult:
    """Translate raw objects into the IR and the status each would get.

    ``canary_states`` (Route key → progress) overrides what the Routes' own
    status says, so the canary controller can render the next weight with a
    pure call. ``caches`` (the operator's, see ``apx.controllers.memo``) lets
    unchanged objects reuse their parsed models and IR objects: the result is
    the same as without, and unchanged Routes keep their very ``RouteIR``
    objects, which is what the renderers' caches key on.
    """
    with collector_paused():
        documents = list(resources)
        if caches is not None:
            # Only a few Route bodies changed since the last pass: update its result (``incremental``).
            delta = translate_delta(documents, canary_states or {}, caches)
            if delta is not None:
                return delta
        ctx = TranslationContext(canary_states=canary_states or {}, caches=caches)
        # The order is the data flow: Routes resolve against the PolicyBundles'
        # served versions and the Products' IR; which bundle versions Routes
        # pin is read from the parsed Routes before the bundles translate.
        parse_resources(ctx, documents)
        process_policy_bundles(ctx)
        process_products(ctx)
        process_routes(ctx)
        result = ctx.result()
        if caches is not None:
            remember(ctx, documents, result)
        return result
