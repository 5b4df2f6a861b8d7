"""The reusable pytest fixtures of ``e2e.kubeemu.testing`` for other suites."""

from __future__ import annotations

import yaml

from e2e.kubeemu.testing import RunningEmulator
from tests.kubeemu.emuhelpers import CONFIGMAPS, Api, configmap


def test_kubeemu_fixture_serves_and_writes_a_kubeconfig(kubeemu: RunningEmulator) -> None:
    assert Api(kubeemu.url).get("/version").status_code == 200
    config = yaml.safe_load(kubeemu.kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == kubeemu.url


def test_call_runs_code_on_the_emulator_loop(kubeemu: RunningEmulator) -> None:
    Api(kubeemu.url).create(CONFIGMAPS, configmap("a"))
    rv = kubeemu.call(lambda: kubeemu.emulator.store.rv)
    assert rv >= 5


def test_session_fixture_is_shared(kubeemu_session: RunningEmulator, kubeemu: RunningEmulator) -> None:
    assert kubeemu_session.url != kubeemu.url
    assert Api(kubeemu_session.url).get("/api/v1/namespaces/default").status_code == 200
