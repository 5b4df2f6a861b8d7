"""Helpers of the e2e suites: a kubectl wrapper and the operator as a real subprocess.

Used by ``e2e/conftest.py`` and the e2e tests. The same helpers drive the
emulated Kubernetes API and a real cluster (``KUBECONFIG``), so the suites run
unchanged against either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .services import free_port

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


class Kubectl:
    """Runs kubectl against one kubeconfig with its own cache directory."""

    def __init__(self, kubeconfig: Path, cache_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.cache_dir = cache_dir

    def run(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.cache_dir)}
        result = subprocess.run(
            ["kubectl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout if result.returncode == 0 else result.stderr

    def apply(self, path_or_yaml: str | Path, namespace: str, check: bool = True) -> str:
        # Validated as on a real cluster: the emulator publishes its OpenAPI documents.
        if isinstance(path_or_yaml, Path):
            return self.run("apply", "-n", namespace, "-f", str(path_or_yaml), check=check)
        return self.run("apply", "-n", namespace, "-f", "-", stdin=path_or_yaml, check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.cache_dir)}
        result = subprocess.run(
            ["kubectl", "get", kind, name, "-n", namespace, "-o", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name} failed: {result.stderr.strip()}")
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = json.loads(self.run(*args)).get("items", [])
        return items


def condition(body: Mapping[str, Any] | None, kind: str) -> str | None:
    for entry in ((body or {}).get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return None


def eventually(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> T:
    """Retry ``check`` until it returns a truthy value without raising; fail with the last error."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or check.__name__}: {last}")


@dataclass
class OperatorProcess:
    """``apx-operator`` as a subprocess with its own ports and log."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    liveness_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    xds_port: int = field(default_factory=free_port)

    def start(self, wait: bool = True) -> None:
        binary = Path(sys.executable).parent / "apx-operator"
        env = {
            **os.environ,
            **self.env,
            "APX_LIVENESS_PORT": str(self.liveness_port),
            "APX_METRICS_PORT": str(self.metrics_port),
            "APX_XDS_PORT": str(self.xds_port),
        }
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(binary)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}; log: {self.log}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1
                ) as response:
                    return bool(response.status == 200)
            except OSError as exc:
                raise AssertionError(str(exc)) from exc

        eventually(healthy, timeout=timeout, what="operator liveness")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def stop(self, timeout: float = 15) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
