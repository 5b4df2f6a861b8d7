"""Regenerate generated files: CRDs from the models and golden outputs from their inputs.

Run by `make gen`. A test fails when committed generated files drift, so run
this after changing a model or a renderer and review the diff.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

from apx.controllers import crdgen
from apx.controllers.renderers.registry import RENDERERS, golden_text
from apx.controllers.translate import translate

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def regenerate_goldens() -> int:
    count = 0
    for input_file in sorted(GOLDEN.glob("*/*/input.yaml")):
        renderer = input_file.parent.parent.name
        if renderer not in RENDERERS:
            raise SystemExit(f"{input_file}: no renderer named {renderer!r}")
        documents = [d for d in yaml.safe_load_all(input_file.read_text()) if d]
        result = translate(documents)
        output = input_file.parent / "output.json"
        output.write_text(golden_text(RENDERERS[renderer](result.ir)))
        count += 1
    return count


def sync_chart_crds() -> None:
    """The Helm chart renders copies of the CRDs (charts/apx/files/crds*/, templates/crds.yaml)."""
    spec = importlib.util.spec_from_file_location("sync_chart_crds", ROOT / "hack" / "sync-chart-crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for change in module.sync():
        print(f"chart: {change}", file=sys.stderr)


def main() -> None:
    crdgen.main([str(ROOT)])
    sync_chart_crds()
    print(f"regenerated {regenerate_goldens()} golden files", file=sys.stderr)


if __name__ == "__main__":
    main()
