"""The OpenAPI documents of the served kinds: ``/openapi/v2`` and ``/openapi/v3``.

kubectl reads them for three things: whether a kind's PATCH accepts the
``fieldValidation`` parameter (then ``kubectl apply`` leaves validation,
strict by default, to the server instead of refusing to run without
``--validate=false``), ``kubectl explain`` (v3 documents, v2 with
``--output plaintext-openapiv2``), and strategic-merge metadata of built-in
kinds. Like a real server:

* ``/openapi/v3`` lists one document per group-version (``api/v1``,
  ``apis/apps/v1``, ``apis/apx.dev/v1alpha1``...) with a ``serverRelativeURL``
  carrying a content hash, and ``/openapi/v3/apis/{group}/{version}`` is an
  OpenAPI 3.0 document with that group-version's paths and
  ``components.schemas`` (references as ``#/components/schemas/...``);
* ``/openapi/v2`` is one Swagger 2.0 document of everything (JSON; kubectl's
  protobuf request is answered by :mod:`.openapi_proto`).

Built-in kinds use the definitions of :mod:`.definitions`; custom resources
use their CRD's ``openAPIV3Schema`` under the real server's name
(``dev.apx.v1alpha1.Route``), with ``metadata`` pointing at ``ObjectMeta``
and the ``x-kubernetes-group-version-kind`` extension. Documents are cached
per set of served kinds, so a CRD change publishes a new hash. Called by
:mod:`.emulator`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from .definitions import REF_PREFIX, builtin_definitions, closure, definition_name, references
from .registry import Kind, Registry

V3_PREFIX = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_ALWAYS = (
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
)
_API_VERSION_DOC = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should "
    "convert recognized schemas to the latest internal value, and may reject unrecognized values. "
    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
)
_KIND_DOC = (
    "Kind is a string value representing the REST resource this object represents. Servers may infer "
    "this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)
_METADATA_DOC = (
    "Standard object's metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
INFO = {"title": "Kubernetes", "version": "v1.32.0"}


def _gvk(kind: Kind) -> dict[str, str]:
    return {"group": kind.group, "kind": kind.kind, "version": kind.version}


def custom_definition_name(kind: Kind) -> str:
    """The real server's name of a custom kind's definition: reversed group, version, kind."""
    return ".".join([*reversed(kind.group.split(".")), kind.version, kind.kind])


def _custom_definition(kind: Kind) -> dict[str, Any]:
    schema: dict[str, Any] = copy.deepcopy(kind.schema) if kind.schema else {"type": "object"}
    properties: dict[str, Any] = schema.setdefault("properties", {})
    properties["apiVersion"] = {"description": _API_VERSION_DOC, "type": "string"} | (
        properties.get("apiVersion") or {}
    )
    properties["kind"] = {"description": _KIND_DOC, "type": "string"} | (properties.get("kind") or {})
    properties["metadata"] = {"$ref": REF_PREFIX + OBJECT_META, "description": _METADATA_DOC}
    schema["x-kubernetes-group-version-kind"] = [_gvk(kind)]
    return schema


def _definitions(kinds: list[Kind]) -> tuple[dict[str, dict[str, Any]], dict[Kind, str]]:
    """The definitions a set of kinds needs (with what they reference), and each kind's name."""
    builtins = builtin_definitions()
    names: dict[Kind, str] = {}
    custom: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        if kind.crd is not None:
            name = custom_definition_name(kind)
            custom[name] = _custom_definition(kind)
        else:
            found = definition_name(kind.group, kind.version, kind.kind)
            if found is None:
                continue
            name = found
        names[kind] = name
    roots = {*_ALWAYS, *(name for name in names.values() if name not in custom)}
    for definition in custom.values():
        roots |= references(definition)
    result = {name: builtins[name] for name in sorted(closure(roots, builtins))}
    result.update(custom)
    return result, names


def _rewrite_refs(node: Any, prefix: str, *, v3: bool) -> Any:
    """Point references at ``prefix``; in v3, a reference with siblings goes under ``allOf``."""
    if isinstance(node, list):
        return [_rewrite_refs(item, prefix, v3=v3) for item in node]
    if not isinstance(node, dict):
        return node
    result = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            result[key] = {name: _rewrite_refs(sub, prefix, v3=v3) for name, sub in value.items()}
        else:
            result[key] = _rewrite_refs(value, prefix, v3=v3)
    ref = result.get("$ref")
    if isinstance(ref, str) and ref.startswith(REF_PREFIX):
        target = prefix + ref[len(REF_PREFIX) :]
        if v3 and len(result) > 1:
            del result["$ref"]
            result["allOf"] = [{"$ref": target}]
        else:
            result["$ref"] = target
    return result


# ------------------------------------------------------------------- paths


def _parameter(name: str, description: str, *, where: str = "query", v3: bool) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": where, "description": description}
    if where == "path":
        parameter["required"] = True
    if v3:
        parameter["schema"] = {"type": "string", "uniqueItems": True}
    else:
        parameter["type"] = "string"
        parameter["uniqueItems"] = True
    return parameter


def _write_parameters(v3: bool, *, patch: bool = False) -> list[dict[str, Any]]:
    parameters = [
        _parameter("dryRun", "When present, indicates that modifications should not be persisted.", v3=v3),
        _parameter("fieldManager", "fieldManager is a name associated with the actor making changes.", v3=v3),
        _parameter(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing "
            "unknown or duplicate fields. Valid values are: Ignore, Warn (the default) and Strict.",
            v3=v3,
        ),
    ]
    if patch:
        parameters.append(_parameter("force", "Force is going to force Apply requests.", v3=v3))
    return parameters


def _body(ref: str, v3: bool, types: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    if v3:
        return {"content": {media: {"schema": {"$ref": ref}} for media in types}, "required": True}
    return {"name": "body", "in": "body", "required": True, "schema": {"$ref": ref}}


def _response(ref: str, v3: bool) -> dict[str, Any]:
    if v3:
        return {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}}
    return {"200": {"description": "OK", "schema": {"$ref": ref}}}


def _operation(
    action: str, kind: Kind, ref: str, *, v3: bool, body: str | None = None, patch: bool = False
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{action}{kind.kind}",
        "tags": [kind.api_version],
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(kind),
        "responses": _response(ref, v3),
    }
    parameters: list[dict[str, Any]] = []
    if action in ("post", "put", "patch"):
        parameters = _write_parameters(v3, patch=patch)
    if body is not None:
        if v3:
            operation["requestBody"] = _body(
                body,
                v3,
                (
                    "application/apply-patch+yaml",
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                )
                if patch
                else ("application/json",),
            )
        else:
            parameters = [_body(body, v3), *parameters]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _kind_paths(kind: Kind, name: str, prefix: str, *, v3: bool) -> dict[str, dict[str, Any]]:
    ref = prefix + name
    patch_ref = prefix + "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
    base = f"/api/{kind.version}" if not kind.group else f"/apis/{kind.group}/{kind.version}"
    scope = f"{base}/namespaces/{{namespace}}" if kind.namespaced else base
    common = [_parameter("name", f"name of the {kind.kind}", where="path", v3=v3)]
    if kind.namespaced:
        namespace = _parameter(
            "namespace", "object name and auth scope, such as for teams and projects", where="path", v3=v3
        )
        common.append(namespace)
    item: dict[str, Any] = {
        "get": _operation("get", kind, ref, v3=v3),
        "put": _operation("put", kind, ref, v3=v3, body=ref),
        "patch": _operation("patch", kind, ref, v3=v3, body=patch_ref, patch=True),
        "delete": _operation("delete", kind, prefix + _ALWAYS[0], v3=v3),
        "parameters": common,
    }
    collection: dict[str, Any] = {
        "get": _operation("list", kind, ref, v3=v3),
        "post": _operation("post", kind, ref, v3=v3, body=ref),
        "delete": _operation("deletecollection", kind, prefix + _ALWAYS[0], v3=v3),
    }
    if kind.namespaced:
        collection["parameters"] = common[1:]
    paths: dict[str, dict[str, Any]] = {
        f"{scope}/{kind.plural}": collection,
        f"{scope}/{kind.plural}/{{name}}": item,
    }
    for subresource in sorted(kind.subresources):
        paths[f"{scope}/{kind.plural}/{{name}}/{subresource}"] = {
            "get": _operation("get", kind, ref, v3=v3),
            "put": _operation("put", kind, ref, v3=v3, body=ref),
            "patch": _operation("patch", kind, ref, v3=v3, body=patch_ref, patch=True),
            "parameters": common,
        }
    return paths


# --------------------------------------------------------------- documents


def group_version_key(kind: Kind) -> str:
    """The key of a kind's document in the v3 discovery (``api/v1``, ``apis/apps/v1``)."""
    return f"apis/{kind.group}/{kind.version}" if kind.group else f"api/{kind.version}"


def _order(kind: Kind) -> tuple[str, str, str]:
    return (kind.group, kind.version, kind.plural)


def v3_document(kinds: list[Kind]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of one group-version's kinds."""
    definitions, names = _definitions(kinds)
    paths: dict[str, Any] = {}
    for kind, name in sorted(names.items(), key=lambda item: item[0].plural):
        paths.update(_kind_paths(kind, name, V3_PREFIX, v3=True))
    return {
        "openapi": "3.0.0",
        "info": INFO,
        "paths": paths,
        "components": {"schemas": _rewrite_refs(definitions, V3_PREFIX, v3=True)},
    }


def v2_document(kinds: list[Kind]) -> dict[str, Any]:
    """The Swagger 2.0 document of every served kind."""
    definitions, names = _definitions(kinds)
    paths: dict[str, Any] = {}
    for kind, name in sorted(names.items(), key=lambda item: _order(item[0])):
        paths.update(_kind_paths(kind, name, "#/definitions/", v3=False))
    return {
        "swagger": "2.0",
        "info": INFO,
        "paths": paths,
        "definitions": _rewrite_refs(definitions, "#/definitions/", v3=False),
    }


class OpenApiDocuments:
    """The documents of a registry, rebuilt only when the served kinds change."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        # Kind objects are replaced whenever a CRD changes; holding them keeps their identity valid.
        self._cache: dict[str, tuple[tuple[Kind, ...], bytes]] = {}

    def _kinds_by_document(self) -> dict[str, list[Kind]]:
        found: dict[str, list[Kind]] = {}
        for kind in self._registry:
            found.setdefault(group_version_key(kind), []).append(kind)
        return found

    def _cached(self, key: str, kinds: list[Kind], build: Any) -> bytes:
        ordered = tuple(sorted(kinds, key=_order))
        hit = self._cache.get(key)
        same = hit is not None and len(hit[0]) == len(ordered)
        if hit is not None and same and all(a is b for a, b in zip(hit[0], ordered, strict=True)):
            return hit[1]
        body = json.dumps(build(list(ordered)), separators=(",", ":")).encode()
        self._cache[key] = (ordered, body)
        return body

    def v3_index(self) -> dict[str, Any]:
        paths = {}
        for key in sorted(self._kinds_by_document()):
            digest = hashlib.sha512(self.v3(key) or b"").hexdigest().upper()
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
        return {"paths": paths}

    def v3(self, key: str) -> bytes | None:
        """The document at ``/openapi/v3/{key}`` as JSON, or None when nothing is served there."""
        kinds = self._kinds_by_document().get(key.strip("/"))
        if not kinds:
            return None
        return self._cached("v3:" + key.strip("/"), kinds, v3_document)

    def v2(self) -> bytes:
        return self._cached("v2", list(self._registry), v2_document)
