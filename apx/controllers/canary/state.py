"""Reading ``status.canary`` defensively: parse leniently, repair nonsense, keep canary conditions.

Used by ``apx.controllers.canary.decide`` (which must be total: any status,
including one written by an older version or edited by hand, gives an
answer) and available to the operator's canary loop for parsing the raw dict.
Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import ValidationError

from ..models.route import CanaryCondition, CanaryDecision, CanaryPhase, CanaryRequest, CanaryStatus
from . import timefmt

PHASES: tuple[str, ...] = get_args(CanaryPhase)
MAX_ROLLBACKS_KEPT = 10
ConditionType = Literal["MetricsAvailable", "Halted", "Frozen", "Paused"]
ConditionStatus = Literal["True", "False", "Unknown"]
# Parsing drops one offending field per attempt; a status has fewer fields than this.
_MAX_REPAIRS = 32


def parse_status(raw: object) -> CanaryStatus | None:
    """``status.canary`` as a model, dropping the fields that do not validate; ``None`` if not a mapping.

    A field a person mistyped or an older version wrote differently is
    forgotten (its default applies) instead of making the whole status
    unreadable, so progress that is still valid (step, revision, history of
    rollbacks) survives.
    """
    if not isinstance(raw, Mapping):
        return None
    data: dict[str, Any] = {str(k): v for k, v in raw.items()}
    for _ in range(_MAX_REPAIRS):
        try:
            return CanaryStatus.model_validate(data)
        except ValidationError as exc:
            broken = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
            if not broken & data.keys():
                break
            for key in broken:
                data.pop(key, None)
    return CanaryStatus()


def _int(value: object, low: int, high: int, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return min(max(value, low), high)
    if isinstance(value, float) and math.isfinite(value):
        return min(max(int(value), low), high)
    return default


def _time(value: object) -> str | None:
    """A recorded time in canonical form, or ``None`` when it is not a time."""
    seconds = timefmt.parse_rfc3339(value)
    return None if seconds is None else timefmt.format_rfc3339(seconds)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _model(model: type[Any], value: object) -> Any:
    """``value`` as ``model`` if it is one or validates as one, else ``None``."""
    if isinstance(value, model):
        try:
            return model.model_validate(value.model_dump(by_alias=True))
        except (ValidationError, TypeError, ValueError):
            return None
    if isinstance(value, Mapping):
        try:
            return model.model_validate(value)
        except (ValidationError, TypeError, ValueError):
            return None
    return None


def sanitise(status: CanaryStatus, step_count: int) -> CanaryStatus:
    """The same status with every field of a usable type and in range.

    Works on statuses built without validation too (``model_construct``):
    unknown phases become ``Progressing`` (keep protecting rather than stop
    watching), the step is clamped to the spec's steps, the weight to
    0-100, counters to non-negative integers, times that do not parse are
    forgotten, and at most the newest ``MAX_ROLLBACKS_KEPT`` rollback times
    are kept, oldest first.
    """
    rollbacks_raw = status.rollbacks if isinstance(status.rollbacks, Sequence) else ()
    rollbacks = sorted(
        t
        for t in (timefmt.parse_rfc3339(v) for v in rollbacks_raw if not isinstance(v, bytes))
        if t is not None
    )
    conditions_raw = status.conditions if isinstance(status.conditions, Sequence) else ()
    conditions = [c for c in (_model(CanaryCondition, v) for v in conditions_raw) if c is not None]
    phase = status.phase if status.phase in PHASES else "Progressing"
    return status.model_copy(
        update={
            "phase": phase,
            "revision": _text(status.revision),
            "step": _int(status.step, 0, max(step_count - 1, 0), 0),
            "weight": _int(status.weight, 0, 100, 0),
            "step_started_at": _time(status.step_started_at),
            "healthy_since": _time(status.healthy_since),
            "last_check_at": _time(status.last_check_at),
            "failed_checks": _int(status.failed_checks, 0, 1_000_000, 0),
            "no_data_checks": _int(status.no_data_checks, 0, 1_000_000, 0),
            "checks": _int(status.checks, 0, 1_000_000_000, 0),
            "paused": status.paused is True,
            "frozen": status.frozen is True,
            "rollbacks": [timefmt.format_rfc3339(t) for t in rollbacks[-MAX_ROLLBACKS_KEPT:]],
            "request": _model(CanaryRequest, status.request),
            "handled_request": _text(status.handled_request),
            "last_decision": _model(CanaryDecision, status.last_decision),
            "conditions": conditions,
            "last_transition_time": _time(status.last_transition_time),
        }
    )


def with_condition(
    conditions: Sequence[CanaryCondition],
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    now_text: str,
) -> list[CanaryCondition]:
    """``conditions`` with ``type_`` set; its transition time moves only when ``status`` changes.

    Keeping the time (and the list order) stable when nothing changed lets
    the loop skip writing an unchanged status.
    """
    result: list[CanaryCondition] = []
    found = False
    for condition in conditions:
        if condition.type != type_:
            result.append(condition)
            continue
        found = True
        changed = condition.status != status
        since = (
            now_text if changed or condition.last_transition_time is None else condition.last_transition_time
        )
        result.append(
            CanaryCondition(
                type=type_, status=status, reason=reason, message=message, last_transition_time=since
            )
        )
    if not found:
        result.append(
            CanaryCondition(
                type=type_, status=status, reason=reason, message=message, last_transition_time=now_text
            )
        )
    return result


def condition_is(conditions: Sequence[CanaryCondition], type_: ConditionType) -> bool:
    return any(c.type == type_ and c.status == "True" for c in conditions)
