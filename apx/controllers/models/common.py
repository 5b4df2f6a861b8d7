"""Shared building blocks of the APX resource models.

Used by the Product, Route and PolicyBundle models in this package, by the CRD
generator (``apx.controllers.crdgen``) and by the translator. Everything here is
pure: no I/O, no clock.

Conventions every model follows:

* field names are snake_case in Python and camelCase in YAML (pydantic aliases);
* unknown fields are rejected (``extra="forbid"``) so a typo is an error that
  names the field instead of being silently ignored;
* cross-field rules are written twice on purpose: once as a CEL rule attached
  to the schema (``x-kubernetes-validations``, enforced by the API server at
  admission) and once as a pydantic validator raising the *same message*, so
  ``apx translate`` reports exactly what ``kubectl apply`` would.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "apx.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
HEADER_NAME_PATTERN = r"^[a-zA-Z0-9!#$%&'*+.^_`|~-]+$"
HEADER_NAME_MESSAGE = "must be a header name: letters, digits and !#$%&'*+.^_`|~- only, such as x-tenant"
DNS_LABEL_MESSAGE = (
    "must be a lowercase DNS label (a-z, 0-9 and '-', starting and ending with a letter or digit)"
)
SEMVER_MESSAGE = "must be a semantic version such as 1.3.0"
DURATION_MESSAGE = "must be a duration such as 30s, 250ms, 1m30s or 2h"
PATH_PATTERN = r"^/"
PATH_MESSAGE = "must be a path starting with /"

# Pattern → what is allowed, in words. A CRD ``pattern`` failure prints the
# regular expression to the user, so fields declared with ``matching`` carry
# a CEL rule with this text instead (``crdgen`` swaps the pattern for it), and
# ``apx translate`` prints the same text for pydantic's pattern errors.
PATTERN_MESSAGES: dict[str, str] = {}
PATTERN_MESSAGE_KEY = "x-apx-pattern-message"

DeletionPolicy = Literal["Delete", "Retain"]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def matching(pattern: str, allowed: str, *, max_length: int, show_value: bool = True, **field: Any) -> Any:
    """A ``Field`` checked against ``pattern`` whose refusal says ``allowed`` instead of the regex.

    ``allowed`` reads after the field name and the value (``spec.match.hosts[0]:
    'a..b' must be …``). Pydantic keeps the fast native pattern check; the CRD
    gets ``self.matches(pattern)`` with this text as a CEL rule; the API server
    and ``apx translate`` therefore both print the words, never the regex.
    ``show_value=False`` keeps the value out of the API server's message (a
    value with CR/LF would break the message itself; ``apx translate`` quotes it).
    """
    PATTERN_MESSAGES[pattern] = allowed
    extra: JsonDict = {PATTERN_MESSAGE_KEY: {"allowed": allowed, "showValue": show_value}}
    return Field(pattern=pattern, max_length=max_length, json_schema_extra=extra, **field)


HeaderName = Annotated[str, matching(HEADER_NAME_PATTERN, HEADER_NAME_MESSAGE, min_length=1, max_length=256)]
DnsLabel = Annotated[str, matching(DNS_LABEL_PATTERN, DNS_LABEL_MESSAGE, min_length=1, max_length=63)]
SemVer = Annotated[
    str,
    matching(SEMVER_PATTERN, SEMVER_MESSAGE, max_length=64, description="A semantic version, e.g. `1.3.0`."),
]
Duration = Annotated[
    str,
    matching(
        DURATION_PATTERN,
        DURATION_MESSAGE,
        max_length=32,
        description="A duration such as `30s`, `250ms`, `1m30s` or `2h`.",
    ),
]


def when_durations_valid(rule: str, *fields: str) -> str:
    """``rule``, taken as passing while one of the duration ``fields`` is malformed.

    A malformed duration is reported by its own rule (``matching``); without
    this guard every rule calling ``duration()`` on it would also fail to
    evaluate and add a second, confusing error.
    """
    valid = " && ".join(f"{field}.matches({json.dumps(DURATION_PATTERN)})" for field in fields)
    return f"!({valid}) || ({rule})"


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@functools.lru_cache(maxsize=4096)
def duration_ms(text: str) -> int:
    """Return a duration string (``1m30s``) in whole milliseconds."""
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        total += float(number) * _UNIT_MS[unit]
    return round(total)


def cel(
    rule: str,
    message: str,
    field_path: str | None = None,
    reason: str | None = None,
    got: str | None = None,
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry.

    ``field_path`` (relative to the object the rule sits on, e.g. ``.regions``)
    makes the API server report the error against that field. ``got`` is a
    CEL expression of the refused value (a string): the message then ends with
    `` (got '<value>')``, as the pydantic mirror's does.
    """
    entry = {"rule": rule, "message": message}
    if got:
        opening = json.dumps(message + " (got '")
        entry["messageExpression"] = opening + " + " + got + ' + "\')"'
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules for the CRD generator."""
    return {"x-kubernetes-validations": list(rules)}


M = TypeVar("M", bound=BaseModel)


def shared_default(model: type[M], **values: Any) -> Callable[[], M]:
    """A ``default_factory`` giving every object one shared instance of a frozen ``model``.

    A plain model class as factory runs that model's validation for every
    object that omits the field (34,000 times when translating 10,000
    Routes); the models are immutable, so one instance serves them all. A
    factory rather than ``default=`` keeps the value out of the CRD schema,
    where the API server would start writing it into stored objects.
    """
    if not model.model_config.get("frozen"):
        raise TypeError(f"{model.__name__} is mutable; a shared default would leak changes between objects")
    instance = model(**values)
    return lambda: instance


class ApxModel(BaseModel):
    """Base of every spec model: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=False,
    )


class LocalObjectReference(ApxModel):
    """A reference to another object in the same namespace."""

    name: Annotated[
        str, matching(DNS_LABEL_PATTERN, DNS_LABEL_MESSAGE, max_length=63, description="Object name.")
    ]


ConditionStatus = Literal["True", "False", "Unknown"]
ConditionType = Literal["Ready", "Reconciling", "Stalled"]


class Condition(ApxModel):
    """A kstatus condition (`Ready`, `Reconciling`, `Stalled`), shaped like metav1.Condition."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="`Ready`, `Reconciling` or `Stalled`.")
    status: ConditionStatus
    reason: str = Field(default="", description="One CamelCase word for machines.")
    message: str = Field(default="", description="What happened, naming the field at fault.")
    observed_generation: int | None = Field(default=None, description="Generation this condition is about.")
    last_transition_time: str | None = Field(
        default=None, description="When `status` last changed (RFC 3339)."
    )


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata APX reads. Other keys are kept, not validated."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, alias_generator=to_camel)

    name: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
