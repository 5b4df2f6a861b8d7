"""The chart refuses values that cannot work, before anything is applied.

values.schema.json (checked by Helm on install, upgrade, template and lint) refuses zero
replicas of a dataplane service Envoy depends on and an OTLP endpoint that is not an
http(s) URL. Two listeners of one pod on the same port cannot be expressed in JSON schema
(it cannot compare two values), so ``apx.validatePorts`` in _helpers.tpl fails the render
with both keys named.
"""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
from chartkit import DATAPLANE, merged, render

SAME_PORT_PAIRS = [
    ({"operator": {"metricsPort": 8080}}, "operator.livenessPort and operator.metricsPort are both 8080"),
    ({"operator": {"livenessPort": 9090}}, "operator.livenessPort and operator.metricsPort are both 9090"),
    ({"admission": {"webhookPort": 9090}}, "admission.webhookPort and operator.metricsPort are both 9090"),
    (
        {"dataplane": {"ratelimit": {"metricsPort": 8081}}},
        "dataplane.ratelimit.grpcPort and dataplane.ratelimit.metricsPort are both 8081",
    ),
    (
        {"dataplane": {"gateway": {"httpPort": 9090}}},
        "dataplane.gateway.httpPort and dataplane.gateway.metricsPort are both 9090",
    ),
]


@pytest.mark.parametrize(("values", "message"), SAME_PORT_PAIRS)
def test_two_listeners_of_one_pod_on_the_same_port_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(merged(DATAPLANE, values))


def test_the_same_port_in_two_different_pods_is_accepted() -> None:
    # The operator's metrics port and the gateway's HTTP port live in different pods.
    rendered = render(merged(DATAPLANE, {"operator": {"metricsPort": 8080, "livenessPort": 8082}}))
    assert rendered.operator()


@pytest.mark.parametrize("service", ["ratelimit", "gateway"])
def test_zero_replicas_of_a_dataplane_service_is_refused(service: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=f"/dataplane/{service}/replicas"):
        render(merged(DATAPLANE, {"dataplane": {service: {"replicas": 0}}}))
    rendered = render(merged(DATAPLANE, {"dataplane": {service: {"replicas": 1}}}))
    assert rendered.get("Deployment", f"apx-{service}")["spec"]["replicas"] == 1


def test_zero_operator_replicas_is_refused() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/operator/replicaCount"):
        render({"operator": {"replicaCount": 0}})


@pytest.mark.parametrize(
    "endpoint",
    ["otel-collector:4318", "otel-collector", "grpc://otel-collector:4317", "http://", "http://a b"],
)
def test_an_otlp_endpoint_that_is_not_an_http_url_is_refused(endpoint: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/operator/otlpEndpoint"):
        render({"operator": {"otlpEndpoint": endpoint}})


@pytest.mark.parametrize(
    "endpoint", ["", "http://otel-collector.observability:4318", "https://otlp.example.net/v1/traces"]
)
def test_an_http_otlp_endpoint_or_none_is_accepted(endpoint: str) -> None:
    assert render({"operator": {"otlpEndpoint": endpoint}}).operator()
