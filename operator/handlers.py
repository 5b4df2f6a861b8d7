"""kopf handler registration: thin handlers that feed the reconciler.

Called by ``apx.operator.main`` to build the operator's registry. What each
handler does:

* ``on.event`` (all three kinds): records the body in the reconciler's store;
  the reconciler's loop does the work (level-triggered, across all objects).
* ``on.delete`` (all three kinds): kopf holds the finalizer ``apx.dev/finalizer``
  until the reconciler has removed what the object owns per its
  ``deletionPolicy``; a dependency outage keeps the finalizer and retries.
* ``on.validate`` (when admission is enabled): the checks the CRD schema
  cannot express — full model validation (same messages as ``apx translate``)
  and PolicyBundle version history against the old object.
* ``on.probe``: the reconciler's health in kopf's liveness endpoint.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from apx.controllers.models.common import GROUP, VERSION
from apx.controllers.models.policy import PolicyBundleSpec
from apx.controllers.models.resources import RESOURCE_MODELS
from apx.controllers.policy_artifacts import PolicyHistoryError, check_transition, compile_policy
from apx.controllers.translate import format_validation_error

from .reconciler import Reconciler

PLURALS = {"Product": "products", "Route": "routes", "PolicyBundle": "policybundles"}
FINALIZER = "apx.dev/finalizer"


def validate_object(kind: str, body: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Raise ``kopf.AdmissionError`` (422, field named) when the object must be rejected."""
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


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, admission: bool) -> None:
    """Register every handler in ``registry``; the handlers close over ``reconciler``."""
    for kind, plural in PLURALS.items():
        _register_kind(registry, reconciler, kind, plural, admission)

    @kopf.on.probe(id="reconciler", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        return reconciler.health()


def _register_kind(
    registry: kopf.OperatorRegistry, reconciler: Reconciler, kind: str, plural: str, admission: bool
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

    @kopf.on.delete(GROUP, VERSION, plural, registry=registry)
    async def on_delete(body: kopf.Body, **_: Any) -> None:
        try:
            await reconciler.finalize(kind, {**dict(body), "kind": kind})
        except TimeoutError as exc:
            raise kopf.TemporaryError(str(exc), delay=5) from exc

    if admission:

        @kopf.on.validate(GROUP, VERSION, plural, registry=registry)
        def on_validate(body: kopf.Body, **kwargs: Any) -> None:
            old = kwargs.get("old")  # the stored object, on UPDATE
            validate_object(kind, dict(body), dict(old) if old else None)
