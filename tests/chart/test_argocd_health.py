"""The Argo CD health checks in charts/apx/health give the expected status for each test case.

Each charts/apx/health/testdata/*.yaml holds an ``input`` object and the ``expected``
``{status, message}``. The script for the object's kind (apx.dev_<Kind>.lua) runs in a
real Lua 5.1 interpreter (lupa), the Lua version of Argo CD's gopher-lua, the way Argo CD
runs it: the object is the global ``obj`` (a Lua table converted from JSON) and the
chunk returns ``hs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

HEALTH = Path(__file__).resolve().parents[2] / "charts" / "apx" / "health"
CASES = sorted((HEALTH / "testdata").glob("*.yaml"))
KINDS = ("Product", "Route", "PolicyBundle")
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(runtime: Any, value: Any) -> Any:
    # Through JSON, as Argo CD does: numbers, strings, booleans, arrays (1-based) and maps.
    if isinstance(value, dict):
        return runtime.table_from({key: _to_lua(runtime, item) for key, item in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, item) for item in value])
    return value


def run_health(obj: dict[str, Any]) -> dict[str, Any]:
    script = (HEALTH / f"apx.dev_{obj['kind']}.lua").read_text()
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, json.loads(json.dumps(obj)))
    result = runtime.execute(script)
    return {"status": result["status"], "message": result["message"]}


def test_there_is_a_script_per_kind_and_all_three_are_the_same_script() -> None:
    scripts = {kind: (HEALTH / f"apx.dev_{kind}.lua").read_text() for kind in KINDS}
    assert len(set(scripts.values())) == 1, "edit apx.dev_Route.lua and copy it to the other two kinds"


def test_every_kind_has_test_cases_and_every_status_is_covered() -> None:
    documents = [yaml.safe_load(case.read_text()) for case in CASES]
    assert {doc["input"]["kind"] for doc in documents} == set(KINDS)
    assert {doc["expected"]["status"] for doc in documents} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_health_script_returns_the_expected_status_and_message(case: Path) -> None:
    document = yaml.safe_load(case.read_text())
    assert document["description"]
    result = run_health(document["input"])
    assert result["status"] in ARGO_STATUSES
    assert result == document["expected"]


def test_float_numbers_from_json_print_as_whole_percentages() -> None:
    # Argo CD decodes JSON numbers as floats; the message must still say "20%", not "20.0%".
    route = {
        "apiVersion": "apx.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": "r", "generation": 2.0},
        "status": {
            "observedGeneration": 2.0,
            "canary": {"phase": "Progressing", "step": 1.0, "weight": 20.0},
        },
    }
    assert run_health(route) == {"status": "Progressing", "message": "Canary at 20% (step 2)"}
