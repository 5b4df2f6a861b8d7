"""When passes run: periodic resyncs never take more than their share of the operator's time.

Against the in-memory targets (``e2e/memory_targets.py``), with full passes
made slow on purpose: the resync period is what the settings say when full
passes are quick, and stretched to keep them under ``RESYNC_SHARE`` when not.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from apx.operator.reconcile_state import PassReport
from apx.operator.scheduler import RESYNC_SHARE
from e2e.memory_targets import memory_reconciler

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def _full_passes_in(window: float, full_pass_seconds: float, resync_seconds: float) -> int:
    reconciler, _, _ = memory_reconciler([])
    reconciler.settings = reconciler.settings.model_copy(update={"resync_seconds": resync_seconds})
    full_passes: list[float] = []

    async def timed_pass(full: bool = False) -> PassReport:
        if full:
            full_passes.append(time.monotonic())
            await asyncio.sleep(full_pass_seconds)
        return PassReport(duration=full_pass_seconds if full else 0.0)

    reconciler.reconcile_once = timed_pass  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.create_task(reconciler.run(stop))
    await asyncio.sleep(window)
    stop.set()
    reconciler.request_pass()
    await asyncio.wait_for(loop, 10)
    return len(full_passes)


async def test_quick_full_passes_resync_every_resync_seconds() -> None:
    assert await _full_passes_in(1.5, 0.01, 0.2) >= 5


async def test_slow_full_passes_stretch_the_resync_period_to_keep_them_under_their_share() -> None:
    # 0.3 s full passes every 0.2 s would be 60 % of the time; the next waits 0.3 * 9 = 2.7 s.
    assert RESYNC_SHARE == 0.1
    assert await _full_passes_in(2.0, 0.3, 0.2) == 1
