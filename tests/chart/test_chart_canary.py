"""Chart values of the canary analysis: the Prometheus URL (or its Secret) and the query overrides.

The rendered env and args go through the real ``apx-operator`` flag parser and
settings, and the rendered queries ConfigMap through the provider factory, so
the tests prove the operator would start with what the chart gives it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from chartkit import CANARY, RELEASE, VALUE_SETS, chart, container, env_of, merged, pod_spec, render

from apx.controllers.providers import provider_for
from apx.controllers.providers.prometheus import PrometheusProvider
from apx.controllers.providers.queries import DEFAULT_QUERIES
from apx.operator.main import build_parser, settings_from_args
from apx.operator.settings import OperatorSettings

QUERIES_NAME = f"{RELEASE}-operator-canary-queries"


def _settings(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    operator = container(render(values).operator())
    for name in [n for n in os.environ if n.startswith("APX_") or n == "PUBSUB_EMULATOR_HOST"]:
        monkeypatch.delenv(name)
    for entry in operator["env"]:
        value = entry.get("value", "http://from-secret.monitoring:9090")
        monkeypatch.setenv(entry["name"], value)
    return settings_from_args(build_parser().parse_args(operator["args"]))


def test_by_default_the_analysis_is_off_and_nothing_extra_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render()
    env = env_of(container(rendered.operator()))
    assert "APX_PROMETHEUS_URL" not in env and "APX_CANARY_QUERIES" not in env
    assert rendered.of_kind("ConfigMap") == []
    settings = _settings({}, monkeypatch)
    assert (settings.prometheus_url, settings.canary_queries) == (None, None)
    assert provider_for(settings) is None


def test_the_prometheus_url_reaches_the_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"canary": {"prometheus": {"url": "https://prometheus.monitoring.svc:9091/prom"}}}
    settings = _settings(values, monkeypatch)
    assert settings.prometheus_url == "https://prometheus.monitoring.svc:9091/prom"
    provider = provider_for(settings)
    assert isinstance(provider, PrometheusProvider)
    assert provider.display_name == "Prometheus at prometheus.monitoring.svc:9091"


def test_the_prometheus_url_can_come_from_a_secret_and_is_then_not_in_the_manifest() -> None:
    values = {
        "canary": {
            "prometheus": {
                "url": "http://ignored.monitoring:9090",
                "existingSecret": {"name": "prom-auth", "key": "url"},
            }
        }
    }
    env = env_of(container(render(values).operator()))
    assert env["APX_PROMETHEUS_URL"] == {"secretKeyRef": {"name": "prom-auth", "key": "url"}}
    assert "ignored.monitoring" not in yaml.safe_dump(render(values).operator())


@pytest.mark.parametrize(
    "url",
    [
        "prometheus:9090",
        "prometheus.monitoring",
        "ftp://prometheus:21",
        "http://admin:s3cret@prometheus:9090",
        "http://prometheus:9090/x@y",
        "http:// prometheus:9090",
    ],
)
def test_a_prometheus_address_that_is_not_a_plain_http_url_is_refused(url: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=r"/canary/prometheus/url.*does not match pattern"):
        chart().validate_schema({"canary": {"prometheus": {"url": url}}})


@pytest.mark.parametrize(
    "url", ["", "http://prometheus-operated.monitoring:9090", "https://[fd00::1]:9090/prometheus/"]
)
def test_plain_http_urls_pass_the_schema(url: str) -> None:
    chart().validate_schema({"canary": {"prometheus": {"url": url}}})


@pytest.mark.parametrize(
    ("queries", "expected"),
    [
        ({"grpc": {"requests": "x"}}, "grpc"),
        ({"sync": {"rate": "x"}}, "rate"),
        ({"sync": {"latencyUnit": "minutes"}}, "latencyUnit"),
        ({"async": {"errors": ""}}, "errors"),
    ],
)
def test_query_overrides_with_unknown_keys_or_bad_values_are_refused(
    queries: dict[str, Any], expected: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=expected):
        chart().validate_schema({"canary": {"queries": queries}})


def test_query_overrides_become_a_mounted_file_the_operator_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rendered = render(CANARY)
    config_map = rendered.get("ConfigMap", QUERIES_NAME)
    operator = rendered.operator()
    env = env_of(container(operator))
    mount = next(m for m in container(operator)["volumeMounts"] if m["name"] == "canary-queries")
    volume = next(v for v in pod_spec(operator)["volumes"] if v["name"] == "canary-queries")
    assert volume["configMap"]["name"] == QUERIES_NAME
    assert mount["readOnly"] is True
    assert env["APX_CANARY_QUERIES"] == f"{mount['mountPath']}/queries.yaml"

    # The file the operator would read, checked the way it checks it at start.
    local = tmp_path / "queries.yaml"
    local.write_text(config_map["data"]["queries.yaml"])
    settings = _settings(CANARY, monkeypatch).model_copy(update={"canary_queries": str(local)})
    provider = provider_for(settings)
    assert isinstance(provider, PrometheusProvider)
    assert provider.queries.sync.errors == CANARY["canary"]["queries"]["sync"]["errors"]
    assert provider.queries.sync.requests == DEFAULT_QUERIES.sync.requests
    assert provider.queries.async_.latency_unit == "seconds"


def test_changing_the_query_overrides_restarts_the_operator() -> None:
    def checksum(values: dict[str, Any]) -> str | None:
        annotations: dict[str, str] = render(values).operator()["spec"]["template"]["metadata"]["annotations"]
        return annotations.get("checksum/canary-queries")

    changed = merged(CANARY, {"canary": {"queries": {"async": {"latencyUnit": "milliseconds"}}}})
    assert checksum({}) is None
    assert checksum(CANARY) is not None
    assert checksum(CANARY) != checksum(changed)


def test_network_policy_lets_the_operator_reach_prometheus_only_when_the_analysis_is_on() -> None:
    def egress_ports(values: dict[str, Any]) -> set[tuple[int, str]]:
        policy = render(values).get("NetworkPolicy", f"{RELEASE}-operator")["spec"]
        return {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}

    assert (9090, "TCP") in egress_ports(VALUE_SETS["canary-analysis"])
    assert (9090, "TCP") not in egress_ports(VALUE_SETS["network-policy-on"])
