"""No credential given to a dataplane service appears in its logs, probes, metrics or error answers.

The three console scripts run as the Deployments run them (``APX_*``
variables, JSON logs) against a private Redis that requires a password, so
every Redis URL carries a real one and the services work; the worker's
upstream URL and the gateway's Pub/Sub emulator host carry it too (and the
OTLP endpoint when its exporter is installed). Each service is then driven
through normal and error paths (unknown product, Redis stopped, an unknown
route, an unreachable upstream) and everything it produced is scanned:
stderr, ``/metrics``, ``/healthz``, ``/readyz``, gRPC error details and HTTP
error bodies.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from google.cloud import pubsub_v1

from e2e.services import Service, free_port, start_redis, wait_for_port
from tests.dataplane.conftest import RlsClient

PASSWORD = "Pl4nted-S3cret-dp-71b"  # the credential the test hunts for
BIN = Path(sys.executable).parent


def _otlp(port: int) -> dict[str, str]:
    try:
        installed = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        installed = False
    return {"APX_OTLP_ENDPOINT": f"http://apx:{PASSWORD}@127.0.0.1:{port}/v1/traces"} if installed else {}


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[Service]:
    """A private Redis that requires ``PASSWORD``."""
    service = start_redis(tmp_path / "redis")
    redis.Redis(host="127.0.0.1", port=service.port).config_set("requirepass", PASSWORD)
    try:
        yield service
    finally:
        service.stop()


def _start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / command)],
            env={**os.environ, "APX_JSON_LOGS": "true", "APX_LOG_LEVEL": "DEBUG", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()}"


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _scan(where: str, text: str, found: list[str]) -> None:
    if PASSWORD in text:
        at = text.index(PASSWORD)
        found.append(f"{where}: ...{text[max(0, at - 120) : at + 40]}...")


@pytest.mark.timeout(170)
def test_a_password_in_every_dataplane_url_setting_appears_in_no_output(
    locked_redis: Service, pubsub_service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found: list[str] = []
    redis_url = f"redis://default:{PASSWORD}@{locked_redis.address}/0"
    closed = free_port()
    outputs: dict[str, str] = {}

    # --- the rate-limit service: an unknown product, then Redis gone ---------------------------
    grpc_port, rl_metrics = free_port(), free_port()
    ratelimit = _start(
        "apx-ratelimit",
        {
            "APX_REDIS_URL": redis_url,
            "APX_RATELIMIT_LISTEN": f"127.0.0.1:{grpc_port}",
            "APX_METRICS_PORT": str(rl_metrics),
        },
        tmp_path / "ratelimit.log",
    )
    # --- the gateway: an unknown route and the probes ------------------------------------------
    http_port, gw_metrics = free_port(), free_port()
    gateway = _start(
        "apx-gateway",
        {
            "APX_REDIS_URL": redis_url,
            "APX_HTTP_HOST": "127.0.0.1",
            "APX_HTTP_PORT": str(http_port),
            "APX_METRICS_PORT": str(gw_metrics),
            "APX_PUBSUB_PROJECT": "apx-leaks",
            "PUBSUB_EMULATOR_HOST": f"apx:{PASSWORD}@127.0.0.1:{closed}",
            **_otlp(closed),
        },
        tmp_path / "gateway.log",
    )
    # --- the worker: a real subscription, an unreachable upstream with a password ---------------
    project, topic, subscription = "apx-leaks", "leak-requests", "leak-requests.workers"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_service.address)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    subscription_path = subscriber.subscription_path(project, subscription)
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(name=subscription_path, topic=topic_path)
    wk_metrics = free_port()
    worker = _start(
        "apx-worker",
        {
            "APX_REDIS_URL": redis_url,
            "APX_SUBSCRIPTIONS": subscription_path,
            "APX_UPSTREAM_URL": f"http://apx:{PASSWORD}@127.0.0.1:{closed}/api?token={PASSWORD}",
            "APX_PUBSUB_PROJECT": project,
            "PUBSUB_EMULATOR_HOST": pubsub_service.address,
            "APX_METRICS_PORT": str(wk_metrics),
            "APX_METRICS_HOST": "127.0.0.1",
            "APX_ROUTE": "leaks/exports",
            "APX_TRACK": "stable",
            **_otlp(closed),
        },
        tmp_path / "worker.log",
    )
    try:
        wait_for_port(grpc_port, timeout=30)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            with pytest.raises(grpc.RpcError) as unknown:
                stub.ShouldRateLimit(RlsClient.request("leaks/none", tenant="t1"), timeout=5)
            outputs["rls unknown product"] = str(unknown.value.details())
            _wait_http(f"http://127.0.0.1:{gw_metrics}/healthz")
            outputs["gateway /readyz"] = _get(f"http://127.0.0.1:{gw_metrics}/readyz")
            outputs["gateway /healthz"] = _get(f"http://127.0.0.1:{gw_metrics}/healthz")
            request = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/v1/none", data=b"{}", method="POST", headers={"Host": "x"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    outputs["gateway submit"] = answer.read().decode()
            except urllib.error.HTTPError as error:
                outputs["gateway submit"] = f"{error.code} {error.read().decode()}"
            _wait_http(f"http://127.0.0.1:{wk_metrics}/healthz")
            # Ready once started: by then it has logged "consuming" (with the upstream URL).
            deadline = time.monotonic() + 30
            while _get(f"http://127.0.0.1:{wk_metrics}/readyz").strip() != "ok":
                assert time.monotonic() < deadline, "the worker never became ready"
                time.sleep(0.1)
            for name, port in (("ratelimit", rl_metrics), ("gateway", gw_metrics), ("worker", wk_metrics)):
                outputs[f"{name} /metrics"] = _get(f"http://127.0.0.1:{port}/metrics")
            outputs["worker /readyz"] = _get(f"http://127.0.0.1:{wk_metrics}/readyz")
            # Redis goes away: the error paths of all three run.
            locked_redis.stop()
            with pytest.raises(grpc.RpcError) as down:
                stub.ShouldRateLimit(RlsClient.request("leaks/other", tenant="t2"), timeout=5)
            outputs["rls redis down"] = str(down.value.details())
            time.sleep(1.5)  # health loops notice
            outputs["gateway /readyz, redis down"] = _get(f"http://127.0.0.1:{gw_metrics}/readyz")
            outputs["worker /readyz, redis down"] = _get(f"http://127.0.0.1:{wk_metrics}/readyz")
    finally:
        for process in (ratelimit, gateway, worker):
            _stop(process)
    for name in ("ratelimit", "gateway", "worker"):
        outputs[f"{name} log"] = (tmp_path / f"{name}.log").read_text()
    # `--help` shows each flag's default, taken from the environment: redacted too.
    help_env = {
        **os.environ,
        "APX_REDIS_URL": redis_url,
        "APX_UPSTREAM_URL": f"http://apx:{PASSWORD}@127.0.0.1:{closed}/",
        "PUBSUB_EMULATOR_HOST": f"apx:{PASSWORD}@127.0.0.1:{closed}",
        "APX_OTLP_ENDPOINT": f"http://apx:{PASSWORD}@127.0.0.1:{closed}/v1/traces",
    }
    for name in ("apx-ratelimit", "apx-gateway", "apx-worker"):
        shown = subprocess.run(
            [str(BIN / name), "--help"], env=help_env, capture_output=True, text=True, timeout=60, check=True
        )
        outputs[f"{name} --help"] = shown.stdout + shown.stderr
    # The paths ran: the worker reached "consuming" (it logs the upstream), the services logged.
    assert "consuming" in outputs["worker log"], outputs["worker log"][-2000:]
    assert "***" in outputs["worker log"]
    assert "rate-limit service listening" in outputs["ratelimit log"]
    for where, text in outputs.items():
        _scan(where, text, found)
    assert found == [], "\n".join(found)
