"""Translate raw APX objects into the IR and the status each object would get.

The entry point of the pure core: called by the operator's handlers and by
``apx translate``. It parses raw Kubernetes objects into the models, compiles
PolicyBundle versions, resolves references (Route → Product, Route →
PolicyBundle@version), checks rules that span resources, and produces one
frozen ``IR`` plus a ``ResourceStatus`` per source object.

An error in one object never stops the others: a bad Route is reported as
Stalled and left out of the IR; every other Route still translates. Inputs
that change over time (the canary controller's weight) come in as arguments
or from the objects' status; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import semver
from pydantic import ValidationError

from . import names
from .gcpause import collector_paused
from .ir import (
    IR,
    AsyncIR,
    BackendIR,
    CanaryIR,
    HeaderMatchIR,
    MatchIR,
    ObjectRef,
    PlanIR,
    PolicyIR,
    ProductIR,
    RetriesIR,
    RouteIR,
    TenantIR,
    TrackIR,
    WorkerIR,
)
from .models.common import PATTERN_MESSAGES, duration_ms
from .models.policy import ServedVersion
from .models.product import QUOTA_PERIOD_SECONDS
from .models.resources import RESOURCE_MODELS, PolicyBundle, Product, Route
from .models.route import Backend, Canary, CanaryStatus, RouteSpec, Worker
from .pinned_versions import kept_while_pinned, pins_by_bundle
from .policy_artifacts import CompiledPolicy, ServedPolicies, canonical_json, resolve_history
from .status import ResourceStatus, ready, stalled, waiting

APX_KINDS = frozenset(RESOURCE_MODELS)
# Marks a PolicyBundle document as an earlier apply of the same object (the
# operator passes versions it served before, so they stay N-1).
HISTORY_ANNOTATION = "apx.dev/applied-before"

# Offline objects have no uid; ownerReferences need one. A name-based UUID is
# stable across runs and clearly not a server-assigned one.
_OFFLINE_UID_NAMESPACE = uuid.UUID("6d1c5f0e-7a6b-4f43-9d7e-3a2b1c0d4e5f")


@dataclass(slots=True)
class TranslateResult:
    """The IR, one status per source object, and what was not an APX object."""

    ir: IR
    statuses: dict[tuple[str, str], ResourceStatus]
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stalled(self) -> list[ResourceStatus]:
        return [s for s in self.statuses.values() if s.stalled]


# --- errors ------------------------------------------------------------------

_RELATIVE_FIELD = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_][\w]*(?:\[\d+\])?)*): (.*)$", re.S)


# What each pattern allows, in words: pydantic's "String should match pattern
# '…'" is never shown. Fields declared with ``matching`` register their text in
# ``models.common.PATTERN_MESSAGES`` (the CRD's CEL rules say the same words).


def _pattern_message(pattern: str) -> str:
    known = PATTERN_MESSAGES.get(pattern)
    if known is None:
        # A pattern nobody described: still no regex in front of a user.
        return "has characters or a shape this field does not allow"
    return known


def _join_loc(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or "-" in part or "," in part:
            # pydantic inserts validator/union labels (e.g. "function-after[...]"); not field names.
            continue
        else:
            path += f".{part}" if path else part
    return path


def format_validation_error(exc: ValidationError) -> list[str]:
    """Human messages, each starting with the full field path (``spec.plans[0].rateLimit.burst: …``)."""
    messages: list[str] = []
    for error in exc.errors(include_url=False):
        path = _join_loc(error["loc"])
        message = str(error["msg"])
        kind = error["type"]
        if kind == "value_error":
            message = message.removeprefix("Value error, ")
            relative = _RELATIVE_FIELD.match(message)
            if relative:
                path = f"{path}.{relative.group(1)}" if path else relative.group(1)
                message = relative.group(2)
        elif kind == "string_pattern_mismatch":
            pattern = str((error.get("ctx") or {}).get("pattern", ""))
            message = f"{_shown(error.get('input'))} {_pattern_message(pattern)}"
        elif kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "required field is missing"
        elif isinstance(error.get("input"), str | int | float | bool):
            # Type, enum and bound errors: name the refused value too.
            message = f"{message} (got {_shown(error.get('input'))})"
        messages.append(f"{path}: {message}" if path else message)
    return messages


def _shown(value: Any) -> str:
    """The refused value, quoted and shortened: a message names the value but stays one line."""
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:100]}…' ({len(str(value))} characters)"


# --- helpers -----------------------------------------------------------------


def _generation(obj: Mapping[str, Any]) -> int:
    value = (obj.get("metadata") or {}).get("generation")
    return int(value) if isinstance(value, int) else 1


def _ref(kind: str, meta: Any) -> ObjectRef:
    uid = meta.uid or str(uuid.uuid5(_OFFLINE_UID_NAMESPACE, f"{kind}/{meta.namespace}/{meta.name}"))
    return ObjectRef(kind=kind, namespace=meta.namespace, name=meta.name, uid=uid)


def canary_revision(canary: Canary) -> str:
    """Hash of a canary block; progress recorded for another revision does not apply."""
    dumped = canary.model_dump(by_alias=True, mode="json")
    return hashlib.sha256(canonical_json(dumped).encode()).hexdigest()[:12]


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


def _product_ir(product: Product) -> ProductIR:
    spec = product.spec
    plans: list[PlanIR] = []
    by_name: dict[str, PlanIR] = {}
    for plan in spec.plans:
        plan_ir = PlanIR(
            name=plan.name,
            tier=plan.tier,
            requests_per_second=plan.rate_limit.requests_per_second,
            burst=plan.rate_limit.effective_burst,
            api_key_requests_per_second=plan.api_key_rate_limit.requests_per_second
            if plan.api_key_rate_limit
            else None,
            api_key_burst=plan.api_key_rate_limit.effective_burst if plan.api_key_rate_limit else None,
            quota_requests=plan.quota.requests if plan.quota else None,
            quota_period_seconds=QUOTA_PERIOD_SECONDS[plan.quota.period] if plan.quota else None,
            concurrency=plan.concurrency,
            isolation=plan.isolation,
            credits_cost=plan.credits.cost_per_request if plan.credits else None,
        )
        plans.append(plan_ir)
        by_name[plan.name] = plan_ir
    tenants: list[TenantIR] = []
    for tenant in sorted(spec.tenants, key=lambda t: t.id):
        base = by_name[tenant.plan]
        quota = tenant.quota
        tenants.append(
            TenantIR(
                id=tenant.id,
                plan=tenant.plan,
                tier=base.tier,
                requests_per_second=tenant.rate_limit.requests_per_second
                if tenant.rate_limit
                else base.requests_per_second,
                burst=tenant.rate_limit.effective_burst if tenant.rate_limit else base.burst,
                quota_requests=quota.requests if quota else base.quota_requests,
                quota_period_seconds=QUOTA_PERIOD_SECONDS[quota.period]
                if quota
                else base.quota_period_seconds,
                region=tenant.region,
            )
        )
    return ProductIR(
        ref=_ref("Product", product.metadata),
        residency=spec.residency,
        regions=tuple(spec.regions),
        plans=tuple(plans),
        default_plan=spec.effective_default_plan,
        tenants=tuple(tenants),
        log_sample_rate=spec.observability.log_sample_rate,
        deletion_policy=spec.deletion_policy,
    )


def _policy_ir(bundle: ObjectRef, compiled: CompiledPolicy, current: bool) -> PolicyIR:
    return PolicyIR(
        bundle=bundle,
        version=compiled.version,
        digest=compiled.digest,
        artifact=compiled.artifact,
        compat=compiled.compat,
        spec=compiled.spec,
        current=current,
    )


def _match_key(spec: RouteSpec, host: str) -> tuple[Any, ...]:
    match = spec.match
    headers = tuple(sorted((h.name.lower(), h.exact, h.prefix, h.regex, h.present) for h in match.headers))
    return (host, match.path, match.effective_path_prefix, tuple(sorted(match.methods)), headers)


def _created(route: Route) -> str:
    return str((route.metadata.model_extra or {}).get("creationTimestamp") or "")


def _creation_order(route: Route) -> tuple[str, str]:
    # The same order as ``RouteIR.age_order``: one documented rule for who wins.
    return (_created(route), route.key)


# The only status fields translation reads: a Route's canary state and a
# PolicyBundle's served versions. The rest of a status (conditions, topics,
# deployments, kopf's own fields) is what the operator wrote and is not
# parsed: a malformed one cannot fail translation, and parsing stays cheap.
_STATUS_FIELDS_READ: dict[str, tuple[str, ...]] = {
    "Product": (),
    "Route": ("canary",),
    "PolicyBundle": ("servedVersions",),
}


def _for_translation(kind: str, raw: Mapping[str, Any]) -> Mapping[str, Any]:
    status = raw.get("status")
    if not isinstance(status, Mapping):
        return raw
    read = {key: status[key] for key in _STATUS_FIELDS_READ.get(kind, ()) if key in status}
    return {**raw, "status": read or None}


def _parse(kind: str, raw: Mapping[str, Any]) -> Product | Route | PolicyBundle:
    # Parsed afresh on every call: a memo of models by resourceVersion saved
    # ~35 ms per 1,300-object operator pass but held ~10 MiB of models
    # between passes, which the operator's memory budget cannot spare.
    return RESOURCE_MODELS[kind].model_validate(_for_translation(kind, raw))


# --- translate -----------------------------------------------------------------


def translate(
    resources: Iterable[Mapping[str, Any]],
    canary_states: Mapping[str, CanaryStatus] | None = None,
) -> TranslateResult:
    """Translate raw objects into the IR and the status each would get.

    ``canary_states`` (Route key → progress) overrides what the Routes' own
    status says, so the canary controller can render the next weight with a
    pure call.
    """
    with collector_paused():
        return _translate(resources, canary_states)


def _translate(
    resources: Iterable[Mapping[str, Any]],
    canary_states: Mapping[str, CanaryStatus] | None,
) -> TranslateResult:
    statuses: dict[tuple[str, str], ResourceStatus] = {}
    ignored: list[tuple[str, str]] = []
    products: dict[str, Product] = {}
    routes: dict[str, Route] = {}
    bundle_applies: dict[str, list[PolicyBundle]] = {}
    generations: dict[tuple[str, str], int] = {}

    # 1. Parse. A later document of the same Product/Route replaces an earlier
    #    one (like a second apply); PolicyBundle documents accumulate as history.
    for raw in resources:
        kind = str(raw.get("kind", ""))
        meta = raw.get("metadata") or {}
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"
        if kind not in APX_KINDS:
            ignored.append((kind, key))
            continue
        generation = _generation(raw)
        is_history = (meta.get("annotations") or {}).get(HISTORY_ANNOTATION) == "true"
        if not is_history or (kind, key) not in generations:
            generations[(kind, key)] = generation
        try:
            parsed = _parse(kind, raw)
        except ValidationError as exc:
            messages = format_validation_error(exc)
            statuses[(kind, key)] = stalled(kind, key, generation, "InvalidSpec", "; ".join(messages))
            if kind == "Product":
                products.pop(key, None)
            elif kind == "Route":
                routes.pop(key, None)
            else:
                bundle_applies.pop(key, None)
            continue
        statuses.pop((kind, key), None)
        if isinstance(parsed, Product):
            products[key] = parsed
        elif isinstance(parsed, Route):
            routes[key] = parsed
        else:
            bundle_applies.setdefault(key, []).append(parsed)

    # 2. PolicyBundles: compile every served version, check the history.
    served_by_bundle: dict[str, ServedPolicies] = {}
    policy_irs: dict[str, dict[str, PolicyIR]] = {}
    pins = pins_by_bundle(routes.values())
    for key, applies in sorted(bundle_applies.items()):
        # Documents marked as earlier applies (the operator's memory of versions
        # it served) come first; the rest are ordered by version, so several
        # documents of one bundle given offline read as successive applies.
        earlier = [b for b in applies if b.metadata.annotations.get(HISTORY_ANNOTATION) == "true"]
        current = [b for b in applies if b.metadata.annotations.get(HISTORY_ANNOTATION) != "true"] or earlier[
            -1:
        ]
        earlier.sort(key=lambda b: semver.Version.parse(b.spec.version))
        current.sort(key=lambda b: semver.Version.parse(b.spec.version))
        applies = [b for b in earlier if b not in current] + current
        latest = applies[-1]
        generation = generations[("PolicyBundle", key)]
        served_status: list[ServedVersion] = latest.status.served_versions if latest.status else []
        # Remembered applies older than what the status serves are kept only for
        # Routes that pin them (below); replaying them would read as a downgrade.
        floor = min((semver.Version.parse(v.version) for v in served_status[:2]), default=None)
        replayed = [
            b.spec
            for b in applies
            if b in current or floor is None or semver.Version.parse(b.spec.version) >= floor
        ]
        history = resolve_history(latest.metadata.name, replayed, served_status)
        served = history.served
        if served is None:
            message = str(history.error) if history.error else "spec: no version to serve"
            statuses[("PolicyBundle", key)] = stalled(
                "PolicyBundle", key, generation, "InvalidVersion", message
            )
            continue
        served_by_bundle[key] = served
        ref = _ref("PolicyBundle", latest.metadata)
        policy_irs[key] = {
            compiled.version: _policy_ir(ref, compiled, compiled is served.current)
            for compiled in served.versions
        }
        versions = ", ".join(
            f"{c.version} ({'N' if c is served.current else 'N-1'})" for c in served.versions
        )
        served_versions: list[dict[str, Any]] = [
            c.served_version().model_dump(by_alias=True, exclude_none=True) for c in served.versions
        ]
        # Versions older than N-1 stay served while Routes pin them (``pinned_versions``).
        kept = kept_while_pinned(
            latest.metadata.name, served, [b.spec for b in applies], served_status, pins.get(key, {})
        )
        for compiled, pinned_by in kept:
            policy_irs[key][compiled.version] = _policy_ir(ref, compiled, False)
            entry = compiled.served_version().model_dump(by_alias=True, exclude_none=True)
            served_versions.append({**entry, "pinnedBy": pinned_by})
        summary = {"artifact": served.current.artifact, "servedVersions": served_versions}
        if kept:
            versions += "; " + "; ".join(
                f"{c.version} kept only while pinned by Route {', '.join(r)}" for c, r in kept
            )
        if history.error is not None:
            # The rejected apply is reported; what was served before keeps serving.
            statuses[("PolicyBundle", key)] = stalled(
                "PolicyBundle",
                key,
                generation,
                "InvalidVersion",
                f"{history.error}; still serving {versions}",
                summary,
            )
        elif kept:
            statuses[("PolicyBundle", key)] = ResourceStatus(
                "PolicyBundle", key, generation, "Ready", "VersionsPinned", f"serving {versions}", summary
            )
        else:
            statuses[("PolicyBundle", key)] = ready(
                "PolicyBundle", key, generation, f"serving {versions}", summary
            )

    # 3. Products.
    product_irs: dict[str, ProductIR] = {}
    for key, product in sorted(products.items()):
        product_irs[key] = _product_ir(product)
        statuses[("Product", key)] = ready(
            "Product",
            key,
            generations[("Product", key)],
            "rules and topics are up to date",
            {"plans": [p.name for p in product.spec.plans]},
        )

    # 4. Routes: resolve references; conflicts on the same match go to the oldest Route.
    route_irs: list[RouteIR] = []
    claimed: dict[tuple[Any, ...], str] = {}
    for route in sorted(routes.values(), key=_creation_order):
        key = route.key
        generation = generations[("Route", key)]
        try:
            route_ir = _route_ir(
                route,
                products,
                product_irs,
                bundle_applies,
                served_by_bundle,
                policy_irs,
                statuses,
                (canary_states or {}).get(key),
            )
        except _RouteError as exc:
            # kstatus: Stalled only when this Route itself must change; a
            # reference that may still appear (or become ready) is waited for.
            build = waiting if exc.reason in WAITING_REASONS else stalled
            statuses[("Route", key)] = build("Route", key, generation, exc.reason, exc.message)
            continue
        conflict = next(
            (claimed[k] for k in (_match_key(route.spec, h) for h in route.spec.match.hosts) if k in claimed),
            None,
        )
        if conflict is not None:
            statuses[("Route", key)] = stalled(
                "Route",
                key,
                generation,
                "MatchConflict",
                f"spec.match: the same hosts/path/methods/headers are already served by Route {conflict} "
                "(older wins)",
            )
            continue
        for host in route.spec.match.hosts:
            claimed[_match_key(route.spec, host)] = key
        route_irs.append(route_ir)
        statuses[("Route", key)] = ready(
            "Route", key, generation, _route_message(route_ir), _route_summary(route_ir)
        )

    route_irs.sort(key=lambda r: r.key)
    by_product: dict[str, list[RouteIR]] = {}
    for route_ir in route_irs:
        by_product.setdefault(route_ir.product.key, []).append(route_ir)
    for key, product_status in ((k, statuses[("Product", k)]) for k in product_irs):
        product_status.summary["routes"] = len(by_product.get(key, ()))

    ir = IR(
        products=tuple(product_irs[k] for k in sorted(product_irs)),
        policies=tuple(
            policy_irs[bundle][version]
            for bundle in sorted(policy_irs)
            for version in sorted(policy_irs[bundle], key=semver.Version.parse, reverse=True)
        ),
        routes=tuple(route_irs),
        routes_by_product={k: tuple(v) for k, v in by_product.items()},
    )
    return TranslateResult(ir=ir, statuses=statuses, ignored=ignored)


# Reasons a Route waits for another object rather than for a change of its own.
WAITING_REASONS = frozenset(
    {"ProductNotFound", "ProductNotReady", "PolicyNotFound", "PolicyNotReady", "PolicyVersionNotServed"}
)


class _RouteError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _served_policy(
    field_path: str,
    namespace: str,
    name: str,
    version: str,
    bundle_applies: Mapping[str, list[PolicyBundle]],
    served_by_bundle: Mapping[str, ServedPolicies],
    policy_irs: Mapping[str, dict[str, PolicyIR]],
    statuses: Mapping[tuple[str, str], ResourceStatus],
) -> PolicyIR:
    bundle_key = f"{namespace}/{name}"
    if bundle_key not in served_by_bundle:
        if ("PolicyBundle", bundle_key) in statuses:
            bundle_status = statuses[("PolicyBundle", bundle_key)]
            raise _RouteError(
                "PolicyNotReady",
                f"spec.policyRef.name: PolicyBundle {name!r} is not ready: {bundle_status.message}",
            )
        raise _RouteError(
            "PolicyNotFound",
            f"spec.policyRef.name: PolicyBundle {name!r} not found in namespace {namespace!r}",
        )
    served = served_by_bundle[bundle_key]
    policy = policy_irs[bundle_key].get(version)
    if policy is None:
        listed = ", ".join(f"{c.version} ({'N' if c is served.current else 'N-1'})" for c in served.versions)
        raise _RouteError(
            "PolicyVersionNotServed",
            f"{field_path}: version {version} of PolicyBundle {name!r} is not served (served: {listed})",
        )
    return policy


def _route_ir(
    route: Route,
    products: Mapping[str, Product],
    product_irs: Mapping[str, ProductIR],
    bundle_applies: Mapping[str, list[PolicyBundle]],
    served_by_bundle: Mapping[str, ServedPolicies],
    policy_irs: Mapping[str, dict[str, PolicyIR]],
    statuses: Mapping[tuple[str, str], ResourceStatus],
    canary_override: CanaryStatus | None,
) -> RouteIR:
    spec = route.spec
    namespace = route.metadata.namespace
    product_key = f"{namespace}/{spec.product_ref.name}"
    product = product_irs.get(product_key)
    if product is None:
        if ("Product", product_key) in statuses:
            message = statuses[("Product", product_key)].message
            raise _RouteError(
                "ProductNotReady",
                f"spec.productRef.name: Product {spec.product_ref.name!r} is not ready: {message}",
            )
        raise _RouteError(
            "ProductNotFound",
            f"spec.productRef.name: Product {spec.product_ref.name!r} not found in namespace {namespace!r}",
        )
    policy_args = (bundle_applies, served_by_bundle, policy_irs, statuses)
    stable_policy = _served_policy(
        "spec.policyRef.version", namespace, spec.policy_ref.name, spec.policy_ref.version, *policy_args
    )
    stable_backend = _backend_ir(namespace, spec.backend)
    stable_worker = _worker_ir(spec.worker)

    canary_track: TrackIR | None = None
    canary_ir: CanaryIR | None = None
    stable_weight = 100
    if spec.canary is not None:
        canary = spec.canary
        canary_policy = stable_policy
        if canary.policy_version is not None:
            canary_policy = _served_policy(
                "spec.canary.policyVersion",
                namespace,
                spec.policy_ref.name,
                canary.policy_version,
                *policy_args,
            )
        revision = canary_revision(canary)
        state = canary_override or (route.status.canary if route.status else None)
        if state is None or (state.revision is not None and state.revision != revision):
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
        canary_track = TrackIR(
            name="canary",
            weight=weight,
            backend=_backend_ir(namespace, canary.backend) if canary.backend else stable_backend,
            policy=canary_policy,
            worker=canary_worker,
        )
        stable_weight = 100 - weight

    retries = spec.retries
    delivery = spec.async_
    match = spec.match
    return RouteIR(
        ref=_ref("Route", route.metadata),
        product=product,
        mode=spec.mode,
        match=MatchIR(
            hosts=tuple(match.hosts),
            path=match.path,
            path_prefix=match.effective_path_prefix,
            methods=tuple(match.methods),
            headers=tuple(
                HeaderMatchIR(
                    name=h.name.lower(),
                    kind="exact"
                    if h.exact is not None
                    else "prefix"
                    if h.prefix is not None
                    else "regex"
                    if h.regex is not None
                    else "present",
                    value=h.exact or h.prefix or h.regex or "",
                    present=bool(h.present) if h.present is not None else True,
                )
                for h in match.headers
            ),
        ),
        timeout_ms=duration_ms(spec.timeout),
        retries=RetriesIR(
            attempts=retries.attempts,
            per_try_timeout_ms=duration_ms(retries.per_try_timeout) if retries.per_try_timeout else None,
            retry_on=tuple(retries.retry_on),
            retriable_status_codes=tuple(retries.retriable_status_codes),
            base_interval_ms=duration_ms(retries.backoff.base_interval),
            max_interval_ms=duration_ms(retries.backoff.max_interval),
        ),
        delivery=AsyncIR(
            max_delivery_attempts=delivery.max_delivery_attempts,
            minimum_backoff_ms=duration_ms(delivery.minimum_backoff),
            maximum_backoff_ms=duration_ms(delivery.maximum_backoff),
            ack_deadline_seconds=delivery.ack_deadline_seconds,
            ordering=delivery.ordering,
            backlog_limit=delivery.backlog_limit,
            result_ttl_ms=duration_ms(delivery.result_ttl),
            message_retention_ms=duration_ms(delivery.message_retention),
        ),
        stable=TrackIR(
            name="stable",
            weight=stable_weight,
            backend=stable_backend,
            policy=stable_policy,
            worker=stable_worker,
        ),
        canary=canary_track,
        canary_state=canary_ir,
        deletion_policy=spec.deletion_policy,
        created=_created(route),
    )


def _route_message(route: RouteIR) -> str:
    policy = route.stable.policy
    hosts = ", ".join(route.match.hosts)
    text = f"{route.mode} route on {hosts} with policy {policy.bundle.name}@{policy.version}"
    if route.canary is not None and route.canary_state is not None:
        text += f"; canary {route.canary_state.phase} at {route.canary.weight}%"
    return text


def _route_summary(route: RouteIR) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "policyArtifact": route.stable.policy.artifact,
        "canaryWeight": route.canary.weight if route.canary is not None else 0,
    }
    # ``status.canary`` belongs to the canary controller (``apx.operator.canary``),
    # its only writer: translation reads it and never writes it back, so a pass
    # that started before a controller decision cannot revert it.
    if route.canary is not None and route.canary.policy is not route.stable.policy:
        summary["canaryPolicyArtifact"] = route.canary.policy.artifact
    return summary
