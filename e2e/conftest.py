"""Fixtures of the e2e suites: the whole operator process against a Kubernetes API, Redis and Pub/Sub.

Two backends run the same tests:

* ``emulated`` (always): the emulated Kubernetes API (``e2e.kubeemu``)
  started here, with the CRDs from ``crds/``;
* ``cluster``: the cluster ``KUBECONFIG`` points at (e.g. kind). Skipped with
  a message when ``KUBECONFIG`` is not set. The CRDs are applied with kubectl
  and every test works in its own namespace, deleted afterwards.

Redis and the Pub/Sub emulator are real processes in both cases; the operator
runs locally as a subprocess (``apx-operator``).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.harness import Kubectl, OperatorProcess
from e2e.kubeemu.testing import running_emulator
from e2e.services import Service, start_pubsub_emulator, start_redis

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Backend:
    name: str
    kubeconfig: Path
    kubectl: Kubectl


@pytest.fixture(scope="session", params=["emulated", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    cache = tmp_path_factory.mktemp("kubecache")
    if request.param == "cluster":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            pytest.skip(
                "real-cluster e2e skipped: KUBECONFIG is not set (point it at a kind cluster to run them)"
            )
        kubectl = Kubectl(Path(kubeconfig), cache)
        probe = subprocess.run(
            ["kubectl", "version", "--request-timeout=5s"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "KUBECACHEDIR": str(cache)},
        )
        if probe.returncode != 0:
            pytest.skip(
                f"real-cluster e2e skipped: the cluster in KUBECONFIG does not answer: {probe.stderr.strip()}"
            )
        kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"))
        yield Backend("cluster", Path(kubeconfig), kubectl)
        return
    with running_emulator(crds=ROOT / "crds") as emulator:
        kubectl = Kubectl(emulator.kubeconfig, cache)
        kubectl.run("create", "namespace", "apx-system")
        yield Backend("emulated", emulator.kubeconfig, kubectl)


@pytest.fixture
def namespace(backend: Backend) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    backend.kubectl.run("create", "namespace", name)
    yield name
    backend.kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@dataclass
class Stack:
    backend: Backend
    redis: Service
    pubsub: Service
    operator: OperatorProcess
    project: str

    @property
    def kubectl(self) -> Kubectl:
        return self.backend.kubectl

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}/0"


def make_stack(
    backend: Backend, workdir: Path, redis: Service, pubsub: Service, namespace: str, resync: float = 3600
) -> Stack:
    project = f"apx-e2e-{uuid.uuid4().hex[:8]}"
    operator = OperatorProcess(
        env={
            "KUBECONFIG": str(backend.kubeconfig),
            "APX_REDIS_URL": f"redis://{redis.address}/0",
            "PUBSUB_EMULATOR_HOST": pubsub.address,
            "APX_PUBSUB_PROJECT": project,
            "APX_RESYNC_SECONDS": str(resync),
            "APX_JSON_LOGS": "true",
            # Each test's operator watches only its namespace: tests share the API server.
            "APX_NAMESPACES": namespace,
        },
        log=workdir / "operator.log",
    )
    return Stack(backend, redis, pubsub, operator, project)


@pytest.fixture
def stack(backend: Backend, namespace: str, tmp_path: Path) -> Iterator[Stack]:
    """A fresh Redis, Pub/Sub emulator and operator for one test (the API server is shared)."""
    redis = start_redis(tmp_path / "redis")
    pubsub = start_pubsub_emulator(tmp_path / "pubsub")
    running = make_stack(backend, tmp_path, redis, pubsub, namespace, resync=3600)
    try:
        running.operator.start()
        yield running
    finally:
        # A test may have restarted a service: stop the ones running now, and the originals.
        running.operator.stop()
        for service in {id(s): s for s in (running.pubsub, running.redis, pubsub, redis)}.values():
            service.stop()
