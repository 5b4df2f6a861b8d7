"""Evaluation of ``x-kubernetes-validations`` (CEL) rules of a CRD schema.

Uses the ``common-expression-language`` package (``import cel``) with the
Kubernetes list library registered (``isSorted``, ``sum``, ``min``, ``max``,
``indexOf``, ``lastIndexOf``) and the regex library's ``find``/``findAll``.
Rules are compiled once and cached. Transition rules (those referencing
``oldSelf``) are evaluated only when an old value exists, i.e. on update,
as on the real API server. Called by :mod:`.schema` while it walks an object.

This is deliberately independent of ``apx.controllers.celcheck`` (written in
parallel for the pure core); the two may be unified later.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import attrs
import cel

from .errors import Cause

_MISSING: Any = object()


def _is_sorted(items: list[Any]) -> bool:
    return all(items[i] <= items[i + 1] for i in range(len(items) - 1))


def _index_of(items: list[Any], value: Any) -> int:
    return items.index(value) if value in items else -1


def _last_index_of(items: list[Any], value: Any) -> int:
    return len(items) - 1 - items[::-1].index(value) if value in items else -1


def _find(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    return match.group(0) if match else ""


def _find_all(text: str, pattern: str, limit: int = -1) -> list[str]:
    found = [match.group(0) for match in re.finditer(pattern, text)]
    return found if limit < 0 else found[:limit]


# The Kubernetes CEL libraries (list and regex) that rules in CRDs may use.
KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "isSorted": _is_sorted,
    "sum": sum,
    "min": min,
    "max": max,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "find": _find,
    "findAll": _find_all,
}


@attrs.frozen
class Rule:
    rule: str
    message: str | None = None
    message_expression: str | None = None
    field_path: str | None = None
    reason: str | None = None

    @classmethod
    def from_schema(cls, raw: dict[str, Any]) -> Rule:
        return cls(
            rule=str(raw.get("rule", "")),
            message=raw.get("message"),
            message_expression=raw.get("messageExpression"),
            field_path=raw.get("fieldPath"),
            reason=raw.get("reason"),
        )


@functools.lru_cache(maxsize=1024)
def _compile(expression: str) -> tuple[Any, bool]:
    """Compile a rule; return the program and whether it is a transition rule."""
    program = cel.compile(expression)
    uses_old = "oldSelf" in program.references().get("variables", [])
    return program, uses_old


def _context(value: Any, old: Any) -> Any:
    ctx = cel.Context()
    ctx.add_variable("self", value)
    if old is not _MISSING:
        ctx.add_variable("oldSelf", old)
    for name, fn in KUBERNETES_FUNCTIONS.items():
        ctx.add_function(name, fn)
    return ctx


def _join(path: str, field_path: str | None) -> str:
    if not field_path:
        return path
    if not path:
        return field_path.lstrip(".")
    return f"{path}{field_path}" if field_path.startswith((".", "[")) else f"{path}.{field_path}"


def _cause(rule: Rule, path: str, type_name: str, message: str) -> Cause:
    field = _join(path, rule.field_path)
    match rule.reason:
        case "FieldValueRequired":
            return Cause(field, f"Required value: {message}", "FieldValueRequired")
        case "FieldValueForbidden":
            return Cause(field, f"Forbidden: {message}", "FieldValueForbidden")
        case "FieldValueDuplicate":
            return Cause(field, f"Duplicate value: {json.dumps(message)}", "FieldValueDuplicate")
    return Cause(field, f"Invalid value: {json.dumps(type_name)}: {message}", "FieldValueInvalid")


def evaluate(rules: list[dict[str, Any]], value: Any, old: Any, path: str, type_name: str) -> list[Cause]:
    """Evaluate the rules of one schema node; ``old`` is ``_MISSING`` on create."""
    causes: list[Cause] = []
    for raw in rules:
        rule = Rule.from_schema(raw)
        try:
            program, transition = _compile(rule.rule)
        except ValueError as exc:
            causes.append(Cause(path, f"Invalid value: {json.dumps(type_name)}: compilation failed: {exc}"))
            continue
        if transition and old is _MISSING:
            continue
        ctx = _context(value, old)
        try:
            result = program.execute(ctx)
        except Exception as exc:  # every evaluation error is a rule failure, as on the real server
            detail = (
                f"no such key: {exc.args[0]}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
            )
            causes.append(
                Cause(
                    _join(path, rule.field_path),
                    f"Invalid value: {json.dumps(type_name)}: {detail} evaluating rule: {rule.rule}",
                )
            )
            continue
        if result is True:
            continue
        message = rule.message or f"failed rule: {rule.rule}"
        if rule.message_expression:
            try:
                produced = cel.compile(rule.message_expression).execute(ctx)
            except Exception:  # a broken messageExpression falls back to the message, like the real one
                produced = None
            if isinstance(produced, str) and produced.strip():
                message = produced
        causes.append(_cause(rule, path, type_name, message))
    return causes


MISSING = _MISSING
