"""Fixtures of the kubeemu tests: a fresh emulator per test with the Widget CRD registered."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The suite runs with --import-mode=importlib; the shared helpers module is made importable here.
sys.path.insert(0, str(Path(__file__).parent))

from emuhelpers import WIDGET_CRD, Api

from e2e.kubeemu.testing import RunningEmulator, running_emulator


@pytest.fixture
def emu() -> Iterator[RunningEmulator]:
    with running_emulator(bookmark_interval=0.2) as running:
        yield running


@pytest.fixture
def api(emu: RunningEmulator) -> Api:
    client = Api(emu.url)
    created = client.post(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", copy.deepcopy(WIDGET_CRD)
    )
    assert created.status_code == 201, created.text
    return client


# The reusable fixtures of e2e.kubeemu.testing, exercised by test_testing_fixtures.py.
from e2e.kubeemu.testing import kubeemu, kubeemu_session  # noqa: E402, F401
