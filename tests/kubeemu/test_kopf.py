"""A kopf operator against the emulator: handlers, finalizers, status patches and Events all work.

Skipped when kopf is not installed (the APX operator brings it in). kopf runs
in its own thread and loop, stopped with a flag, as kopf cancels every task
created during its run when it exits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.kubeemu.testing import RunningEmulator
from tests.kubeemu.emuhelpers import WIDGETS, Api, widget

kopf = pytest.importorskip("kopf")


def eventually(check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def operator(emu: RunningEmulator, api: Api) -> Iterator[list[str]]:
    # kopf keeps handler results and progress in status: let the schema keep them (the real server
    # would prune them too, and kopf would warn about "inconsistencies" as it does here without this).
    preserve = [
        {
            "op": "add",
            "path": "/spec/versions/0/schema/openAPIV3Schema/properties/status"
            "/x-kubernetes-preserve-unknown-fields",
            "value": True,
        }
    ]
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.test.kubeemu.dev"
    assert api.patch(crd, preserve, content_type="application/json-patch+json").status_code == 200
    calls: list[str] = []
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        return kopf.ConnectionInfo(server=emu.url, insecure=True)

    @kopf.on.startup(registry=registry)
    def configure(settings: Any, **_: Any) -> None:
        settings.posting.level = 0
        settings.watching.server_timeout = 10
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")

    @kopf.on.create("test.kubeemu.dev", "v1", "widgets", registry=registry, id="created")
    def created(body: Any, patch: Any, **_: Any) -> dict[str, str]:
        calls.append(f"create:{body['metadata']['name']}")
        kopf.info(body, reason="Created", message="handled by kopf")
        patch.status["phase"] = "Ready"
        return {"size": str(body["spec"]["size"])}

    @kopf.on.update("test.kubeemu.dev", "v1", "widgets", registry=registry, id="updated")
    def updated(body: Any, **_: Any) -> None:
        calls.append(f"update:{body['spec']['size']}")

    @kopf.on.delete("test.kubeemu.dev", "v1", "widgets", registry=registry, id="deleted")
    def deleted(body: Any, **_: Any) -> None:
        calls.append(f"delete:{body['metadata']['name']}")

    stop = threading.Event()
    ready = threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=True,
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(15)
    try:
        yield calls
    finally:
        stop.set()
        thread.join(30)


def test_kopf_handles_create_update_and_delete(api: Api, operator: list[str]) -> None:
    api.create(WIDGETS, widget("w", size=2))
    handled = eventually(lambda: (api.get(f"{WIDGETS}/w").json().get("status") or {}).get("created"))
    assert handled == {"size": "2"}
    current = api.get(f"{WIDGETS}/w").json()
    assert current["status"]["phase"] == "Ready"
    assert current["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    events = eventually(lambda: api.get("/api/v1/namespaces/default/events").json()["items"])
    assert events[0]["reason"] == "Created" and events[0]["involvedObject"]["name"] == "w"

    api.patch(f"{WIDGETS}/w", {"spec": {"size": 3}})
    eventually(lambda: "update:3" in operator)

    assert api.delete(f"{WIDGETS}/w").status_code == 200
    eventually(lambda: api.get(f"{WIDGETS}/w").status_code == 404)
    assert operator == ["create:w", "update:3", "delete:w"]
