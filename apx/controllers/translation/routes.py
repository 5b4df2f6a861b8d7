"""Step 4 of translation: Routes → ``RouteIR`` with references resolved, conflicts settled, and status.

Called by ``apx.controllers.translation.translate`` last, once the Products'
IR and the PolicyBundles' served versions are in the context. A Route
resolves ``productRef`` and ``policyRef`` (and a canary's policy version),
takes its canary progress from the canary controller's override or its own
status, and claims its match; a later Route with the very same match loses
(``MatchConflict``, older wins). A Route that waits for another object is
Reconciling, one that must change itself is Stalled; either way it is left
out of the IR and every other Route still translates. Pure.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast
from urllib.parse import urlsplit

from .. import names
from ..ir import (
    AsyncIR,
    BackendIR,
    CanaryIR,
    HeaderMatchIR,
    MatchIR,
    PolicyIR,
    ProductIR,
    RetriesIR,
    RouteIR,
    TrackIR,
    WorkerIR,
)
from ..memo import same
from ..models.common import duration_ms
from ..models.resources import Route
from ..models.route import Backend, Canary, CanaryStatus, HeaderMatch, RouteSpec, Worker
from ..policy_artifacts import canonical_json
from ..status import ResourceStatus, ready, stalled, waiting
from .context import TranslationContext, object_ref
from .facts import RouteFacts, created
from .parse import parse_document
from .summaries import count_routes, route_message, route_summary, served_versions_text

# Reasons a Route waits for another object rather than for a change of its own.
WAITING_REASONS = frozenset(
    {"ProductNotFound", "ProductNotReady", "PolicyNotFound", "PolicyNotReady", "PolicyVersionNotServed"}
)

# A translated Route: its IR, and its Ready message and summary.
RouteResult = tuple[RouteIR, str, dict[str, Any]]


class RouteError(Exception):
    """Why a Route cannot translate: a status reason and the message naming the field."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def process_routes(ctx: TranslationContext) -> None:
    """Translate every Route into ``ctx`` in creation order; conflicts on the same match go to the oldest."""
    claimed = ctx.claimed
    for route in sorted(ctx.routes.values(), key=lambda facts: facts.order):
        key = route.key
        generation = ctx.generation("Route", key)
        try:
            built, message, summary = route_ir_cached(ctx, route, ctx.canary_states.get(key))
        except RouteError as exc:
            ctx.statuses[("Route", key)] = error_status(key, generation, exc)
            continue
        match_keys = route.match_keys
        conflict = next((claimed[k] for k in match_keys if k in claimed), None)
        if conflict is not None:
            ctx.conflicts += 1
            ctx.statuses[("Route", key)] = stalled(
                "Route",
                key,
                generation,
                "MatchConflict",
                f"spec.match: the same hosts/path/methods/headers are already served by Route {conflict} "
                "(older wins)",
            )
            continue
        for match_key in match_keys:
            claimed[match_key] = key
        ctx.route_irs.append(built)
        # A copy: later stages add to the summary, and the cached one must stay as built.
        ctx.statuses[("Route", key)] = ready("Route", key, generation, message, dict(summary))

    ctx.route_irs.sort(key=lambda r: r.key)
    for translated in ctx.route_irs:
        ctx.routes_by_product.setdefault(translated.product.key, []).append(translated)
    count_routes(ctx.statuses, ctx.product_irs, ctx.routes_by_product)


def error_status(key: str, generation: int, exc: RouteError) -> ResourceStatus:
    """The status of a Route that did not translate."""
    # kstatus: Stalled only when this Route itself must change; a
    # reference that may still appear (or become ready) is waited for.
    build = waiting if exc.reason in WAITING_REASONS else stalled
    return build("Route", key, generation, exc.reason, exc.message)


def route_ir_cached(
    ctx: TranslationContext, route: RouteFacts, canary_override: CanaryStatus | None
) -> RouteResult:
    """``route_ir`` plus the Route's Ready message and summary, reused when nothing they read changed.

    A Route's IR reads its own body (its facts object stands for it), its Product's IR, the IRs of the
    policy versions it names and the canary override; the cache entry keeps
    those objects and is reused only when each is the very same object (the
    override is compared by value: the canary controller builds it afresh).
    Errors are not cached: they are rare and their messages quote other
    objects' statuses.
    """
    caches = ctx.caches
    bundle = ctx.policy_irs.get(route.bundle_key) or {}
    canary_version = route.canary_policy_version
    deps = (
        route,
        ctx.product_irs.get(route.product_key),
        bundle.get(route.policy_version),
        bundle.get(canary_version) if canary_version is not None else None,
    )
    if caches is not None:
        cached = caches.routes.get(route.key)
        if cached is not None and same(cached[0], deps) and cached[1] == canary_override:
            return cast(RouteResult, cached[2])
    # Parsed again only now, when it must be translated again (new body, or a reference changed).
    model = ctx.route_models.get(route.key) or cast(Route, parse_document("Route", route.raw))
    built = route_ir(ctx, model, canary_override)
    result = (built, route_message(built), route_summary(built))
    if caches is not None:
        caches.routes.put(route.key, (deps, canary_override, result))
    return result


def route_ir(ctx: TranslationContext, route: Route, canary_override: CanaryStatus | None) -> RouteIR:
    """One Route's IR; raises ``RouteError`` when a reference does not resolve."""
    spec = route.spec
    namespace = route.metadata.namespace
    product = _product(ctx, namespace, spec.product_ref.name)
    stable_policy = _served_policy(
        ctx, "spec.policyRef.version", namespace, spec.policy_ref.name, spec.policy_ref.version
    )
    stable_backend = _backend_ir(namespace, spec.backend)
    canary_state: CanaryIR | None = None
    canary_track: TrackIR | None = None
    if spec.canary is not None:
        canary_state, canary_track = _canary(
            ctx, route, spec.canary, stable_policy, stable_backend, canary_override
        )
    return RouteIR(
        ref=object_ref("Route", route.metadata),
        product=product,
        mode=spec.mode,
        match=_match_ir(spec),
        timeout_ms=duration_ms(spec.timeout),
        retries=_retries_ir(spec),
        delivery=_delivery_ir(spec),
        stable=TrackIR(
            name="stable",
            weight=100 - canary_track.weight if canary_track is not None else 100,
            backend=stable_backend,
            policy=stable_policy,
            worker=_worker_ir(spec.worker),
        ),
        canary=canary_track,
        canary_state=canary_state,
        deletion_policy=spec.deletion_policy,
        created=_created(route),
    )


# --- references ------------------------------------------------------------------------


def _product(ctx: TranslationContext, namespace: str, name: str) -> ProductIR:
    product_key = f"{namespace}/{name}"
    product = ctx.product_irs.get(product_key)
    if product is not None:
        return product
    if ("Product", product_key) in ctx.statuses:
        message = ctx.statuses[("Product", product_key)].message
        raise RouteError("ProductNotReady", f"spec.productRef.name: Product {name!r} is not ready: {message}")
    raise RouteError(
        "ProductNotFound", f"spec.productRef.name: Product {name!r} not found in namespace {namespace!r}"
    )


def _served_policy(
    ctx: TranslationContext, field_path: str, namespace: str, name: str, version: str
) -> PolicyIR:
    bundle_key = f"{namespace}/{name}"
    served = ctx.served_by_bundle.get(bundle_key)
    if served is None:
        if ("PolicyBundle", bundle_key) in ctx.statuses:
            bundle_status = ctx.statuses[("PolicyBundle", bundle_key)]
            raise RouteError(
                "PolicyNotReady",
                f"spec.policyRef.name: PolicyBundle {name!r} is not ready: {bundle_status.message}",
            )
        raise RouteError(
            "PolicyNotFound",
            f"spec.policyRef.name: PolicyBundle {name!r} not found in namespace {namespace!r}",
        )
    policy = ctx.policy_irs[bundle_key].get(version)
    if policy is None:
        raise RouteError(
            "PolicyVersionNotServed",
            f"{field_path}: version {version} of PolicyBundle {name!r} is not served "
            f"(served: {served_versions_text(served)})",
        )
    return policy


# --- canary ----------------------------------------------------------------------------


def canary_revision(canary: Canary) -> str:
    """Hash of a canary block; progress recorded for another revision does not apply."""
    dumped = canary.model_dump(by_alias=True, mode="json")
    return hashlib.sha256(canonical_json(dumped).encode()).hexdigest()[:12]


def _canary(
    ctx: TranslationContext,
    route: Route,
    canary: Canary,
    stable_policy: PolicyIR,
    stable_backend: BackendIR,
    canary_override: CanaryStatus | None,
) -> tuple[CanaryIR, TrackIR]:
    """The canary's progress and its track; the stable track gets the rest of the weight."""
    spec = route.spec
    namespace = route.metadata.namespace
    canary_policy = stable_policy
    if canary.policy_version is not None:
        canary_policy = _served_policy(
            ctx, "spec.canary.policyVersion", namespace, spec.policy_ref.name, canary.policy_version
        )
    revision = canary_revision(canary)
    state = canary_override or (route.status.canary if route.status else None)
    if state is None or (state.revision is not None and state.revision != revision):
        # Progress of another canary block (or none yet): this one starts over.
        state = CanaryStatus(phase="Pending", revision=revision, step=0, weight=0)
    weight = {"Promoted": 100, "RolledBack": 0}.get(state.phase, state.weight)
    canary_ir = CanaryIR(
        revision=revision,
        steps=tuple(canary.steps),
        interval_ms=duration_ms(canary.interval),
        analysis=canary.analysis,
        sticky_by_tenant=canary.stickiness.by == "tenant",
        phase=state.phase,
        step=state.step,
        weight=weight,
    )
    canary_worker = None
    if spec.worker is not None:
        canary_worker = _worker_ir(
            spec.worker,
            image=canary.worker.image if canary.worker else None,
            replicas=canary.worker.replicas if canary.worker else None,
        )
    track = TrackIR(
        name="canary",
        weight=weight,
        backend=_backend_ir(namespace, canary.backend) if canary.backend else stable_backend,
        policy=canary_policy,
        worker=canary_worker,
    )
    return canary_ir, track


# --- plain values -----------------------------------------------------------------------


def _backend_ir(namespace: str, backend: Backend) -> BackendIR:
    if backend.service is not None:
        host = f"{backend.service.name}.{namespace}.svc.cluster.local"
        port = backend.service.port
        return BackendIR(
            cluster=names.service_cluster(namespace, backend.service.name, port),
            kind="service",
            host=host,
            port=port,
            tls=False,
            path_prefix="",
        )
    assert backend.url is not None
    parts = urlsplit(backend.url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    return BackendIR(
        cluster=names.url_cluster(parts.scheme, host, port),
        kind="url",
        host=host,
        port=port,
        tls=tls,
        path_prefix=parts.path.rstrip("/"),
    )


def _worker_ir(
    worker: Worker | None, image: str | None = None, replicas: int | None = None
) -> WorkerIR | None:
    if worker is None:
        return None
    requests = worker.resources.requests.model_dump(exclude_none=True)
    limits = worker.resources.limits.model_dump(exclude_none=True)
    return WorkerIR(
        image=image or worker.image,
        replicas=worker.replicas if replicas is None else replicas,
        requests=tuple(sorted(requests.items())),
        limits=tuple(sorted(limits.items())),
        max_outstanding_messages=worker.max_outstanding_messages,
    )


def _match_ir(spec: RouteSpec) -> MatchIR:
    match = spec.match
    return MatchIR(
        hosts=tuple(match.hosts),
        path=match.path,
        path_prefix=match.effective_path_prefix,
        methods=tuple(match.methods),
        headers=tuple(_header_match_ir(h) for h in match.headers),
    )


def _header_match_ir(header: HeaderMatch) -> HeaderMatchIR:
    if header.exact is not None:
        kind = "exact"
    elif header.prefix is not None:
        kind = "prefix"
    elif header.regex is not None:
        kind = "regex"
    else:
        kind = "present"
    return HeaderMatchIR(
        name=header.name.lower(),
        kind=kind,
        value=header.exact or header.prefix or header.regex or "",
        present=bool(header.present) if header.present is not None else True,
    )


def _retries_ir(spec: RouteSpec) -> RetriesIR:
    retries = spec.retries
    return RetriesIR(
        attempts=retries.attempts,
        per_try_timeout_ms=duration_ms(retries.per_try_timeout) if retries.per_try_timeout else None,
        retry_on=tuple(retries.retry_on),
        retriable_status_codes=tuple(retries.retriable_status_codes),
        base_interval_ms=duration_ms(retries.backoff.base_interval),
        max_interval_ms=duration_ms(retries.backoff.max_interval),
    )


def _delivery_ir(spec: RouteSpec) -> AsyncIR:
    delivery = spec.async_
    return AsyncIR(
        max_delivery_attempts=delivery.max_delivery_attempts,
        minimum_backoff_ms=duration_ms(delivery.minimum_backoff),
        maximum_backoff_ms=duration_ms(delivery.maximum_backoff),
        ack_deadline_seconds=delivery.ack_deadline_seconds,
        ordering=delivery.ordering,
        backlog_limit=delivery.backlog_limit,
        result_ttl_ms=duration_ms(delivery.result_ttl),
        message_retention_ms=duration_ms(delivery.message_retention),
    )


# --- conflicts and order ----------------------------------------------------------------


def _created(route: Route) -> str:
    return created(route)
