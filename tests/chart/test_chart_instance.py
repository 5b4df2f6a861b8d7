"""The chart's ``instance`` value: a second release over other namespaces gets its own shared-object names.

Rendered offline (``chartkit``). A named instance passes ``APX_INSTANCE`` to the
operator and to the dataplane (the gateway reads that instance's route table),
and names the webhook Service, its certificate and the webhook configuration
the operator may patch after it; the default keeps every name of a single
install (README, "Outgrowing one operator").
"""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import DATAPLANE, VALUE_SETS, container, env_of, merged, render

from apx.operator.settings import OperatorSettings

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "apx-team-b"
NAMED = merged(VALUE_SETS["admission-managed"], DATAPLANE, {"instance": "team-b"})


def _webhook_names(rendered: Any) -> list[str]:
    return [
        name
        for rule in rendered.get("ClusterRole", "apx-operator", namespace=None)["rules"]
        if "validatingwebhookconfigurations" in rule["resources"]
        for name in rule.get("resourceNames") or []
    ]


def test_the_default_instance_renders_todays_names_and_no_instance_variable() -> None:
    rendered = render(merged(VALUE_SETS["admission-managed"], DATAPLANE))
    assert rendered.names("Service").count("apx-webhook") == 1
    assert "apx-webhook-tls" in rendered.names("Secret")
    assert _webhook_names(rendered) == ["apx.dev"]
    for workload in rendered.workloads():
        assert "APX_INSTANCE" not in env_of(container(workload)), workload["metadata"]["name"]


def test_a_named_instance_reaches_the_operator_and_the_gateway_and_names_its_webhook_objects() -> None:
    rendered = render(NAMED, namespace=NAMESPACE)
    operator = env_of(container(rendered.get("Deployment", "apx-operator", namespace=NAMESPACE)))
    gateway = env_of(container(rendered.get("Deployment", "apx-gateway", namespace=NAMESPACE)))
    assert operator["APX_INSTANCE"] == gateway["APX_INSTANCE"] == "team-b"
    # The operator's own defaults for the instance are the names the chart gives the objects.
    settings = OperatorSettings(instance="team-b")
    service = rendered.get("Service", settings.webhook_service, namespace=NAMESPACE)
    assert service["spec"]["ports"][0]["port"] == 443
    assert f"{settings.webhook_service}-tls" in rendered.names("Secret")
    assert _webhook_names(rendered) == [settings.webhook_configuration] == ["team-b.apx.dev"]
    assert "team-b.apx.dev" in rendered.notes


@pytest.mark.parametrize("bad", ["Team-B", "team_b", "a" * 41])
def test_an_instance_that_is_not_a_short_dns_label_is_refused_by_the_schema(bad: str) -> None:
    with pytest.raises(Exception, match="instance"):
        render({"instance": bad})
