"""``dataplane.ratelimit.workers``: how many apx-ratelimit processes share a pod's gRPC port.

The value is rendered as ``APX_RATELIMIT_WORKERS`` on the rate-limit container only
(``apx-ratelimit --workers``, apx/dataplane/ratelimit/workers.py); the schema takes
integers from 0 (one per CPU) up, and a count above 1 is rendered as given even
without a CPU limit (values.yaml says how to size it).
"""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
import yaml
from chartkit import CHART_DIR, DATAPLANE, chart, container, env_of, merged, render

from apx.dataplane.ratelimit.main import build_parser

WORKERS_ENV = "APX_RATELIMIT_WORKERS"


def _ratelimit_env(values: dict[str, Any]) -> dict[str, Any]:
    return env_of(container(render(merged(DATAPLANE, values)).get("Deployment", "apx-ratelimit")))


@pytest.mark.timeout(60)
def test_without_the_value_one_worker_is_rendered_as_the_services_own_default() -> None:
    assert _ratelimit_env({})[WORKERS_ENV] == "1"
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert defaults["dataplane"]["ratelimit"]["workers"] == build_parser().parse_args([]).workers == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("workers", "expected"), [(3, "3"), (0, "0")])
def test_the_worker_count_is_rendered_as_the_env_var(workers: int, expected: str) -> None:
    env = _ratelimit_env({"dataplane": {"ratelimit": {"workers": workers}}})
    assert env[WORKERS_ENV] == expected
    assert list(env).count(WORKERS_ENV) == 1


@pytest.mark.timeout(60)
def test_several_workers_without_a_cpu_limit_are_rendered_as_given() -> None:
    rendered = render(merged(DATAPLANE, {"dataplane": {"ratelimit": {"workers": 4}}}))
    ratelimit = container(rendered.get("Deployment", "apx-ratelimit"))
    assert "cpu" not in ratelimit["resources"].get("limits", {})
    assert env_of(ratelimit)[WORKERS_ENV] == "4"


@pytest.mark.timeout(60)
def test_only_the_ratelimit_container_gets_the_worker_count() -> None:
    rendered = render(merged(DATAPLANE, {"dataplane": {"ratelimit": {"workers": 2}}}))
    assert WORKERS_ENV not in env_of(container(rendered.get("Deployment", "apx-gateway")))
    assert WORKERS_ENV not in env_of(container(rendered.operator()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [-1, "two", 1.5, "2"])
def test_the_schema_refuses_a_worker_count_that_is_not_a_non_negative_integer(workers: Any) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/dataplane/ratelimit/workers"):
        chart().validate_schema({"dataplane": {"ratelimit": {"workers": workers}}})
    with pytest.raises(helm_python.HelmValuesError, match="/dataplane/ratelimit/workers"):
        render(merged(DATAPLANE, {"dataplane": {"ratelimit": {"workers": workers}}}))
