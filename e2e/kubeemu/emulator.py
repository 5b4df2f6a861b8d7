"""The emulated Kubernetes API server: kmock's ``KubernetesEmulator``, made faithful.

:class:`KubeEmulator` subclasses ``kmock.KubernetesEmulator`` and keeps kmock's
request routing: every request becomes a ``kmock.Request`` and goes through
kmock's reactions by priority, so tests can still intercept any request with
the kmock DSL (``emulator['patch', kmock.resource('apx.dev/v1alpha1/products')]
<< 500``) and the emulated API serves what no reaction takes. kmock routes
the verbs to ``_serve_list``/``_serve_watch``/``_serve_fetch``/
``_serve_create``/``_serve_update``/``_serve_delete`` and discovery to
``_serve_api``/``_serve_apis``/``_serve_group``/``_serve_version``/
``_serve_server_version``; this class overrides those with implementations
backed by :class:`.store.Store`.

What is overridden, and why:

* ``__call__`` parses requests itself: kmock's path parser fails on
  ``/api/v1/namespaces`` and knows only ``watch=true``; here ``PUT`` is an
  update, ``watch=true|True|1`` a watch, YAML bodies are decoded, and request
  logs are bounded (kmock keeps every request forever).
* ``_handle`` skips ``KubernetesEmulator._handle``, which writes kmock's object
  store with plain merge semantics before routing (writes happen in the
  store), and matches reactions without scanning the request log for each of
  them (kmock's ``request in view`` costs log size x reactions per request).
* Responses that are not a plain ``200`` JSON body (``201 Created``, watch
  streams, ``Status`` errors) leave kmock's payload rendering through the
  internal :class:`Reply` exception, since a kmock payload cannot choose its
  status code per request.

Called by :mod:`.serving` (served over HTTP with kmock's ``Server``) and by
tests that drive it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

# Re-exported by kmock but missing from its __all__; kmock raises it for depleted reactions.
from kmock._internal.rendering import ReactionMismatchError

from . import errors, openapi_proto, protobuf, tables
from .base import WriteOptions
from .errors import ApiError
from .openapi import OpenApiDocuments
from .registry import SUBRESOURCE_VERBS, VERBS, Kind
from .selectors import FieldSelector, LabelSelector
from .store import PATCH_TYPES, Store
from .streams import WatchStream

logger = logging.getLogger(__name__)

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubeemu",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
_TRUE = ("true", "True", "1")


class Reply(Exception):
    """Carries a finished aiohttp response out of kmock's payload rendering."""

    def __init__(self, response: aiohttp.web.StreamResponse) -> None:
        super().__init__()
        self.response = response


def _json_response(status: int, body: Any) -> aiohttp.web.Response:
    return aiohttp.web.Response(status=status, text=json.dumps(body), content_type="application/json")


def status_response(error: kmock.KubernetesError) -> aiohttp.web.Response:
    return _json_response(error.status, errors.status_body(error))


@attrs.frozen
class _Route:
    group: str | None = None
    version: str | None = None
    namespace: str | None = None
    plural: str | None = None
    name: str | None = None
    subresource: str | None = None


def _route(path: str) -> _Route:
    parts = [part for part in path.split("/") if part]
    if len(parts) < 2 or parts[0] not in ("api", "apis"):
        return _Route()
    if parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) == 2:
        return _Route(group=parts[1])
    else:
        group, version, rest = parts[1], parts[2], parts[3:]
    namespace = None
    # /api/v1/namespaces/{ns}/status is the namespace's own subresource, not a resource in {ns}.
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    return _Route(
        group=group,
        version=version,
        namespace=namespace,
        plural=rest[0] if rest else None,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def _action(method: str, route: _Route, query: Mapping[str, str]) -> kmock.action | None:
    if route.plural is None:
        return None  # discovery
    if method == "GET" and query.get("watch") in _TRUE:
        return kmock.action.WATCH
    match method:
        case "GET":
            return kmock.action.FETCH if route.name else kmock.action.LIST
        case "POST":
            return kmock.action.CREATE
        case "PUT" | "PATCH":
            return kmock.action.UPDATE
        case "DELETE":
            return kmock.action.DELETE
    return None


def _decode_body(raw: aiohttp.web.BaseRequest, body: bytes) -> Any:
    if not body.strip():
        return None
    content_type = raw.content_type
    if raw.method == "PATCH" and content_type not in PATCH_TYPES:
        raise errors.unsupported_media_type(content_type)
    if content_type == "application/vnd.kubernetes.protobuf" and raw.method in ("POST", "PUT"):
        return protobuf.decode(body, content_type)
    if "protobuf" in content_type or "cbor" in content_type:
        raise errors.unsupported_media_type(content_type)
    try:
        if content_type in _YAML_TYPES or content_type == "application/apply-patch+yaml":
            return _load_yaml(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(
            f"the body of the request could not be decoded as {content_type}: {exc}"
        ) from None


def _load_yaml(body: bytes) -> Any:
    """A YAML body (server-side apply, kubectl): JSON ones with the JSON parser.

    JSON is YAML, and clients (kubectl, kopf, the operator) mostly send their
    apply patches as JSON: PyYAML's pure-Python scanner took ~0.5 ms per KB of
    them, so a 768 KiB snapshot ConfigMap held this single-threaded server for
    ~0.4 s, and every request behind it waited (the API server reads them with
    a compiled parser). Anything that is not valid JSON goes to the YAML parser.
    """
    if body.lstrip()[:1] == b"{":
        with contextlib.suppress(ValueError):
            return json.loads(body)
    return yaml.safe_load(body)


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(str(value))
    except ValueError:
        raise errors.bad_request(f"invalid value of {name}: {value!r}") from None


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the real API server's semantics (see module doc)."""

    history_size: int = 4096
    bookmark_interval: float = 60.0
    request_log_size: int = 100
    event_ttl: float = 3600.0
    _store: Store = attrs.field(init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _watches: int = attrs.field(default=0, init=False)
    _openapi: OpenApiDocuments = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._store = Store(
            self.objects, self.resources, history_size=self.history_size, event_ttl=self.event_ttl
        )
        self._openapi = OpenApiDocuments(self._store.registry)
        for probe in ("/healthz", "/livez", "/readyz"):
            self.fallback[f"get {probe}"] << b"ok"
        self.fallback["get /openapi/v2"] << self._serve_openapi_v2
        self.fallback["get", re.compile(r"/openapi/v3(/.*)?")] << self._serve_openapi_v3

    @property
    def store(self) -> Store:
        return self._store

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def active_watches(self) -> int:
        return self._watches

    def shutdown(self) -> None:
        """End every watch stream (so the HTTP server can stop without waiting)."""
        self._closing = True
        self._store.log.wake()

    # --------------------------------------------------------------- entry

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        try:
            request = self._parse_request(raw, body)
        except kmock.KubernetesError as exc:
            return status_response(exc)
        self._remember(request)
        try:
            return await self._handle(request)
        except Reply as reply:
            return reply.response
        except kmock.KubernetesError as exc:
            return status_response(exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            # A kmock DSL stream that failed after it started: finish what was sent.
            started = exc.args[0] if exc.args else None
            if isinstance(started, aiohttp.web.StreamResponse) and started.prepared:
                await started.write_eof()
                return started
            logger.exception("kubeemu: unexpected failure serving %s %s", raw.method, raw.path_qs)
            if self._errors:
                self._errors[-1].append(exc)
                del self._errors[-1][: -max(self.request_log_size, 1)]
            return status_response(ApiError(status=500, reason="InternalError", message=repr(exc)))

    def _parse_request(self, raw: aiohttp.web.BaseRequest, body: bytes) -> kmock.Request:
        route = _route(raw.path)
        query = dict(raw.query)
        resource = None
        if route.group is not None:
            resource = kmock.resource(group=route.group, version=route.version, plural=route.plural)
        data = _decode_body(raw, body)
        return kmock.Request(
            id=len(self._requests),
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=query,
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=body.decode("utf-8", errors="replace"),
            data=data,
            action=_action(raw.method, route, query),
            resource=resource,
            namespace=route.namespace,
            name=route.name,
            subresource=route.subresource,
        )

    def _remember(self, request: kmock.Request) -> None:
        # kmock's views with history (slices, exclusions) find a request in this log, so
        # the current one stays in it while it is served even when the log is disabled.
        self._requests.append(request)

    def _forget(self) -> None:
        keep = self.request_log_size
        del self._requests[: -keep if keep else None]
        # kmock's reactions keep the requests they served; bound them too.
        for payload in self._payloads:
            del payload._requests[: -keep if keep else None]

    @staticmethod
    def _sees(payload: kmock.Reaction, request: kmock.Request) -> bool:
        """Whether a reaction's view admits the request.

        kmock answers this by scanning the whole request log through the view
        (``request in view``), which costs log size x reactions per request. A
        chain of plain criteria filters needs no history, so its criteria are
        checked directly; views that do need history (slices, exclusions,
        groups) still ask kmock.
        """
        node: kmock.View = payload._source
        while True:
            if isinstance(node, kmock.Root):
                return True
            if type(node) is kmock.Filter:
                if not node.criteria(request):
                    return False
                node = node._source
            elif type(node) is kmock.Priority:
                node = node._source
            else:
                return request in payload._source

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock.RawHandler._handle with the direct matching of _sees(): the reactions are tried by
        # priority (user reactions before the emulator's fallbacks), a depleted one is disabled.
        try:
            ranked = [tuple(-p for p in payload.priorities) for payload in self._payloads]
            width = max((len(rank) for rank in ranked), default=0)
            padded = [rank + (0,) * (width - len(rank)) for rank in ranked]
            order = sorted(range(len(self._payloads)), key=lambda index: padded[index])
            for payload in [self._payloads[index] for index in order]:
                if payload._disabled.is_set() or not self._sees(payload, request):
                    continue
                try:
                    return await payload(request)
                except ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    continue  # matched, but nothing to respond with: the next one decides
            raise ApiError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        finally:
            self._forget()

    # ----------------------------------------------------------- discovery

    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        return dict(SERVER_VERSION)

    async def _serve_api(self, request: kmock.Request) -> kmock.Payload:
        host = request.headers.get("Host", "127.0.0.1")
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }

    def _group_doc(self, group: str, versions: list[str]) -> dict[str, Any]:
        return {
            "name": group,
            "versions": [{"groupVersion": f"{group}/{version}", "version": version} for version in versions],
            "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
        }

    async def _serve_apis(self, request: kmock.Request) -> kmock.Payload:
        groups = self._store.registry.groups()
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [self._group_doc(group, versions) for group, versions in groups.items() if group],
        }

    async def _serve_group(self, request: kmock.Request) -> kmock.Payload:
        group = request.resource.group if request.resource is not None else None
        versions = self._store.registry.groups().get(group or "")
        if not group or not versions:
            raise ApiError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)}

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        assert request.resource is not None  # routed here only for /api/{v} and /apis/{g}/{v}
        group, version = request.resource.group or "", request.resource.version
        kinds = sorted(
            (kind for kind in self._store.registry if kind.group == group and kind.version == version),
            key=lambda kind: kind.plural,
        )
        if not kinds:
            raise ApiError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        resources: list[dict[str, Any]] = []
        for kind in kinds:
            entry: dict[str, Any] = {
                "name": kind.plural,
                "singularName": kind.singular,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": list(VERBS),
            }
            if kind.short_names:
                entry["shortNames"] = list(kind.short_names)
            if kind.categories:
                entry["categories"] = list(kind.categories)
            resources.append(entry)
            for subresource in sorted(kind.subresources):
                resources.append(
                    {
                        "name": f"{kind.plural}/{subresource}",
                        "singularName": "",
                        "namespaced": kind.namespaced,
                        "kind": kind.kind,
                        "verbs": list(SUBRESOURCE_VERBS),
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else str(version),
            "resources": resources,
        }

    async def _serve_root(self, request: kmock.Request) -> kmock.Payload:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz"}
        paths |= {"/openapi/v2", "/openapi/v3"}
        for group, versions in self._store.registry.groups().items():
            if group:
                paths.add(f"/apis/{group}")
                paths.update(f"/apis/{group}/{version}" for version in versions)
        return {"paths": sorted(paths)}

    # ------------------------------------------------------------- openapi

    async def _serve_openapi_v2(self, request: kmock.Request) -> kmock.Payload:
        accept = request.headers.get("Accept", "") or "*/*"
        if "protobuf" in accept:
            body = openapi_proto.encode_document(json.loads(self._openapi.v2()))
            content_type = openapi_proto.CONTENT_TYPE
        else:
            body, content_type = self._openapi.v2(), "application/json"
        raise Reply(aiohttp.web.Response(status=200, body=body, content_type=content_type))

    async def _serve_openapi_v3(self, request: kmock.Request) -> kmock.Payload:
        key = str(request.url.path).removeprefix("/openapi/v3").strip("/")
        if not key:
            return self._openapi.v3_index()
        body = self._openapi.v3(key)
        if body is None:
            raise ApiError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        # The hash in the URL names this exact content, so clients may cache it for good.
        headers = {"Cache-Control": "public, immutable"} if request.params.get("hash") else {}
        raise Reply(
            aiohttp.web.Response(status=200, body=body, content_type="application/json", headers=headers)
        )

    # ------------------------------------------------------------- helpers

    def _kind(self, request: kmock.Request) -> Kind:
        resource = request.resource
        kind = None
        if resource is not None and resource.version and resource.plural:
            kind = self._store.registry.find(resource.group or "", resource.version, resource.plural)
        if kind is None:
            raise ApiError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        if request.namespace is not None and not kind.namespaced:
            raise ApiError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        if request.subresource is not None and request.subresource not in kind.subresources:
            raise ApiError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        return kind

    @staticmethod
    def _check_accept(request: kmock.Request) -> bool:
        """Whether a Table is wanted; refuse clients that accept no JSON at all."""
        accept = request.headers.get("Accept", "") or "*/*"
        if not any(token in accept for token in ("json", "yaml", "*/*", "application/*")):
            raise errors.not_acceptable(accept)
        return "as=Table" in accept

    def _options(self, request: kmock.Request) -> WriteOptions:
        agent = request.headers.get("User-Agent", "") or "unknown"
        dry_run = request.params.get("dryRun") == "All"
        return WriteOptions(
            dry_run=dry_run,
            field_manager=request.params.get("fieldManager") or None,
            default_manager=agent.split("/", 1)[0][:128] or "unknown",
            strict=request.params.get("fieldValidation") == "Strict",
        )

    def _now(self) -> datetime.datetime:
        return self._store.clock()

    # ------------------------------------------------------------ the verbs

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        kind = self._kind(request)
        wants_table = self._check_accept(request)
        params = request.params
        page = self._store.list_objects(
            kind,
            request.namespace,
            LabelSelector.parse(params.get("labelSelector")),
            FieldSelector.parse(params.get("fieldSelector")),
            limit=_int_param(params, "limit"),
            continue_token=params.get("continue") or None,
        )
        if wants_table:
            return tables.table(
                kind,
                page.items,
                resource_version=str(page.resource_version),
                now=self._now(),
                continue_token=page.continue_token,
                remaining=page.remaining,
            )
        metadata: dict[str, Any] = {"resourceVersion": str(page.resource_version)}
        if page.continue_token:
            metadata["continue"] = page.continue_token
            metadata["remainingItemCount"] = page.remaining
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": metadata,
            "items": page.items,
        }

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        kind = self._kind(request)
        wants_table = self._check_accept(request)
        assert request.name is not None  # FETCH is routed only for named URLs
        obj = self._store.get(kind, request.namespace, request.name)
        if wants_table:
            return tables.table(kind, [obj], resource_version=None, now=self._now())
        return obj

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        kind = self._kind(request)
        if request.name is not None:
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")
        if kind.namespaced and request.namespace is None:
            raise errors.method_not_allowed(
                "the server does not allow this method on the requested resource "
                f"(post {kind.plural}.{kind.group})"
            )
        created = self._store.create(kind, request.namespace, request.data, self._options(request))
        raise Reply(_json_response(201, created))

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        kind = self._kind(request)
        if request.name is None:
            raise errors.method_not_allowed("the server does not allow this method on the requested resource")
        if request.method == kmock.method.PUT:
            return self._store.replace(
                kind,
                request.namespace,
                request.name,
                request.data,
                self._options(request),
                subresource=request.subresource,
            )
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch_type = PATCH_TYPES.get(content_type)
        if patch_type is None:
            raise errors.unsupported_media_type(content_type)
        obj, created = self._store.patch(
            kind,
            request.namespace,
            request.name,
            patch_type,
            request.data,
            self._options(request),
            subresource=request.subresource,
        )
        raise Reply(_json_response(201 if created else 200, obj))

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        kind = self._kind(request)
        options = request.data if isinstance(request.data, dict) else {}
        propagation = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        if propagation is None and options.get("orphanDependents") is True:
            propagation = "Orphan"
        dry_run = request.params.get("dryRun") == "All" or "All" in (options.get("dryRun") or [])
        if request.name is None:
            deleted = self._store.delete_collection(
                kind,
                request.namespace,
                LabelSelector.parse(request.params.get("labelSelector")),
                FieldSelector.parse(request.params.get("fieldSelector")),
                propagation=propagation,
                dry_run=dry_run,
            )
            return {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self._store.rv)},
                "items": deleted,
            }
        return self._store.delete(
            kind,
            request.namespace,
            request.name,
            propagation=propagation,
            preconditions=options.get("preconditions"),
            dry_run=dry_run,
        )

    # ------------------------------------------------------------- watching

    # kmock's _serve_watch is an async generator that kmock streams; this one writes its own
    # stream (headers, ERROR events, end of stream) and hands it over with Reply.
    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:  # type: ignore[override]
        kind = self._kind(request)
        wants_table = self._check_accept(request)
        params = request.params
        labels = LabelSelector.parse(params.get("labelSelector"))
        fields = FieldSelector.parse(params.get("fieldSelector"))
        timeout = _int_param(params, "timeoutSeconds")
        since = params.get("resourceVersion") or ""
        if since not in ("", "0") and not since.isdigit():
            raise errors.bad_request(f'invalid resource version: "{since}"')
        watch = WatchStream(
            store=self._store,
            emulator=self,
            kind=kind,
            namespace=request.namespace,
            name=request.name,
            labels=labels,
            fields=fields,
            table=wants_table,
            bookmarks=params.get("allowWatchBookmarks") in _TRUE,
            initial_end=params.get("sendInitialEvents") in _TRUE,
        )
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        raw = request._raw_request
        assert raw is not None  # every request parsed here carries its aiohttp request
        await response.prepare(raw)
        self._watches += 1
        try:
            await watch.run(response, since, timeout)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing to finish
        finally:
            self._watches -= 1
        raise Reply(response)
