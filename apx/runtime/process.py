"""Process-level tuning of APX processes: malloc arenas, freed memory, GIL hand-off, collector.

Called by ``apx.operator.main`` once at startup (``tune_process``) and by the
reconciler around every pass (``HeapKeeper``) and after it
(``release_free_memory``). The emulated API's server process settles its
heap with ``HeapKeeper`` too, and the dataplane services (``apx-ratelimit``,
``apx-gateway``, ``apx-worker``) settle theirs once when they are up: before,
a full collection walked everything startup built (modules, protobuf
descriptors, clients) and stopped the rate-limit service's loop for 17-20 ms
every few seconds under load.

Why each knob:

* glibc gives every thread that allocates its own malloc arena (up to eight
  per core). The pure pipeline runs in executor threads and the Pub/Sub client
  in gRPC threads, so a pass's garbage is spread over many arenas that are
  never returned to the system: measured on the 1,000-Route benchmark, the
  arena cap alone took peak RSS from ~290 to ~225 MiB. Two arenas keep
  threads from serialising on one lock while bounding that waste.
* glibc raises its mmap threshold every time a large block is freed (up to
  32 MiB), so after the first pass the big transient buffers of later passes
  (JSON documents, the compressed Envoy snapshot, protobuf encodings) come
  from the heap, where small long-lived objects pin them. A fixed 256 KiB
  threshold keeps them in their own mappings, returned the moment they are
  freed: peak RSS on the 1,000-Route benchmark went from 196-200 to 194-198 MiB.
* ``malloc_trim`` after a pass hands the pages the pass freed back to the
  system, so the resident size between passes is what the store needs, not
  what the last pass peaked at.
* The event loop (watches, the rule-set fast path, API writes) shares the GIL
  with the pass running in a thread. Python's default 5 ms switch interval
  lets that thread hold the loop off for 5 ms at every hand-off; 1 ms keeps a
  rate-limit change waiting on a busy pass for a few milliseconds, not tens.
* Python's cyclic collector scans every container object it tracks. The
  operator's heap is mostly long-lived (the object store, parsed models,
  kopf's and the clients' state), and a pass allocates hundreds of thousands
  of short-lived ones; with the collector running, generation-2 collections
  of 185-290 ms and younger ones of 15-70 ms ran on the event loop and held
  the GIL, which was the whole tail of the Route-update-to-Redis latency on
  the 1,000-Route benchmark. ``HeapKeeper`` runs each pure stage with the
  collector paused and freezes what it built before resuming it, so the
  collections the pass's I/O phases trigger skip the pass's outputs (they die
  by reference counting when the pass ends); after the pass it collects what
  survived and freezes that too, so later collections scan only what is new.
  A full collection including the frozen heap runs every
  ``full_collection_seconds``, and sooner once the heap has grown by
  ``full_collection_growth`` since the last one, to reclaim cycles that died
  after freezing (an amortised cost: each full collection follows that much
  growth).

On a C library without these functions (musl, macOS) the knobs do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from .gcpause import collector_paused

T = TypeVar("T")

# mallopt parameter numbers, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MALLOC_ARENAS = 2
MMAP_THRESHOLD_BYTES = 256 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024
SWITCH_INTERVAL_SECONDS = 0.001


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def tune_process() -> dict[str, bool | float]:
    """Cap malloc arenas, fix the mmap threshold, shorten the GIL switch interval; returns what was set."""
    libc = _libc()
    arenas_capped = mmap_threshold_fixed = False
    if libc is not None and hasattr(libc, "mallopt"):
        arenas_capped = bool(libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS))
        mmap_threshold_fixed = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return {
        "malloc_arenas_capped": arenas_capped,
        "mmap_threshold_fixed": mmap_threshold_fixed,
        "switch_interval": sys.getswitchinterval(),
    }


def release_free_memory() -> bool:
    """Return freed heap pages to the system (glibc ``malloc_trim``); False when unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


def frozen_objects() -> int:
    """How many objects the collector skips; walks every one of them, so for a log line, not a loop."""
    return gc.get_freeze_count()


@dataclass(frozen=True, slots=True)
class Settled:
    """What one ``HeapKeeper.settle`` did."""

    full: bool  # the frozen heap was scanned too
    collected: int  # unreachable objects found
    blocks: int  # memory blocks Python's allocator has handed out (the heap's size, in objects)


class HeapKeeper:
    """Keeps Python's cyclic collector off the event loop's critical path (see the module notes)."""

    def __init__(
        self,
        full_collection_seconds: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        full_collection_growth: float = 1.5,
    ) -> None:
        self.full_collection_seconds = full_collection_seconds
        self.full_collection_growth = full_collection_growth
        self._clock = clock
        self._last_full = clock()
        # The heap's size right after the last full collection: once it has grown by
        # ``full_collection_growth`` the next settle collects it all. A frozen cycle is only
        # found by a full collection, and while thousands of objects load, the cycles the
        # I/O left behind (responses, tasks, decoded bodies) were frozen faster than the
        # time-based collection reclaimed them: at 3,000 Routes about a sixth of the heap.
        # Measured in allocated blocks (``sys.getallocatedblocks``: a walk over the allocator's
        # pools, under a millisecond), not frozen objects: ``gc.get_freeze_count`` walks every
        # frozen object, 127 ms per call at 10,000 Routes, and settle ran it three times per pass.
        self._blocks_after_full: int | None = None  # set by the first settle

    def build(self, stage: Callable[..., T], *args: Any) -> T:
        """Run a pure stage with the collector paused, then exempt what is alive from collections.

        The freeze happens before the collector is back on: otherwise the very
        next allocation (in this thread) would scan everything the stage built.
        What is garbage already is collected first (the scan covers only what
        is not frozen yet), or cycles that died meanwhile would be frozen too.
        """
        gc.collect()
        with collector_paused():
            built = stage(*args)
            gc.freeze()
            return built

    def settle(self) -> Settled:
        """Collect what the last pass left alive and freeze it; a full collection when one is due.

        Due every ``full_collection_seconds``, or once the heap has grown by
        ``full_collection_growth`` since the last full one. The growth is measured
        after collecting what is not frozen (the pass's own garbage does not count),
        so an ordinary settle walks the allocator's pools once, not twice: each
        walk took ~0.7 ms of the event loop at 10,000 Routes.
        """
        baseline = self._blocks_after_full
        full = self._clock() - self._last_full >= self.full_collection_seconds
        collected = 0
        if not full:
            collected = gc.collect()  # only what is not frozen: what the pass left alive
            gc.freeze()
            blocks = sys.getallocatedblocks()
            full = baseline is not None and blocks > max(baseline, 50_000) * self.full_collection_growth
        if full:
            gc.unfreeze()
            self._last_full = self._clock()
            collected += gc.collect()
            gc.freeze()
            blocks = sys.getallocatedblocks()
        if full or baseline is None:
            self._blocks_after_full = blocks
        return Settled(full=full, collected=collected, blocks=blocks)
