"""Golden files: every renderer feature case renders exactly its committed output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apx.controllers.renderers.registry import RENDERERS, golden_text
from apx.controllers.translate import translate

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(GOLDEN.glob("*/*/input.yaml"))


def test_every_renderer_has_golden_cases() -> None:
    covered = {case.parent.parent.name for case in CASES}
    assert covered == set(RENDERERS), f"renderers without golden cases: {set(RENDERERS) - covered}"


@pytest.mark.parametrize("input_file", CASES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_rendered_output_matches_committed_golden_file(input_file: Path) -> None:
    documents = [d for d in yaml.safe_load_all(input_file.read_text()) if d]
    result = translate(documents)
    assert not result.stalled, [s.message for s in result.stalled]
    rendered = golden_text(RENDERERS[input_file.parent.parent.name](result.ir))
    expected_file = input_file.parent / "output.json"
    assert expected_file.exists(), f"{expected_file} missing: run `make gen`"
    assert rendered == expected_file.read_text(), (
        f"{expected_file} is stale: run `make gen` and review the diff"
    )
