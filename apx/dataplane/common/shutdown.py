"""Clean shutdown of an asyncio service on SIGTERM/SIGINT; used by each dataplane service's ``main``.

Kubernetes sends SIGTERM and waits ``terminationGracePeriodSeconds``: the
service should stop taking new work, finish what is in flight and exit 0.
``stop_event()`` returns an event the signals set; the service awaits it and
then runs its own graceful stop. A second signal while stopping gets the
default action (the process ends at once), so a stuck shutdown can still be
interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_event(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (must be called from the running loop)."""
    loop = loop or asyncio.get_running_loop()
    event = asyncio.Event()

    def on_signal(signum: int) -> None:
        if event.is_set():
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
            signal.raise_signal(signum)
            return
        log.info("received %s, shutting down", signal.Signals(signum).name)
        event.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, int(sig))
    return event
