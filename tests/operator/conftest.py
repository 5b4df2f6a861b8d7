"""Fixtures of the operator's API-level tests: one emulated Kubernetes API per test and a client for it.

Used by the reconciler, last-good, canary-loop and metrics tests in this
folder; Redis and the Pub/Sub emulator come from ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from apx.controllers.appliers.kube import Connection, KubeClient
from e2e.kubeemu.testing import RunningEmulator, running_emulator

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.yaml"))


def samples() -> list[dict[str, Any]]:
    """Every document of ``samples/``, in file order."""
    return [d for f in SAMPLES for d in yaml.safe_load_all(f.read_text()) if d]


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator(crds=ROOT / "crds") as running:
        yield running


@pytest_asyncio.fixture
async def kube(emulator: RunningEmulator) -> AsyncIterator[KubeClient]:
    async with KubeClient(Connection(server=emulator.url)) as client:
        await client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apx-system"}})
        yield client
