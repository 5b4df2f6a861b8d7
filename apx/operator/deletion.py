"""Deletion: what a deleted Product or Route owns in Redis and Pub/Sub, removed per ``deletionPolicy``.

Mixed into ``apx.operator.reconciler.Reconciler`` (``Deletion``); runs from
a pass while an object is being finalized (``Reconciler.finalize``). With
``deletionPolicy: Delete`` the rule sets and counters of a Product and the
topics and subscriptions of a Route or Product are deleted; ``Retain``
leaves them. Kubernetes children go by garbage collection.
"""

from __future__ import annotations

from collections.abc import Mapping

from apx.controllers import names
from apx.controllers.appliers.pubsub import PubSubUnavailable
from apx.controllers.appliers.redis_rules import RedisUnavailable
from apx.controllers.pipeline import Compiled, compile_resources

from .reconcile_state import (
    DependencyProblem,
    PassReport,
    ReconcilerState,
)
from .sync_redis import _rule_set_keys


class Deletion(ReconcilerState):
    """Deletion of the reconciler (a mixin of ``Reconciler``)."""

    def _owners_of_deleting(self) -> dict[tuple[str, str], Compiled]:
        """Render once *with* the objects being deleted, to know what they own."""
        everything = [body for _, body in sorted(self.objects.items())]
        compiled = compile_resources(
            everything,
            project=self.settings.pubsub_project,
            operator_namespace=self.settings.operator_namespace,
        )
        return dict.fromkeys(self.deleting, compiled)

    async def _cleanup_deleted(self, owners: Mapping[tuple[str, str], Compiled], report: PassReport) -> None:
        for key, body in list(self.deleting.items()):
            if key in self._cleaned:
                continue
            kind, object_key = key
            policy = ((body.get("spec") or {}).get("deletionPolicy")) or "Retain"
            compiled = owners.get(key)
            try:
                if policy == "Delete" and compiled is not None:
                    if kind == "Product":
                        rule_set = next(
                            (r for r in compiled.redis.rule_sets if r.product == object_key), None
                        )
                        if rule_set is not None:
                            await self.redis.drop(_rule_set_keys(rule_set))
                            self._applied_rule_sets.pop(object_key, None)
                            self._rule_set_moves += 1
                        await self.redis.delete_pattern(names.product_counters_pattern(object_key))
                    if kind in ("Route", "Product"):
                        plans = [
                            p
                            for p in compiled.pubsub.plans
                            if (p.route == object_key if kind == "Route" else p.product == object_key)
                        ]
                        project = compiled.pubsub.project
                        subscriptions = [
                            f"projects/{project}/subscriptions/{s}"
                            for p in plans
                            for s in (p.subscription, p.dead_letter_subscription)
                        ]
                        topics = [
                            f"projects/{project}/topics/{t}"
                            for p in plans
                            for t in (p.topic, p.dead_letter_topic)
                        ]
                        await self.pubsub.delete(topics, subscriptions)
                        self._applied_pubsub.clear()
                        self._pubsub_unsettled = None  # every row is checked again
                self._cleaned.add(key)
            except (RedisUnavailable, PubSubUnavailable) as exc:
                report.problems[key] = DependencyProblem("CleanupPending", f"{exc}; retrying")
