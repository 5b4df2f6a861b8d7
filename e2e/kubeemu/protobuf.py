"""Decoding of the Kubernetes protobuf request bodies of a few simple core kinds.

kubectl's generator commands (``kubectl create namespace|configmap|secret|
serviceaccount``) send bodies as ``application/vnd.kubernetes.protobuf``
(the ``k8s\\x00`` envelope around a ``runtime.Unknown`` holding the object),
and no Python package ships usable Kubernetes protobuf definitions. This
module decodes the wire format by hand for those kinds only, using the field
numbers of ``k8s.io/api/core/v1/generated.proto`` and
``k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto``; anything else is
refused with 415 (send JSON/YAML, e.g. ``kubectl apply``). Responses are
always JSON, which Go clients accept. Called by :mod:`.emulator`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from .errors import ApiError, unsupported_media_type

MAGIC = b"k8s\x00"

Fields = list[tuple[int, int, Any]]  # (field number, wire type, raw value)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Fields:
    fields: Fields = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            fields.append((number, wire, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            fields.append((number, wire, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            fields.append((number, wire, data[pos : pos + 8]))
            pos += 8
        elif wire == 5:
            fields.append((number, wire, data[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def _text(raw: Any) -> str:
    return bytes(raw).decode("utf-8")


def _map(fields: Fields, number: int, value: Callable[[Any], Any] = _text) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for field, _, raw in fields:
        if field == number:
            entry = {num: val for num, _, val in _fields(raw)}
            result[_text(entry.get(1, b""))] = value(entry.get(2, b""))
    return result


def _strings(fields: Fields, number: int) -> list[str]:
    return [_text(raw) for field, _, raw in fields if field == number]


def _one(fields: Fields, number: int) -> Any:
    for field, _, raw in fields:
        if field == number:
            return raw
    return None


def _owner_reference(raw: bytes) -> dict[str, Any]:
    fields = _fields(raw)
    ref: dict[str, Any] = {
        "apiVersion": _text(_one(fields, 5) or b""),
        "kind": _text(_one(fields, 1) or b""),
        "name": _text(_one(fields, 3) or b""),
        "uid": _text(_one(fields, 4) or b""),
    }
    if _one(fields, 6) is not None:
        ref["controller"] = bool(_one(fields, 6))
    if _one(fields, 7) is not None:
        ref["blockOwnerDeletion"] = bool(_one(fields, 7))
    return ref


def _object_meta(raw: bytes) -> dict[str, Any]:
    fields = _fields(raw)
    meta: dict[str, Any] = {}
    for number, key in ((1, "name"), (2, "generateName"), (3, "namespace"), (6, "resourceVersion")):
        value = _one(fields, number)
        if value:
            meta[key] = _text(value)
    for number, key in ((11, "labels"), (12, "annotations")):
        mapping = _map(fields, number)
        if mapping:
            meta[key] = mapping
    owners = [_owner_reference(raw) for field, _, raw in fields if field == 13]
    if owners:
        meta["ownerReferences"] = owners
    finalizers = _strings(fields, 14)
    if finalizers:
        meta["finalizers"] = finalizers
    return meta


def _b64(raw: Any) -> str:
    return base64.b64encode(bytes(raw)).decode()


def _namespace(fields: Fields) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    spec = _one(fields, 2)
    if spec:
        finalizers = _strings(_fields(spec), 1)
        if finalizers:
            obj["spec"] = {"finalizers": finalizers}
    return obj


def _configmap(fields: Fields) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if data := _map(fields, 2):
        obj["data"] = data
    if binary := _map(fields, 3, _b64):
        obj["binaryData"] = binary
    if _one(fields, 4) is not None:
        obj["immutable"] = bool(_one(fields, 4))
    return obj


def _secret(fields: Fields) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if data := _map(fields, 2, _b64):
        obj["data"] = data
    if secret_type := _one(fields, 3):
        obj["type"] = _text(secret_type)
    if string_data := _map(fields, 4):
        obj["stringData"] = string_data
    if _one(fields, 5) is not None:
        obj["immutable"] = bool(_one(fields, 5))
    return obj


def _service_account(fields: Fields) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if _one(fields, 4) is not None:
        obj["automountServiceAccountToken"] = bool(_one(fields, 4))
    return obj


_DECODERS: dict[tuple[str, str], Callable[[Fields], dict[str, Any]]] = {
    ("v1", "Namespace"): _namespace,
    ("v1", "ConfigMap"): _configmap,
    ("v1", "Secret"): _secret,
    ("v1", "ServiceAccount"): _service_account,
}


def decode(body: bytes, content_type: str) -> dict[str, Any]:
    """Decode a protobuf request body of a supported kind into its JSON form."""
    if not body.startswith(MAGIC):
        raise unsupported_media_type(content_type)
    try:
        envelope = _fields(body[len(MAGIC) :])
        type_meta = _fields(_one(envelope, 1) or b"")
        api_version = _text(_one(type_meta, 1) or b"")
        kind = _text(_one(type_meta, 2) or b"")
        decoder = _DECODERS.get((api_version, kind))
        if decoder is None:
            raise ApiError(
                status=415,
                reason="UnsupportedMediaType",
                message=f"kubeemu decodes protobuf bodies only for {sorted(k for _, k in _DECODERS)}, "
                f"not {api_version}/{kind}; send JSON or YAML (e.g. kubectl apply)",
            )
        fields = _fields(_one(envelope, 2) or b"")
        obj: dict[str, Any] = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": _object_meta(_one(fields, 1) or b""),
        }
        obj.update(decoder(fields))
        return obj
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(status=400, reason="BadRequest", message=f"malformed protobuf body: {exc}") from None
