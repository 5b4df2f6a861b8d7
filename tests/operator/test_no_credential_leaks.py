"""No credential the operator is given appears in anything it writes, logs, serves or posts.

A password is planted in every URL setting of the operator (Redis URL,
Pub/Sub emulator host, Prometheus URL, and the OTLP endpoint when its exporter
is installed). Redis is unreachable at that URL, so the operator produces
errors: ``RedisUnavailable`` in status and Events, warnings in its logs, a
``last_error`` in ``/healthz``. The whole operator process runs against the
emulated Kubernetes API with the samples applied, and then everything is
scanned: the status of every APX object, every Event, every manifest it
applied (Deployments, Services, ConfigMaps; the ``apx-dataplane`` Secret is
the one place a credential belongs), its logs, ``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Kubectl, OperatorProcess, eventually
from e2e.kubeemu.testing import running_emulator
from e2e.services import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
PASSWORD = "Pl4nted-S3cret-9f2c"  # the credential the test hunts for


def _otlp_exporter_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        return False


def _settings(closed_port: int) -> dict[str, str]:
    settings = {
        "APX_REDIS_URL": f"redis://apx:{PASSWORD}@127.0.0.1:{closed_port}/0",
        "PUBSUB_EMULATOR_HOST": f"apx:{PASSWORD}@127.0.0.1:{closed_port}",
        "APX_PROMETHEUS_URL": f"http://apx:{PASSWORD}@127.0.0.1:{closed_port}/prom?password={PASSWORD}",
    }
    if _otlp_exporter_installed():
        settings["APX_OTLP_ENDPOINT"] = f"http://apx:{PASSWORD}@127.0.0.1:{closed_port}/v1/traces"
    return settings


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    with running_emulator(crds=ROOT / "crds") as emulator:
        kubectl = Kubectl(emulator.kubeconfig, tmp_path_factory.mktemp("kubecache"))
        kubectl.run("create", "namespace", "apx-system")
        kubectl.run("create", "namespace", "leaks")
        yield kubectl


def _scan(where: str, text: str, found: list[str]) -> None:
    if PASSWORD in text:
        at = text.index(PASSWORD)
        found.append(f"{where}: ...{text[max(0, at - 120) : at + 40]}...")


def _has_redis_problem(body: dict[str, Any] | None) -> bool:
    status = (body or {}).get("status") or {}
    return "Redis" in json.dumps(status)


@pytest.mark.timeout(170)
def test_a_password_in_every_operator_url_setting_appears_in_no_output(api: Kubectl, tmp_path: Path) -> None:
    closed_port = free_port()
    settings = _settings(closed_port)
    operator = OperatorProcess(
        env={
            "KUBECONFIG": str(api.kubeconfig),
            "APX_PUBSUB_PROJECT": "apx-leaks",
            "APX_RESYNC_SECONDS": "2",
            "APX_JSON_LOGS": "true",
            "APX_LOG_LEVEL": "DEBUG",
            "APX_NAMESPACES": "leaks",
            **settings,
        },
        log=tmp_path / "operator.log",
    )
    found: list[str] = []
    operator.start()
    try:
        # As a user would: PolicyBundle 1.2.0 first, then everything (1.3.0 on top of it).
        api.apply(SAMPLES / "03-policybundle-payments-1.2.0.yaml", "leaks")
        eventually(
            lambda: (api.get("policybundle", "payments-policy", "leaks") or {}).get("status"),
            what="PolicyBundle status",
        )
        api.apply(SAMPLES, "leaks")
        eventually(
            lambda: len(api.list("routes", "leaks")) == 3 and len(api.list("products", "leaks")) == 2,
            what="every sample stored",
        )
        # The error paths ran: Redis (with the password in its URL) is unreachable and says so in status.
        eventually(
            lambda: _has_redis_problem(api.get("product", "payments", "leaks")),
            timeout=60,
            what="a RedisUnavailable status",
        )
        eventually(lambda: api.list("events", "leaks"), timeout=30, what="Events")
        # The async Route's namespace got the dataplane ConfigMap (with the emulator host) and Secret.
        eventually(lambda: api.get("configmap", "apx-dataplane", "leaks"), timeout=30, what="ConfigMap")
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=5
        ) as answer:
            healthz = answer.read().decode()
        assert "last_error" in healthz or "reconciler" in healthz
        _scan("/healthz", healthz, found)
        _scan("/metrics", operator.metrics(), found)
        for kind in (
            "products",
            "routes",
            "policybundles",
            "events",
            "deployments",
            "services",
            "configmaps",
        ):
            for namespace in ("leaks", "apx-system"):
                _scan(f"{kind} in {namespace}", api.run("get", kind, "-n", namespace, "-o", "json"), found)
        product = api.get("product", "payments", "leaks")
        assert product is not None and "***" in json.dumps(product["status"])  # redacted, not dropped
        # Workers read the Redis URL from the Secret, never from an inline value.
        for deployment in api.list("deployments", "leaks"):
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                for variable in container.get("env") or []:
                    if variable["name"] == "APX_REDIS_URL":
                        assert "secretKeyRef" in variable.get("valueFrom", {}), variable
    finally:
        operator.stop()
    log = (tmp_path / "operator.log").read_text()
    assert "Redis" in log and "***" in log  # the errors were logged, redacted
    _scan("operator log", log, found)
    assert found == [], "\n".join(found)


def test_a_password_in_a_startup_error_does_not_reach_the_terminal(tmp_path: Path) -> None:
    # A setting the operator refuses at start: the message names the setting, not its secret.
    closed_port = free_port()
    env = {
        **os.environ,
        **_settings(closed_port),
        "APX_METRICS_PORT": "0",
        "APX_LIVENESS_PORT": "0",
        "APX_PROMETHEUS_URL": f"ftp://apx:{PASSWORD}@127.0.0.1:{closed_port}/",
        # Refused at start too when its exporter is not installed: that message is scanned as well.
        "APX_OTLP_ENDPOINT": f"http://apx:{PASSWORD}@127.0.0.1:{closed_port}/v1/traces",
        "KUBECONFIG": str(tmp_path / "none"),
    }
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "apx-operator")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode != 0
    assert PASSWORD not in completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
