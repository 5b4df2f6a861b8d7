"""Kubernetes API errors of the emulator and their ``Status`` bodies.

Every refusal of the emulated API server is raised as :class:`ApiError`, a
subclass of kmock's ``KubernetesError`` (so kmock's own error handling still
recognises it), and rendered by :func:`status_body` the way the real API
server answers: a ``v1 Status`` object with ``code``, ``reason``, ``message``
and ``details`` (``name``, ``group``, ``kind``, ``causes``). Called by
:mod:`.store` (domain refusals) and :mod:`.emulator` (HTTP-level refusals).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import kmock


@attrs.frozen
class Cause:
    """One field-level cause of an ``Invalid`` error (``details.causes[]``)."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def render(self) -> str:
        """The ``field: message`` line used in the top-level message."""
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


@attrs.frozen
class ApiError(kmock.KubernetesError):
    """An API refusal with the real server's status code, reason and details."""

    status: int = 500
    reason: str | None = "InternalError"
    message: str | None = None
    details: Any | None = None


_GENERIC = {
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
}


def status_body(error: kmock.KubernetesError) -> dict[str, Any]:
    """Render an error as the ``Status`` object the real API server sends."""
    message, reason = error.message or "", error.reason or ""
    if not isinstance(error, ApiError):
        # kmock's own errors speak to test authors ("declare it as kmock[...]"); clients get the
        # real server's wording.
        reason, message = _GENERIC.get(error.status, ("InternalError", message))
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": error.status,
    }
    # kmock's own errors carry a traceback in `details`; clients expect the
    # StatusDetails shape (or nothing), so only dicts made here are passed on.
    if isinstance(error, ApiError) and error.details:
        body["details"] = error.details
    return body


def _details(name: str | None, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": kind}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        status=404,
        reason="NotFound",
        message=f'{_qualified(plural, group)} "{name}" not found',
        details=_details(name, group, plural),
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        status=409,
        reason="AlreadyExists",
        message=f'{_qualified(plural, group)} "{name}" already exists',
        details=_details(name, group, plural),
    )


def conflict(plural: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        status=409,
        reason="Conflict",
        message=f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {why}',
        details=_details(name, group, plural),
    )


def invalid(qualified_kind: str, group: str, kind: str, name: str, causes: Sequence[Cause]) -> ApiError:
    """A 422 ``Invalid`` error listing field causes, worded like the real server."""
    lines = [cause.render() for cause in causes]
    joined = lines[0] if len(lines) == 1 else "[" + ", ".join(lines) + "]"
    details = _details(name, group, kind)
    details["causes"] = [cause.to_dict() for cause in causes]
    return ApiError(
        status=422,
        reason="Invalid",
        message=f'{qualified_kind} "{name}" is invalid: {joined}',
        details=details,
    )


def bad_request(message: str) -> ApiError:
    return ApiError(status=400, reason="BadRequest", message=message)


def forbidden(plural: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        status=403,
        reason="Forbidden",
        message=f'{_qualified(plural, group)} "{name}" is forbidden: {why}',
        details=_details(name, group, plural),
    )


def gone(message: str) -> ApiError:
    return ApiError(status=410, reason="Expired", message=message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(status=405, reason="MethodNotAllowed", message=message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        status=415,
        reason="UnsupportedMediaType",
        message=f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json, application/yaml, application/json-patch+json, "
        f"application/merge-patch+json, application/strategic-merge-patch+json, "
        f'application/apply-patch+yaml (got "{content_type}")',
    )


def not_acceptable(accept: str) -> ApiError:
    return ApiError(
        status=406,
        reason="NotAcceptable",
        message=f"only the following media types are accepted: application/json, application/yaml "
        f'(got "{accept}")',
    )


def unprocessable(message: str) -> ApiError:
    """A 422 without field causes (failed JSON-patch ``test``, bad patch paths)."""
    return ApiError(status=422, reason="Invalid", message=message)
