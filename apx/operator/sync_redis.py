"""Redis sync: rule sets per product and the route table, published as new versions and switched.

Mixed into ``apx.operator.reconciler.Reconciler`` (``RedisSync``). A rule
set is published only when its version differs from what was applied (or
on a full pass, when Redis says otherwise) and only if no change to its
product arrived since the pass took its snapshot (epochs): a newer one is
on its way through the fast path, which publishes touched products' rule
sets from their own objects in milliseconds, off the event loop. It does so
only for the products no pass has published for yet (``_rules_covered``):
when the change came while no long pass was running, the next ordinary pass
publishes the rule set just as soon and the fast path has nothing to do. An
ordinary pass looks only at the rule sets and route-table entries that are
other objects than last pass's at their place (``positions``), and publishes
the table as its changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from apx.controllers import names
from apx.controllers.appliers.redis_rules import RedisUnavailable, VersionedKeys
from apx.controllers.ir import IR
from apx.controllers.renderers.redis_rules import RedisOutput, RuleSet

from .positions import EntryRows, changed_positions
from .reconcile_state import (
    DependencyProblem,
    PassReport,
    ReconcilerState,
)


class RedisSync(ReconcilerState):
    """Redis sync of the reconciler (a mixin of ``Reconciler``)."""

    async def publish_rule_sets_fast(self) -> int:
        """Publish the rule sets of the products touched since the last pass, from their own objects only.

        A limit or Route change is waiting for exactly one product's rule set;
        translating that product with its Routes and their PolicyBundles takes
        milliseconds, where the full pass over every object takes much longer.
        The full pass that follows renders the same rule set from everything
        (and republishes only if it differs, e.g. when a Route of this product
        lost a match conflict to a Route of another product).
        """
        products = {product for product in self._dirty_products if not self.rules_covered(product)}
        self._dirty_products.clear()
        if not products:
            return 0
        epochs = {product: self._epoch.get(product, 0) for product in products}
        subset: list[dict[str, Any]] = []
        bundles: set[tuple[str, str]] = set()
        for (kind, object_key), body in self.objects.items():
            if (kind, object_key) in self.deleting:
                continue
            namespace = object_key.split("/", 1)[0]
            if kind == "Product" and object_key in products:
                subset.append(body)
            elif kind == "Route":
                spec = body.get("spec") or {}
                if f"{namespace}/{(spec.get('productRef') or {}).get('name')}" in products:
                    subset.append(body)
                    bundles.add(("PolicyBundle", f"{namespace}/{(spec.get('policyRef') or {}).get('name')}"))
        for key in bundles:
            if key in self.objects and key not in self.deleting:
                subset.append(self.objects[key])
                subset.extend((self._policy_history.get(key) or {}).values())
        # In a thread: a wave of changes (a thousand canaries stepping) touches hundreds of
        # products, and translating their Routes on the event loop held up every watch event.
        # The store's last good bodies are copied here, on the loop: a pass may replace some
        # meanwhile.
        stage = await asyncio.to_thread(self._serving_stage, subset, None, None, dict(self._last_good))
        published = 0
        for rule_set in stage.redis.rule_sets:
            if (
                rule_set.product not in products
                or self._applied_rule_sets.get(rule_set.product) == rule_set.version
            ):
                continue
            if self._epoch.get(rule_set.product, 0) != epochs[rule_set.product]:
                continue  # changed again meanwhile: the next fast run publishes the newer one
            if self.rules_covered(rule_set.product):
                continue  # a pass published it while this translated (from every object, not a subset)
            await self.redis.publish(_rule_set_keys(rule_set), rule_set.version, dict(rule_set.fields))
            self._applied_rule_sets[rule_set.product] = rule_set.version
            self._rules_covered[rule_set.product] = epochs[rule_set.product]
            # What is applied moved under the pass's feet: its next ``_apply_redis`` looks at every rule set.
            self._rule_set_moves += 1
            published += 1
        return published

    def rules_covered(self, product: str) -> bool:
        """Whether the rule set of ``product`` as of its latest change is published (or has none).

        True once a pass that took its snapshot after that change got through its
        Redis phase (every product whose epoch did not move meanwhile is then as
        that pass rendered it), or once the fast path published it.
        """
        return self._rules_covered.get(product, 0) == self._epoch.get(product, 0)

    async def _apply_redis(self, output: RedisOutput, ir: IR, report: PassReport, full: bool) -> None:
        try:
            rule_sets = output.rule_sets
            # The rule sets left applied by the last call, unless something else changed what is
            # applied since (``_rule_set_moves``): an unchanged product's rule set is the very
            # object at the same position (the renderer's caches), so only the positions holding
            # another object are looked at (found in C); at 1,000 products a one-Route edit
            # looks at one rule set. Anything else (a full pass, products come or gone, a rule
            # set left for the fast path) looks at every one, as before.
            settled = None if full else self._rule_sets_settled
            if settled is not None and settled[1] == self._rule_set_moves:
                positions = changed_positions(settled[0], rule_sets)
            else:
                positions = None
            self._rule_sets_settled = None
            moves = self._rule_set_moves  # the fast path may publish while this loop awaits Redis
            left_unsettled = False
            for rule_set in rule_sets if positions is None else (rule_sets[i] for i in positions):
                if self._applied_rule_sets.get(rule_set.product) == rule_set.version:
                    continue
                if self._epoch.get(rule_set.product, 0) != self._pass_epochs.get(rule_set.product, 0):
                    left_unsettled = True
                    continue  # changed since this pass took its snapshot: the fast path publishes it
                keys = _rule_set_keys(rule_set)
                if full or await self.redis.current_version(keys) != rule_set.version:
                    await self.redis.publish(keys, rule_set.version, dict(rule_set.fields))
                    report.redis_published += 1
                self._applied_rule_sets[rule_set.product] = rule_set.version
            if not left_unsettled and moves == self._rule_set_moves:
                self._rule_sets_settled = (rule_sets, moves)
            # Every product whose epoch did not move since the pass began is now as the pass
            # rendered it (the moved ones were left to the fast path above).
            covered = self._rules_covered
            for touched, epoch in self._pass_epochs.items():
                if covered.get(touched, 0) < epoch:
                    covered[touched] = epoch
            self._fast_path_recheck.set()
            table = output.route_table
            if self._applied_route_table != table.version:
                # This instance's route table (``--instance``): operators over other namespaces
                # sharing this Redis each publish their own, read by their own gateways.
                instance = self.settings.instance
                keys = VersionedKeys(
                    version_prefix=names.route_table_version_prefix(instance),
                    current=names.route_table_current_key(instance),
                    versions=names.route_table_versions_key(instance),
                )
                entries = EntryRows(table.entries)
                previous = self._applied_route_table_entries
                if full or previous is None or self._applied_route_table is None:
                    await self.redis.publish(keys, table.version, entries)
                else:
                    changed, removed = _table_changes(previous, entries)
                    await self.redis.publish_changes(
                        keys, table.version, self._applied_route_table, changed, removed, entries
                    )
                self._applied_route_table = table.version
                self._applied_route_table_entries = entries
                report.redis_published += 1
            self.metrics.dependency_up.labels(dependency="redis").set(1)
        except RedisUnavailable as exc:
            self.metrics.dependency_up.labels(dependency="redis").set(0)
            self._applied_rule_sets.clear()
            self._rule_set_moves += 1
            self._applied_route_table = None
            self._applied_route_table_entries = None
            problem = DependencyProblem("RedisUnavailable", f"{exc}; retrying")
            for product in ir.products:
                report.problems[("Product", product.key)] = problem
            for route in ir.routes:
                report.problems[("Route", route.key)] = problem


def _table_changes(previous: EntryRows, entries: EntryRows) -> tuple[dict[str, str], list[str]]:
    """The entries that differ from ``previous`` (new or changed) and the route keys gone from it.

    Unchanged entries are the very rows of the last table (the renderer's caches). When both
    tables have the same length and every row that is another object keeps its route key, no
    Route came or went and only those rows are compared; otherwise every entry is compared by key.
    """
    old, new = previous.rows, entries.rows
    positions = changed_positions(old, new)
    if positions is not None and all(old[i][0] == new[i][0] for i in positions):
        return {new[i][0]: new[i][1] for i in positions if old[i][1] != new[i][1]}, []
    changed = {k: v for k, v in entries.items() if previous.get(k) != v}
    return changed, [k for k in previous if k not in entries]


def _rule_set_keys(rule_set: RuleSet) -> VersionedKeys:
    """The Redis keys of a product's rule-set family, as the applier addresses them."""
    return VersionedKeys(rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key)
