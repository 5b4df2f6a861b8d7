"""Run every benchmark script in bench/ (``bench_*.py``) in turn; used by `make bench`.

Each script prints its figures beside a baseline it measures in the same run,
so results are comparable on a noisy machine. A script that needs services it
cannot start exits non-zero and the run reports it without stopping the others.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failures = []
    selected = sys.argv[1:]
    for script in sorted(HERE.glob("bench_*.py")):
        if selected and script.stem.removeprefix("bench_") not in selected:
            continue
        print(f"== {script.stem} ==", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failures.append(script.stem)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
