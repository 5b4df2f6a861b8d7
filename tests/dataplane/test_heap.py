"""``apx.dataplane.common.heap``: startup objects frozen, startup garbage collected rather than kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_freezing_keeps_what_is_alive_out_of_later_collections_and_frees_garbage_first() -> None:
    # In a child process: freezing is for the life of the process.
    script = textwrap.dedent(
        """
        import gc, weakref
        from apx.dataplane.common.heap import freeze_startup_heap

        class Node:
            pass

        alive = [Node() for _ in range(50_000)]
        garbage = Node()
        garbage.self = garbage
        garbage_ref = weakref.ref(garbage)
        del garbage
        gc.disable()
        frozen = freeze_startup_heap()
        # What lived is frozen; the cycle that was already garbage was freed, not frozen.
        print(frozen >= 50_000, garbage_ref() is None)
        # A full collection now scans only objects created since.
        gc.collect()
        print(gc.get_freeze_count() == frozen, len(gc.get_objects(generation=2)) < 10_000)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True"] * 4
