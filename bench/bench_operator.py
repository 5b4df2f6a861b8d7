"""Operator benchmark: N Routes to Ready, RSS, and what one Route update costs at that scale.

Run by `make bench` (or `python bench/bench_operator.py [--routes 10000 --products 1000]`).
Starts its own Redis, Pub/Sub emulator, emulated Kubernetes API and
``apx-operator`` subprocess, and stops them all. Prints each figure beside the
baseline measured in the same run:

* all Ready time beside the emulated API's own create rate (how fast the
  objects could be created with nobody reconciling them);
* per Route update, the time until (a) its product's new Redis rule-set
  version, (b) the new route-table version and (c) the new Envoy snapshot —
  the changed virtual host arriving on a delta xDS stream the benchmark holds
  open (official protos only) — beside the emulated API's answer to the PATCH;
  the slowest five each with its own PATCH answer and its place in the
  sequence, and the snapshot time less
  the PATCH answer per update (what the operator took once the API had the
  change: an update whose PATCH the API answered late also reached the
  operator late);
* the operator's CPU per update (from ``/proc``, from the PATCH until all
  three are seen and the pass settled) beside the CPU of one full pass of the
  pure pipeline over the same objects, compiled from scratch in this process;
* the operator's peak (``VmHWM``) and steady (``VmRSS`` after the updates) RSS.

Targets (issue 14, 10,000 Routes / 1,000 Products): RSS ≤ 256 MiB; update p99
≤ 250 ms; CPU per update ≤ 5 % of a full pass.

The operator's periodic full resync is off by default (``--resync-seconds
3600``): the updates measure the incremental path. With the operator's
default (60), an update that lands while a resync runs waits for it to end
(its rule sets do not: the fast path publishes them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import generate_documents

from apx.contracts import redis_keys
from e2e.harness import OperatorProcess
from e2e.services import free_port, start_pubsub_emulator, start_redis, stop_pid, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PLURAL = {"Product": "products", "Route": "routes", "PolicyBundle": "policybundles"}


def _path(api: str, document: dict[str, Any]) -> str:
    namespace = document["metadata"].get("namespace", "default")
    return f"{api}/apis/apx.dev/v1alpha1/namespaces/{namespace}/{PLURAL[document['kind']]}"


async def _create_all(
    session: aiohttp.ClientSession, api: str, documents: list[dict[str, Any]], width: int = 16
) -> None:
    queue = list(documents)

    async def worker() -> None:
        while queue:
            document = {k: v for k, v in queue.pop().items() if k != "status"}
            async with session.post(_path(api, document), json=document) as response:
                if response.status not in (200, 201, 409):
                    raise RuntimeError(f"create failed {response.status}: {await response.text()}")

    await asyncio.gather(*(worker() for _ in range(width)))


async def _baseline_create_rate(session: aiohttp.ClientSession, api: str, count: int) -> float:
    documents = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"baseline-{i}", "namespace": "baseline"},
         "data": {"k": "v" * 200}}
        for i in range(count)
    ]  # fmt: skip
    queue = list(documents)

    async def worker() -> None:
        while queue:
            document = queue.pop()
            async with session.post(
                f"{api}/api/v1/namespaces/baseline/configmaps", json=document
            ) as response:
                await response.read()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(16)))
    return count / (time.perf_counter() - started)


async def _ready_count(session: aiohttp.ClientSession, api: str, plural: str) -> tuple[int, int]:
    async with session.get(f"{api}/apis/apx.dev/v1alpha1/{plural}") as response:
        items = (await response.json())["items"]
    ready = 0
    for item in items:
        status = item.get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        if (
            conditions.get("Ready") == "True"
            and status.get("observedGeneration") == item["metadata"]["generation"]
        ):
            ready += 1
    return ready, len(items)


async def _wait_ready(
    session: aiohttp.ClientSession, api: str, plural: str, expected: int, timeout: float
) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        listed = time.perf_counter()
        ready, total = await _ready_count(session, api, plural)
        if ready >= expected and total >= expected:
            return time.perf_counter() - started
        # A LIST of 10,000 Routes costs the emulated API (one Python process) a second of CPU:
        # polling at most a third of the time leaves it to the operator it is measuring.
        await asyncio.sleep(max(0.1, 2 * (time.perf_counter() - listed)))
    raise TimeoutError(f"only {ready}/{expected} {plural} Ready after {timeout}s")


def _p99(ordered: list[float]) -> float:
    """The 99th percentile of ascending ``ordered`` (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _proc_status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib(pid: int) -> float:
    return _proc_status_mib(pid, "VmHWM")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _full_pass_cpu_seconds(documents: list[dict[str, Any]]) -> float:
    """CPU of one from-scratch pass of the pure pipeline over ``documents`` (the baseline)."""
    from apx.controllers.pipeline import compile_resources

    started = time.process_time()
    compile_resources(documents)
    return time.process_time() - started


class VirtualHostWatch:
    """A delta xDS stream on the VirtualHost type (VHDS names), ACKing every response.

    Built from the official protos only; ``changed(host)`` is set when a
    response carries that host's virtual host after ``arm(host)``.
    """

    def __init__(self, address: str) -> None:
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        self._discovery = discovery_pb2
        self._channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 1 << 30)]
        )
        self._stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._armed: str | None = None
        self.seen = asyncio.Event()
        self.first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from envoy.config.core.v3 import base_pb2

        type_url = "type.googleapis.com/envoy.config.route.v3.VirtualHost"

        node = base_pb2.Node(id="bench-operator", cluster="bench")
        await self._requests.put(self._discovery.DeltaDiscoveryRequest(node=node, type_url=type_url))

        async def requests() -> Any:
            while True:
                yield await self._requests.get()

        async def run() -> None:
            async for response in self._stub.DeltaAggregatedResources(requests()):
                await self._requests.put(
                    self._discovery.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
                )
                self.first.set()
                if self._armed is not None and any(
                    r.name.endswith("/" + self._armed) for r in response.resources
                ):
                    self.seen.set()

        self._task = asyncio.create_task(run())

    def arm(self, host: str) -> None:
        self.seen.clear()
        self._armed = host

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


async def run(
    routes: int, products: int, updates: int, async_every: int = 5, resync_seconds: float = 3600.0
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="apx-bench-operator-"))
    print(f"work directory (logs): {workdir}", flush=True)
    redis_service = start_redis(workdir / "redis")
    pubsub_service = start_pubsub_emulator(workdir / "pubsub")
    port = free_port()
    kubeconfig = workdir / "kubeconfig"
    with (workdir / "kubeemu.log").open("wb") as log:
        emulator = subprocess.Popen(
            [sys.executable, "-m", "e2e.kubeemu", "--port", str(port), "--crds", str(ROOT / "crds"),
             "--kubeconfig", str(kubeconfig)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    operator = OperatorProcess(
        env={
            "KUBECONFIG": str(kubeconfig),
            "APX_REDIS_URL": f"redis://{redis_service.address}/0",
            "PUBSUB_EMULATOR_HOST": pubsub_service.address,
            "APX_PUBSUB_PROJECT": "apx-bench",
            "APX_RESYNC_SECONDS": str(resync_seconds),
            "APX_LOG_LEVEL": os.environ.get("APX_LOG_LEVEL", "WARNING"),
        },
        log=workdir / "operator.log",
    )
    api = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {}
    try:
        wait_for_port(port, 30, emulator, "emulated Kubernetes API")
        documents = generate_documents(routes, products, async_every)
        namespaces = {d["metadata"].get("namespace", "default") for d in documents} | {
            "apx-system",
            "baseline",
        }
        async with aiohttp.ClientSession() as session:
            for namespace in sorted(namespaces):
                body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                async with session.post(f"{api}/api/v1/namespaces", json=body) as response:
                    await response.read()
            figures["baseline_creates_per_s"] = await _baseline_create_rate(session, api, 1000)

            operator.start()
            first_versions: dict[str, dict[str, Any]] = {}
            later_versions: list[dict[str, Any]] = []
            for document in documents:
                if document["kind"] == "PolicyBundle":
                    key = f"{document['metadata'].get('namespace')}/{document['metadata']['name']}"
                    if key in first_versions:
                        later_versions.append(document)
                    else:
                        first_versions[key] = document
            # Products and the first version of every bundle, served; then the second (N-1 stays).
            await _create_all(session, api, [d for d in documents if d["kind"] == "Product"])
            await _create_all(session, api, list(first_versions.values()))
            await _wait_ready(session, api, "policybundles", len(first_versions), 120)
            for document in later_versions:
                url = f"{_path(api, document)}/{document['metadata']['name']}?fieldManager=bench&force=true"
                body = json.dumps({k: v for k, v in document.items() if k != "status"})
                headers = {"Content-Type": "application/apply-patch+yaml"}
                async with session.patch(url, data=body, headers=headers) as response:
                    await response.read()
            await _wait_ready(session, api, "policybundles", len(first_versions), 120)

            route_documents = [d for d in documents if d["kind"] == "Route"]
            started = time.perf_counter()
            await _create_all(session, api, route_documents)
            created = time.perf_counter() - started
            print(f"{len(route_documents)} Routes created in {created:.1f} s", flush=True)
            ready_after = await _wait_ready(session, api, "routes", len(route_documents), 600)
            print(f"all Routes Ready after {time.perf_counter() - started:.1f} s; updating", flush=True)
            figures["routes"] = len(route_documents)
            figures["create_seconds"] = created
            figures["all_ready_seconds"] = created + ready_after
            pid = operator.process.pid  # type: ignore[union-attr]
            figures["operator_rss_after_load_mib"] = _peak_rss_mib(pid)

            client = redis.Redis.from_url(f"redis://{redis_service.address}/0", decode_responses=True)
            watch = VirtualHostWatch(f"127.0.0.1:{operator.xds_port}")
            await watch.start()
            await asyncio.wait_for(watch.first.wait(), 120)
            await asyncio.sleep(2.0)  # let the initial pushes and their ACKs settle
            table_key = redis_keys.route_table_current_key()
            sync_routes = [d for d in route_documents if d["spec"].get("mode", "sync") == "sync"]
            rules: list[float] = []
            tables: list[float] = []
            snapshots: list[float] = []
            cpu: list[float] = []
            api_latencies: list[float] = []
            for index in range(updates):
                # Sync Routes: an async Route's timeout is the gateway's, not in Envoy's config.
                route = sync_routes[(index * 37) % len(sync_routes)]
                namespace = route["metadata"].get("namespace", "default")
                product_key = f"{namespace}/{route['spec']['productRef']['name']}"
                current_key = redis_keys.ruleset_current_key(product_key)
                rules_before, table_before = client.get(current_key), client.get(table_key)
                watch.arm(route["spec"]["match"]["hosts"][0])
                url = f"{_path(api, route)}/{route['metadata']['name']}"
                patch = {"spec": {"timeout": f"{31 + index}s"}}
                headers = {"Content-Type": "application/merge-patch+json"}
                cpu_before = _cpu_seconds(pid)
                sent = time.perf_counter()
                async with session.patch(url, data=json.dumps(patch), headers=headers) as response:
                    await response.read()
                api_latencies.append(time.perf_counter() - sent)
                seen: dict[str, float] = {}
                while len(seen) < 3:
                    now = time.perf_counter()
                    if now - sent > 60:
                        raise TimeoutError(f"update {index}: only {sorted(seen)} changed within 60 s")
                    if "rules" not in seen and client.get(current_key) != rules_before:
                        seen["rules"] = now - sent
                    if "table" not in seen and client.get(table_key) != table_before:
                        seen["table"] = now - sent
                    if "snapshot" not in seen and watch.seen.is_set():
                        seen["snapshot"] = now - sent
                    await asyncio.sleep(0.002)
                rules.append(seen["rules"])
                tables.append(seen["table"])
                snapshots.append(seen["snapshot"])
                await asyncio.sleep(0.3)  # the rest of the pass (status write) counts as the update's CPU
                cpu.append(_cpu_seconds(pid) - cpu_before)
            await watch.close()
            # Per update, in the order sent (the lists are sorted below).
            by_update = list(zip(snapshots, api_latencies, range(1, updates + 1), strict=True))
            after_patch = sorted(max(0.0, seen - answered) for seen, answered, _ in by_update)
            figures["after_patch_p50_ms"] = statistics.median(after_patch) * 1000
            figures["after_patch_p99_ms"] = _p99(after_patch) * 1000
            # With its place in the sequence: the first updates can land while the operator
            # still handles the load's aftermath (the statuses it wrote coming back as events).
            figures["update_slowest"] = [
                (round(seen * 1000), round(answered * 1000), number)
                for seen, answered, number in sorted(by_update)[-5:]
            ]
            for name, values in (("rules", rules), ("table", tables), ("snapshot", snapshots), ("cpu", cpu)):
                values.sort()
                figures[f"{name}_p50_ms"] = statistics.median(values) * 1000
                figures[f"{name}_p99_ms"] = _p99(values) * 1000
            figures["patch_p50_ms"] = statistics.median(api_latencies) * 1000
            figures["patch_p99_ms"] = _p99(sorted(api_latencies)) * 1000
            figures["operator_peak_rss_mib"] = _peak_rss_mib(pid)
            figures["operator_steady_rss_mib"] = _proc_status_mib(pid, "VmRSS")
            figures["full_pass_cpu_s"] = await asyncio.to_thread(_full_pass_cpu_seconds, documents)
    finally:
        operator.stop()
        stop_pid(emulator.pid)
        pubsub_service.stop()
        redis_service.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument(
        "--async-every",
        type=int,
        default=5,
        help="one Route in N is async (default 5: 20 %%, the workload's mix)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=3600.0,
        help=(
            "the operator's periodic full resync (default 3600: none during the run, so the updates "
            "measure the incremental path; 60 is the operator's default, and an update landing "
            "during a resync waits for it: its pass lines, with APX_LOG_LEVEL=INFO, say how long)"
        ),
    )
    args = parser.parse_args()
    figures = asyncio.run(
        run(args.routes, args.products, args.updates, args.async_every, args.resync_seconds)
    )
    baseline = figures["baseline_creates_per_s"]
    routes = figures["routes"]
    print(f"emulated API create rate (baseline): {baseline:8.0f} objects/s")
    print(
        f"{routes} Routes created in {figures['create_seconds']:.2f} s; all Ready after "
        f"{figures['all_ready_seconds']:.2f} s  ({routes / figures['all_ready_seconds']:.0f} Routes/s = "
        f"{routes / figures['all_ready_seconds'] / baseline:.2f}x the bare create rate)"
    )
    print(
        f"operator RSS: peak {figures['operator_peak_rss_mib']:.0f} MiB, steady "
        f"{figures['operator_steady_rss_mib']:.0f} MiB (target <= 256 MiB)"
    )
    for name, what in (("rules", "new Redis rule-set version"), ("table", "new route-table version"),
                       ("snapshot", "new Envoy snapshot (xDS)")):  # fmt: skip
        print(
            f"Route update -> {what}: p50 {figures[f'{name}_p50_ms']:.0f} ms, "
            f"p99 {figures[f'{name}_p99_ms']:.0f} ms (target <= 250 ms)"
        )
    slowest = ", ".join(
        f"{seen} (PATCH {answered}, update #{number})" for seen, answered, number in figures["update_slowest"]
    )
    print(f"  slowest five snapshot times, ms: {slowest}")
    print(
        f"  less the PATCH answer (the operator's part): p50 {figures['after_patch_p50_ms']:.0f} ms, "
        f"p99 {figures['after_patch_p99_ms']:.0f} ms"
    )
    print(
        f"  the PATCH answer from the emulated API (baseline): p50 {figures['patch_p50_ms']:.0f} ms, "
        f"p99 {figures['patch_p99_ms']:.0f} ms"
    )
    full_ms = figures["full_pass_cpu_s"] * 1000
    print(
        f"operator CPU per update: p50 {figures['cpu_p50_ms']:.0f} ms, p99 {figures['cpu_p99_ms']:.0f} ms; "
        f"one full pass of the pure pipeline (baseline, same objects): {full_ms:.0f} ms "
        f"-> p50 {figures['cpu_p50_ms'] / full_ms * 100:.1f} % (target <= 5 %)"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
