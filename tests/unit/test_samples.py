"""The samples: valid ones translate Ready, each invalid one fails with its documented message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from apx.controllers.translate import translate

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _valid_documents() -> list[dict[str, Any]]:
    return [d for f in sorted(SAMPLES.glob("*.yaml")) for d in _load(f)]


def test_every_valid_sample_is_ready() -> None:
    result = translate(_valid_documents())
    assert len(result.statuses) == 6
    assert {s.phase for s in result.statuses.values()} == {"Ready"}, [s.message for s in result.stalled]


def test_samples_cover_two_versions_of_one_bundle_with_a_route_pinned_to_each() -> None:
    result = translate(_valid_documents())
    served = {p.version for p in result.ir.policies if p.bundle.name == "payments-policy"}
    assert served == {"1.2.0", "1.3.0"}
    pinned = {r.stable.policy.version for r in result.ir.routes}
    assert pinned == {"1.2.0", "1.3.0"}


def test_there_are_at_least_25_invalid_samples_each_with_its_error() -> None:
    assert len(INVALID) >= 25
    for sample in INVALID:
        assert sample.with_suffix(".error").is_file(), f"{sample.name} has no .error file"


# Samples whose Route refers to an object that may still appear: kstatus
# Reconciling (waiting), not Stalled; every other invalid sample needs a change
# to its own spec and is Stalled.
WAITING = {
    "12-route-missing-product",
    "13-route-policy-version-not-served",
    "14-route-missing-policy",
    "25-route-canary-policy-not-served",
}


def test_the_waiting_samples_exist() -> None:
    assert {p.stem for p in INVALID} >= WAITING


@pytest.mark.parametrize("sample", INVALID, ids=lambda p: p.stem)
def test_invalid_sample_is_refused_with_its_message_and_nothing_else_breaks(sample: Path) -> None:
    expected = sample.with_suffix(".error").read_text().strip()
    documents = _load(sample)
    target = documents[0]
    key = (target["kind"], f"{target['metadata'].get('namespace', 'default')}/{target['metadata']['name']}")
    baseline = translate(_valid_documents())
    result = translate(_valid_documents() + documents)

    status = result.statuses[key]
    assert status.phase == ("Reconciling" if sample.stem in WAITING else "Stalled")
    assert key not in {("Route", r.key) for r in result.ir.routes}
    assert expected in status.message
    assert status.message.startswith("spec"), "the message must name the field at fault"
    # Nothing that was serving stops serving because of the bad document.
    others = {k: s.phase for k, s in result.statuses.items() if k != key}
    assert set(others.values()) == {"Ready"}
    assert {r.key for r in baseline.ir.routes} <= {r.key for r in result.ir.routes}
