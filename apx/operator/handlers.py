"""kopf handler registration: thin handlers that feed the reconciler.

Called by ``apx.operator.main`` to build the operator's registry. What each
handler does:

* ``on.event`` (all three kinds): records the body in the reconciler's store;
  the reconciler's loop does the work (level-triggered, across all objects).
* ``on.delete`` (all three kinds): kopf holds the finalizer ``apx.dev/finalizer``
  until the reconciler has removed what the object owns per its
  ``deletionPolicy``; a dependency outage keeps the finalizer and retries.
  A Product or PolicyBundle still referenced by Routes is protected the same
  way (like a PersistentVolumeClaim in use): the delete is accepted, the
  object keeps serving and names the Routes in its status and an Event, and
  the finalizer is released once no Route references it.
* ``on.validate`` (when admission is enabled): the checks the CRD schema
  cannot express — full model validation (same messages as ``apx translate``)
  and PolicyBundle version history against the old object; a new bundle
  version that would stop serving a version Routes still pin is refused,
  naming those Routes (the reconciler's store says who pins what).
* ``on.event`` (worker Deployments labelled managed-by apx): their
  availability, so an async Route is Ready only when a worker can serve it.
* ``on.probe``: the reconciler's health in kopf's liveness endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf
from pydantic import ValidationError

from apx.controllers.models.common import GROUP, VERSION
from apx.controllers.models.policy import PolicyBundleSpec
from apx.controllers.models.resources import RESOURCE_MODELS
from apx.controllers.policy_artifacts import PolicyHistoryError, check_transition, compile_policy
from apx.controllers.translate import format_validation_error

from .reconciler import InUse, Reconciler

PLURALS = {"Product": "products", "Route": "routes", "PolicyBundle": "policybundles"}
FINALIZER = "apx.dev/finalizer"
IN_USE_RETRY_SECONDS = 2.0
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


PinnedVersions = Callable[[str, str], dict[str, list[str]]]


def validate_object(
    kind: str, body: dict[str, Any], old: dict[str, Any] | None, pinned: PinnedVersions | None = None
) -> None:
    """Raise ``kopf.AdmissionError`` (422, field named) when the object must be rejected.

    ``pinned(namespace, bundle)`` (the reconciler's store) gives the versions
    Routes pin: a new PolicyBundle version that would stop serving one of
    them (N-1 moves out) is refused, naming the Routes.
    """
    try:
        parsed = RESOURCE_MODELS[kind].model_validate({**body, "kind": kind, "status": None})
    except ValidationError as exc:
        raise kopf.AdmissionError("; ".join(format_validation_error(exc)), code=422) from exc
    if kind == "PolicyBundle" and old and old.get("spec"):
        try:
            previous = PolicyBundleSpec.model_validate(old["spec"])
        except ValidationError:
            return  # the stored object predates a schema change; judge the new one alone
        spec = PolicyBundleSpec.model_validate(parsed.spec.model_dump(by_alias=True))
        name = str(body["metadata"]["name"])
        try:
            check_transition(compile_policy(name, previous), compile_policy(name, spec))
        except PolicyHistoryError as exc:
            raise kopf.AdmissionError(str(exc), code=422) from exc
        if pinned is not None and spec.version != previous.version:
            _refuse_dropping_pinned(body, spec.version, previous.version, pinned)


def _refuse_dropping_pinned(
    body: dict[str, Any], version: str, previous: str, pinned: PinnedVersions
) -> None:
    """After this apply N is ``version`` and N-1 ``previous``: any other pinned version would be dropped."""
    namespace = str(body["metadata"].get("namespace") or "default")
    name = str(body["metadata"]["name"])
    dropped = {v: routes for v, routes in pinned(namespace, name).items() if v not in (version, previous)}
    if dropped:
        listed = "; ".join(f"{v} is pinned by Route {', '.join(r)}" for v, r in sorted(dropped.items()))
        raise kopf.AdmissionError(
            f"spec.version: applying {version} would stop serving versions Routes still use ({listed}); "
            f"move those Routes to {previous} or {version} first",
            code=422,
        )


def register(
    registry: kopf.OperatorRegistry, reconciler: Reconciler, admission: bool, finalize: bool = True
) -> None:
    """Register every handler in ``registry``; the handlers close over ``reconciler``.

    ``finalize=False`` (a standby under leader election) leaves out the deletion handlers: kopf
    then adds no finalizer and writes no handler progress, so the standby only watches. Without
    deletion handlers kopf *removes* its finalizer from the objects it sees, so a standby must run
    with another finalizer name (``leader_run.STANDBY_FINALIZER``), one that is never set.
    """
    for kind, plural in PLURALS.items():
        _register_kind(registry, reconciler, kind, plural, admission, finalize)

    # Worker Deployments' availability: an async Route is Ready only when its workers can serve.
    @kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: "apx"}, registry=registry)
    async def on_worker_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        reconciler.observe_worker(dict(body), deleted=type == "DELETED")

    @kopf.on.probe(id="reconciler", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        return reconciler.health()


def _register_kind(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    kind: str,
    plural: str,
    admission: bool,
    finalize: bool,
) -> None:
    # Async on purpose: kopf runs sync handlers in a thread pool, and the store
    # and the reconciler's asyncio events must only be touched from the event
    # loop (from a thread, Event.set() does not wake the loop, so a change
    # waited for the next unrelated wake-up).
    @kopf.on.event(GROUP, VERSION, plural, registry=registry)
    async def on_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            reconciler.forget(kind, f"{body.metadata.namespace or 'default'}/{body.metadata.name}")
        else:
            reconciler.observe(kind, {**dict(body), "kind": kind})

    if finalize:

        @kopf.on.delete(GROUP, VERSION, plural, registry=registry)
        async def on_delete(body: kopf.Body, **_: Any) -> None:
            try:
                await reconciler.finalize(kind, {**dict(body), "kind": kind})
            except InUse as exc:
                # Protected while in use: retried until no Route references the object.
                raise kopf.TemporaryError(str(exc), delay=IN_USE_RETRY_SECONDS) from exc
            except TimeoutError as exc:
                raise kopf.TemporaryError(str(exc), delay=5) from exc

    if admission:

        @kopf.on.validate(GROUP, VERSION, plural, registry=registry)
        def on_validate(body: kopf.Body, **kwargs: Any) -> None:
            old = kwargs.get("old")  # the stored object, on UPDATE
            validate_object(kind, dict(body), dict(old) if old else None, reconciler.pinned_versions)
