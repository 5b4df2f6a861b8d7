"""Copy the generated CRDs (crds/*.yaml) into the Helm chart (charts/apx/crds/).

Run by `make gen` (hack/gen.py), or by hand: ``python hack/sync-chart-crds.py``.
tests/chart checks that the chart's copies are byte-identical to crds/ and names
this script when they are not. Stale files in charts/apx/crds/ are removed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "crds"
TARGET = ROOT / "charts" / "apx" / "crds"


def sync(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    """Make target hold exactly source's *.yaml files; return what changed."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = {path.name: path for path in sorted(source.glob("*.yaml"))}
    if not wanted:
        raise SystemExit(f"no CRDs in {source}: run `make gen` first")
    changes: list[str] = []
    for stale in sorted(target.glob("*.yaml")):
        if stale.name not in wanted:
            stale.unlink()
            changes.append(f"removed {stale.name}")
    for name, path in wanted.items():
        copy = target / name
        if not copy.exists() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)
            changes.append(f"copied {name}")
    return changes


def main() -> None:
    changes = sync()
    for change in changes:
        print(change, file=sys.stderr)
    print(f"charts/apx/crds: {len(changes)} change(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
