"""A closed canary loop on the local stack, with nothing faked between the parts.

Used by the canary e2e suite (``e2e/test_canary.py``) and the rollback-time
benchmark (``bench/bench_canary.py``). One :func:`canary_rig` starts, on
loopback ports with their own data directories:

* Redis, the Pub/Sub emulator and a real Prometheus (1 s scrapes by default);
* the operator process (``apx-operator``) with ``APX_PROMETHEUS_URL`` set;
* for async Routes: ``apx-gateway`` and the worker Deployments the operator
  renders, run as local processes by ``e2e/workloads.py`` (a kubelet
  stand-in); Prometheus scrapes the workers' own ``/metrics``;
* for sync Routes: the Envoy stand-in of ``e2e/envoystats.py`` (Envoy itself
  cannot run on these machines), which splits traffic by the weights in the
  operator's Envoy snapshot and exposes Envoy's stat names; Prometheus
  scrapes it;
* two upstreams (stable and canary backends) whose error ratio and latency a
  test changes while traffic flows, and a traffic generator sending requests
  from many tenants (API keys) at a steady rate.

The Kubernetes API is the caller's (the e2e ``backend`` fixture or an
emulator the benchmark starts), so the rig works on whatever API the suite
uses; its workers run locally, so on a real cluster the suites skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import redis

from apx.controllers import names
from apx.controllers.renderers.redis_rules import api_key_id

from .harness import Kubectl, OperatorProcess, eventually
from .services import Service, free_port, start_prometheus, start_pubsub_emulator, start_redis, wait_for_port
from .workloads import LocalWorkloads

HOST = "orders.test.example"
PRODUCT = "orders"
ROUTE = "jobs"
POLICY = "orders-policy"


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connection attempts under bursts, and the
    # client's SYN retransmits then add whole seconds to upstream latency.
    request_queue_size = 1024
    daemon_threads = True


@dataclass
class Upstream:
    """An HTTP backend in a thread; ``error_ratio`` and ``delay`` may change while it serves."""

    name: str
    error_ratio: float = 0.0
    delay: float = 0.0
    seed: int = 7
    calls: list[tuple[float, int]] = field(default_factory=list)  # (time.time(), status)
    port: int = field(default_factory=free_port)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        upstream = self
        chooser = random.Random(self.seed)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if upstream.delay:
                    time.sleep(upstream.delay)
                with upstream._lock:
                    status = 500 if chooser.random() < upstream.error_ratio else 200
                    upstream.calls.append((time.time(), status))
                body = json.dumps({"upstream": upstream.name, "status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name=f"upstream-{self.name}", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def first_failure(self) -> float | None:
        with self._lock:
            return next((at for at, status in self.calls if status >= 500), None)

    def calls_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for at, _ in self.calls if at >= moment)


@dataclass
class Traffic:
    """Sends ``rate`` requests per second round-robin over ``keys`` until stopped; counts answers."""

    url: str
    keys: list[str]
    rate: float
    host: str = HOST
    path: str = "/v1/jobs/export"
    answers: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            pending: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            sent = 0
            while not self._stop.is_set():
                # Open loop: each request leaves at its time, whatever is in flight.
                due = started + sent / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                key = self.keys[sent % len(self.keys)]
                sent += 1
                task = asyncio.create_task(self._one(session, key))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession, key: str) -> None:
        headers = {"Host": self.host, "x-api-key": key, "content-type": "application/json"}
        try:
            async with session.post(self.url + self.path, data=b'{"n": 1}', headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = 0
        self.answers[status] = self.answers.get(status, 0) + 1


def documents(
    namespace: str, mode: str, stable_url: str, canary_url: str, canary: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A Product, a PolicyBundle (API keys) and one Route whose canary moves to ``canary_url``."""
    route: dict[str, Any] = {
        "productRef": {"name": PRODUCT},
        "policyRef": {"name": POLICY, "version": "1.0.0"},
        "match": {"hosts": [HOST], "pathPrefix": "/v1/jobs", "methods": ["POST"]},
        "mode": mode,
        "backend": {"url": stable_url + "/backend"},
        "timeout": "5s",
        "canary": {"backend": {"url": canary_url + "/backend"}, **canary},
    }
    if mode == "async":
        route["worker"] = {"image": "example.com/worker:1", "replicas": 1, "maxOutstandingMessages": 100}
        route["async"] = {
            "maxDeliveryAttempts": 5,
            "minimumBackoff": "1s",
            "maximumBackoff": "2s",
            "backlogLimit": 100_000,
            "resultTtl": "10m",
            "ordering": False,
        }
        route["canary"]["worker"] = {"image": "example.com/worker:2"}
    else:
        route["retries"] = {"attempts": 0}
    meta = {"namespace": namespace}
    return [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": PRODUCT, **meta},
            "spec": {
                "residency": "EU",
                "regions": ["europe-west1"],
                "plans": [
                    {
                        "name": "standard",
                        "tier": "pro",
                        "rateLimit": {"requestsPerSecond": 10_000, "burst": 20_000},
                    }
                ],
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": POLICY, **meta},
            "spec": {"version": "1.0.0", "auth": {"apiKey": {"header": "x-api-key"}}},
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": ROUTE, **meta},
            "spec": route,
        },
    ]


@dataclass
class CanaryRig:
    """The running loop; the helpers read what each part shows."""

    kubectl: Kubectl
    namespace: str
    mode: str
    redis: Service
    pubsub: Service
    prometheus: Service
    operator: OperatorProcess
    stable: Upstream
    canary: Upstream
    traffic: Traffic
    workloads: LocalWorkloads | None
    gateway_metrics: str  # the gateway's /metrics URL (async Routes), else ""
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}/0"

    def route(self) -> dict[str, Any]:
        body = self.kubectl.get("routes.apx.dev", ROUTE, self.namespace)
        assert body is not None, "the Route is gone"
        return body

    def canary_status(self) -> dict[str, Any]:
        return dict((self.route().get("status") or {}).get("canary") or {})

    def route_table_weights(self) -> dict[str, int]:
        """The track weights the gateway serves from (the Redis route table)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            version = client.get(names.route_table_current_key())
            if not isinstance(version, bytes):
                return {}
            raw = client.hget(names.route_table_key(version.decode()), f"{self.namespace}/{ROUTE}")
        finally:
            client.close()
        if raw is None:
            return {}
        entry = json.loads(raw)
        return {str(t["track"]): int(t["weight"]) for t in entry.get("tracks") or []}

    def snapshot_weights(self) -> dict[str, int]:
        """The track weights in the operator's Envoy snapshot ConfigMap (what Envoy would get)."""
        from .envoystats import snapshot_from_configmaps  # the Envoy stand-in's own reading

        prefix = names.envoy_snapshot_configmap()
        listed = self.kubectl.list("configmap", "apx-system")
        configmaps = [c for c in listed if c["metadata"]["name"].startswith(prefix)]
        if not configmaps:
            return {}
        route_name = f"{self.namespace}/{ROUTE}"
        for configuration in snapshot_from_configmaps(configmaps).route_configurations:
            for host in configuration.virtual_hosts:
                for route in host.routes:
                    if route.name != route_name:
                        continue
                    weights = {}
                    for cluster in route.route.weighted_clusters.clusters:
                        track = next(
                            (
                                h.header.value
                                for h in cluster.request_headers_to_add
                                if h.header.key == "x-apx-track"
                            ),
                            cluster.name,
                        )
                        weights[track] = cluster.weight.value
                    return weights
        return {}

    def gateway_published(self, track: str) -> float:
        """Requests the gateway queued (202) for ``track`` so far, from its own metrics."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.gateway_metrics, timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "apx_gateway_requests_total"
            and sample.labels.get("track") == track
            and sample.labels.get("code") == "202"
        )

    def events(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.kubectl.list("events", self.namespace)
            if (e.get("involvedObject") or {}).get("kind") == "Route"
        ]

    def wait_phase(self, phase: str, timeout: float) -> dict[str, Any]:
        def reached() -> dict[str, Any]:
            status = self.canary_status()
            return status if status.get("phase") == phase else {}

        return eventually(reached, timeout=timeout, interval=0.2, what=f"canary phase {phase}")


def _prometheus_config(scrape_interval: str, workers: list[int], envoy: list[int]) -> str:
    jobs = []
    if workers:
        jobs.append(
            {"job_name": "workers", "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in workers]}]}
        )
    if envoy:
        jobs.append(
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in envoy]}],
            }
        )
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": jobs,
    }
    return json.dumps(config)  # JSON is YAML


def _add_api_keys(redis_url: str, namespace: str, keys: list[str]) -> None:
    """What key management does: map each key's id to its tenant in the product's key table."""
    client = redis.Redis.from_url(redis_url)
    try:
        table = names.api_key_table_key(f"{namespace}/{PRODUCT}")
        client.hset(
            table,
            mapping={api_key_id(key): json.dumps({"tenant": f"tenant-{i}"}) for i, key in enumerate(keys)},
        )
    finally:
        client.close()


def _ignore(_: object) -> None:
    return None


def _start_process(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@contextlib.contextmanager
def canary_rig(
    workdir: Path,
    kubectl: Kubectl,
    kubeconfig: Path,
    namespace: str,
    canary: Mapping[str, Any],
    *,
    mode: str = "async",
    scrape_interval: str = "1s",
    rate: float = 40.0,
    tenants: int = 100,
    operator_env: Mapping[str, str] | None = None,
) -> Iterator[CanaryRig]:
    """Start the whole loop, apply the documents, wait until the Route is Ready; stop it all afterwards."""
    from e2e.services import stop_pid

    stoppers: list[Callable[[], None]] = []
    try:
        redis_service = start_redis(workdir / "redis")
        stoppers.append(redis_service.stop)
        pubsub = start_pubsub_emulator(workdir / "pubsub")
        stoppers.append(pubsub.stop)
        stable, canary_upstream = Upstream("stable", seed=1), Upstream("canary", seed=2)
        for upstream in (stable, canary_upstream):
            upstream.start()
            stoppers.append(upstream.stop)
        worker_ports = {"stable": free_port(), "canary": free_port()} if mode == "async" else {}
        envoy_port = free_port() if mode == "sync" else 0
        prometheus = start_prometheus(
            workdir / "prometheus",
            _prometheus_config(
                scrape_interval, list(worker_ports.values()), [envoy_port] if envoy_port else []
            ),
        )
        stoppers.append(prometheus.stop)
        project = f"apx-canary-{uuid.uuid4().hex[:8]}"
        redis_url = f"redis://{redis_service.address}/0"
        operator = OperatorProcess(
            env={
                "KUBECONFIG": str(kubeconfig),
                "APX_REDIS_URL": redis_url,
                "PUBSUB_EMULATOR_HOST": pubsub.address,
                "APX_PUBSUB_PROJECT": project,
                "APX_RESYNC_SECONDS": "3600",
                "APX_JSON_LOGS": "true",
                "APX_NAMESPACES": namespace,
                "APX_PROMETHEUS_URL": f"http://{prometheus.address}",
                # The Envoy stand-in reads the snapshot ConfigMaps (a real Envoy gets xDS at once):
                # written with every weight change, not at most every 5 s.
                "APX_SNAPSHOT_CONFIGMAP_SECONDS": "0",
                **(operator_env or {}),
            },
            log=workdir / "operator.log",
        )
        operator.start()
        stoppers.append(lambda: _ignore(operator.stop()))
        keys = [f"key-{uuid.uuid4().hex}" for _ in range(tenants)]
        _add_api_keys(redis_url, namespace, keys)
        workloads: LocalWorkloads | None = None
        if mode == "async":
            workloads = LocalWorkloads(
                kubectl,
                namespace,
                worker_ports,
                {
                    "APX_REDIS_URL": redis_url,
                    "PUBSUB_EMULATOR_HOST": pubsub.address,
                    "APX_LOG_LEVEL": "WARNING",
                },
                workdir / "workers",
            )
            workloads.start()
            stoppers.append(workloads.stop)
            gateway_port, gateway_metrics_port = free_port(), free_port()
            gateway = _start_process(
                [
                    str(Path(sys.executable).parent / "apx-gateway"),
                    "--host=127.0.0.1",
                    f"--port={gateway_port}",
                    f"--metrics-port={gateway_metrics_port}",
                    f"--redis-url={redis_url}",
                    f"--pubsub-project={project}",
                    f"--pubsub-emulator-host={pubsub.address}",
                    "--log-level=WARNING",
                ],
                {},
                workdir / "gateway.log",
            )
            stoppers.append(lambda: stop_pid(gateway.pid))
            wait_for_port(gateway_port, 30, gateway, "apx-gateway")
            entry_url = f"http://127.0.0.1:{gateway_port}"
            gateway_metrics = f"http://127.0.0.1:{gateway_metrics_port}/metrics"
        else:
            proxy_port = free_port()
            envoy = _start_process(
                [
                    sys.executable,
                    "-m",
                    "e2e.envoystats",
                    f"--kubeconfig={kubeconfig}",
                    f"--listen=127.0.0.1:{proxy_port}",
                    f"--admin=127.0.0.1:{envoy_port}",
                ],
                {},
                workdir / "envoy.log",
            )
            stoppers.append(lambda: stop_pid(envoy.pid))
            wait_for_port(proxy_port, 30, envoy, "Envoy stand-in")
            entry_url = f"http://127.0.0.1:{proxy_port}"
            gateway_metrics = ""
        for document in documents(namespace, mode, stable.url, canary_upstream.url, canary):
            kubectl.apply(json.dumps(document), namespace)

        def ready() -> bool:
            body = kubectl.get("routes.apx.dev", ROUTE, namespace) or {}
            return any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (body.get("status") or {}).get("conditions") or []
            )

        eventually(ready, timeout=60, what="Route Ready")
        traffic = Traffic(entry_url, keys, rate)
        traffic.start()
        stoppers.append(traffic.stop)
        yield CanaryRig(
            kubectl,
            namespace,
            mode,
            redis_service,
            pubsub,
            prometheus,
            operator,
            stable,
            canary_upstream,
            traffic,
            workloads,
            gateway_metrics,
            stoppers,
        )
    finally:
        for stop in reversed(stoppers):
            with contextlib.suppress(Exception):
                stop()
