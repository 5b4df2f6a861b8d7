"""Choice of asyncio event loop for the dataplane services' ``main`` (``--event-loop``).

``auto`` (the default) runs on uvloop when it is installed (a dependency on
Linux): the services spend most of their CPU in the event loop and in
aiohttp/redis-py transports, where uvloop costs markedly less per request;
``asyncio`` keeps the standard loop (for debugging); ``uvloop`` insists on it.
Used by ``apx-gateway`` and ``apx-worker``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopUnavailable(RuntimeError):
    """``uvloop`` was asked for and is not installed."""


def run(coroutine: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """Run ``coroutine`` to completion on the chosen event loop."""
    if choice == "asyncio":
        return asyncio.run(coroutine)
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            coroutine.close()
            raise EventLoopUnavailable("--event-loop uvloop: the uvloop package is not installed") from exc
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
