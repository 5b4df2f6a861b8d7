"""The two roles under leader election (``apx.operator.leader_run``) with a stand-in Lease and kopf.

The leader's work must start promptly once the Lease is won, even when the
standby's kopf run does not stop on its flag (a Lease won while kopf is still
starting: it retries its API calls, then waits 5 s for them).
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest

from apx.operator.leader import LeaseElector
from apx.operator.leader_run import STANDBY_STOP_SECONDS, run_elected

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


class _Lease:
    """Won after ``delay`` seconds; held until cancelled."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.released = False

    async def acquire(self) -> None:
        await asyncio.sleep(self.delay)

    async def hold(self) -> None:
        await asyncio.Event().wait()

    async def release(self) -> None:
        self.released = True


async def _run(standby_obeys_its_flag: bool) -> tuple[float, list[str], _Lease]:
    lease = _Lease(0.2)
    roles: list[str] = []
    started = time.monotonic()
    led = asyncio.Event()
    stop = asyncio.Event()
    runs: list[str] = []

    async def run_kopf(leader: bool, flag: asyncio.Event) -> None:
        runs.append("leader" if leader else "standby")
        if leader or standby_obeys_its_flag:
            await flag.wait()
        else:
            await asyncio.Event().wait()  # stuck until cancelled

    async def work() -> None:
        led.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(
        run_elected(cast(LeaseElector, lease), run_kopf, lambda: [work()], roles.append, stop)
    )
    await asyncio.wait_for(led.wait(), 10)
    waited = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(task, 10)
    assert runs == ["standby", "leader"]
    return waited, roles, lease


async def test_the_leader_starts_at_once_when_the_standby_stops_on_its_flag() -> None:
    waited, roles, lease = await _run(standby_obeys_its_flag=True)
    assert waited < 0.2 + 0.5
    assert roles == ["standby", "leader", "stopped"] and lease.released


async def test_a_standby_that_does_not_stop_is_cancelled_and_the_leader_starts_within_a_second() -> None:
    waited, roles, lease = await _run(standby_obeys_its_flag=False)
    assert 0.2 + STANDBY_STOP_SECONDS - 0.1 < waited < 0.2 + STANDBY_STOP_SECONDS + 0.5
    assert roles == ["standby", "leader", "stopped"] and lease.released
