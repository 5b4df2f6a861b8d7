"""The CRDs the chart installs use no CEL function or validation-rule field newer than the
Kubernetes version that receives them.

Chart.yaml admits Kubernetes from its ``kubeVersion`` lower bound (1.27). The chart installs
charts/apx/files/crds-1.27/ below 1.28 and charts/apx/files/crds/ from 1.28 on
(templates/crds.yaml). An API server refuses a CRD whose rules call a function its CEL
environment does not have, or whose ``x-kubernetes-validations`` entries carry a field its
API does not know, so every function and field in use must be in the tables below, with the
Kubernetes minor version that introduced it; a new one fails this test until it is added.
The field check is also done against each version's published schema in
tests/chart/test_chart_crds.py (kubernetes-validate); CEL functions are checked only here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "apx"
FULL = CHART / "files" / "crds"
LEGACY = CHART / "files" / "crds-1.27"

# x-kubernetes-validations fields → Kubernetes minor version that accepts them.
RULE_FIELDS = {
    "rule": 25,  # CRD validation rules on by default (beta) since 1.25
    "message": 25,
    "messageExpression": 27,
    "fieldPath": 28,
    "reason": 28,
    "optionalOldSelf": 30,
}
# CEL functions and macros → the Kubernetes minor version whose CRD CEL environment has them.
CEL_FUNCTIONS = {
    # CEL standard library and macros: in the environment since validation rules exist.
    **dict.fromkeys(
        [
            "has",
            "size",
            "matches",
            "startsWith",
            "endsWith",
            "contains",
            "all",
            "exists",
            "exists_one",
            "map",
            "filter",
            "int",
            "uint",
            "double",
            "string",
            "bytes",
            "bool",
            "duration",
            "timestamp",
            "dyn",
            "type",
            "getFullYear",
            "getMonth",
            "getDate",
            "getDayOfMonth",
            "getDayOfWeek",
            "getDayOfYear",
            "getHours",
            "getMinutes",
            "getSeconds",
            "getMilliseconds",
        ],
        25,
    ),
    # Kubernetes list, regex and URL libraries and the CEL strings extension (v0).
    **dict.fromkeys(
        [
            "isSorted",
            "sum",
            "min",
            "max",
            "indexOf",
            "lastIndexOf",
            "find",
            "findAll",
            "url",
            "isURL",
            "getScheme",
            "getHost",
            "getHostname",
            "getPort",
            "getEscapedPath",
            "getQuery",
            "charAt",
            "lowerAscii",
            "upperAscii",
            "replace",
            "split",
            "substring",
            "trim",
            "join",
        ],
        25,
    ),
    # Later additions, conservatively dated: quantity, optional types, sets, IP/CIDR, format.
    **dict.fromkeys(["quantity", "isQuantity", "of", "ofNonZeroValue", "orValue", "hasValue"], 29),
    **dict.fromkeys(["intersects", "equivalent", "format", "quote"], 30),
    **dict.fromkeys(["ip", "isIP", "cidr", "isCIDR"], 31),
}
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def kube_minimum() -> int:
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*1\.(\d+)(\.\d+)?(-0)?", constraint.strip())
    assert match, f"kubeVersion {constraint!r}: expected `>=1.N[.P][-0]`"
    return int(match.group(1))


def rules(node: Any) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations", []) or []
        for value in node.values():
            yield from rules(value)
    elif isinstance(node, list):
        for item in node:
            yield from rules(item)


def needed_versions(folder: Path) -> dict[str, int]:
    """Each field and function used by the CRDs in ``folder`` → the minor version it needs."""
    needed: dict[str, int] = {}
    for path in sorted(folder.glob("*.yaml")):
        for rule in rules(yaml.safe_load(path.read_text())):
            for field in rule:
                assert field in RULE_FIELDS, f"{path.name}: rule field {field!r} is not in RULE_FIELDS"
                needed[f"field {field}"] = RULE_FIELDS[field]
            for key in ("rule", "messageExpression"):
                for name in _CALL.findall(_STRING.sub("''", rule.get(key, ""))):
                    assert name in CEL_FUNCTIONS, (
                        f"{path.name}: CEL function {name}() is not in CEL_FUNCTIONS: add it with the "
                        "Kubernetes version that introduced it"
                    )
                    needed[f"function {name}()"] = CEL_FUNCTIONS[name]
    assert needed, f"no CEL rules found in {folder}"
    return needed


def too_new(folder: Path, version: int) -> list[str]:
    return sorted(f"{what} needs 1.{v}" for what, v in needed_versions(folder).items() if v > version)


def test_crds_for_the_minimum_kube_version_use_nothing_newer() -> None:
    minimum = kube_minimum()
    folder = LEGACY if minimum < 28 else FULL
    assert too_new(folder, minimum) == []


def test_crds_installed_from_1_28_use_nothing_newer_than_1_28() -> None:
    template = (CHART / "templates" / "crds.yaml").read_text()
    assert '"<1.28.0-0"' in template, "the template's version switch moved: update this test"
    assert too_new(FULL, 28) == []


def test_the_full_crds_need_1_28_which_is_why_1_27_gets_its_own_set() -> None:
    # Proves the check can fail: the generated CRDs carry fieldPath/reason.
    assert too_new(FULL, 27) == ["field fieldPath needs 1.28", "field reason needs 1.28"]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("self.ip.isIP()", ["function isIP() needs 1.31"]),
        ("quantity(self.q).isGreaterThan(quantity('1'))", None),
        ("self.matches('^a(b)$')", []),
    ],
)
def test_function_scan_reads_calls_outside_string_literals(
    tmp_path: Path, rule: str, expected: list[str] | None
) -> None:
    crd = {"spec": {"x-kubernetes-validations": [{"rule": rule, "message": "m"}]}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(crd))
    if expected is None:  # a function missing from the table is an error, not a pass
        with pytest.raises(AssertionError, match="isGreaterThan"):
            too_new(tmp_path, 27)
    else:
        assert too_new(tmp_path, 27) == expected
