"""Fixtures of the xDS tests: the ADS server on a free loopback port, fed from the samples.

The server is started in the test's own event loop; ``render(docs)`` turns
APX documents into the renderer's ``EnvoyOutput`` the operator would feed it.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry

from apx.controllers.renderers.envoy import EnvoyOutput, render_envoy
from apx.controllers.translate import translate
from apx.operator.xds import XdsLimits, XdsServer, XdsSnapshot

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "shop"


def sample_docs() -> list[dict[str, Any]]:
    docs = [
        d for f in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = NAMESPACE
    return docs


def render(docs: list[dict[str, Any]]) -> EnvoyOutput:
    return render_envoy(translate(docs).ir)


def edit_route(docs: list[dict[str, Any]], name: str, **spec: Any) -> list[dict[str, Any]]:
    """A copy of ``docs`` with Route ``name``'s spec fields replaced."""
    edited = copy.deepcopy(docs)
    for doc in edited:
        if doc["kind"] == "Route" and doc["metadata"]["name"] == name:
            doc["spec"].update(spec)
    return edited


async def start_server(docs: list[dict[str, Any]] | None, limits: XdsLimits | None = None) -> XdsServer:
    server = XdsServer("127.0.0.1", 0, registry=CollectorRegistry(), limits=limits)
    if docs is not None:
        server.set_snapshot(XdsSnapshot.from_envoy(render(docs)))
    await server.start()
    return server


@pytest_asyncio.fixture
async def server() -> AsyncIterator[XdsServer]:
    running = await start_server(sample_docs())
    try:
        yield running
    finally:
        await running.stop(0)
