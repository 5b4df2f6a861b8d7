"""End-to-end: two ``apx-operator`` processes with leader election; the leader is SIGKILLed.

Both replicas watch the test's namespace (emulated Kubernetes API, real Redis
and Pub/Sub emulator). While both run, only the Lease holder reconciles and
writes; the standby's store is warm (it counts the watch events) and its
``/healthz`` answers. After the leader is SIGKILLed (no release), the standby
takes the Lease within ``lease duration + retry period`` (measured, printed)
and reconciles a spec change made after the kill.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from apx.contracts import redis_keys
from e2e.harness import OperatorProcess, condition, eventually
from e2e.services import Service, start_pubsub_emulator, start_redis

from .conftest import Backend
from .test_operator import NAMES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
LEASE_SECONDS = 4.0
RENEW_SECONDS = 0.5


def _metric(operator: OperatorProcess, name: str) -> float:
    """Sum of every sample of ``name`` (0 when absent)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(operator.metrics()))


def _holder(backend: Backend, lease: str) -> str | None:
    body = backend.kubectl.get("lease", lease, "apx-system") or {}
    return (body.get("spec") or {}).get("holderIdentity") or None


def _all_ready(backend: Backend, namespace: str) -> bool:
    for kind, name in NAMES:
        body = backend.kubectl.get(kind.lower(), name, namespace)
        if condition(body, "Ready") != "True":
            raise AssertionError(f"{kind} {name}: {(body or {}).get('status')}")
    return True


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    redis_service = start_redis(tmp_path / "redis")
    pubsub = start_pubsub_emulator(tmp_path / "pubsub")
    try:
        yield redis_service, pubsub
    finally:
        pubsub.stop()
        redis_service.stop()


@pytest.mark.timeout(150)
def test_standby_takes_over_within_the_lease_after_the_leader_is_killed_and_only_the_leader_writes(
    backend: Backend, namespace: str, tmp_path: Path, services: tuple[Service, Service]
) -> None:
    redis_service, pubsub = services
    lease = f"apx-{namespace}"
    env: dict[str, Any] = {
        "KUBECONFIG": str(backend.kubeconfig),
        "APX_REDIS_URL": f"redis://{redis_service.address}/0",
        "PUBSUB_EMULATOR_HOST": pubsub.address,
        "APX_PUBSUB_PROJECT": f"apx-e2e-{uuid.uuid4().hex[:8]}",
        "APX_RESYNC_SECONDS": "3600",
        "APX_JSON_LOGS": "true",
        "APX_NAMESPACES": namespace,
        "APX_LEADER_ELECTION": "true",
        "APX_LEASE_NAME": lease,
        "APX_LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
        "APX_LEASE_RENEW_SECONDS": str(RENEW_SECONDS),
    }
    first = OperatorProcess(env={**env, "POD_NAME": "operator-a"}, log=tmp_path / "operator-a.log")
    second = OperatorProcess(env={**env, "POD_NAME": "operator-b"}, log=tmp_path / "operator-b.log")
    try:
        first.start()
        eventually(lambda: _holder(backend, lease) == "operator-a", timeout=30, what="operator-a leads")
        second.start()  # healthy as a standby: /healthz answers while it does not lead
        backend.kubectl.apply(SAMPLES / "03-policybundle-payments-1.2.0.yaml", namespace)
        eventually(
            lambda: (
                condition(backend.kubectl.get("policybundle", "payments-policy", namespace), "Ready")
                == "True"
            ),
            what="PolicyBundle 1.2.0 Ready",
        )
        backend.kubectl.apply(SAMPLES, namespace)
        eventually(lambda: _all_ready(backend, namespace), timeout=60, what="every sample Ready")

        # Only the leader writes: the standby ran no pass and wrote no status; its store is warm.
        assert _metric(first, "apx_operator_leader") == 1
        assert _metric(second, "apx_operator_leader") == 0
        assert _metric(first, "controller_runtime_reconcile_total") > 0
        assert _metric(second, "controller_runtime_reconcile_total") == 0
        assert _metric(second, "apx_operator_pass_seconds_count") == 0
        eventually(
            lambda: _metric(second, "workqueue_adds_total") >= len(NAMES), what="the standby's store is warm"
        )
        assert _holder(backend, lease) == "operator-a"
        # The standby's kopf runs without deletion handlers: it must leave the leader's finalizer.
        for kind, name in NAMES:
            body = backend.kubectl.get(kind.lower(), name, namespace) or {}
            assert "apx.dev/finalizer" in body["metadata"].get("finalizers", []), (kind, name)

        first.kill()  # SIGKILL: the Lease is not released
        killed = time.monotonic()
        eventually(
            lambda: _holder(backend, lease) == "operator-b",
            timeout=LEASE_SECONDS + 15,
            interval=0.05,
            what="operator-b takes the Lease",
        )
        took_over = time.monotonic() - killed
        client = redis.Redis.from_url(f"redis://{redis_service.address}/0", decode_responses=True)
        key = redis_keys.ruleset_current_key(f"{namespace}/payments")
        before = client.get(key)
        product = yaml.safe_load((SAMPLES / "01-product-payments.yaml").read_text())
        product["spec"]["plans"][0]["rateLimit"]["requestsPerSecond"] = 7
        backend.kubectl.apply(yaml.safe_dump(product), namespace)
        after = eventually(
            lambda: (v := client.get(key)) != before and v, timeout=30, what="the new leader's rule set"
        )
        reconciled = time.monotonic() - killed
        eventually(
            lambda: (
                (backend.kubectl.get("product", "payments", namespace) or {})["status"]["ruleSetVersion"]
                == after
            ),
            what="the new leader writes status",
        )
        assert _metric(second, "apx_operator_leader") == 1
        assert _metric(second, "controller_runtime_reconcile_total") > 0
        print(
            f"\ntake-over after SIGKILL: {took_over:.2f} s (bound: lease {LEASE_SECONDS:.1f} s + retry "
            f"{RENEW_SECONDS:.1f} s); change after the kill reconciled {reconciled:.2f} s after the kill"
        )
        assert took_over <= LEASE_SECONDS + RENEW_SECONDS + 1.0
    finally:
        first.kill()
        second.stop()
