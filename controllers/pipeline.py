"""The whole pure path: raw objects → translate → every renderer → statuses with summaries.

Called by ``apx translate`` and by the operator's reconciler (which then hands
the outputs to the appliers). Pure: the same inputs always give the same
outputs.

A route the Envoy renderer cannot render is reported Stalled and left out of
every output (not just Envoy's), so the targets never disagree about which
routes exist; everything else is still rendered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .gcpause import collector_paused
from .ir import IR
from .models.common import API_VERSION
from .models.route import CanaryStatus
from .renderers.envoy import EnvoyOutput, render_envoy
from .renderers.kubernetes import KubernetesOutput, deployments_for_route, render_kubernetes
from .renderers.pubsub_plan import PubSubOutput, render_pubsub, route_topics
from .renderers.redis_rules import RedisOutput, render_redis
from .status import ResourceStatus, stalled
from .translate import TranslateResult, translate

SECTIONS: tuple[str, ...] = ("envoy", "redis", "pubsub", "kubernetes", "status")


@dataclass(slots=True)
class Compiled:
    """Everything derived from one set of objects."""

    result: TranslateResult
    ir: IR
    envoy: EnvoyOutput
    redis: RedisOutput
    pubsub: PubSubOutput
    kubernetes: KubernetesOutput

    @property
    def statuses(self) -> dict[tuple[str, str], ResourceStatus]:
        return self.result.statuses

    def stalled_messages(self) -> list[str]:
        return [
            f"{status.kind} {status.key}: {status.message}"
            for (_, _), status in sorted(self.statuses.items())
            if status.stalled
        ]

    def status_documents(self, now: str | None = None) -> list[dict[str, Any]]:
        documents = []
        for (kind, key), status in sorted(self.statuses.items()):
            namespace, name = key.split("/", 1)
            documents.append(
                {
                    "apiVersion": API_VERSION,
                    "kind": kind,
                    "metadata": {"namespace": namespace, "name": name},
                    "status": status.to_dict(now),
                }
            )
        return documents

    def to_json(self, sections: Sequence[str] = SECTIONS) -> dict[str, Any]:
        everything: dict[str, Any] = {}
        for section in sections:
            if section == "envoy":
                everything["envoy"] = self.envoy.to_json()
            elif section == "redis":
                everything["redis"] = self.redis.to_json()
            elif section == "pubsub":
                everything["pubsub"] = self.pubsub.to_json()
            elif section == "kubernetes":
                everything["kubernetes"] = self.kubernetes.to_json()
            elif section == "status":
                everything["status"] = self.status_documents()
            else:
                raise ValueError(f"unknown section {section!r}")
        return everything


def _without_routes(ir: IR, dropped: set[str]) -> IR:
    routes = tuple(r for r in ir.routes if r.key not in dropped)
    by_product = {
        product: tuple(r for r in routes_ if r.key not in dropped)
        for product, routes_ in ir.routes_by_product.items()
    }
    return dataclasses.replace(ir, routes=routes, routes_by_product=by_product)


@dataclass(slots=True)
class FirstStage:
    """Translation plus the Redis rules: what the operator applies first, before the rest renders.

    Rate-limit rules are what a limit change is waiting for, so the operator
    publishes them before spending time on Envoy and Kubernetes output.
    """

    result: TranslateResult
    redis: RedisOutput


def first_stage(
    resources: Iterable[Mapping[str, Any]], canary_states: Mapping[str, CanaryStatus] | None = None
) -> FirstStage:
    with collector_paused():
        result = translate(resources, canary_states)
        return FirstStage(result=result, redis=render_redis(result.ir))


def compile_resources(
    resources: Iterable[Mapping[str, Any]],
    canary_states: Mapping[str, CanaryStatus] | None = None,
    *,
    project: str = "apx-local",
    operator_namespace: str = "apx-system",
    envoy_port: int = 8080,
) -> Compiled:
    """Translate and render everything; statuses carry the summaries users look for."""
    return finish(
        first_stage(resources, canary_states),
        project=project,
        operator_namespace=operator_namespace,
        envoy_port=envoy_port,
    )


def finish(
    stage: FirstStage,
    *,
    project: str = "apx-local",
    operator_namespace: str = "apx-system",
    envoy_port: int = 8080,
    keep_envoy_resources: bool = True,
) -> Compiled:
    """Render everything else from the first stage.

    A route Envoy cannot render is dropped from every output, so in that
    (defensive) case the Redis rules are rendered again without it.

    ``keep_envoy_resources=False`` (the operator) drops the Envoy messages once
    the snapshot ConfigMap carries them packed: the result keeps the version
    and errors, and the pass never holds the messages and the other outputs
    at the same time (on 1,000 Routes the messages are ~10 MiB).
    """
    with collector_paused():
        return _finish(stage, project, operator_namespace, envoy_port, keep_envoy_resources)


def _finish(
    stage: FirstStage, project: str, operator_namespace: str, envoy_port: int, keep_envoy_resources: bool
) -> Compiled:
    result = stage.result
    envoy = render_envoy(result.ir, port=envoy_port)
    ir = result.ir
    redis = stage.redis
    if envoy.errors:
        for key, message in envoy.errors.items():
            previous = result.statuses[("Route", key)]
            result.statuses[("Route", key)] = stalled(
                "Route", key, previous.generation, "RenderError", message
            )
        ir = _without_routes(ir, set(envoy.errors))
        redis = render_redis(ir)
    snapshot = envoy.snapshot_document()
    if not keep_envoy_resources:
        envoy = dataclasses.replace(envoy, listeners=[], route_configurations=[], clusters=[])
    pubsub = render_pubsub(ir, project=project)
    kubernetes = render_kubernetes(ir, snapshot, operator_namespace)

    topics_by_product: dict[str, list[str]] = {}
    for route in ir.routes:
        # The rule-set version lives on the Product only: a limit change would
        # otherwise rewrite the status of every Route of the product.
        status = result.statuses[("Route", route.key)]
        if route.mode == "async":
            plans = route_topics(route)  # once: it is the costliest part of a Route's summary
            topics = [plan.topic for plan in plans]
            status.summary["topics"] = topics
            status.summary["subscriptions"] = [plan.subscription for plan in plans]
            status.summary["deployments"] = deployments_for_route(route)
            topics_by_product.setdefault(route.product.key, []).extend(topics)
    for product in ir.products:
        status = result.statuses[("Product", product.key)]
        status.summary["ruleSetVersion"] = redis.rule_set(product.key).version
        status.summary["topics"] = sorted(topics_by_product.get(product.key, []))
        status.summary["routes"] = len(ir.routes_by_product.get(product.key, ()))
    return Compiled(result=result, ir=ir, envoy=envoy, redis=redis, pubsub=pubsub, kubernetes=kubernetes)
