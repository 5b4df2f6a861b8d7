"""OpenAPI definitions of the built-in kinds, and strict field checks against them.

A real API server publishes the OpenAPI definitions compiled from its Go
types. The emulator takes the same definitions from the ``kubernetes-validate``
package (already a project dependency), which ships them per Kubernetes
release as JSON Schema (``_definitions.json``): nullable types written as
``["string", "null"]``, references as ``#/$defs/...``, ``oneOf`` for
int-or-string and quantities, and an ``enum`` pinned on ``apiVersion``/``kind``.
:func:`builtin_definitions` turns them back into the OpenAPI shape the real
server serves (``type: string``, ``format: int-or-string``, no pinned enums),
with references left as ``#/definitions/NAME`` for :mod:`.openapi` to rewrite
per document version.

:func:`unknown_builtin_fields` walks an object through those definitions
(following references) and returns the paths a real server's strict decoder
would report (``fieldValidation=Strict``). Called by :mod:`.openapi` and
:mod:`.base`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from typing import Any

REF_PREFIX = "#/definitions/"
_SOURCE_REF = "#/$defs/"
# The release whose definitions are served; the newest shipped one at or below it is used.
SERVED_MINOR = 32
_SCHEMA_DIR = re.compile(r"^v1\.(\d+)\.0-local$")
_ROOT_FIELDS = ("apiVersion", "kind")


def _source_path() -> Any:
    base = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    minors = sorted(
        int(match.group(1))
        for entry in base.iterdir()
        if (match := _SCHEMA_DIR.match(entry.name)) and int(match.group(1)) <= SERVED_MINOR
    )
    if not minors:
        raise RuntimeError(f"kubernetes-validate ships no definitions at or below 1.{SERVED_MINOR}")
    return base.joinpath(f"v1.{minors[-1]}.0-local", "_definitions.json")


def _convert(node: Any) -> Any:
    """One JSON Schema node of kubernetes-validate back into its OpenAPI form."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    one_of = node.get("oneOf")
    if isinstance(one_of, list) and {_plain_type(item) for item in one_of} in (
        {"string", "integer"},
        {"string", "number"},
    ):
        # IntOrString and Quantity: the real definitions say string with a format.
        types = {_plain_type(item) for item in one_of}
        result = {key: _convert(value) for key, value in node.items() if key != "oneOf"}
        result["type"] = "string"
        if "integer" in types:
            result["format"] = "int-or-string"
        return result
    result = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list):
            plain = [item for item in value if item != "null"]
            result[key] = plain[0] if len(plain) == 1 else plain
        elif key == "$ref" and isinstance(value, str) and value.startswith(_SOURCE_REF):
            result[key] = REF_PREFIX + value[len(_SOURCE_REF) :]
        elif key == "properties" and isinstance(value, dict):
            result[key] = {name: _convert(sub) for name, sub in value.items()}
        else:
            result[key] = _convert(value)
    return result


def _plain_type(node: Any) -> str:
    kinds = node.get("type") if isinstance(node, dict) else None
    if isinstance(kinds, list):
        kinds = next((item for item in kinds if item != "null"), None)
    return str(kinds)


def _unpin(definition: dict[str, Any]) -> dict[str, Any]:
    """Drop the enums kubernetes-validate pins on ``apiVersion``/``kind`` (the server has none)."""
    properties = definition.get("properties")
    if isinstance(properties, dict):
        for field in _ROOT_FIELDS:
            if isinstance(properties.get(field), dict):
                properties[field].pop("enum", None)
    return definition


@functools.cache
def builtin_definitions() -> dict[str, dict[str, Any]]:
    """Every definition of the served release, by its OpenAPI name (``io.k8s.api.apps.v1.Deployment``)."""
    source = json.loads(_source_path().read_text())
    return {name: _unpin(_convert(definition)) for name, definition in source["$defs"].items()}


@functools.cache
def _by_kind() -> dict[tuple[str, str, str], str]:
    index: dict[tuple[str, str, str], str] = {}
    for name, definition in builtin_definitions().items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or ():
            # DeleteOptions, WatchEvent... are listed under every group; the first name wins.
            index.setdefault((gvk.get("group", ""), gvk.get("version", ""), gvk.get("kind", "")), name)
    return index


def definition_name(group: str, version: str, kind: str) -> str | None:
    """The definition of a built-in kind, or None when the release has none."""
    return _by_kind().get((group, version, kind))


def references(node: Any) -> set[str]:
    """The definition names a node refers to directly."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.add(ref[len(REF_PREFIX) :])
        for value in node.values():
            found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return found


def closure(roots: set[str], definitions: dict[str, dict[str, Any]]) -> set[str]:
    """``roots`` and every definition reachable from them."""
    seen: set[str] = set()
    pending = [name for name in roots if name in definitions]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(ref for ref in references(definitions[name]) if ref not in seen and ref in definitions)
    return seen


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    for _ in range(16):  # references chain at most a few levels deep
        ref = schema.get("$ref")
        if not (isinstance(ref, str) and ref.startswith(REF_PREFIX)):
            return schema
        schema = builtin_definitions().get(ref[len(REF_PREFIX) :], {})
    return schema


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown(value: Any, schema: dict[str, Any], path: str, depth: int) -> list[str]:
    schema = _resolve(schema)
    if depth > 64:
        return []
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if isinstance(properties, dict):
            found: list[str] = []
            for key, item in value.items():
                if key in properties:
                    found += _unknown(item, properties[key], _child(path, key), depth + 1)
                elif isinstance(additional, dict):
                    found += _unknown(item, additional, _child(path, key), depth + 1)
                elif additional is None or additional is False:
                    found.append(_child(path, key))
            return found
        if isinstance(additional, dict):
            return [
                field
                for key, item in value.items()
                for field in _unknown(item, additional, _child(path, key), depth + 1)
            ]
        return []  # free-form (RawExtension, JSON, FieldsV1)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            field
            for index, item in enumerate(value)
            for field in _unknown(item, schema["items"], f"{path}[{index}]", depth + 1)
        ]
    return []


def unknown_builtin_fields(obj: dict[str, Any], group: str, version: str, kind: str) -> list[str]:
    """Fields of ``obj`` its built-in kind does not define (the strict decoder's complaints)."""
    name = definition_name(group, version, kind)
    if name is None:
        return []
    return _unknown(obj, {"$ref": REF_PREFIX + name}, "", 0)
