"""The whole pure path: raw objects → translate → every renderer → statuses with summaries.

Called by ``apx translate`` and by the operator's reconciler (which then hands
the outputs to the appliers). Pure: the same inputs always give the same
outputs.

A Product or Route that fails at any stage (translation, Redis rules, Envoy
rendering, Kubernetes manifests) is reported Stalled with the field named and
rendered from its last good body when the caller has one (the operator), or
left out of every output (not just the failing target's) when it has none
(``apx translate``), so the targets never disagree about which objects exist;
everything else is still rendered (``apx.controllers.last_good``).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

from . import names
from .delta import route_changes
from .gcpause import collector_paused
from .ir import IR, ProductIR, RouteIR
from .last_good import Fallback, Key, document_key, redis_failures, render_failure
from .memo import Caches, same
from .models.common import API_VERSION
from .models.route import CanaryStatus
from .renderers.envoy import EnvoyOutput, EnvoySettings, render_envoy
from .renderers.kubernetes import (
    KubernetesOutput,
    ManifestConflict,
    deployments_for_route,
    render_kubernetes,
    route_manifests,
)
from .renderers.kubernetes.incremental import render_kubernetes_cached
from .renderers.pubsub_incremental import render_pubsub_cached
from .renderers.pubsub_plan import PubSubOutput, cached_route_documents, render_pubsub
from .renderers.redis_incremental import render_redis_cached
from .renderers.redis_rules import RedisOutput, RuleSet, render_redis
from .status import ResourceStatus, own_copy
from .translation import TranslateResult, translate
from .translation.summaries import (
    AsyncRouteOutputs,
    add_output_summaries,
    add_product_outputs,
    add_route_outputs,
)

SECTIONS: tuple[str, ...] = ("envoy", "redis", "pubsub", "kubernetes", "status")


class _ByKey:
    """Documents by (kind, namespace/name), built on first use: most passes never need it."""

    __slots__ = ("_documents", "_map")

    def __init__(
        self, documents: Iterable[Mapping[str, Any]], keyed: Mapping[Key, Mapping[str, Any]] | None = None
    ) -> None:
        self._documents = documents
        self._map: Mapping[Key, Mapping[str, Any]] | None = keyed

    def _built(self) -> Mapping[Key, Mapping[str, Any]]:
        if self._map is None:
            self._map = {document_key(d): d for d in self._documents}
        return self._map

    def get(self, key: Key) -> Mapping[str, Any] | None:
        return self._built().get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._built()

    def __getitem__(self, key: Key) -> Mapping[str, Any]:
        return self._built()[key]


def _max_rounds(documents: tuple[Mapping[str, Any], ...]) -> int:
    """Each object fails at most twice (its spec, then its last good body), one or more per round."""
    return 2 * len(documents) + 2


@dataclass(slots=True)
class Compiled:
    """Everything derived from one set of objects."""

    result: TranslateResult
    ir: IR
    envoy: EnvoyOutput
    redis: RedisOutput
    pubsub: PubSubOutput
    kubernetes: KubernetesOutput
    # Products and Routes not rendered from their own spec, with their Stalled status.
    failures: dict[Key, ResourceStatus] = field(default_factory=dict)

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


@dataclass(slots=True)
class FirstStage:
    """Translation plus the Redis rules: what the operator applies first, before the rest renders.

    Rate-limit rules are what a limit change is waiting for, so the operator
    publishes them before spending time on Envoy and Kubernetes output. The
    stage keeps its inputs so a failure found while rendering the rest can be
    handled by translating again with the failing object substituted.
    """

    result: TranslateResult
    redis: RedisOutput
    documents: tuple[Mapping[str, Any], ...] = ()
    canary_states: Mapping[str, CanaryStatus] | None = None
    fallback: Fallback = field(default_factory=Fallback)
    caches: Caches | None = None


def first_stage(
    resources: Iterable[Mapping[str, Any]],
    canary_states: Mapping[str, CanaryStatus] | None = None,
    last_good: Mapping[Key, Mapping[str, Any]] | None = None,
    known_failures: Mapping[Key, ResourceStatus] | None = None,
    caches: Caches | None = None,
    keyed: Mapping[Key, Mapping[str, Any]] | None = None,
) -> FirstStage:
    """Translate and render the Redis rules, serving last good bodies for failing specs.

    ``known_failures`` (the operator's memory of specs that failed a later
    stage in an earlier pass) are substituted up front, so Redis never sees
    them even for the moment before the later stage fails again.
    ``caches`` (the operator's, ``apx.controllers.memo``) makes unchanged
    objects cheap in every stage; the output is the same without.
    ``keyed``: the Products and Routes among ``resources`` by key, when the
    caller keeps them so (the operator's store): with thousands of objects,
    computing every document's key again was a sizeable part of a pass.
    """
    with collector_paused():
        documents = tuple(resources)
        fallback = Fallback(last_good=last_good or {}, keyed=keyed)
        current = _ByKey(documents, keyed)
        for key, status in (known_failures or {}).items():
            if key in current:
                fallback.record(key, dataclasses.replace(status, summary=dict(status.summary)), current[key])
        result = _translate_again(documents, canary_states, fallback, caches)
        changed = False
        # Only a stalled Product or Route can be served from its last good body: translation
        # names those when it kept them (its delta path), else every status is looked at.
        # Keys without a last good body are dropped first, in C: most stalled objects never rendered.
        stalled = result.stalled_keys
        candidates = filter(
            fallback.last_good.__contains__, list(result.statuses) if stalled is None else stalled
        )
        for key in candidates:
            status = result.statuses[key]
            if (
                key[0] in ("Product", "Route")
                and status.stalled
                and key not in fallback.failures
                and fallback.can_substitute(key, current.get(key))
            ):
                fallback.record(key, status, current.get(key))
                changed = True
        if changed:
            result = _translate_again(documents, canary_states, fallback, caches)
        return _settle_redis(documents, canary_states, fallback, result, caches)


def _translate_again(
    documents: tuple[Mapping[str, Any], ...],
    canary_states: Mapping[str, CanaryStatus] | None,
    fallback: Fallback,
    caches: Caches | None = None,
) -> TranslateResult:
    result = translate(fallback.substituted(documents), canary_states, caches)
    for key, failure in fallback.failures.items():
        served = result.statuses.get(key)
        if served is not None and key not in fallback.left_out:
            # Stalled, but the summaries (topics, weights) are those of what is served.
            failure = dataclasses.replace(failure, summary=dict(served.summary))
        result.statuses[key] = failure
    return result


def _settle_redis(
    documents: tuple[Mapping[str, Any], ...],
    canary_states: Mapping[str, CanaryStatus] | None,
    fallback: Fallback,
    result: TranslateResult | None,
    caches: Caches | None = None,
) -> FirstStage:
    current = _ByKey(documents, fallback.keyed)
    for _ in range(_max_rounds(documents)):
        if result is None:
            result = _translate_again(documents, canary_states, fallback, caches)
        try:
            redis = render_redis_cached(result.ir, caches) if caches is not None else render_redis(result.ir)
        except (ValueError, KeyError, TypeError):
            failures = redis_failures(result.ir)
            if not failures:
                raise
            for key, message in failures.items():
                status = render_failure(key[0], key[1], result.statuses[key].generation, message)
                fallback.record(key, status, current.get(key))
            result = None
            continue
        return FirstStage(result, redis, documents, canary_states, fallback, caches)
    raise RuntimeError("Redis rules did not settle")  # pragma: no cover - see _max_rounds


def compile_resources(
    resources: Iterable[Mapping[str, Any]],
    canary_states: Mapping[str, CanaryStatus] | None = None,
    *,
    project: str = "apx-local",
    operator_namespace: str = "apx-system",
    envoy_port: int = 8080,
    caches: Caches | None = None,
) -> Compiled:
    """Translate and render everything; statuses carry the summaries users look for."""
    return finish(
        first_stage(resources, canary_states, caches=caches),
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
    snapshot_configmaps: bool = True,
) -> Compiled:
    """Render everything else from the first stage.

    A route Envoy cannot render (or whose worker manifests collide with
    another's) is rendered from its last good body, or left out of every
    output; the Redis rules are then rendered again (``compiled.redis`` is
    not ``stage.redis``), and the operator applies them again.

    ``keep_envoy_resources=False`` (the operator) drops the Envoy messages once
    the snapshot ConfigMap carries them packed: the result keeps the version
    and errors, and the pass never holds the messages and the other outputs
    at the same time (on 1,000 Routes the messages are ~10 MiB).

    ``snapshot_configmaps=False`` (the operator) leaves the Envoy snapshot
    ConfigMaps out of the Kubernetes output: the operator writes them after
    the xDS push and at most every few seconds (``snapshot_configmap_seconds``),
    because at 10,000 Routes rendering them costs more than everything else a
    one-Route change does.
    """
    with collector_paused():
        return _finish(
            stage, project, operator_namespace, envoy_port, keep_envoy_resources, snapshot_configmaps
        )


@functools.lru_cache(maxsize=8)
def _envoy_settings(operator_namespace: str) -> EnvoySettings:
    """Envoy reaches the rate-limit service and the async gateway of its own operator's namespace.

    The chart runs them beside the operator (Services ``apx-ratelimit`` and ``apx-gateway`` in the
    release namespace), so a second release in its own namespace has its own (README, "Outgrowing
    one operator"). ``apx-system`` gives the renderer's defaults.
    """
    return dataclasses.replace(
        EnvoySettings(),
        ratelimit_host=f"{names.RATE_LIMIT_CLUSTER}.{operator_namespace}.svc.cluster.local",
        gateway_host=f"{names.ASYNC_GATEWAY_CLUSTER}.{operator_namespace}.svc.cluster.local",
    )


def _manifest_blame(stage: FirstStage, conflict: ManifestConflict) -> str | None:
    """Which of two colliding Routes gives way: one whose spec changed since it rendered, else the later."""
    sources = sorted(conflict.sources)
    if not sources:
        return None
    current = _ByKey(stage.documents)
    # A Route that never rendered, or whose spec changed since, is the newcomer.
    changed = [
        s
        for s in sources
        if ("Route", s) not in stage.fallback.last_good
        or stage.fallback.can_substitute(("Route", s), current.get(("Route", s)))
    ]
    return (changed or sources)[-1]


def _finish(
    stage: FirstStage,
    project: str,
    operator_namespace: str,
    envoy_port: int,
    keep_envoy_resources: bool,
    snapshot_configmaps: bool = True,
) -> Compiled:
    current = _ByKey(stage.documents)
    for _ in range(_max_rounds(stage.documents)):
        result = stage.result
        envoy = render_envoy(
            result.ir, port=envoy_port, settings=_envoy_settings(operator_namespace), caches=stage.caches
        )
        failures: dict[Key, str] = {("Route", key): message for key, message in envoy.errors.items()}
        kubernetes: KubernetesOutput | None = None
        if not failures:
            # Only the snapshot ConfigMaps need the snapshot document (its counts read every
            # Route of the RouteConfiguration message, which the cached renders parse only then).
            snapshot = envoy.snapshot_document() if snapshot_configmaps else None
            try:
                if stage.caches is not None and not snapshot_configmaps:
                    kubernetes = render_kubernetes_cached(result.ir, operator_namespace, stage.caches)
                else:
                    kubernetes = render_kubernetes(result.ir, snapshot, operator_namespace, stage.caches)
            except ManifestConflict as exc:
                blamed = _manifest_blame(stage, exc)
                if blamed is None:
                    raise
                failures[("Route", blamed)] = f"spec: worker manifests collide: {exc}"
        if failures:
            for key, message in failures.items():
                status = render_failure(key[0], key[1], result.statuses[key].generation, message)
                stage.fallback.record(key, status, current.get(key))
            stage = _settle_redis(stage.documents, stage.canary_states, stage.fallback, None, stage.caches)
            continue
        assert kubernetes is not None
        return _summarised(stage, envoy, kubernetes, project, keep_envoy_resources)
    raise RuntimeError("rendering did not settle")  # pragma: no cover - see _max_rounds


def _deployments(route: RouteIR, caches: Caches | None) -> list[str]:
    if caches is None:
        return deployments_for_route(route)
    deployments, _ = caches.kubernetes_routes.get(route, lambda: route_manifests(route))
    return [str(manifest["metadata"]["name"]) for manifest in deployments]


def _summarised(
    stage: FirstStage,
    envoy: EnvoyOutput,
    kubernetes: KubernetesOutput,
    project: str,
    keep_envoy_resources: bool,
) -> Compiled:
    result = stage.result
    ir = result.ir
    redis = stage.redis
    if not keep_envoy_resources:
        envoy = dataclasses.replace(envoy, listeners=[], route_configurations=[], clusters=[])
    if stage.caches is not None:
        pubsub = render_pubsub_cached(ir, project, stage.caches)
    else:
        pubsub = render_pubsub(ir, project=project)

    if stage.caches is not None:
        _summaries_cached(result.statuses, ir, redis, project, stage.caches)
    else:
        # What the summaries say is decided in ``translation.summaries``; this stage only supplies names.
        versions = {rule_set.product: rule_set.version for rule_set in redis.rule_sets}
        outputs: dict[str, tuple[RouteIR, str, AsyncRouteOutputs]] = {}
        add_output_summaries(
            result.statuses,
            ir,
            versions.__getitem__,
            lambda route: _async_outputs(route, project, None, outputs, outputs),
        )
    return Compiled(
        result=result,
        ir=ir,
        envoy=envoy,
        redis=redis,
        pubsub=pubsub,
        kubernetes=kubernetes,
        failures=dict(stage.fallback.failures),
    )


def _async_outputs(
    route: RouteIR,
    project: str,
    caches: Caches | None,
    kept: dict[str, tuple[RouteIR, str, AsyncRouteOutputs]],
    used: dict[str, tuple[RouteIR, str, AsyncRouteOutputs]],
) -> AsyncRouteOutputs:
    """An async Route's topics, subscriptions and Deployments; ``kept``'s while the RouteIR is the same."""
    entry = kept.get(route.key)
    if entry is not None and entry[0] is route and entry[1] == project:
        outputs = entry[2]
    else:
        # The costliest part of a Route's summary: reuse what the renderers built.
        plans = cached_route_documents(route, project, caches)[0]
        outputs = AsyncRouteOutputs(
            topics=[plan.topic for plan in plans],
            subscriptions=[plan.subscription for plan in plans],
            deployments=_deployments(route, caches),
        )
    used[route.key] = (route, project, outputs)
    # Copies: each pass's statuses own their lists.
    return AsyncRouteOutputs(list(outputs.topics), list(outputs.subscriptions), list(outputs.deployments))


_SUMMARIES = "summaries"


@dataclass(slots=True)
class _Summarised:
    """What ``_summaries_cached`` made last pass, for the next pass's delta.

    ``keys`` are the status keys the output summaries go to (every Product's,
    then every async Route's); ``bases`` the statuses translation gave for
    them and ``statuses`` what this stage made of them, position by position.
    """

    project: str
    routes: tuple[RouteIR, ...]
    products: tuple[ProductIR, ...]
    rule_sets: tuple[RuleSet, ...]
    keys: list[Key]
    position: dict[Key, int]
    route_index: dict[str, int]  # Route key → its position in ``routes``
    rule_index: dict[str, int]  # Product key → the position of its rule set in ``rule_sets``
    bases: list[ResourceStatus]
    statuses: list[ResourceStatus]
    outputs: dict[str, tuple[RouteIR, str, AsyncRouteOutputs]]  # by Route key, see ``_async_outputs``


def _summaries_cached(
    statuses: dict[Key, ResourceStatus], ir: IR, redis: RedisOutput, project: str, caches: Caches
) -> None:
    """``add_output_summaries`` with the operator's caches, on copies of translation's statuses.

    Translation's statuses are kept by its delta path (``translation.incremental``)
    for the next pass, so the summaries go to copies. A summarised status equal
    to last pass's is replaced by last pass's very object: the operator looks
    again only at statuses that are new objects, and without this thousands of
    them would be new after a one-Route edit.
    """
    state = caches.assembled.get(_SUMMARIES)
    if isinstance(state, _Summarised) and _summaries_delta(state, statuses, ir, redis, project, caches):
        return
    kept = state.outputs if isinstance(state, _Summarised) else {}
    before = dict(zip(state.keys, state.statuses, strict=True)) if isinstance(state, _Summarised) else {}
    keys: list[Key] = [("Product", product.key) for product in ir.products]
    keys += [("Route", route.key) for route in ir.routes if route.mode == "async"]
    bases = [statuses[key] for key in keys]
    for key, base in zip(keys, bases, strict=True):
        statuses[key] = own_copy(base)
    used: dict[str, tuple[RouteIR, str, AsyncRouteOutputs]] = {}
    versions = {rule_set.product: rule_set.version for rule_set in redis.rule_sets}
    add_output_summaries(
        statuses, ir, versions.__getitem__, lambda route: _async_outputs(route, project, caches, kept, used)
    )
    summarised: list[ResourceStatus] = []
    for key in keys:
        status = statuses[key]
        old = before.get(key)
        if old is not None and old == status:
            statuses[key] = status = old
        summarised.append(status)
    caches.assembled[_SUMMARIES] = _Summarised(
        project,
        ir.routes,
        ir.products,
        redis.rule_sets,
        keys,
        {key: index for index, key in enumerate(keys)},
        {route.key: index for index, route in enumerate(ir.routes)},
        {rule_set.product: index for index, rule_set in enumerate(redis.rule_sets)},
        bases,
        summarised,
        used,
    )


def _summaries_delta(
    state: _Summarised,
    statuses: dict[Key, ResourceStatus],
    ir: IR,
    redis: RedisOutput,
    project: str,
    caches: Caches,
) -> bool:
    """Last pass's summarised statuses, made again only where an input changed; ``False``: not applicable.

    A Product's output summary is made from its status, its rule set's
    version and its Routes (their count, the async ones' topics); an async
    Route's from its status and its RouteIR (with the project). While the
    Products are the same objects and only a few Routes are other objects
    (``delta.route_changes``, none switching mode, so the keys are last
    pass's), every status whose inputs are the very objects of last pass
    summarises to an equal status, which is last pass's object; only the
    others are made again. Finding them compares identities in C: the
    changed Routes (and their Products), the rule sets that are other
    objects, the statuses translation gave that are other objects.
    """
    if state.project != project or not same(state.products, ir.products):
        return False
    changes = route_changes(state.routes, ir.routes)
    rule_sets = redis.rule_sets
    if changes is None or len(rule_sets) != len(state.rule_sets):
        return False
    stale: set[Key] = set()
    for before, after in changes:
        if before.mode != after.mode:
            return False  # the keys would change
        if after.mode == "async":
            stale.add(("Route", after.key))
        stale.update((("Product", before.product.key), ("Product", after.product.key)))
    for index in compress(range(len(rule_sets)), map(operator.is_not, rule_sets, state.rule_sets)):
        stale.update((("Product", rule_sets[index].product), ("Product", state.rule_sets[index].product)))
    try:
        bases = list(map(statuses.__getitem__, state.keys))
    except KeyError:
        return False
    stale.update(compress(state.keys, map(operator.is_not, bases, state.bases)))
    summarised = list(state.statuses)
    outputs = state.outputs  # entries are checked by RouteIR identity on use: updated in place
    for key in sorted(stale):
        found = state.position.get(key)
        if found is None:
            return False
        index = found
        status = own_copy(bases[index])
        if key[0] == "Route":
            route = ir.routes[state.route_index[key[1]]]
            add_route_outputs(status.summary, _async_outputs(route, project, caches, outputs, outputs))
        else:
            rule_index = state.rule_index.get(key[1])
            if rule_index is None or rule_sets[rule_index].product != key[1]:
                return False
            routes = ir.routes_by_product.get(key[1], ())
            topics = [
                topic
                for route in routes
                if route.mode == "async"
                for topic in _async_outputs(route, project, caches, outputs, outputs).topics
            ]
            add_product_outputs(status.summary, rule_sets[rule_index].version, topics, len(routes))
        old = state.statuses[index]
        summarised[index] = old if old == status else status
    statuses.update(zip(state.keys, summarised, strict=True))
    state.routes, state.rule_sets, state.bases, state.statuses = ir.routes, rule_sets, bases, summarised
    return True
