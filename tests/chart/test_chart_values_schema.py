"""values.schema.json is strict: it matches values.yaml key for key and rejects bad values.

Helm checks the schema on install, upgrade, template and lint; these tests go through
Helm's own validator (``Chart.validate_schema`` and ``render``).
"""

from __future__ import annotations

import json
from typing import Any

import helm_python
import pytest
import yaml
from chartkit import CHART_DIR, VALUE_SETS, chart, render

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def _object_paths(
    schema: dict[str, Any], values: Any, path: str = ""
) -> list[tuple[str, dict[str, Any], Any]]:
    found = []
    if schema.get("type") == "object" and "properties" in schema:
        found.append((path, schema, values))
        for key, sub in schema["properties"].items():
            if isinstance(values, dict) and key in values:
                found += _object_paths(sub, values[key], f"{path}.{key}")
    return found


def test_default_values_pass_the_schema() -> None:
    chart().validate_schema(DEFAULTS)
    chart().validate_schema({})


@pytest.mark.parametrize("set_name", sorted(VALUE_SETS))
def test_every_tested_value_set_passes_the_schema(set_name: str) -> None:
    chart().validate_schema(VALUE_SETS[set_name])


def test_schema_and_values_yaml_declare_the_same_keys_at_every_level() -> None:
    for path, schema, values in _object_paths(SCHEMA, DEFAULTS):
        declared = set(schema["properties"]) - {"global"}
        assert declared == set(values), (
            f"{path or '<root>'}: schema {sorted(declared)} vs values {sorted(values)}"
        )


def test_every_object_with_known_keys_forbids_unknown_ones() -> None:
    for path, schema, _ in _object_paths(SCHEMA, DEFAULTS):
        assert schema.get("additionalProperties") is False, path or "<root>"


def test_unknown_top_level_key_is_rejected() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="additional properties 'replicaCount' not allowed"):
        chart().validate_schema({"replicaCount": 2})
    with pytest.raises(helm_python.HelmValuesError, match="replicaCount"):
        render({"replicaCount": 2})


def test_misspelled_nested_key_is_rejected() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="jsonLog"):
        chart().validate_schema({"operator": {"jsonLog": False}})


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"operator": {"workerLimit": "many"}}, "/operator/workerLimit"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"operator": {"jsonLogs": "yes"}}, "/operator/jsonLogs"),
        ({"admission": {"mode": "enforce"}}, "/admission/mode"),
        ({"redis": {"url": "localhost:6379"}}, "/redis/url"),
        ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
        ({"rbac": {"scope": "global"}}, "/rbac/scope"),
        (
            {"networkPolicy": {"enabled": True, "egress": {"redis": {"cidrs": ["redis"], "ports": [6379]}}}},
            "/networkPolicy/egress/redis/cidrs/0",
        ),
    ],
)
def test_wrong_types_and_values_are_rejected_with_their_path(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=where):
        chart().validate_schema(values)


def test_namespaced_rbac_without_namespaces_is_rejected() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/watchNamespaces"):
        render({"rbac": {"scope": "namespaced"}})


def test_managed_admission_with_namespaced_rbac_is_rejected() -> None:
    # kopf manages a cluster-scoped ValidatingWebhookConfiguration: a Role cannot allow that.
    with pytest.raises(helm_python.HelmValuesError, match="/rbac/scope"):
        render(
            {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a"], "admission": {"mode": "managed"}}
        )
