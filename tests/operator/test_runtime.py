"""Process tuning of the operator: malloc arenas, freed memory returned, GIL hand-off, collector."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from apx.runtime import process as runtime
from tests.operator.processes import in_fresh_process


def test_tuning_caps_arenas_fixes_the_mmap_threshold_and_shortens_the_switch_interval_on_glibc() -> None:
    out = in_fresh_process(
        """
        from apx.runtime import process as runtime
        print(runtime.tune_process())
        """
    )
    assert out == "{'malloc_arenas_capped': True, 'mmap_threshold_fixed': True, 'switch_interval': 0.001}"


def test_threads_of_a_tuned_process_share_the_capped_arenas() -> None:
    # Each thread that allocates gets an arena of its own unless capped; glibc's
    # malloc_info lists the arenas (one <heap nr=...> element each).
    code = """
        import ctypes, os, sys, tempfile, threading
        from apx.runtime import process as runtime
        if sys.argv[-1] == "tuned":
            runtime.tune_process()
        def churn():
            blocks = [bytearray(2048) for _ in range(20000)]
            del blocks
        threads = [threading.Thread(target=churn) for _ in range(6)]
        for t in threads: t.start()
        for t in threads: t.join()
        libc = ctypes.CDLL("libc.so.6")
        libc.fdopen.restype = ctypes.c_void_p
        path = tempfile.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        stream = libc.fdopen(fd, b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        print(open(path).read().count("<heap nr="))
        """
    untuned = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), "plain"], capture_output=True, text=True, check=True
    )
    tuned = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), "tuned"], capture_output=True, text=True, check=True
    )
    assert int(tuned.stdout) <= runtime.MALLOC_ARENAS < int(untuned.stdout)


def test_large_blocks_freed_after_the_first_are_returned_at_once_when_tuned() -> None:
    # Untuned, freeing one large block raises glibc's mmap threshold, so later
    # large blocks come from the heap and stay resident once freed when small
    # objects allocated between them pin the heap.
    code = """
        from apx.runtime import process as runtime
        if TUNED:
            runtime.tune_process()
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        first = bytearray(300 * 1024)  # one large block, allocated and freed
        del first
        blocks, pins = [], []
        for _ in range(300):
            blocks.append(bytearray(300 * 1024))
            pins.append(bytearray(1024))  # over 512 bytes: from malloc, not pymalloc
        before = rss()
        del blocks
        print(before - rss())
        """
    untuned = in_fresh_process(code.replace("TUNED", "False"))
    tuned = in_fresh_process(code.replace("TUNED", "True"))
    assert int(tuned) >= 60 > int(untuned)


def test_freed_memory_is_returned_to_the_system() -> None:
    out = in_fresh_process(
        """
        from apx.runtime import process as runtime
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        # Many small objects: freed ones stay in the heap (not unmapped) until trimmed.
        blocks = [bytearray(600) for _ in range(300_000)]
        keep = blocks[-1]
        del blocks
        before = rss()
        runtime.release_free_memory()
        print(before - rss())
        """
    )
    assert int(out) >= 50


_HEAP_PRELUDE = """
    import gc, sys, weakref
    from apx.runtime import process as runtime

    class Node:
        pass

    def cycle(collected, label="cycle"):
        # Two objects referring to each other; label lands in collected when freed.
        a, b = Node(), Node()
        a.other, b.other = b, a
        weakref.finalize(a, collected.append, label)
        return a

    now = [0.0]
    keeper = runtime.HeapKeeper(full_collection_seconds=100.0, clock=lambda: now[0])
"""


def test_what_a_stage_builds_is_exempt_from_later_collections_and_the_collector_resumes() -> None:
    out = in_fresh_process(
        _HEAP_PRELUDE
        + """
    built = keeper.build(lambda n: [[i] for i in range(n)], 200_000)
    print(gc.isenabled(), gc.get_freeze_count() >= 200_000, gc.get_count()[0] < 1000)
    gc.disable()
    keeper.build(lambda: None)
    print(gc.isenabled())
    """
    )
    assert out.splitlines() == ["True True True", "False"]


def test_cycles_already_dead_when_a_stage_starts_are_collected_not_frozen() -> None:
    out = in_fresh_process(
        _HEAP_PRELUDE
        + """
    collected = []
    cycle(collected)  # dead at once
    keeper.build(lambda: None)
    print(collected)
    """
    )
    assert out == "['cycle']"


def test_settle_collects_new_cycles_and_a_full_collection_reclaims_frozen_ones_when_due() -> None:
    out = in_fresh_process(
        _HEAP_PRELUDE
        + """
    collected = []
    cycle(collected)  # dead at once
    first = keeper.settle()
    print(first.full, collected)
    # A cycle alive when frozen, dropped afterwards: only a full collection finds it.
    holder = [cycle(collected, "frozen cycle")]
    keeper.settle()
    holder.clear()
    print(keeper.settle().full, collected)
    now[0] = 150.0
    print(keeper.settle().full, collected)
    """
    )
    assert out.splitlines() == [
        "False ['cycle']",
        "False ['cycle']",
        "True ['cycle', 'frozen cycle']",
    ]


def test_a_heap_grown_by_half_since_the_last_full_collection_is_collected_whole() -> None:
    out = in_fresh_process(
        _HEAP_PRELUDE
        + """
    collected = []
    keeper.settle()  # the baseline: everything alive at start
    holder = [cycle(collected, "frozen cycle")]
    keeper.settle()
    holder.clear()  # a cycle that died after it was frozen
    print(keeper.settle().full, collected)
    grown = [[i] for i in range(sys.getallocatedblocks())]  # the heap more than doubles (a big load)
    print(keeper.settle().full, collected)
    print(keeper.settle().full)  # measured from the new size: not again
    """
    )
    assert out.splitlines() == ["False []", "True ['frozen cycle']", "False"]


def test_kopf_drops_an_objects_worker_and_its_last_body_soon_after_the_event() -> None:
    """kopf's default keeps each object's worker, holding its last decoded body, 5 s after the event:
    thousands of duplicate bodies while objects load. The operator keeps them well under a second."""
    import kopf

    from apx.operator.handlers import FINALIZER
    from apx.operator.main import KOPF_WORKER_IDLE_SECONDS, configure_kopf

    defaults = kopf.OperatorSettings()
    assert defaults.queueing.idle_timeout > 1.0
    settings = kopf.OperatorSettings()
    configure_kopf(settings, leader=True)
    assert settings.queueing.idle_timeout == KOPF_WORKER_IDLE_SECONDS <= 1.0
    assert settings.persistence.finalizer == FINALIZER
    assert isinstance(settings.persistence.progress_storage, kopf.StatusProgressStorage)
