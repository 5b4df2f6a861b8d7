"""Structural-schema enforcement for custom resources (``openAPIV3Schema``).

What the real API server does to a custom resource on every write, in its
order: prune unknown fields (unless ``x-kubernetes-preserve-unknown-fields``),
drop ``null`` values of non-nullable fields, apply ``default`` values to absent
fields recursively, validate the OpenAPI value constraints (type, enum,
pattern, minimum/maximum, minLength/maxLength, minItems/maxItems,
min/maxProperties, uniqueItems, required, list-type set/map uniqueness,
allOf/anyOf/oneOf/not) and finally the CEL rules (``x-kubernetes-validations``,
via :mod:`.celrules`), which run only when the value constraints hold. Error
messages follow the real server's wording (``spec.x in body should match
'...'``, ``Unsupported value``, ``Required value``...). Called by
:mod:`.store` for every create, update, patch and apply of a CRD-defined kind.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from . import celrules
from .errors import Cause

_ROOT_KEPT = ("apiVersion", "kind", "metadata")


def _is_object_schema(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" or "properties" in schema or "additionalProperties" in schema


def _preserves(schema: dict[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def prune(value: Any, schema: dict[str, Any], *, root: bool = False) -> Any:
    """Remove unknown fields and nulls of non-nullable fields; returns the pruned value."""
    if isinstance(value, dict) and _is_object_schema(schema):
        properties: dict[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        result: dict[str, Any] = {}
        for key, item in value.items():
            if (root or embedded) and key in _ROOT_KEPT:
                result[key] = item
                continue
            if key in properties:
                sub = properties[key]
            elif isinstance(additional, dict):
                sub = additional
            elif additional is True or _preserves(schema):
                result[key] = item
                continue
            else:
                continue
            if item is None and not sub.get("nullable"):
                continue
            result[key] = prune(item, sub)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "", *, root: bool = True) -> list[str]:
    """The paths :func:`prune` would drop as unknown (for ``fieldValidation=Strict``)."""
    found: list[str] = []
    if isinstance(value, dict) and _is_object_schema(schema):
        properties: dict[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        for key, item in value.items():
            if (root or embedded) and key in _ROOT_KEPT:
                continue
            child = _child(path, key)
            if key in properties:
                found += unknown_fields(item, properties[key], child, root=False)
            elif isinstance(additional, dict):
                found += unknown_fields(item, additional, child, root=False)
            elif not (additional is True or _preserves(schema)):
                found.append(child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]", root=False)
    return found


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill absent fields that declare a ``default``; recurse into what exists."""
    if isinstance(value, dict) and _is_object_schema(schema):
        properties: dict[str, Any] = schema.get("properties") or {}
        for key, sub in properties.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in list(value):
                if key not in properties:
                    value[key] = apply_defaults(value[key], additional)
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: Any) -> str:
    """Render a value the way the real server's messages do."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    if value is None:
        return bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    match schema.get("type"):
        case None:
            return True
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "boolean":
            return isinstance(value, bool)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Validator:
    """One validation pass; collects causes in the real server's order."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def add(self, path: str, message: str, reason: str = "FieldValueInvalid") -> None:
        self.causes.append(Cause(path, message, reason))

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.add(path, f"Invalid value: {_show(value)}: {path} in body {detail}")

    def check(self, value: Any, schema: dict[str, Any], path: str) -> None:
        if not _type_ok(value, schema):
            expected = schema.get("type", "string or integer")
            self.add(
                path,
                f"Invalid value: {json.dumps(_type_name(value))}: {path} in body must be of type {expected}: "
                f"{json.dumps(_type_name(value))}",
                "FieldValueTypeInvalid",
            )
            return
        if value is None:
            return
        if "enum" in schema and value not in schema["enum"]:
            supported = ", ".join(json.dumps(option) for option in schema["enum"])
            self.add(
                path,
                f"Unsupported value: {json.dumps(value)}: supported values: {supported}",
                "FieldValueNotSupported",
            )
        if isinstance(value, str):
            self._check_string(value, schema, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_number(value, schema, path)
        elif isinstance(value, list):
            self._check_array(value, schema, path)
        elif isinstance(value, dict):
            self._check_object(value, schema, path)
        self._check_combinators(value, schema, path)

    def _check_string(self, value: str, schema: dict[str, Any], path: str) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.add(path, f"Too long: may not be more than {schema['maxLength']} bytes", "FieldValueTooLong")
        if "minLength" in schema and len(value) < schema["minLength"]:
            self.invalid(path, value, f"should be at least {schema['minLength']} chars long")
        pattern = schema.get("pattern")
        if pattern is not None and re.search(pattern, value) is None:
            self.invalid(path, value, f"should match '{pattern}'")

    def _check_number(self, value: float, schema: dict[str, Any], path: str) -> None:
        if "minimum" in schema:
            if schema.get("exclusiveMinimum") is True and value <= schema["minimum"]:
                self.invalid(path, value, f"should be greater than {schema['minimum']}")
            elif value < schema["minimum"]:
                self.invalid(path, value, f"should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema:
            if schema.get("exclusiveMaximum") is True and value >= schema["maximum"]:
                self.invalid(path, value, f"should be less than {schema['maximum']}")
            elif value > schema["maximum"]:
                self.invalid(path, value, f"should be less than or equal to {schema['maximum']}")
        multiple = schema.get("multipleOf")
        if multiple and (value / multiple) != int(value / multiple):
            self.invalid(path, value, f"should be a multiple of {multiple}")

    def _check_array(self, value: list[Any], schema: dict[str, Any], path: str) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            self.add(
                path,
                f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                "FieldValueTooMany",
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            self.invalid(path, len(value), f"should have at least {schema['minItems']} items")
        list_type = schema.get("x-kubernetes-list-type")
        if schema.get("uniqueItems") or list_type == "set":
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    self.add(
                        f"{path}[{index}]", f"Duplicate value: {json.dumps(item)}", "FieldValueDuplicate"
                    )
                seen.append(item)
        if list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys: list[tuple[Any, ...]] = []
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    continue
                ident = tuple(item.get(key) for key in keys)
                if ident in seen_keys:
                    shown = json.dumps({key: item.get(key) for key in keys})
                    self.add(f"{path}[{index}]", f"Duplicate value: {shown}", "FieldValueDuplicate")
                seen_keys.append(ident)
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                self.check(item, items, f"{path}[{index}]")

    def _check_object(self, value: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        for key in schema.get("required") or []:
            if key not in value:
                self.add(_child(path, key), "Required value", "FieldValueRequired")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            self.add(
                path,
                f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
                "FieldValueTooMany",
            )
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            self.invalid(path, len(value), f"should have at least {schema['minProperties']} properties")
        properties: dict[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if not path and key in _ROOT_KEPT:
                continue
            if key in properties:
                self.check(item, properties[key], _child(path, key))
            elif isinstance(additional, dict):
                self.check(item, additional, f"{path}[{key}]" if path else key)

    def _check_combinators(self, value: Any, schema: dict[str, Any], path: str) -> None:
        for sub in schema.get("allOf") or []:
            self.check(value, sub, path)
        if schema.get("anyOf") and not any(_passes(value, sub, path) for sub in schema["anyOf"]):
            self.add(
                path,
                f"Invalid value: {_show(value)}: {path} in body must validate at least one schema (anyOf)",
            )
        if schema.get("oneOf"):
            passing = sum(1 for sub in schema["oneOf"] if _passes(value, sub, path))
            if passing != 1:
                self.add(
                    path,
                    f"Invalid value: {_show(value)}: {path} in body must validate one and only one "
                    f"schema (oneOf)",
                )
        if isinstance(schema.get("not"), dict) and _passes(value, schema["not"], path):
            self.add(
                path, f"Invalid value: {_show(value)}: {path} in body must not validate the schema (not)"
            )


def _passes(value: Any, schema: dict[str, Any], path: str) -> bool:
    probe = _Validator()
    probe.check(value, schema, path)
    return not probe.causes


def _correlate_items(old: Any, value: list[Any], schema: dict[str, Any]) -> list[Any]:
    """Old counterparts of list items: only map-lists correlate, as on the real server."""
    missing: list[Any] = [celrules.MISSING] * len(value)
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old, list):
        return missing
    keys = schema.get("x-kubernetes-list-map-keys") or []
    by_key = {tuple(item.get(k) for k in keys): item for item in old if isinstance(item, dict)}
    return [
        by_key.get(tuple(item.get(k) for k in keys), celrules.MISSING)
        if isinstance(item, dict)
        else celrules.MISSING
        for item in value
    ]


def check_rules(value: Any, schema: dict[str, Any], old: Any, path: str) -> list[Cause]:
    """Evaluate CEL rules bottom-up over the whole value, correlating old values.

    A value equal to its correlated old value is not evaluated again: the real
    API server ratchets validation (CRDValidationRatcheting, on by default since
    Kubernetes 1.30), so an unchanged subtree never fails an update, and a
    status write does not re-run every rule of the spec.
    """
    if old is not celrules.MISSING and value == old:
        return []
    causes: list[Cause] = []
    if isinstance(value, dict):
        properties: dict[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if not path and key in _ROOT_KEPT:
                continue
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub is None:
                continue
            old_item = old.get(key, celrules.MISSING) if isinstance(old, dict) else celrules.MISSING
            child = _child(path, key) if key in properties else f"{path}[{key}]"
            causes += check_rules(item, sub, old_item, child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        olds = _correlate_items(old, value, schema)
        for index, (item, old_item) in enumerate(zip(value, olds, strict=True)):
            causes += check_rules(item, schema["items"], old_item, f"{path}[{index}]")
    rules = schema.get("x-kubernetes-validations") or []
    if rules and value is not None:
        causes += celrules.evaluate(rules, value, old, path, _type_name(value))
    return causes


def admit(
    obj: dict[str, Any], schema: dict[str, Any], old: dict[str, Any] | None
) -> tuple[dict[str, Any], list[Cause]]:
    """Prune, default and validate a whole custom resource.

    Returns the object as it would be stored and the causes of refusal (empty
    when the object is valid). ``old`` is the stored object on updates and
    ``None`` on create; transition rules need it.
    """
    pruned = prune(obj, schema, root=True)
    defaulted = apply_defaults(pruned, schema)
    validator = _Validator()
    validator.check(defaulted, schema, "")
    if validator.causes:
        return defaulted, validator.causes
    old_value: Any = old if old is not None else celrules.MISSING
    return defaulted, check_rules(defaulted, schema, old_value, "")
