"""Validation of rendered Envoy resources before they enter a snapshot.

Called by ``EnvoyOutput.validate_resources`` (and so by the xDS/ConfigMap
appliers and the tests). Pure, and not on the render path: it is thorough
rather than fast.

What is checked, per resource:

1. **Round trip through the message type**: the deterministic binary
   encoding parses back into an equal message of the same type.
2. **Round trip through ``Any``** for every embedded ``google.protobuf.Any``
   (typed configs, per-filter configs, transport sockets, extensions): the type
   URL names a message type known to the descriptor pool, the payload parses
   into it without unknown fields, and re-packing gives the same bytes. The
   unpacked message is then validated recursively like any other.
3. **protoc-gen-validate rules** carried by the xds-protos descriptors
   (``(validate.rules)`` on fields, ``(validate.required)`` on oneofs), the
   checks Envoy runs before it accepts a config (it NACKs on any violation):

   * message fields: ``required``; ``Any``: ``required``, ``in``, ``not_in``;
   * strings: ``const``, ``len``, ``min_len``/``max_len`` (code points),
     ``min_bytes``/``max_bytes``, ``prefix``/``suffix``/``contains``/
     ``not_contains``, ``in``/``not_in``, ``pattern`` (Python ``re`` standing
     in for RE2), ``well_known_regex`` HTTP_HEADER_NAME / HTTP_HEADER_VALUE
     (strict and non-strict forms, as Envoy defines them); ``ignore_empty``;
   * bytes: ``min_len``/``max_len``;
   * integers and floats, plain or in ``google.protobuf.*Value`` wrappers:
     ``const``, ``lt``/``lte``/``gt``/``gte``, ``in``/``not_in``;
   * enums: ``const``, ``defined_only``, ``in``/``not_in``;
   * durations: ``required``, ``lt``/``lte``/``gt``/``gte``;
   * repeated: ``min_items``/``max_items``, ``unique`` (scalars), and the
     ``items`` rules on every element; maps: ``min_pairs``/``max_pairs`` and
     the ``keys``/``values`` rules;
   * oneofs marked ``(validate.required)`` have a member set;
   * messages marked ``(validate.disabled)`` or ``(validate.ignored)`` are skipped.

   Not checked: the string formats ``email``, ``hostname``, ``ip``, ``uri``
   and ``address``, timestamps, and rules Envoy enforces only in C++ (for
   example that a cluster a route names exists).
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
from collections.abc import Callable, Iterable
from functools import cache, lru_cache
from typing import Any

import validate.validate_pb2 as pgv
from google.protobuf import any_pb2, descriptor, symbol_database, unknown_fields
from google.protobuf.message import DecodeError, Message

FD = descriptor.FieldDescriptor
_DB = symbol_database.Default()

# Envoy's definitions (validate.proto): strict follows RFC 7230, non-strict only
# forbids what would break HTTP framing.
_HEADER_NAME = {True: re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$"), False: re.compile(r"^[^\x00\n\r]*$")}
_HEADER_VALUE = {
    True: re.compile(r"^[^\x00-\x08\x0A-\x1F\x7F]*$"),
    False: re.compile(r"^[^\x00\n\r]*$"),
}
_WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
_NUMERIC_RULES = {
    "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64",
}  # fmt: skip


def _field_rules(field: Any) -> Any | None:
    options = field.GetOptions()
    if options.HasExtension(pgv.rules):
        return options.Extensions[pgv.rules]
    return None


@cache
def _plan(message_descriptor: Any) -> tuple[bool, tuple[tuple[Any, Any], ...], tuple[Any, ...]]:
    """(skip whole message, fields with rules, required oneofs) of a message type."""
    options = message_descriptor.GetOptions()
    skip = (options.HasExtension(pgv.disabled) and options.Extensions[pgv.disabled]) or (
        options.HasExtension(pgv.ignored) and options.Extensions[pgv.ignored]
    )
    fields = tuple((f, r) for f in message_descriptor.fields if (r := _field_rules(f)) is not None)
    oneofs = tuple(
        o
        for o in message_descriptor.oneofs
        if o.GetOptions().HasExtension(pgv.required) and o.GetOptions().Extensions[pgv.required]
    )
    return bool(skip), fields, oneofs


def _duration_nanos(value: Any) -> int:
    return int(value.seconds) * 1_000_000_000 + int(value.nanos)


def _check_number(path: str, value: float, rules: Any, errors: list[str]) -> None:
    def has(name: str) -> bool:
        return bool(rules.HasField(name))

    if has("const") and value != rules.const:
        errors.append(f"{path}: must equal {rules.const}")
    allowed = list(getattr(rules, "in"))
    if allowed and value not in allowed:
        errors.append(f"{path}: must be one of {allowed}")
    if value in list(rules.not_in):
        errors.append(f"{path}: must not be {value}")
    if isinstance(value, float) and math.isnan(value):
        return
    if has("gt") and not value > rules.gt:
        errors.append(f"{path}: must be greater than {rules.gt}")
    if has("gte") and not value >= rules.gte:
        errors.append(f"{path}: must be at least {rules.gte}")
    if has("lt") and not value < rules.lt:
        errors.append(f"{path}: must be less than {rules.lt}")
    if has("lte") and not value <= rules.lte:
        errors.append(f"{path}: must be at most {rules.lte}")


def _check_string(path: str, value: str, rules: Any, errors: list[str]) -> None:
    if rules.ignore_empty and value == "":
        return
    length = len(value)
    size = len(value.encode())
    checks = (
        ("const", lambda: value == rules.const, f"must equal {rules.const!r}"),
        ("len", lambda: length == rules.len, f"must be {rules.len} characters long"),
        ("min_len", lambda: length >= rules.min_len, f"must be at least {rules.min_len} characters long"),
        ("max_len", lambda: length <= rules.max_len, f"must be at most {rules.max_len} characters long"),
        ("len_bytes", lambda: size == rules.len_bytes, f"must be {rules.len_bytes} bytes long"),
        ("min_bytes", lambda: size >= rules.min_bytes, f"must be at least {rules.min_bytes} bytes long"),
        ("max_bytes", lambda: size <= rules.max_bytes, f"must be at most {rules.max_bytes} bytes long"),
        ("prefix", lambda: value.startswith(rules.prefix), f"must start with {rules.prefix!r}"),
        ("suffix", lambda: value.endswith(rules.suffix), f"must end with {rules.suffix!r}"),
        ("contains", lambda: rules.contains in value, f"must contain {rules.contains!r}"),
        ("not_contains", lambda: rules.not_contains not in value, f"must not contain {rules.not_contains!r}"),
        ("pattern", lambda: re.search(rules.pattern, value) is not None, f"must match {rules.pattern!r}"),
    )
    for name, ok, message in checks:
        if rules.HasField(name) and not ok():
            errors.append(f"{path}: {message}")
    allowed = list(getattr(rules, "in"))
    if allowed and value not in allowed:
        errors.append(f"{path}: must be one of {allowed}")
    if value in list(rules.not_in):
        errors.append(f"{path}: must not be {value!r}")
    if rules.HasField("well_known_regex"):
        strict = bool(rules.strict)  # proto2 default: true
        if rules.well_known_regex == pgv.HTTP_HEADER_NAME and not _HEADER_NAME[strict].match(value):
            errors.append(f"{path}: must be a valid HTTP header name")
        elif rules.well_known_regex == pgv.HTTP_HEADER_VALUE and not _HEADER_VALUE[strict].match(value):
            errors.append(f"{path}: must be a valid HTTP header value")


def _check_scalar(path: str, field: Any, value: Any, rules: Any, errors: list[str]) -> None:
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    sub = getattr(rules, kind)
    if kind == "string":
        _check_string(path, value, sub, errors)
    elif kind == "bytes":
        if sub.HasField("min_len") and len(value) < sub.min_len:
            errors.append(f"{path}: must be at least {sub.min_len} bytes long")
        if sub.HasField("max_len") and len(value) > sub.max_len:
            errors.append(f"{path}: must be at most {sub.max_len} bytes long")
    elif kind in _NUMERIC_RULES:
        _check_number(path, value, sub, errors)
    elif kind == "enum":
        if sub.HasField("const") and value != sub.const:
            errors.append(f"{path}: must equal {sub.const}")
        if sub.defined_only and field.enum_type.values_by_number.get(value) is None:
            errors.append(f"{path}: {value} is not a defined {field.enum_type.full_name} value")
        allowed = list(getattr(sub, "in"))
        if allowed and value not in allowed:
            errors.append(f"{path}: must be one of {allowed}")
        if value in list(sub.not_in):
            errors.append(f"{path}: must not be {value}")
    elif kind == "bool" and sub.HasField("const") and value != sub.const:
        errors.append(f"{path}: must be {sub.const}")


def _check_message_field(path: str, field: Any, message: Any, rules: Any, errors: list[str]) -> None:
    """Rules on a singular message field (presence, Any, Duration, wrappers)."""
    present = message.HasField(field.name)
    kind = rules.WhichOneof("type")
    type_name = field.message_type.full_name
    if kind == "message":
        if rules.message.required and not present:
            errors.append(f"{path}: is required")
        return
    if kind == "any":
        if rules.any.required and not present:
            errors.append(f"{path}: is required")
        if present:
            url = getattr(message, field.name).type_url
            allowed = list(getattr(rules.any, "in"))
            if allowed and url not in allowed:
                errors.append(f"{path}: type must be one of {allowed}")
            if url in list(rules.any.not_in):
                errors.append(f"{path}: type {url} is not allowed")
        return
    if kind == "duration":
        sub = rules.duration
        if sub.required and not present:
            errors.append(f"{path}: is required")
        if present:
            nanos = _duration_nanos(getattr(message, field.name))
            for name, compare, word in (
                ("gt", operator.gt, "greater than"),
                ("gte", operator.ge, "at least"),
                ("lt", operator.lt, "less than"),
                ("lte", operator.le, "at most"),
            ):
                if sub.HasField(name):
                    bound = _duration_nanos(getattr(sub, name))
                    if not compare(nanos, bound):
                        errors.append(f"{path}: must be {word} {bound / 1e9:g}s")
        return
    if type_name in _WRAPPERS:
        if present:
            _check_scalar(
                path,
                field.message_type.fields_by_name["value"],
                getattr(message, field.name).value,
                rules,
                errors,
            )
        return


def _validate(message: Any, path: str, errors: list[str]) -> None:
    if isinstance(message, any_pb2.Any):
        _validate_any(message, path, errors)
        return
    skip, fields, oneofs = _plan(message.DESCRIPTOR)
    if skip:
        return
    for oneof in oneofs:
        if message.WhichOneof(oneof.name) is None:
            errors.append(
                f"{path}: one of {oneof.name} ({', '.join(f.name for f in oneof.fields)}) is required"
            )
    for field, rules in fields:
        field_path = f"{path}.{field.name}"
        if field.is_repeated:
            _check_repeated(field_path, field, getattr(message, field.name), rules, errors)
        elif field.type == FD.TYPE_MESSAGE:
            _check_message_field(field_path, field, message, rules, errors)
        elif field.has_presence and not message.HasField(field.name):
            continue
        else:
            _check_scalar(field_path, field, getattr(message, field.name), rules, errors)
    for field, value in message.ListFields():
        if field.type != FD.TYPE_MESSAGE:
            continue
        field_path = f"{path}.{field.name}"
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE:
                for key in sorted(value):
                    _validate(value[key], f"{field_path}[{key!r}]", errors)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _validate(item, f"{field_path}[{index}]", errors)
        else:
            _validate(value, field_path, errors)


def _check_repeated(path: str, field: Any, values: Any, rules: Any, errors: list[str]) -> None:
    kind = rules.WhichOneof("type")
    if kind == "map":
        sub = rules.map
        if sub.HasField("min_pairs") and len(values) < sub.min_pairs:
            errors.append(f"{path}: needs at least {sub.min_pairs} entries")
        if sub.HasField("max_pairs") and len(values) > sub.max_pairs:
            errors.append(f"{path}: allows at most {sub.max_pairs} entries")
        entry = field.message_type
        for key in sorted(values):
            if sub.HasField("keys"):
                _check_scalar(f"{path}[{key!r}]", entry.fields_by_name["key"], key, sub.keys, errors)
            value_field = entry.fields_by_name["value"]
            if sub.HasField("values") and value_field.type != FD.TYPE_MESSAGE:
                _check_scalar(f"{path}[{key!r}]", value_field, values[key], sub.values, errors)
        return
    if kind != "repeated":
        return
    sub = rules.repeated
    if sub.ignore_empty and len(values) == 0:
        return
    if sub.HasField("min_items") and len(values) < sub.min_items:
        errors.append(f"{path}: needs at least {sub.min_items} items")
    if sub.HasField("max_items") and len(values) > sub.max_items:
        errors.append(f"{path}: allows at most {sub.max_items} items")
    if sub.unique and field.type != FD.TYPE_MESSAGE and len(set(values)) != len(values):
        errors.append(f"{path}: items must be unique")
    if sub.HasField("items"):
        for index, item in enumerate(values):
            item_path = f"{path}[{index}]"
            if field.type == FD.TYPE_MESSAGE:
                if sub.items.WhichOneof("type") == "message":
                    continue  # presence of a list element is implied
                if field.message_type.full_name in _WRAPPERS:
                    value_field = field.message_type.fields_by_name["value"]
                    _check_scalar(item_path, value_field, item.value, sub.items, errors)
            else:
                _check_scalar(item_path, field, item, sub.items, errors)


def _validate_any(packed: Any, path: str, errors: list[str]) -> None:
    # Typed configs repeat across thousands of routes (one per policy version):
    # each distinct payload is checked once, its problems reported under each path.
    problems = _any_problems(packed.type_url, packed.value)
    errors.extend(f"{path}{problem}" for problem in problems)


@lru_cache(maxsize=16384)
def _any_problems(type_url: str, value: bytes) -> tuple[str, ...]:
    """Problems of one ``Any`` payload, each as a suffix of the path it is found at."""
    errors: list[str] = []
    _check_any(any_pb2.Any(type_url=type_url, value=value), "", errors)
    return tuple(errors)


def _check_any(packed: Any, path: str, errors: list[str]) -> None:
    type_name = packed.type_url.rpartition("/")[2]
    try:
        message_class = _DB.GetSymbol(type_name)
    except KeyError:
        errors.append(f"{path}: unknown type {packed.type_url!r}")
        return
    inner = message_class()
    try:
        inner.ParseFromString(packed.value)
    except DecodeError as exc:
        errors.append(f"{path}: payload is not a valid {type_name}: {exc}")
        return
    if len(unknown_fields.UnknownFieldSet(inner)):
        errors.append(f"{path}: payload has fields unknown to {type_name}")
    repacked = any_pb2.Any()
    repacked.Pack(inner, deterministic=True)
    if repacked.value != packed.value or repacked.type_url != packed.type_url:
        errors.append(f"{path}: does not round-trip through Any")
    _validate(inner, f"{path}<{type_name}>", errors)


def validate_message(message: Message, name: str) -> list[str]:
    """Problems of one resource (empty when Envoy would accept it, as far as checked)."""
    errors: list[str] = []
    encoded = message.SerializeToString(deterministic=True)
    decoded = type(message).FromString(encoded)
    if decoded != message or decoded.SerializeToString(deterministic=True) != encoded:
        errors.append(f"{name}: does not round-trip through {message.DESCRIPTOR.full_name}")
    _validate(message, name, errors)
    return errors


class ProblemMemo:
    """Validation results by a digest of the encoding: a pure function of the bytes, kept across renders.

    Keyed by sha256, not by the bytes themselves: at 10,000 Routes the
    encodings are tens of megabytes, the digests and their (almost always
    empty) results a few. Bounded; the oldest results go first.
    """

    def __init__(self, size: int = 1 << 17) -> None:
        self._size = size
        self._results: dict[bytes, tuple[str, ...]] = {}

    def get(self, full_name: str, encoded: bytes, check: Callable[[], list[str]]) -> tuple[str, ...]:
        key = hashlib.sha256(full_name.encode() + b"\0" + encoded).digest()
        found = self._results.get(key)
        if found is None:
            found = tuple(check())
            if len(self._results) >= self._size:
                del self._results[next(iter(self._results))]
            self._results[key] = found
        return found


_PROBLEMS = ProblemMemo()


def encoded_problems(full_name: str, encoded: bytes) -> tuple[str, ...]:
    """``validate_message`` of a serialized message of type ``full_name``, once per distinct encoding."""

    def check() -> list[str]:
        return validate_message(_DB.GetSymbol(full_name).FromString(encoded), "")

    return _PROBLEMS.get(full_name, encoded, check)


def validate_all(resources: Iterable[tuple[str, Message]]) -> list[str]:
    """Problems of every ``(name, resource)``."""
    errors: list[str] = []
    for name, message in resources:
        errors.extend(validate_message(message, name))
    return errors
