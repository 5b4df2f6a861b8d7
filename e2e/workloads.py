"""A kubelet stand-in: runs the worker Deployments the operator created as local ``apx-worker`` processes.

Used by the canary e2e suite (``e2e/test_canary.py``) and ``bench/bench_canary.py``.
The emulated Kubernetes API has no controllers, so Deployments never get
Pods; this runs each worker Deployment of one namespace the way a kubelet
would run its container: the container's ``command``, its environment with
``valueFrom`` resolved from the ConfigMaps and Secrets in the API, one process
per Deployment (the test traffic needs no more), restarted when the pod
template changes and stopped when the Deployment goes away or is scaled to 0.

What it changes, and why: ``APX_METRICS_PORT`` gets a port of the caller's
choosing per track (a Pod has its own network namespace, local processes
share one, and Prometheus must know where to scrape), and the Redis URL and
Pub/Sub emulator address come from the caller (in-cluster Service names do
not resolve here). Everything else is what the operator rendered.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import Kubectl
from .services import stop_pid


@dataclass
class RunningWorker:
    name: str
    track: str
    template: str
    process: subprocess.Popen[bytes]


@dataclass
class LocalWorkloads:
    """Keeps one ``apx-worker`` process per worker Deployment of ``namespace`` running."""

    kubectl: Kubectl
    namespace: str
    metrics_ports: Mapping[str, int]  # track -> port Prometheus scrapes
    overrides: Mapping[str, str]  # env values replaced (APX_REDIS_URL, PUBSUB_EMULATOR_HOST)
    log_dir: Path
    interval: float = 0.5
    running: dict[str, RunningWorker] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="local-workloads", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for worker in list(self.running.values()):
            self._terminate(worker)
        self.running.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # The API may be briefly unreachable (a restarted operator does not
            # matter here, but the test may be tearing down): try again later.
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired, ValueError):
                self.sync()
            self._stop.wait(self.interval)

    def sync(self) -> None:
        """One reconcile of processes against the Deployments in the API."""
        wanted: dict[str, tuple[str, dict[str, Any]]] = {}
        for deployment in self.kubectl.list(
            "deployments", self.namespace, "app.kubernetes.io/managed-by=apx"
        ):
            spec = deployment.get("spec") or {}
            if not spec.get("replicas"):
                continue
            template = (spec.get("template") or {}).get("spec") or {}
            containers = template.get("containers") or []
            if not containers:
                continue
            name = deployment["metadata"]["name"]
            wanted[name] = (_template_digest(containers[0]), containers[0])
        for name, worker in list(self.running.items()):
            if name not in wanted or wanted[name][0] != worker.template or worker.process.poll() is not None:
                self._terminate(worker)
                del self.running[name]
        for name, (digest, container) in wanted.items():
            if name not in self.running:
                self.running[name] = self._spawn(name, digest, container)

    def _spawn(self, name: str, digest: str, container: Mapping[str, Any]) -> RunningWorker:
        env = self._environment(container)
        track = env.get("APX_TRACK", "stable")
        env["APX_METRICS_PORT"] = str(self.metrics_ports[track])
        env["APX_METRICS_HOST"] = "127.0.0.1"
        command = [str(Path(sys.executable).parent / container["command"][0]), *container["command"][1:]]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return RunningWorker(name, track, digest, process)

    def _environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for entry in container.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
                continue
            source = entry.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                found = self._data("configmap", ref["name"], ref["key"], secret=False)
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                found = self._data("secret", ref["name"], ref["key"], secret=True)
            else:
                found = None
            if found is not None:
                env[entry["name"]] = found
        env.update(self.overrides)
        return env

    def _data(self, kind: str, name: str, key: str, secret: bool) -> str | None:
        body = self.kubectl.get(kind, name, self.namespace) or {}
        if secret and key in (body.get("data") or {}):
            return base64.b64decode(body["data"][key]).decode()
        for field_name in ("stringData", "data"):
            value = (body.get(field_name) or {}).get(key)
            if value is not None:
                return str(value)
        return None

    @staticmethod
    def _terminate(worker: RunningWorker) -> None:
        if worker.process.poll() is None:
            stop_pid(worker.process.pid, timeout=10)


def _template_digest(container: Mapping[str, Any]) -> str:
    return json.dumps(
        {k: container.get(k) for k in ("image", "command", "env")}, sort_keys=True, separators=(",", ":")
    )
