"""Credentials given to the chart come from Secrets and appear in no rendered manifest or NOTES.

A password is planted in every URL value the chart takes inline: the Redis
URL (user:password and ``rediss://``) and the OTLP endpoint (a token
parameter; user:password there, like in the Prometheus URL, is refused by the
values schema); the Prometheus URL of the canary analysis with credentials can
only come from an existing Secret. Rendered with the dataplane on and every other option, the
password appears nowhere in the output: containers read those values from the
chart's credentials Secret (base64 ``data``, never ``stringData``) or from the
user's own Secret, and NOTES shows the URLs redacted.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from chartkit import DATAPLANE, VALUE_SETS, merged, render

PASSWORD = "Pl4nted-Ch4rt-S3cret"  # the credential the test hunts for

PLANTED: dict[str, dict[str, Any]] = {
    "redis-user-password": {"redis": {"url": f"redis://apx:{PASSWORD}@redis.db:6379/0"}},
    "rediss-password-only": {"redis": {"url": f"rediss://:{PASSWORD}@redis.db:6380/1"}},
    "otlp-token-parameter": {
        "operator": {"otlpEndpoint": f"http://collector:4318/v1/traces?token={PASSWORD}"}
    },
}
ALL_PLANTED = merged(
    DATAPLANE,
    PLANTED["redis-user-password"],
    PLANTED["otlp-token-parameter"],
    {"canary": {"prometheus": {"existingSecret": {"name": "prom-auth", "key": "url"}}}},
)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env") or []}


def _containers(rendered: Any) -> list[dict[str, Any]]:
    return [
        c for workload in rendered.workloads() for c in workload["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("base", sorted(VALUE_SETS), ids=str)
def test_a_planted_password_appears_in_no_rendered_manifest_or_notes(base: str) -> None:
    values = merged(VALUE_SETS[base], ALL_PLANTED)
    if "existingSecret" in values["redis"] and values["redis"]["existingSecret"].get("name"):
        values["redis"].pop("existingSecret")
    rendered = render(values)
    for path, text in rendered.templates.items():
        assert PASSWORD not in text, f"{path} shows the password"
    assert "apx:***@redis.db:6379/0" in rendered.notes  # shown redacted, not dropped


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_a_value_with_a_credential_is_read_from_the_chart_secret(name: str) -> None:
    rendered = render(merged(DATAPLANE, PLANTED[name]))
    (secret,) = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == "apx-credentials"]
    assert "stringData" not in secret
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert any(PASSWORD in value for value in decoded.values())
    variable = "APX_REDIS_URL" if name.startswith("redis") else "APX_OTLP_ENDPOINT"
    containers = _containers(rendered)
    assert len(containers) >= 3  # the operator, the rate-limit service and the gateway
    for container in containers:
        entry = _env(container)[variable]
        assert "value" not in entry
        assert entry["valueFrom"]["secretKeyRef"]["name"] == "apx-credentials"
        assert entry["valueFrom"]["secretKeyRef"]["key"] in decoded
    for path, text in rendered.templates.items():
        assert PASSWORD not in text, f"{path} shows the password"


def test_values_without_credentials_stay_inline_and_no_secret_is_made() -> None:
    rendered = render(merged(DATAPLANE, {"operator": {"otlpEndpoint": "http://collector:4318"}}))
    assert [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == "apx-credentials"] == []
    env = _env(rendered.operator()["spec"]["template"]["spec"]["containers"][0])
    assert env["APX_REDIS_URL"]["value"] == "redis://redis.apx-system.svc:6379/0"
    assert env["APX_OTLP_ENDPOINT"]["value"] == "http://collector:4318"


def test_an_existing_redis_secret_wins_over_the_chart_secret() -> None:
    values = merged(
        DATAPLANE,
        PLANTED["redis-user-password"],
        {"redis": {"existingSecret": {"name": "my-redis", "key": "url"}}},
    )
    rendered = render(values)
    assert [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == "apx-credentials"] == []
    for container in _containers(rendered):
        assert _env(container)["APX_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "my-redis",
            "key": "url",
        }
    for text in rendered.templates.values():
        assert PASSWORD not in text
