"""A small async Kubernetes API client: the one place that owns the 404/409/422 policy.

Used by the Kubernetes applier, the status writer and the event recorder (all
under ``apx.controllers.appliers``), and by the e2e tests. It speaks plain
REST with aiohttp (already a kopf dependency) using kopf's own login helpers
for credentials, so it works the same against a real cluster (kubeconfig or
in-cluster service account) and the emulated API.

Policy, in one place:
* GET of a missing object → ``None`` (not an exception);
* DELETE of a missing object → success (deletion is idempotent);
* server-side apply with a field manager and ``force=true``: APX owns the
  fields it declares on objects it manages;
* 409 on apply/patch → retried once by callers that want it (``Conflict``);
* 422 → ``Invalid`` with the server's causes, never retried;
* connection errors and 5xx → ``Unavailable`` (callers back off and retry).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from apx.dataplane.common.redact import redact_document

FIELD_MANAGER = "apx-operator"


class KubeError(Exception):
    """A request failed; ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.body = dict(body or {})


class Conflict(KubeError):
    """409: a resourceVersion or field-ownership conflict."""


class Invalid(KubeError):
    """422: the server rejected the object; ``body['details']['causes']`` names the fields."""


class Unavailable(KubeError):
    """The API server could not be reached or answered 5xx/429."""


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if subresource:
            base += f"/{subresource}"
        return base


KINDS: dict[str, ResourceKind] = {
    kind.kind: kind
    for kind in (
        ResourceKind("v1", "ConfigMap", "configmaps"),
        ResourceKind("v1", "Service", "services"),
        ResourceKind("v1", "Secret", "secrets"),
        ResourceKind("v1", "Event", "events"),
        ResourceKind("v1", "Namespace", "namespaces", namespaced=False),
        ResourceKind("apps/v1", "Deployment", "deployments"),
        ResourceKind("apx.dev/v1alpha1", "Product", "products"),
        ResourceKind("apx.dev/v1alpha1", "Route", "routes"),
        ResourceKind("apx.dev/v1alpha1", "PolicyBundle", "policybundles"),
        ResourceKind(
            "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the API server is and how to authenticate."""

    server: str
    token: str | None = None
    ca_path: str | None = None
    ca_data: bytes | None = None
    certificate_path: str | None = None
    private_key_path: str | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        context = ssl.create_default_context(
            cafile=self.ca_path, cadata=self.ca_data.decode() if self.ca_data else None
        )
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certificate_path and self.private_key_path:
            context.load_cert_chain(self.certificate_path, self.private_key_path)
        return context


def connection_from_kopf(info: Any) -> Connection:
    """Build a ``Connection`` from kopf's ``ConnectionInfo`` (same credentials kopf uses)."""

    def _path(value: Any) -> str | None:
        return None if value is None else str(value if isinstance(value, str) else value.decode())

    ca_data = info.ca_data.encode() if isinstance(info.ca_data, str) else info.ca_data
    return Connection(
        server=str(info.server).rstrip("/"),
        token=info.token,
        ca_path=_path(info.ca_path),
        ca_data=ca_data,
        certificate_path=_path(info.certificate_path),
        private_key_path=_path(info.private_key_path),
        insecure=bool(info.insecure),
    )


def discover_connection() -> Connection:
    """Credentials the way kopf finds them: in-cluster service account first, then kubeconfig."""
    import kopf  # the login helpers only; imported lazily to keep this module light for tests

    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise Unavailable(0, "no Kubernetes credentials: set KUBECONFIG or run in a cluster")
    return connection_from_kopf(info)


class KubeClient:
    """Async REST client with APX's error policy. Use as an async context manager."""

    def __init__(self, connection: Connection, timeout: float = 30.0) -> None:
        self.connection = connection
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            headers = {"Accept": "application/json", "User-Agent": "apx-operator"}
            if self.connection.token:
                headers["Authorization"] = f"Bearer {self.connection.token}"
            connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context(), limit=32)
            self._session = aiohttp.ClientSession(headers=headers, connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """One request; returns the decoded body (``None`` for 404 on GET/DELETE)."""
        await self.open()
        assert self._session is not None
        data = None if body is None else (body if isinstance(body, str | bytes) else json.dumps(body))
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            async with self._session.request(
                method, self.connection.server + path, data=data, headers=headers, params=params
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = str(exc) or (
                f"no answer within {self._timeout.total:.0f} s"
                if isinstance(exc, TimeoutError) and self._timeout.total
                else type(exc).__name__
            )
            raise Unavailable(0, f"Kubernetes API at {self.connection.server} unreachable: {reason}") from exc
        decoded: dict[str, Any] = {}
        if text:
            try:
                loaded = json.loads(text)
                decoded = loaded if isinstance(loaded, dict) else {"items": loaded}
            except json.JSONDecodeError:
                decoded = {"message": text}
        if status < 300:
            return decoded
        message = str(decoded.get("message") or text or f"HTTP {status}")
        if status == 404 and method in ("GET", "DELETE"):
            return None
        if status == 409:
            raise Conflict(status, message, decoded)
        if status == 422:
            raise Invalid(status, message, decoded)
        if status >= 500 or status == 429:
            raise Unavailable(status, message, decoded)
        raise KubeError(status, message, decoded)

    # --- typed helpers -------------------------------------------------------

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return await self.request("GET", KINDS[kind].path(namespace, name))

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = []
        continue_token: str | None = None
        while True:
            page_params = dict(params or {})
            page_params["limit"] = "500"
            if continue_token:
                page_params["continue"] = continue_token
            result = await self.request("GET", KINDS[kind].path(namespace), params=page_params) or {}
            items.extend(result.get("items") or [])
            continue_token = (result.get("metadata") or {}).get("continue")
            if not continue_token:
                return items

    async def apply(self, manifest: Mapping[str, Any], force: bool = True) -> dict[str, Any]:
        """Server-side apply of a whole manifest with APX's field manager."""
        kind = KINDS[str(manifest["kind"])]
        meta = manifest["metadata"]
        params = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        namespace = meta.get("namespace") or ("default" if kind.namespaced else None)
        result = await self.request(
            "PATCH",
            kind.path(namespace, meta["name"]),
            body=manifest,
            content_type="application/apply-patch+yaml",
            params=params,
        )
        return result or {}

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch ``status`` through the status subresource (never touches spec).

        Every string is redacted first: status messages quote dependency errors, and no
        credential may reach an object users (and GitOps tools) read.
        """
        result = await self.request(
            "PATCH",
            KINDS[kind].path(namespace, name, "status"),
            body={"status": redact_document(status)},
            content_type="application/merge-patch+json",
        )
        return result or {}

    async def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete (background propagation); True when something was deleted."""
        result = await self.request(
            "DELETE", KINDS[kind].path(namespace, name), body={"propagationPolicy": "Background"}
        )
        return result is not None

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        kind = KINDS[str(manifest["kind"])]
        namespace = manifest["metadata"].get("namespace") or ("default" if kind.namespaced else None)
        result = await self.request("POST", kind.path(namespace), body=manifest)
        return result or {}
