"""The flags and env the chart gives the operator are accepted by the real apx-operator CLI.

Each render's operator container args go through ``apx.operator.main.build_parser`` and
its env through ``settings_from_args`` (APX_* variables), giving the OperatorSettings the
operator would start with. Values from Secrets are replaced by a placeholder, as kubelet
would resolve them.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from chartkit import NAMESPACE, VALUE_SETS, container, render

from apx.operator.main import build_parser, settings_from_args
from apx.operator.settings import OperatorSettings

SECRET_PLACEHOLDER = "redis://:from-secret@redis:6379/0"


def _settings(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    operator = container(render(values).operator())
    for name in [n for n in os.environ if n.startswith("APX_") or n == "PUBSUB_EMULATOR_HOST"]:
        monkeypatch.delenv(name)
    for entry in operator["env"]:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
        else:
            # From a Secret, or the pod's own name (POD_NAME, the leader-election identity).
            assert entry["valueFrom"].get("secretKeyRef") or entry["valueFrom"].get("fieldRef")
            monkeypatch.setenv(entry["name"], SECRET_PLACEHOLDER)
    return settings_from_args(build_parser().parse_args(operator["args"]))


def test_default_values_start_a_cluster_wide_operator_with_json_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings({}, monkeypatch)
    assert settings.namespaces == []
    assert settings.json_logs is True
    assert settings.log_level == "INFO"
    assert settings.admission == "none"
    assert settings.operator_namespace == NAMESPACE
    assert settings.redis_url == "redis://redis.apx-system.svc:6379/0"
    assert settings.pubsub_project == "apx-local"
    assert settings.pubsub_emulator_host is None
    assert (settings.resync_seconds, settings.worker_limit) == (60.0, 16)
    assert (settings.liveness_port, settings.metrics_port) == (8080, 9090)


def test_namespaced_values_pass_one_namespace_flag_per_watched_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = container(render(VALUE_SETS["namespaced-rbac-two-namespaces"]).operator())["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    assert _settings(VALUE_SETS["namespaced-rbac-two-namespaces"], monkeypatch).namespaces == [
        "team-a",
        "team-b",
    ]


def test_json_logs_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(VALUE_SETS["json-logs-off"], monkeypatch)
    assert settings.json_logs is False
    assert settings.log_level == "DEBUG"


def test_redis_url_from_secret_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(VALUE_SETS["redis-url-from-secret"], monkeypatch).redis_url == SECRET_PLACEHOLDER


def test_managed_admission_points_the_operator_at_the_mounted_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(VALUE_SETS["admission-managed"], monkeypatch)
    assert settings.admission == "managed"
    assert settings.webhook_port == 9443
    assert settings.webhook_cert == "/etc/apx/webhook/tls.crt"
    assert settings.webhook_key == "/etc/apx/webhook/tls.key"


def test_every_tuning_value_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "operator": {
            "resyncSeconds": 15,
            "snapshotConfigMapSeconds": 2.5,
            "workerLimit": 4,
            "livenessPort": 8181,
            "metricsPort": 9191,
            "otlpEndpoint": "http://otel-collector.observability:4318",
            "extraArgs": ["--pubsub-project=override-project"],
        },
        "pubsub": {"project": "acme-prod", "emulatorHost": "pubsub-emulator:8085"},
    }
    settings = _settings(values, monkeypatch)
    assert settings.resync_seconds == 15.0 and settings.worker_limit == 4
    assert settings.snapshot_configmap_seconds == 2.5
    assert (settings.liveness_port, settings.metrics_port) == (8181, 9191)
    assert settings.otlp_endpoint == "http://otel-collector.observability:4318"
    assert settings.pubsub_emulator_host == "pubsub-emulator:8085"
    assert settings.pubsub_project == "override-project"  # flags win over APX_* variables
