"""In-process emulator for test suites: a background thread, its own loop, a free port.

:func:`running_emulator` starts a :class:`~.emulator.KubeEmulator` served on a
free port of 127.0.0.1 in a daemon thread with its own asyncio loop, writes a
kubeconfig for it, and stops it cleanly (open watches are ended first). The
pytest fixtures ``kubeemu`` (one emulator per test) and ``kubeemu_session``
(one per session) wrap it; use them from any suite with
``pytest_plugins = ["e2e.kubeemu.testing"]`` in a ``conftest.py``. Set
``KUBEEMU_CRDS`` to a directory to pre-register its CRDs in the fixtures.
Called by ``tests/kubeemu`` and, later, the e2e and operator suites.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import pathlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs
import pytest

from .emulator import KubeEmulator
from .serving import load_crds, serve, url_of, write_kubeconfig

T = TypeVar("T")


@attrs.define
class RunningEmulator:
    """A started emulator: its URL, kubeconfig, and a way to touch it on its loop."""

    url: str
    kubeconfig: pathlib.Path
    emulator: KubeEmulator
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's loop (its state is not thread-safe) and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def runner() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed over to the calling thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(runner)
        return future.result(timeout=30)

    def load_crds(self, directory: pathlib.Path) -> list[str]:
        return self.call(lambda: load_crds(self.emulator, directory))


@contextlib.contextmanager
def running_emulator(
    *,
    crds: pathlib.Path | None = None,
    kubeconfig: pathlib.Path | None = None,
    **options: Any,
) -> Iterator[RunningEmulator]:
    """Run an emulator in a background thread for the duration of the context."""
    ready: concurrent.futures.Future[RunningEmulator] = concurrent.futures.Future()
    workdir = tempfile.TemporaryDirectory(prefix="kubeemu-")
    config_path = kubeconfig or pathlib.Path(workdir.name) / "kubeconfig"
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        emulator = KubeEmulator(**options)
        try:
            async with serve(emulator) as server:
                if crds is not None:
                    load_crds(emulator, crds)
                url = url_of(server)
                write_kubeconfig(config_path, url)
                ready.set_result(RunningEmulator(url, config_path, emulator, loop))
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=thread_main, name="kubeemu", daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=30)
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        workdir.cleanup()


def _crds_from_env() -> pathlib.Path | None:
    value = os.environ.get("KUBEEMU_CRDS")
    return pathlib.Path(value) if value else None


@pytest.fixture
def kubeemu() -> Iterator[RunningEmulator]:
    """A fresh emulator for one test."""
    with running_emulator(crds=_crds_from_env()) as running:
        yield running


@pytest.fixture(scope="session")
def kubeemu_session() -> Iterator[RunningEmulator]:
    """One emulator shared by a whole test session."""
    with running_emulator(crds=_crds_from_env()) as running:
        yield running
