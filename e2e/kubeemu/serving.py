"""Serving the emulator over HTTP, loading CRDs, and writing kubeconfigs.

:class:`EmulatorServer` is kmock's ``Server`` (an aiohttp low-level server on a
host and port) minus two things a long-running, shared API server must not
do: it opens no client session, and it does not install kmock's interceptor
of aiohttp's DNS resolution, which is process-wide and must be unwound in
LIFO order (several emulators in one process, each in its own thread, would
break that). :func:`serve` runs an emulator until its context exits and
stops open watches first so shutdown is immediate. Called by
:mod:`.__main__` and :mod:`.testing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import aiohttp.test_utils
import attrs
import kmock
import yaml
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_runner import ServerRunner
from aiohttp.web_server import Server

from .base import WriteOptions
from .emulator import KubeEmulator

# The real API server reads request bodies up to 3 MiB (``MaxRequestBodyBytes``); aiohttp's
# default is 1 MiB, which refused writes a real cluster accepts (a ConfigMap near its 1 MiB
# data limit travels base64-encoded inside a larger JSON body).
MAX_REQUEST_BODY_BYTES = 3 * 1024 * 1024


def _api_server_request(
    message: RawRequestMessage,
    payload: StreamReader,
    protocol: RequestHandler,
    writer: AbstractStreamWriter,
    task: asyncio.Task[None],
) -> BaseRequest:
    return BaseRequest(
        message, payload, protocol, writer, task, asyncio.get_running_loop(),
        client_max_size=MAX_REQUEST_BODY_BYTES,
    )  # fmt: skip


class _ApiTestServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's raw test server whose requests read bodies up to ``MAX_REQUEST_BODY_BYTES``.

    The request factory has to be given where the server is made: keyword
    arguments to the test server's constructor never reach it.
    """

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> ServerRunner:
        server = Server(
            self._handler, loop=self._loop, debug=debug, request_factory=_api_server_request, **kwargs
        )
        return ServerRunner(server, debug=debug, **kwargs)


@attrs.mutable
class EmulatorServer(kmock.Server):
    """kmock's HTTP server for a handler, without the client and DNS interception."""

    async def __aenter__(self) -> Self:
        if self._managed_server is not None:
            raise RuntimeError("The server can be started only once.")
        self._managed_server = _ApiTestServer(self.handler, host=self._host, port=self._port)
        await self._managed_server.__aenter__()
        self.handler.servers.append(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.handler.servers.remove(self)
        assert self._managed_server is not None
        await self._managed_server.__aexit__(exc_type, exc_value, traceback)
        self._managed_server = None


def load_crds(emulator: KubeEmulator, directory: pathlib.Path) -> list[str]:
    """Register every CustomResourceDefinition found in ``*.yaml``/``*.yml`` files."""
    crd_kind = emulator.store.registry.find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    assert crd_kind is not None
    names: list[str] = []
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc.get("metadata", {}).get("name", "")
            options = WriteOptions(field_manager="kubeemu", default_manager="kubeemu")
            emulator.store.patch(crd_kind, None, name, "apply", doc, options)
            names.append(name)
    return names


def kubeconfig(url: str, *, namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig for the emulator: plain HTTP, no credentials."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeemu", "cluster": {"server": url}}],
        "users": [{"name": "kubeemu", "user": {}}],
        "contexts": [
            {"name": "kubeemu", "context": {"cluster": "kubeemu", "user": "kubeemu", "namespace": namespace}}
        ],
        "current-context": "kubeemu",
        "preferences": {},
    }


def write_kubeconfig(path: pathlib.Path, url: str, *, namespace: str = "default") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig(url, namespace=namespace), sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def serve(
    emulator: KubeEmulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[EmulatorServer]:
    """Serve ``emulator`` on ``host:port`` (0 = a free port) until the context exits."""
    async with emulator, EmulatorServer(emulator, host=host, port=port or None) as server:
        try:
            yield server
        finally:
            emulator.shutdown()


def url_of(server: EmulatorServer) -> str:
    return f"http://{server.host}:{server.port}"
