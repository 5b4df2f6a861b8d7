"""The kopf handlers hand watch events to the reconciler on the operator's event loop.

kopf runs synchronous handlers in a thread pool. The reconciler's store and its
asyncio events belong to the event loop: set from a thread, an ``asyncio.Event``
does not wake the loop, so a change waited for the next unrelated wake-up
(hundreds of milliseconds under load) and the store was mutated while a pass
iterated it. These tests invoke the handlers the way kopf does.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf
import pytest
from kopf._core.actions.invocation import invoke  # how kopf itself calls a handler

from apx.operator.handlers import register


class _RecordingReconciler:
    """Stands in for the reconciler: records the thread and loop each call arrives on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, asyncio.AbstractEventLoop | None]] = []

    def _record(self, what: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.calls.append((what, threading.get_ident(), loop))

    def observe(self, kind: str, body: dict[str, Any]) -> None:
        self._record(f"observe {kind}")

    def forget(self, kind: str, key: str) -> None:
        self._record(f"forget {kind}")

    def observe_worker(self, body: dict[str, Any], deleted: bool = False) -> None:
        self._record("observe worker Deployment")

    def health(self) -> dict[str, Any]:
        return {}


def _event_handlers(registry: kopf.OperatorRegistry) -> list[Any]:
    return list(registry._watching.get_all_handlers())


@pytest.mark.asyncio
async def test_watch_events_reach_the_reconciler_on_the_event_loop_thread() -> None:
    reconciler = _RecordingReconciler()
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, admission=False)  # type: ignore[arg-type]
    handlers = _event_handlers(registry)
    assert len(handlers) == 4  # Product, Route, PolicyBundle, worker Deployments

    body = kopf.Body({"metadata": {"name": "payments", "namespace": "default"}, "spec": {}})
    for handler in handlers:
        for event_type in ("ADDED", "DELETED"):
            await invoke(handler.fn, kwargs={"type": event_type, "body": body})

    loop = asyncio.get_running_loop()
    assert len(reconciler.calls) == 8
    for what, thread, running in reconciler.calls:
        assert thread == threading.get_ident(), f"{what} ran in kopf's thread pool"
        assert running is loop, f"{what} ran outside the operator's event loop"
