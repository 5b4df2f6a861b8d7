"""The local stack: Redis, the Pub/Sub emulator, the emulated Kubernetes API and the operator.

``python -m apx.e2e.stack up|down|status|env`` — called by ``hack/stack-up.sh``,
``hack/stack-down.sh`` and ``make demo``. Every process runs in the
background on a free port with its state under ``.local/stack/`` (PIDs, logs,
kubeconfig, ``stack.env``); ``down`` stops exactly what ``up`` started, by PID.
A second ``up`` reuses what is still running.

The Kubernetes API here is an emulation (``apx.e2e.kubeemu``), not a real
kube-apiserver: see that package's docstring for what it does and does not do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .services import ServiceError, free_port, start_pubsub_emulator, start_redis, stop_pid, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".local" / "stack"
STATE_FILE = STATE_DIR / "state.json"
ENV_FILE = STATE_DIR / "stack.env"
ORDER = ("operator", "kubeemu", "pubsub", "redis")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_state() -> dict[str, Any]:
    if STATE_FILE.exists():
        state: dict[str, Any] = json.loads(STATE_FILE.read_text())
        return state
    return {}


def save_state(state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2))
    env = state.get("env", {})
    ENV_FILE.write_text("".join(f"export {k}={v}\n" for k, v in sorted(env.items())))


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return process.pid


def _wait_http(url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except Exception as exc:  # connection refused while starting
            last = exc
        time.sleep(0.1)
    raise ServiceError(f"{what} did not answer {url} within {timeout:.0f}s: {last}")


def _ensure_namespace(api: str, name: str) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).encode()
    request = urllib.request.Request(
        f"{api}/api/v1/namespaces", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise


def up(with_operator: bool = True) -> dict[str, Any]:
    state = load_state()
    services = state.setdefault("services", {})
    env = state.setdefault("env", {})
    python = sys.executable

    if not (services.get("redis") and _alive(services["redis"]["pid"])):
        redis = start_redis(STATE_DIR / "redis")
        services["redis"] = {"pid": redis.pid, "port": redis.port, "log": str(redis.log)}
        env["APX_REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
    if not (services.get("pubsub") and _alive(services["pubsub"]["pid"])):
        pubsub = start_pubsub_emulator(STATE_DIR / "pubsub")
        services["pubsub"] = {"pid": pubsub.pid, "port": pubsub.port, "log": str(pubsub.log)}
        env["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{pubsub.port}"
        env["APX_PUBSUB_PROJECT"] = "apx-local"
    if not (services.get("kubeemu") and _alive(services["kubeemu"]["pid"])):
        port = free_port()
        kubeconfig = STATE_DIR / "kubeconfig"
        log = STATE_DIR / "kubeemu.log"
        pid = _spawn(
            [
                python,
                "-m",
                "apx.e2e.kubeemu",
                "--port",
                str(port),
                "--crds",
                str(ROOT / "crds"),
                "--kubeconfig",
                str(kubeconfig),
            ],
            log,
            dict(os.environ),
        )
        services["kubeemu"] = {"pid": pid, "port": port, "log": str(log)}
        env["KUBECONFIG"] = str(kubeconfig)
        wait_for_port(port, 30, None, "emulated Kubernetes API")
        _wait_http(f"http://127.0.0.1:{port}/version", 30, "emulated Kubernetes API")
        _ensure_namespace(f"http://127.0.0.1:{port}", "apx-system")
    save_state(state)

    if with_operator and not (services.get("operator") and _alive(services["operator"]["pid"])):
        liveness = free_port()
        metrics = free_port()
        log = STATE_DIR / "operator.log"
        operator_env = {
            **os.environ,
            **env,
            "APX_LIVENESS_PORT": str(liveness),
            "APX_METRICS_PORT": str(metrics),
            "APX_RESYNC_SECONDS": os.environ.get("APX_RESYNC_SECONDS", "30"),
        }
        pid = _spawn([str(Path(python).parent / "apx-operator")], log, operator_env)
        services["operator"] = {
            "pid": pid,
            "liveness_port": liveness,
            "metrics_port": metrics,
            "log": str(log),
        }
        save_state(state)
        _wait_http(f"http://127.0.0.1:{liveness}/healthz", 60, "APX operator")
    return state


def down() -> None:
    state = load_state()
    services = state.get("services", {})
    for name in ORDER:
        service = services.pop(name, None)
        if service and _alive(service["pid"]):
            stop_pid(service["pid"])
            print(f"stopped {name} (pid {service['pid']})")
    state["env"] = {}
    save_state(state)


def status() -> int:
    state = load_state()
    missing = 0
    for name in reversed(ORDER):
        service = state.get("services", {}).get(name)
        running = bool(service and _alive(service["pid"]))
        missing += 0 if running else 1
        print(f"{name:9} {'running pid ' + str(service['pid']) if running and service else 'stopped'}")
    return 0 if missing == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apx.e2e.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "env"))
    parser.add_argument("--no-operator", action="store_true", help="start the services but not the operator")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            state = up(with_operator=not args.no_operator)
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for name, service in state["services"].items():
            print(f"{name:9} pid {service['pid']}  log {service['log']}")
        print(f"environment: source {ENV_FILE}")
        return 0
    if args.command == "down":
        down()
        return 0
    if args.command == "status":
        return status()
    print(ENV_FILE.read_text() if ENV_FILE.exists() else "", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
