"""The operator's two roles under leader election: warm standby, then leader.

Called by ``apx.operator.main`` when ``APX_LEADER_ELECTION`` is on (the
chart's default, with two replicas); ``apx.operator.leader`` holds the Lease.

* **Standby**: kopf runs with the watch handlers only (``on.event`` feeding
  the reconciler's store), the validating webhook server and the probes. It
  writes nothing: no reconcile pass, no canary loop, no finalizers, no
  handler progress, no webhook configuration. Its store stays warm, so a
  take-over starts reconciling at once instead of listing and parsing
  everything first; ``/healthz`` answers (``leadership: standby``).
* **Leader**: kopf is restarted with every handler (deletion handlers and
  finalizers, the managed webhook configuration), the reconciler loop runs
  (its first pass is a full one: the previous leader may have written since
  this process last did) and so does the canary loop. The Lease is renewed
  meanwhile; if renewing fails for the renew deadline, the leader stops
  everything and returns (the container restarts as a standby): stepping down
  is safer than guessing whether someone else took over.

Tasks the leader runs are created before its kopf run starts: kopf cancels
every task created during its run when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .leader import LeaseElector

logger = logging.getLogger("apx.operator.leader")

# kopf removes its finalizer from objects when no deletion handler requires it, as on a standby;
# the standby's kopf is therefore told of a finalizer name nothing ever sets, and leaves the real one.
STANDBY_FINALIZER = "apx.dev/standby-never-set"

RunKopf = Callable[[bool, asyncio.Event], Coroutine[Any, Any, None]]


async def _first(*tasks: asyncio.Task[Any]) -> set[asyncio.Task[Any]]:
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    return done


async def _stopped(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


# How long a standby's kopf run may take to stop on its flag before it is cancelled.
STANDBY_STOP_SECONDS = 1.0


async def _ended(standby: asyncio.Task[Any]) -> None:
    """Wait for the standby's kopf run to stop; cancel it when it does not within a second.

    A Lease won while the standby's kopf run is still starting (every fresh start without
    a leader) finds it scanning the API: stopped by its flag, kopf first retries those calls
    and then waits 5 s for them, which delayed the leader's first pass by 5-6 s. Nothing of
    a standby needs a graceful end: it writes nothing.
    """
    done, _ = await asyncio.wait({standby}, timeout=STANDBY_STOP_SECONDS)
    if not done:
        standby.cancel()
    await asyncio.gather(standby, return_exceptions=True)


async def run_elected(
    elector: LeaseElector,
    run_kopf: RunKopf,
    leader_work: Callable[[], list[Coroutine[Any, Any, None]]],
    on_role: Callable[[str], None],
    stop_flag: asyncio.Event | None = None,
) -> None:
    """Stand by until the Lease is ours, then lead until stopped or the Lease is lost."""
    stop_flag = stop_flag or asyncio.Event()
    stop_wait = asyncio.create_task(stop_flag.wait())
    acquire = asyncio.create_task(elector.acquire())
    try:
        on_role("standby")
        standby_stop = asyncio.Event()
        standby = asyncio.create_task(run_kopf(False, standby_stop))
        done = await _first(acquire, standby, stop_wait)
        standby_stop.set()
        await _ended(standby)
        if acquire not in done or stop_flag.is_set():
            return  # a signal stopped kopf, or the caller did: shut down as a standby
        await _lead(elector, run_kopf, leader_work, on_role, stop_wait)
    finally:
        await _stopped(acquire)
        await _stopped(stop_wait)
        await elector.release()
        on_role("stopped")


async def _lead(
    elector: LeaseElector,
    run_kopf: RunKopf,
    leader_work: Callable[[], list[Coroutine[Any, Any, None]]],
    on_role: Callable[[str], None],
    stop_wait: asyncio.Task[Any],
) -> None:
    on_role("leader")
    hold = asyncio.create_task(elector.hold())
    work = [asyncio.create_task(coroutine) for coroutine in leader_work()]
    leader_stop = asyncio.Event()
    kopf_run = asyncio.create_task(run_kopf(True, leader_stop))
    try:
        done = await _first(hold, kopf_run, stop_wait)
        if hold in done:
            logger.error("stepping down: the Lease could not be renewed")
    finally:
        leader_stop.set()
        for task in (hold, *work):
            await _stopped(task)
        await asyncio.gather(kopf_run, return_exceptions=True)
