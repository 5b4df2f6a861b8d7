"""The local stack: Redis, the Pub/Sub emulator, the emulated Kubernetes API and the operator.

``python -m e2e.stack up|down|status|env|wait`` — called by ``make demo``
(``hack/demo.sh``), ``make down`` and by hand. Every process runs in the
background on a free port of 127.0.0.1 (nothing listens on other addresses:
the commands and environments built here say so, and tests check them), with
its state under ``.local/stack/`` (PIDs, logs, kubeconfig, ``stack.env``);
``down`` stops exactly what ``up`` started, by PID. A second ``up`` reuses
what is still running. ``up`` prints one line per step as it goes.

``wait -f PATH...`` waits until the objects in those manifests (and only
those: a user's own broken object elsewhere does not matter) report
``Ready=True`` for their current generation, printing each as it gets there,
and names the ones that did not with their reason and message
(:func:`wait_ready`).

The Kubernetes API here is an emulation (``e2e.kubeemu``), not a real
kube-apiserver: see that package's docstring for what it does and does not do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import yaml

from .services import ServiceError, free_port, start_pubsub_emulator, start_redis, stop_pid, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".local" / "stack"
STATE_FILE = STATE_DIR / "state.json"
ENV_FILE = STATE_DIR / "stack.env"
ORDER = ("operator", "kubeemu", "pubsub", "redis")
LOOPBACK = "127.0.0.1"
Progress = Callable[[str], None]


def _say(message: str) -> None:
    print(message, flush=True)


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


def kubeemu_command(python: str, port: int, kubeconfig: Path) -> list[str]:
    """The command line of the emulated Kubernetes API, bound to loopback."""
    return [
        python,
        "-m",
        "e2e.kubeemu",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--crds",
        str(ROOT / "crds"),
        "--kubeconfig",
        str(kubeconfig),
    ]


def operator_environment(env: dict[str, str], liveness: int, metrics: int, xds: int = 0) -> dict[str, str]:
    """The operator's environment: the stack's endpoints, probes and metrics on loopback only.

    The operator listens on 0.0.0.0 by default (kubelet probes the pod IP), so
    the local stack sets every host it listens on. The admission webhook stays
    off (the emulated API calls no webhooks), so no webhook port is opened.
    """
    return {
        **os.environ,
        **env,
        "APX_LIVENESS_HOST": LOOPBACK,
        "APX_LIVENESS_PORT": str(liveness),
        "APX_METRICS_HOST": LOOPBACK,
        "APX_METRICS_PORT": str(metrics),
        # The xDS (ADS) server: a free loopback port of its own (0: not served).
        "APX_XDS_HOST": LOOPBACK,
        "APX_XDS_PORT": str(xds),
        "APX_RESYNC_SECONDS": os.environ.get("APX_RESYNC_SECONDS", "30"),
    }


def up(with_operator: bool = True, progress: Progress = _say) -> dict[str, Any]:
    state = load_state()
    services = state.setdefault("services", {})
    env = state.setdefault("env", {})
    python = sys.executable

    if services.get("redis") and _alive(services["redis"]["pid"]):
        progress(f"[stack] Redis already running on {LOOPBACK}:{services['redis']['port']}")
    else:
        progress("[stack] starting Redis (installs redis-server with apt-get on first use)...")
        redis = start_redis(STATE_DIR / "redis")
        services["redis"] = {"pid": redis.pid, "port": redis.port, "log": str(redis.log)}
        env["APX_REDIS_URL"] = f"redis://{LOOPBACK}:{redis.port}/0"
        progress(f"[stack] Redis ready on {LOOPBACK}:{redis.port} (pid {redis.pid})")
    if services.get("pubsub") and _alive(services["pubsub"]["pid"]):
        progress(f"[stack] Pub/Sub emulator already running on {LOOPBACK}:{services['pubsub']['port']}")
    else:
        progress("[stack] starting the Pub/Sub emulator (Java, a few seconds)...")
        pubsub = start_pubsub_emulator(STATE_DIR / "pubsub")
        services["pubsub"] = {"pid": pubsub.pid, "port": pubsub.port, "log": str(pubsub.log)}
        env["PUBSUB_EMULATOR_HOST"] = f"{LOOPBACK}:{pubsub.port}"
        env["APX_PUBSUB_PROJECT"] = "apx-local"
        progress(f"[stack] Pub/Sub emulator ready on {LOOPBACK}:{pubsub.port} (pid {pubsub.pid})")
    if services.get("kubeemu") and _alive(services["kubeemu"]["pid"]):
        progress(
            f"[stack] emulated Kubernetes API already running on {LOOPBACK}:{services['kubeemu']['port']}"
        )
    else:
        progress("[stack] starting the emulated Kubernetes API with the CRDs of crds/...")
        port = free_port()
        kubeconfig = STATE_DIR / "kubeconfig"
        log = STATE_DIR / "kubeemu.log"
        pid = _spawn(kubeemu_command(python, port, kubeconfig), log, dict(os.environ))
        services["kubeemu"] = {"pid": pid, "port": port, "log": str(log)}
        env["KUBECONFIG"] = str(kubeconfig)
        wait_for_port(port, 30, None, "emulated Kubernetes API")
        _wait_http(f"http://{LOOPBACK}:{port}/version", 30, "emulated Kubernetes API")
        _ensure_namespace(f"http://{LOOPBACK}:{port}", "apx-system")
        progress(f"[stack] emulated Kubernetes API ready on http://{LOOPBACK}:{port} (pid {pid})")
    save_state(state)

    if not with_operator:
        return state
    if services.get("operator") and _alive(services["operator"]["pid"]):
        progress(f"[stack] operator already running (pid {services['operator']['pid']})")
        return state
    progress("[stack] starting the APX operator...")
    liveness = free_port()
    metrics = free_port()
    xds = free_port()
    log = STATE_DIR / "operator.log"
    operator_env = operator_environment(env, liveness, metrics, xds)
    pid = _spawn([str(Path(python).parent / "apx-operator")], log, operator_env)
    services["operator"] = {
        "pid": pid,
        "liveness_port": liveness,
        "metrics_port": metrics,
        "xds_port": xds,
        "log": str(log),
    }
    save_state(state)
    _wait_http(f"http://{LOOPBACK}:{liveness}/healthz", 60, "APX operator")
    progress(
        f"[stack] operator ready (pid {pid}; /healthz on {LOOPBACK}:{liveness}, "
        f"/metrics on {LOOPBACK}:{metrics}, xDS (ADS) on {LOOPBACK}:{xds}; log {log})"
    )
    return state


@attrs.frozen
class ObjectRef:
    """One object a manifest applies: what ``wait`` looks for."""

    api_version: str
    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.lower()}/{where}{self.name}"


def applied_objects(paths: Iterable[Path], namespace: str = "default") -> list[ObjectRef]:
    """The objects the YAML files (or folders of them, not recursive) apply, in order, once each."""
    files: list[Path] = []
    for path in paths:
        files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    found: dict[ObjectRef, None] = {}
    for file in files:
        for doc in yaml.safe_load_all(file.read_text()):
            if not isinstance(doc, dict) or not doc.get("kind") or not isinstance(doc.get("metadata"), dict):
                continue
            meta = doc["metadata"]
            ref = ObjectRef(
                str(doc.get("apiVersion", "")), doc["kind"], meta.get("namespace") or namespace, meta["name"]
            )
            found[ref] = None
    return list(found)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _resource(server: str, api_version: str, kind: str) -> tuple[str, bool]:
    """The collection URL (without namespace) of a kind and whether it is namespaced, from discovery."""
    base = f"{server}/apis/{api_version}" if "/" in api_version else f"{server}/api/{api_version}"
    for resource in _get_json(base).get("resources", []):
        if resource.get("kind") == kind and "/" not in resource.get("name", ""):
            return f"{base}/{resource['name']}", bool(resource.get("namespaced"))
    raise ServiceError(f"the API serves no {kind} in {api_version}")


def readiness(obj: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether an object is Ready for its current generation, and why not."""
    if obj is None:
        return False, "not found"
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return False, f"generation {generation} not observed yet (status is for {observed})"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return True, ""
            reason = condition.get("reason") or "NotReady"
            return False, f"{reason}: {condition.get('message') or status.get('message') or ''}".rstrip(": ")
    return False, "no Ready condition yet"


def wait_ready(
    server: str,
    objects: list[ObjectRef],
    *,
    timeout: float = 180.0,
    interval: float = 0.5,
    progress: Progress = _say,
) -> dict[ObjectRef, str]:
    """Poll until every one of ``objects`` is Ready; the ones that are not by ``timeout``, with why.

    Only the listed objects are read (by name): other objects in the same
    namespaces, however broken, play no part.
    """
    urls: dict[ObjectRef, str] = {}
    kinds: dict[tuple[str, str], tuple[str, bool]] = {}
    for ref in objects:
        key = (ref.api_version, ref.kind)
        if key not in kinds:
            kinds[key] = _resource(server, ref.api_version, ref.kind)
        collection, namespaced = kinds[key]
        if namespaced and ref.namespace:
            prefix, plural = collection.rsplit("/", 1)
            collection = f"{prefix}/namespaces/{ref.namespace}/{plural}"
        urls[ref] = f"{collection}/{ref.name}"
    pending = {ref: "not read yet" for ref in objects}
    deadline = time.monotonic() + timeout
    while True:
        for ref in list(pending):
            try:
                obj = _get_json(urls[ref])
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                obj = None
            ready, why = readiness(obj)
            if ready:
                del pending[ref]
                progress(f"[wait] {ref} Ready ({len(objects) - len(pending)}/{len(objects)})")
            else:
                pending[ref] = why
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(interval)


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


def _server_of_state() -> str:
    service = load_state().get("services", {}).get("kubeemu")
    if not service:
        raise ServiceError("the stack is not running: python -m e2e.stack up")
    return f"http://{LOOPBACK}:{service['port']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "env", "wait"))
    parser.add_argument("--no-operator", action="store_true", help="start the services but not the operator")
    parser.add_argument(
        "-f", "--filename", action="append", type=Path, help="wait: manifests (files or folders)"
    )
    parser.add_argument("-n", "--namespace", default="default", help="wait: namespace of objects without one")
    parser.add_argument("--timeout", type=float, default=180.0, help="wait: seconds before giving up")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            state = up(with_operator=not args.no_operator)
            for name, service in state["services"].items():
                print(f"{name:9} pid {service['pid']}  log {service['log']}")
            print(f"environment: source {ENV_FILE}")
            return 0
        if args.command == "wait":
            objects = applied_objects(args.filename or [], args.namespace)
            print(
                f"[wait] waiting up to {args.timeout:.0f}s for {len(objects)} applied objects to be Ready",
                flush=True,
            )
            missing = wait_ready(_server_of_state(), objects, timeout=args.timeout)
            for ref, why in missing.items():
                print(f"[wait] {ref} is not Ready: {why}", file=sys.stderr)
            return 1 if missing else 0
    except (ServiceError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "down":
        down()
        return 0
    if args.command == "status":
        return status()
    print(ENV_FILE.read_text() if ENV_FILE.exists() else "", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
