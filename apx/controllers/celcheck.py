"""Evaluate a CRD's ``x-kubernetes-validations`` rules the way the Kubernetes API server does.

Used by the CEL rule tests (``tests/unit/test_cel_rules.py``) and meant for the
emulated Kubernetes API used in local runs, which must reject at admission what
a real API server rejects. Pure: no I/O, no clock.

What is emulated, in the API server's order:

* structural defaults are applied first (``apply_defaults``), because the API
  server defaults an object before it runs CEL, so a rule may read a field
  that has a default even when the user left it out;
* each rule runs with ``self`` bound to the value at the rule's node, at every
  place that node occurs in the object (every list item, every map value), and
  only where that value is present; absent fields stay absent, so
  ``has(self.x)`` is false for them;
* values are typed by the schema: ``type: number`` is a CEL double even when
  written as ``1``;
* Kubernetes' list library ``isSorted()`` is registered; ``duration()`` and the
  standard macros come with CEL itself;
* a failed rule is reported at the rule node's path joined with the rule's
  ``fieldPath`` (``spec`` + ``.regions`` → ``spec.regions``), with ``message``
  (or ``messageExpression``), and a rule that cannot be evaluated is reported
  as ``failed rule: <rule>: <error>``, as the API server does;
* ``x-kubernetes-list-type: map``/``set`` uniqueness (``list_key_violations``),
  which the API server checks next to CEL.

Not emulated: the OpenAPI schema validation itself (types, patterns, bounds,
unknown fields), which the API server runs first and which skips CEL when a
value has the wrong type, so callers validate the schema before calling this;
transition rules (those reading ``oldSelf``), skipped as on create; the runtime
cost limits; Kubernetes' other CEL libraries (regex ``find``, ``url``,
``quantity``...), which fail loudly as unknown functions if a rule uses them.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cel

SchemaNode = dict[str, Any]

_INVALID = "FieldValueInvalid"
_REASON_WORDING = {
    "FieldValueForbidden": "Forbidden",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
}


@dataclass(frozen=True)
class CelViolation:
    """One admission error: the field at fault and the message the user sees."""

    field: str
    message: str
    rule: str
    reason: str = _INVALID
    schema_type: str = "object"

    def __str__(self) -> str:
        where = self.field or "<root>"
        if self.reason in _REASON_WORDING:
            return f"{where}: {_REASON_WORDING[self.reason]}: {self.message}"
        return f'{where}: Invalid value: "{self.schema_type}": {self.message}'


@dataclass(frozen=True)
class RuleSite:
    """A rule where it sits in the schema: ``schema_path`` uses ``[*]`` for list items and map values."""

    schema_path: str
    index: int
    rule: str
    message: str
    field_path: str | None
    reason: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.schema_path, self.index, self.rule)


@dataclass(frozen=True)
class RuleOutcome:
    """One evaluation of one rule at one place in an object."""

    site: RuleSite
    path: str
    passed: bool
    violation: CelViolation | None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sites_of(node: SchemaNode, schema_path: str) -> list[RuleSite]:
    sites = []
    for index, entry in enumerate(node.get("x-kubernetes-validations", [])):
        sites.append(
            RuleSite(
                schema_path=schema_path,
                index=index,
                rule=entry["rule"],
                message=entry.get("message", ""),
                field_path=entry.get("fieldPath"),
                reason=entry.get("reason", _INVALID),
            )
        )
    return sites


def iter_rule_sites(schema: SchemaNode, schema_path: str = "") -> Iterator[RuleSite]:
    """Every rule in ``schema`` (an ``openAPIV3Schema``), depth first, properties in name order."""
    yield from _sites_of(schema, schema_path)
    for name in sorted(schema.get("properties", {})):
        yield from iter_rule_sites(schema["properties"][name], _join(schema_path, name))
    if isinstance(schema.get("items"), dict):
        yield from iter_rule_sites(schema["items"], f"{schema_path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from iter_rule_sites(schema["additionalProperties"], f"{schema_path}[*]")


def _default_in_place(schema: SchemaNode, value: Any) -> None:
    # Same order as the API server's structural defaulting: fill this level's
    # missing fields first, then descend, so a defaulted object gets its own
    # nested defaults too.
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, child in properties.items():
            if "default" not in child:
                continue
            # A null in a non-nullable field with a default is replaced, not kept.
            if name not in value or (value[name] is None and not child.get("nullable", False)):
                value[name] = copy.deepcopy(child["default"])
        extra = schema.get("additionalProperties")
        for name, child_value in value.items():
            if name in properties:
                _default_in_place(properties[name], child_value)
            elif isinstance(extra, dict):
                _default_in_place(extra, child_value)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default_in_place(schema["items"], item)


def apply_defaults(schema: SchemaNode, obj: Any) -> Any:
    """A copy of ``obj`` with the schema's defaults applied, as the API server stores it."""
    result = copy.deepcopy(obj)
    _default_in_place(schema, result)
    return result


def _typed(schema: SchemaNode, value: Any) -> Any:
    """``value`` with the CEL types the API server would give it (numbers declared ``number`` are doubles)."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        typed = {}
        for name, child in value.items():
            if name in properties:
                typed[name] = _typed(properties[name], child)
            elif isinstance(extra, dict):
                typed[name] = _typed(extra, child)
            else:
                typed[name] = child
        return typed
    if isinstance(value, list):
        items = schema.get("items")
        return [_typed(items, item) if isinstance(items, dict) else item for item in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _is_sorted(values: list[Any]) -> bool:
    return all(left <= right for left, right in itertools.pairwise(values))


@functools.cache
def _program(expression: str) -> cel.Program:
    return cel.compile(expression)


def _reads_old_self(expression: str) -> bool:
    return "oldSelf" in _program(expression).references().get("variables", [])


def _run(expression: str, self_value: Any) -> Any:
    context = cel.Context()
    context.add_variable("self", self_value)
    context.add_function("isSorted", _is_sorted)
    return _program(expression).execute(context)


def _message(site: RuleSite, entry: SchemaNode, self_value: Any) -> str:
    expression = entry.get("messageExpression")
    if expression:
        try:
            produced = _run(expression, self_value)
        except Exception:
            # The API server falls back to `message` whatever went wrong.
            produced = None
        if isinstance(produced, str) and produced.strip() and "\n" not in produced:
            return produced
    return site.message or f"failed rule: {site.rule}"


def _error_text(result: object) -> str:
    if isinstance(result, KeyError):
        # The Python binding raises KeyError('x'); the API server says "no such key: x".
        return f"no such key: {result.args[0] if result.args else ''}"
    if isinstance(result, Exception):
        return str(result)
    return f"rule returned {result!r}, not a bool"


def _error_field(path: str, field_path: str | None) -> str:
    if not field_path:
        return path
    return (path + field_path) if path else field_path.lstrip(".")


def _evaluate_node(
    schema: SchemaNode, value: Any, path: str, schema_path: str, outcomes: list[RuleOutcome]
) -> None:
    if value is None:
        return
    entries = schema.get("x-kubernetes-validations", [])
    if entries:
        self_value = _typed(schema, value)
        for site, entry in zip(_sites_of(schema, schema_path), entries, strict=True):
            if _reads_old_self(site.rule):
                continue
            field = _error_field(path, site.field_path)
            schema_type = str(schema.get("type", "object"))
            try:
                result = _run(site.rule, self_value)
            except Exception as error:
                # Any evaluation failure is an admission error, as on the API server.
                result = error
            if result is True:
                outcomes.append(RuleOutcome(site, path, True, None))
                continue
            if isinstance(result, bool):
                message, reason = _message(site, entry, self_value), site.reason
            else:
                detail = _error_text(result)
                message, reason = f"failed rule: {site.rule}: {detail}", _INVALID
            violation = CelViolation(field, message, site.rule, reason, schema_type)
            outcomes.append(RuleOutcome(site, path, False, violation))

    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name in sorted(value):
            if name in properties:
                _evaluate_node(
                    properties[name], value[name], _join(path, name), _join(schema_path, name), outcomes
                )
            elif isinstance(extra, dict):
                _evaluate_node(extra, value[name], f"{path}[{name}]", f"{schema_path}[*]", outcomes)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _evaluate_node(schema["items"], item, f"{path}[{index}]", f"{schema_path}[*]", outcomes)


def evaluate(schema: SchemaNode, obj: Any, *, defaults: bool = True) -> list[RuleOutcome]:
    """Every rule evaluation ``obj`` triggers under ``schema``, passed or not, in schema order.

    ``defaults=False`` skips defaulting; only useful to show what defaulting changes.
    """
    outcomes: list[RuleOutcome] = []
    _evaluate_node(schema, apply_defaults(schema, obj) if defaults else obj, "", "", outcomes)
    return outcomes


def validate(crd_schema_root: SchemaNode, obj: Any) -> list[CelViolation]:
    """The CEL errors the API server would answer when ``obj`` is created.

    ``crd_schema_root`` is a version's ``openAPIV3Schema``; ``obj`` the whole
    object (apiVersion, kind, metadata, spec, status).
    """
    return [outcome.violation for outcome in evaluate(crd_schema_root, obj) if outcome.violation is not None]


def _list_key(item: Any, keys: list[str]) -> str:
    return json.dumps(
        {key: item.get(key) for key in keys} if isinstance(item, dict) else item, sort_keys=True
    )


def _list_key_node(schema: SchemaNode, value: Any, path: str, found: list[CelViolation]) -> None:
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type in ("map", "set"):
            keys = list(schema.get("x-kubernetes-list-map-keys", [])) if list_type == "map" else []
            seen: set[str] = set()
            for index, item in enumerate(value):
                key = _list_key(item, keys) if keys else json.dumps(item, sort_keys=True)
                if key in seen:
                    found.append(
                        CelViolation(
                            f"{path}[{index}]",
                            key,
                            f"x-kubernetes-list-type: {list_type}",
                            "FieldValueDuplicate",
                        )
                    )
                seen.add(key)
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                _list_key_node(schema["items"], item, f"{path}[{index}]", found)
    elif isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name in sorted(value):
            if name in properties:
                _list_key_node(properties[name], value[name], _join(path, name), found)
            elif isinstance(extra, dict):
                _list_key_node(extra, value[name], f"{path}[{name}]", found)


def list_key_violations(crd_schema_root: SchemaNode, obj: Any) -> list[CelViolation]:
    """Duplicate keys in ``x-kubernetes-list-type: map`` lists and duplicate items in ``set`` lists."""
    found: list[CelViolation] = []
    _list_key_node(crd_schema_root, obj, "", found)
    return found
