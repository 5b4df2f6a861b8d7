"""Process tuning of the operator: malloc arenas capped, freed memory returned, short GIL hand-off."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from apx.operator import runtime


def _in_fresh_process(code: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True, timeout=60
    )
    return completed.stdout.strip()


def test_tuning_caps_arenas_and_shortens_the_switch_interval_on_glibc() -> None:
    out = _in_fresh_process(
        """
        from apx.operator import runtime
        print(runtime.tune_process())
        """
    )
    assert out == "{'malloc_arenas_capped': True, 'switch_interval': 0.001}"


def test_threads_of_a_tuned_process_share_the_capped_arenas() -> None:
    # Each thread that allocates gets an arena of its own unless capped; glibc's
    # malloc_info lists the arenas (one <heap nr=...> element each).
    code = """
        import ctypes, os, sys, tempfile, threading
        from apx.operator import runtime
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


def test_freed_memory_is_returned_to_the_system() -> None:
    out = _in_fresh_process(
        """
        from apx.operator import runtime
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
