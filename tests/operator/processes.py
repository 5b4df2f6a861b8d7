"""Helper of the operator tests: run a snippet in a fresh interpreter (process-wide state stays clean)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def in_fresh_process(code: str) -> str:
    """Run dedented ``code`` with this interpreter; its stripped stdout (raises if it fails)."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True, timeout=60
    )
    return completed.stdout.strip()
