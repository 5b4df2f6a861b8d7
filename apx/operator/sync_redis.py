"""Redis sync: rule sets per product and the route table, published as new versions and switched.

Mixed into ``apx.operator.reconciler.Reconciler`` (``RedisSync``). A rule
set is published only when its version differs from what was applied (or
on a full pass, when Redis says otherwise) and only if no change to its
product arrived since the pass took its snapshot (epochs): a newer one is
on its way through the fast path, which publishes touched products' rule
sets from their own objects in milliseconds.
"""

from __future__ import annotations

from typing import Any

from apx.controllers import names
from apx.controllers.appliers.redis_rules import RedisUnavailable, VersionedKeys
from apx.controllers.ir import IR
from apx.controllers.renderers.redis_rules import RedisOutput, RuleSet

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
        products = set(self._dirty_products)
        self._dirty_products.clear()
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
        stage = self._serving_stage(subset)
        published = 0
        for rule_set in stage.redis.rule_sets:
            if (
                rule_set.product not in products
                or self._applied_rule_sets.get(rule_set.product) == rule_set.version
            ):
                continue
            if self._epoch.get(rule_set.product, 0) != epochs[rule_set.product]:
                continue  # changed again meanwhile: the next fast run publishes the newer one
            await self.redis.publish(_rule_set_keys(rule_set), rule_set.version, dict(rule_set.fields))
            self._applied_rule_sets[rule_set.product] = rule_set.version
            published += 1
        return published

    async def _apply_redis(self, output: RedisOutput, ir: IR, report: PassReport, full: bool) -> None:
        try:
            for rule_set in output.rule_sets:
                if self._applied_rule_sets.get(rule_set.product) == rule_set.version:
                    continue
                if self._epoch.get(rule_set.product, 0) != self._pass_epochs.get(rule_set.product, 0):
                    continue  # changed since this pass took its snapshot: the fast path publishes it
                keys = _rule_set_keys(rule_set)
                if full or await self.redis.current_version(keys) != rule_set.version:
                    await self.redis.publish(keys, rule_set.version, dict(rule_set.fields))
                    report.redis_published += 1
                self._applied_rule_sets[rule_set.product] = rule_set.version
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
                entries = dict(table.entries)
                previous = self._applied_route_table_entries
                if full or previous is None or self._applied_route_table is None:
                    await self.redis.publish(keys, table.version, entries)
                else:
                    # Unchanged entries are the very strings of the last table (the renderer's
                    # caches): comparing 10,000 of them is cheap, writing them again is not.
                    changed = {k: v for k, v in entries.items() if previous.get(k) != v}
                    removed = [k for k in previous if k not in entries]
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
            self._applied_route_table = None
            self._applied_route_table_entries = None
            problem = DependencyProblem("RedisUnavailable", f"{exc}; retrying")
            for product in ir.products:
                report.problems[("Product", product.key)] = problem
            for route in ir.routes:
                report.problems[("Route", route.key)] = problem


def _rule_set_keys(rule_set: RuleSet) -> VersionedKeys:
    """The Redis keys of a product's rule-set family, as the applier addresses them."""
    return VersionedKeys(rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key)
