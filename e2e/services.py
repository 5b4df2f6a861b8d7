"""Start and stop the real services APX runs against: Redis (one server or a Cluster), Pub/Sub, Prometheus.

Used by the test fixtures (``tests/conftest.py``), the e2e suites, the
benchmarks and the local stack (``python -m e2e.stack``). Every service
runs on a free loopback port with its own data directory, in its own process
group, and is stopped by its PID. Missing Debian packages (redis-server,
prometheus) are installed with apt-get when running as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PUBSUB_EMULATOR_CANDIDATES = (
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    "/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    "/opt/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
)


class ServiceError(RuntimeError):
    """A service could not be installed or started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"{what or 'service'} exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"{what or 'service'} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


_apt_updated = False


def apt_install(package: str, binary: str, no_recommends: bool = False) -> str:
    """Return the path of ``binary``, installing the Debian ``package`` first if needed."""
    global _apt_updated
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            f"{binary} is missing; install the Debian package {package!r} (apt-get install {package})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        _apt_updated = True
    command = ["apt-get", "install", "-y", "-qq"]
    if no_recommends:
        command.append("--no-install-recommends")
    # Package scripts may try to start the service; with no init system that
    # fails harmlessly, and we start our own instance anyway.
    subprocess.run([*command, package], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if not found:
        raise ServiceError(f"installed {package} but {binary} is still missing")
    return found


@dataclass
class Service:
    """A running service: its address, PID and data directory."""

    name: str
    port: int
    pid: int
    data_dir: Path
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.pid, timeout)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
                if finished:
                    return
            except ChildProcessError:
                # Not our child (started by another process): poll for existence.
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.05)


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def start_redis(data_dir: Path, port: int | None = None) -> Service:
    binary = apt_install("redis-server", "redis-server")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    process = _spawn(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--protected-mode",
            "no",
        ],
        log,
    )
    wait_for_port(port, 10, process, "redis-server")
    return Service("redis", port, process.pid, data_dir, log)


@dataclass
class RedisClusterService:
    """A local Redis Cluster: one ``Service`` per primary; ``url`` is what APX is given."""

    nodes: list[Service]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with the first primary as seed (any node works; the client finds the rest)."""
        return f"redis+cluster://{self.nodes[0].address}/0"

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)


def _redis_cluster_ok(port: int) -> bool:
    """True when the node at ``port`` reports ``cluster_state:ok`` (all 16384 slots served)."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    try:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"cluster_state:ok" in done.stdout


def start_redis_cluster(data_dir: Path, primaries: int = 3, timeout: float = 30.0) -> RedisClusterService:
    """Start ``primaries`` cluster-enabled ``redis-server`` processes and join them into one cluster.

    Each node has its own free loopback port, data directory and
    ``nodes.conf``; the slots are split evenly by ``redis-cli --cluster create``
    (no replicas). Returns once every node reports ``cluster_state:ok``.
    Nodes are stopped by PID (``RedisClusterService.stop``), also when joining fails.
    """
    binary = apt_install("redis-server", "redis-server")
    cli = apt_install("redis-tools", "redis-cli")
    nodes: list[Service] = []
    try:
        for index in range(primaries):
            port = free_port()
            node_dir = data_dir / f"node-{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            log = node_dir / "redis.log"
            process = _spawn(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(node_dir),
                    "--protected-mode",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    # The bus port defaults to port + 10000, which may be taken or above 65535:
                    # a free port of its own.
                    "--cluster-port",
                    str(free_port()),
                    # Failure detection plays no part on loopback without replicas; a short
                    # timeout only makes a stopped node show as failed sooner.
                    "--cluster-node-timeout",
                    "2000",
                ],
                log,
            )
            nodes.append(Service(f"redis-cluster-{index}", port, process.pid, node_dir, log))
            wait_for_port(port, 10, process, "redis-server (cluster)")
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(node.address for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise ServiceError(
                f"redis-cli --cluster create failed ({created.returncode}): {created.stdout.decode()[-500:]}"
                f"{created.stderr.decode()[-500:]}"
            )
        deadline = time.monotonic() + timeout
        while not all(_redis_cluster_ok(node.port) for node in nodes):
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"Redis Cluster on {[n.address for n in nodes]} not ok within {timeout:.0f}s"
                )
            time.sleep(0.05)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return RedisClusterService(nodes)


def pubsub_emulator_binary() -> str:
    for candidate in PUBSUB_EMULATOR_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    gcloud = shutil.which("gcloud")
    if gcloud:
        sdk = Path(os.path.realpath(gcloud)).parent.parent
        bundled = sdk / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        if bundled.exists():
            return str(bundled)
    raise ServiceError(
        "the Pub/Sub emulator is missing: install the Google Cloud CLI with its pubsub-emulator component"
    )


def start_pubsub_emulator(data_dir: Path, port: int | None = None) -> Service:
    binary = pubsub_emulator_binary()
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "pubsub.log"
    env = {**os.environ, "JAVA_TOOL_OPTIONS": os.environ.get("JAVA_TOOL_OPTIONS", "-Xmx512m")}
    process = _spawn([binary, "--host=127.0.0.1", f"--port={port}"], log, env)
    wait_for_port(port, 60, process, "Pub/Sub emulator")
    return Service("pubsub", port, process.pid, data_dir, log)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def prometheus_config(scrape_targets: Sequence[str], scrape_interval: str = "1s") -> str:
    """A Prometheus configuration scraping ``host:port`` loopback targets every ``scrape_interval``.

    Rule evaluation runs at the same interval and a scrape times out after one
    interval (Prometheus refuses a timeout longer than the interval). JSON is
    valid YAML, so the text goes to ``start_prometheus`` as is.
    """
    for target in scrape_targets:
        if not target.startswith(tuple(f"{host}:" for host in LOOPBACK_HOSTS)):
            raise ServiceError(f"scrape target {target!r} is not a loopback host:port")
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": [{"job_name": "apx", "static_configs": [{"targets": list(scrape_targets)}]}],
    }
    return json.dumps(config, indent=2)


def start_prometheus(data_dir: Path, config: str, port: int | None = None) -> Service:
    binary = apt_install("prometheus", "prometheus", no_recommends=True)
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_file = data_dir / "prometheus.yml"
    config_file.write_text(config)
    log = data_dir / "prometheus.log"
    process = _spawn(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
    )
    wait_for_port(port, 20, process, "prometheus")
    # It listens before its storage is open; /-/ready answers 503 until then.
    deadline = time.monotonic() + 20
    while not _http_ok(f"http://127.0.0.1:{port}/-/ready"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise ServiceError(f"prometheus on 127.0.0.1:{port} did not become ready (log: {log})")
        time.sleep(0.05)
    return Service("prometheus", port, process.pid, data_dir, log)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()
