"""``python -m e2e.kubeemu`` and ``hack/kubeemu-up.sh``/``kubeemu-down.sh``."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import yaml

from tests.kubeemu.emuhelpers import WIDGET_CRD

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_module_serves_registers_crds_writes_a_kubeconfig_and_exits_cleanly_on_sigterm(
    tmp_path: pathlib.Path,
) -> None:
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "widget.yaml").write_text(yaml.safe_dump(WIDGET_CRD))
    config = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "e2e.kubeemu",
            "--port",
            "0",
            "--crds",
            str(crds),
            "--kubeconfig",
            str(config),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("kubeemu listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        version = yaml.safe_load(urllib.request.urlopen(f"{url}/version", timeout=5).read())
        assert version["major"] == "1"
        resources = yaml.safe_load(
            urllib.request.urlopen(f"{url}/apis/test.kubeemu.dev/v1", timeout=5).read()
        )
        assert resources["resources"][0]["kind"] == "Widget"
        kubeconfig = yaml.safe_load(config.read_text())
        assert kubeconfig["clusters"][0]["cluster"]["server"] == url
        assert kubeconfig["current-context"] == "kubeemu"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_hack_scripts_start_and_stop_the_emulator(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "KUBEEMU_STATE": str(state), "KUBEEMU_CRDS": str(tmp_path / "no-crds")}
    up = subprocess.run(
        ["bash", "hack/kubeemu-up.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"export KUBECONFIG={state}/kubeconfig"
    pid = int((state / "pid").read_text())
    server = yaml.safe_load((state / "kubeconfig").read_text())["clusters"][0]["cluster"]["server"]
    assert urllib.request.urlopen(f"{server}/version", timeout=5).status == 200
    down = subprocess.run(
        ["bash", "hack/kubeemu-down.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 0, down.stderr
    assert not (state / "pid").exists()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"pid {pid} still running")


def test_served_process_freezes_what_survives_and_collects_new_cycles() -> None:
    # The stored objects must not be rescanned by every collection (that stalled
    # requests for hundreds of ms on a store of a few thousand objects).
    code = textwrap.dedent(
        """
        import asyncio, gc, weakref
        from e2e.kubeemu.__main__ import settle_heap

        class Node:
            pass

        collected = []
        a, b = Node(), Node()
        a.other, b.other = b, a
        weakref.finalize(a, collected.append, "cycle")
        del a, b
        store = [[i] for i in range(50_000)]

        async def main():
            task = asyncio.create_task(settle_heap(0.01, 1000.0))
            await asyncio.sleep(0.2)
            task.cancel()

        asyncio.run(main())
        print(collected, gc.get_freeze_count() >= 50_000)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "['cycle'] True"
