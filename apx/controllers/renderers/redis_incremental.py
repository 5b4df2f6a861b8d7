"""The Redis rule sets and route table of a pass, updated from last pass's for the few Routes that changed.

Called by the pure pipeline (``apx.controllers.pipeline``) when it has the
operator's ``Caches``; the output equals ``render_redis`` of the same IR
(``tests/unit/test_incremental.py``). Last pass's Routes, Products and output
stay in ``caches.assembled``. While the Products are the same objects and only
a few Routes are other objects (``delta.route_changes``), only the rule sets
of the changed Routes' Products are rendered again (from the IR's Routes by
Product) and the changed route-table entries are replaced in place; the
route-table version is still the hash of every entry's digest (its
definition), from the kept digests. Anything else falls back to the full render. Pure.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from .. import names
from ..delta import SortedRows, route_changes
from ..ir import IR, ProductIR, RouteIR
from ..memo import Caches, same
from .redis_rules import (
    RedisOutput,
    RuleSet,
    _encoded_entry,
    _rule_set,
    entry_digest,
    entry_prefix,
    render_redis,
    table_version,
)

_STAGE = "redis"


@dataclass(slots=True)
class _Assembled:
    routes: tuple[RouteIR, ...]
    products: tuple[ProductIR, ...]
    output: RedisOutput
    product_index: dict[str, int]  # Product key → position of its rule set
    entries: SortedRows[tuple[str, str]]  # route key → (route key, canonical JSON)
    digests: SortedRows[bytes]  # route key → ``entry_digest`` of its entry, what the version hashes


def render_redis_cached(ir: IR, caches: Caches) -> RedisOutput:
    """``render_redis(ir, caches)``, from last pass's output when few Routes changed."""
    state = caches.assembled.get(_STAGE)
    if isinstance(state, _Assembled) and same(state.products, ir.products):
        output = _delta(state, ir, caches)
        if output is not None:
            return output
    output = render_redis(ir, caches)
    caches.assembled[_STAGE] = _assembled(ir, output)
    return output


def _assembled(ir: IR, output: RedisOutput) -> _Assembled | None:
    if not ir.routes_by_product and ir.routes:
        return None  # an IR built without its grouping: the delta needs it
    entries = output.route_table.entries
    return _Assembled(
        ir.routes,
        ir.products,
        output,
        {rule_set.product: index for index, rule_set in enumerate(output.rule_sets)},
        SortedRows([(key, (key, encoded)) for key, encoded in entries]),
        SortedRows([(key, entry_digest(entry_prefix(key), encoded)) for key, encoded in entries]),
    )


def _delta(state: _Assembled, ir: IR, caches: Caches) -> RedisOutput | None:
    changes = route_changes(state.routes, ir.routes)
    if changes is None:
        return None
    caches.redis_routes.carry()
    caches.redis_products.carry()
    if not changes:
        state.routes = ir.routes
        return state.output
    rule_sets: list[RuleSet] = list(state.output.rule_sets)
    products = {p.key: p for p in (r.product for change in changes for r in change)}
    for key, product in sorted(products.items()):
        index = state.product_index.get(key)
        if index is None:
            return None
        rule_sets[index] = _rule_set(product, ir.routes_by_product.get(key, ()), caches)
    entries, digests = state.entries.copy(), state.digests.copy()
    for before, after in changes:
        caches.redis_routes.forget(before)
        encoded = caches.redis_routes.get(after, functools.partial(_encoded_entry, after))
        entries.replace(after.key, (after.key, encoded))
        digests.replace(after.key, entry_digest(entry_prefix(after.key), encoded))
    values = entries.values()
    # ``redis_rules._joined_version`` of the entries, with the other entries' digests kept.
    version = table_version(digests.values())
    table = dataclasses.replace(
        state.output.route_table, version=version, key=names.route_table_key(version), entries=values
    )
    output = RedisOutput(rule_sets=tuple(rule_sets), route_table=table)
    caches.assembled[_STAGE] = _Assembled(
        ir.routes, ir.products, output, state.product_index, entries, digests
    )
    return output
