"""The chart ships the generated CRDs unchanged, and Helm picks them up from crds/.

crds/*.yaml is generated from the models (`make gen`); charts/apx/crds/ is a copy made
by hack/sync-chart-crds.py. The copy must never drift from the source.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml
from chartkit import CHART_DIR, ROOT, chart

SOURCE = ROOT / "crds"
COPY = CHART_DIR / "crds"
FIX = "run `python hack/sync-chart-crds.py`"


def test_chart_crds_are_byte_identical_to_the_generated_crds() -> None:
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in COPY.glob("*.yaml")}
    assert source, "crds/ is empty: run `make gen`"
    assert sorted(copy) == sorted(source), f"charts/apx/crds/ holds other files than crds/: {FIX}"
    stale = sorted(name for name in source if copy[name] != source[name])
    assert not stale, f"charts/apx/crds/ differs from crds/ for {stale}: {FIX}"


def test_helm_loads_the_three_apx_crds_from_the_chart() -> None:
    loaded = {entry["filename"]: yaml.safe_load(entry["data"]) for entry in chart().crds}
    assert sorted(loaded) == [
        "apx/crds/apx.dev_policybundles.yaml",
        "apx/crds/apx.dev_products.yaml",
        "apx/crds/apx.dev_routes.yaml",
    ]
    assert sorted(crd["metadata"]["name"] for crd in loaded.values()) == [
        "policybundles.apx.dev",
        "products.apx.dev",
        "routes.apx.dev",
    ]


def test_sync_script_copies_new_files_and_removes_stale_ones(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("sync_chart_crds", ROOT / "hack" / "sync-chart-crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source, target = tmp_path / "crds", tmp_path / "chart-crds"
    source.mkdir()
    target.mkdir()
    (source / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (target / "old.yaml").write_text("stale\n")
    assert module.sync(source, target) == ["removed old.yaml", "copied a.yaml"]
    assert sorted(p.name for p in target.iterdir()) == ["a.yaml"]
    assert module.sync(source, target) == []
