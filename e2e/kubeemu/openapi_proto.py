"""The protobuf form of the ``/openapi/v2`` document, which Go clients ask for.

client-go's ``OpenAPISchema()`` (kubectl's fallback for validation, the
``plaintext-openapiv2`` output of ``kubectl explain`` and strategic-merge
metadata) requests ``/openapi/v2`` as
``application/com.github.proto-openapi.spec.v2@v1.0+protobuf`` and decodes
it as gnostic's ``openapi.v2.Document``; no Python package ships those
messages, so this module writes the wire format by hand for the part of the
schema the emulator's documents use, with the field numbers of gnostic's
``openapiv2/OpenAPIv2.proto``: the document, paths and operations with their
parameters and responses, and JSON schemas (references, types, properties,
items, additionalProperties, allOf, enums, defaults, bounds and vendor
extensions, whose values travel as YAML text, JSON being YAML). Called by
:mod:`.emulator` with the JSON document of :mod:`.openapi`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

# What kube-openapi answers: the Accept value with "@" (not a MIME token character) as ".".
CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values travel as their two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _string(number: int, value: Any) -> bytes:
    return _bytes(number, str(value).encode()) if value not in (None, "") else b""


def _bool(number: int, value: Any) -> bytes:
    return _tag(number, 0) + b"\x01" if value is True else b""


def _int(number: int, value: Any) -> bytes:
    return _tag(number, 0) + _varint(int(value)) if isinstance(value, int) and value else b""


def _double(number: int, value: Any) -> bytes:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return b""
    return _tag(number, 1) + struct.pack("<d", float(value))


def _any(number: int, value: Any) -> bytes:
    # gnostic's Any: field 2 is the value as YAML text.
    return _bytes(number, _string(2, json.dumps(value)))


def _extensions(number: int, node: dict[str, Any]) -> bytes:
    named = [_string(1, key) + _any(2, value) for key, value in node.items() if key.startswith("x-")]
    return b"".join(_bytes(number, item) for item in named)


def schema(node: dict[str, Any]) -> bytes:
    """gnostic ``Schema``."""
    out = [
        _string(1, node.get("$ref")),
        _string(2, node.get("format")),
        _string(3, node.get("title")),
        _string(4, node.get("description")),
    ]
    if "default" in node:
        out.append(_any(5, node["default"]))
    out += [
        _double(6, node.get("multipleOf")),
        _double(7, node.get("maximum")),
        _bool(8, node.get("exclusiveMaximum")),
        _double(9, node.get("minimum")),
        _bool(10, node.get("exclusiveMinimum")),
        _int(11, node.get("maxLength")),
        _int(12, node.get("minLength")),
        _string(13, node.get("pattern")),
        _int(14, node.get("maxItems")),
        _int(15, node.get("minItems")),
        _bool(16, node.get("uniqueItems")),
        _int(17, node.get("maxProperties")),
        _int(18, node.get("minProperties")),
    ]
    out += [_string(19, name) for name in node.get("required") or ()]
    out += [_any(20, value) for value in node.get("enum") or ()]
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out.append(_bytes(21, _bytes(1, schema(additional))))
    elif isinstance(additional, bool):
        out.append(_bytes(21, _tag(2, 0) + (b"\x01" if additional else b"\x00")))
    kinds = node.get("type")
    if kinds:
        values = kinds if isinstance(kinds, list) else [kinds]
        out.append(_bytes(22, b"".join(_string(1, value) for value in values)))
    items = node.get("items")
    if isinstance(items, dict):
        out.append(_bytes(23, _bytes(1, schema(items))))
    out += [_bytes(24, schema(part)) for part in node.get("allOf") or () if isinstance(part, dict)]
    properties = node.get("properties")
    if isinstance(properties, dict):
        named = b"".join(
            _bytes(1, _string(1, name) + _bytes(2, schema(sub))) for name, sub in properties.items()
        )
        out.append(_bytes(25, named))
    out.append(_bool(27, node.get("readOnly")))
    out.append(_extensions(31, node))
    return b"".join(out)


def _parameter(node: dict[str, Any]) -> bytes:
    """gnostic ``ParametersItem`` holding a body, query or path parameter."""
    where = node.get("in")
    if where == "body":
        body = (
            _string(1, node.get("description"))
            + _string(2, node.get("name"))
            + _string(3, where)
            + _bool(4, node.get("required"))
            + _bytes(5, schema(node.get("schema") or {}))
        )
        return _bytes(1, _bytes(1, body))
    common = (
        _bool(1, node.get("required"))
        + _string(2, where)
        + _string(3, node.get("description"))
        + _string(4, node.get("name"))
    )
    if where == "path":
        sub = _bytes(4, common + _string(5, node.get("type")) + _bool(19, node.get("uniqueItems")))
    else:
        sub = _bytes(3, common + _string(6, node.get("type")) + _bool(20, node.get("uniqueItems")))
    return _bytes(1, _bytes(2, sub))


def _operation(node: dict[str, Any]) -> bytes:
    out = [_string(1, tag) for tag in node.get("tags") or ()]
    out += [_string(3, node.get("description")), _string(5, node.get("operationId"))]
    out += [_bytes(8, _parameter(parameter)) for parameter in node.get("parameters") or ()]
    responses = b"".join(
        _bytes(
            1,
            _string(1, code)
            + _bytes(
                2,
                _bytes(
                    1,
                    _string(1, response.get("description"))
                    + (_bytes(2, _bytes(1, schema(response["schema"]))) if "schema" in response else b""),
                ),
            ),
        )
        for code, response in (node.get("responses") or {}).items()
    )
    out.append(_bytes(9, responses))
    out.append(_extensions(13, node))
    return b"".join(out)


_PATH_ITEM_FIELDS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(node: dict[str, Any]) -> bytes:
    out = [
        _bytes(number, _operation(node[method]))
        for method, number in _PATH_ITEM_FIELDS.items()
        if isinstance(node.get(method), dict)
    ]
    out += [_bytes(9, _parameter(parameter)) for parameter in node.get("parameters") or ()]
    return b"".join(out)


def encode_document(document: dict[str, Any]) -> bytes:
    """gnostic ``openapi.v2.Document`` of a Swagger 2.0 JSON document."""
    info = document.get("info") or {}
    paths = b"".join(
        _bytes(2, _string(1, path) + _bytes(2, _path_item(item)))
        for path, item in (document.get("paths") or {}).items()
    )
    definitions = b"".join(
        _bytes(1, _string(1, name) + _bytes(2, schema(definition)))
        for name, definition in (document.get("definitions") or {}).items()
    )
    return b"".join(
        [
            _string(1, document.get("swagger", "2.0")),
            _bytes(2, _string(1, info.get("title")) + _string(2, info.get("version"))),
            _bytes(8, paths),
            _bytes(9, definitions),
        ]
    )
