"""Operator benchmark: 1,000 Routes (100 Products) to Ready, peak RSS, update → Redis latency.

Run by `make bench` (or `python bench/bench_operator.py [--routes N]`). Starts
its own Redis, Pub/Sub emulator, emulated Kubernetes API and ``apx-operator``
subprocess, and stops them all. Prints each figure beside the baseline
measured in the same run: the emulated API's own create rate (how fast the
objects could be created with nobody reconciling them). Beside the update
latency it prints how long the emulated API took to answer the PATCH itself,
so a slow API server is not mistaken for a slow operator.

Targets (issue): operator peak RSS ≤ 200 MiB; p99 from a Route update to its
new Redis rule-set version ≤ 250 ms.
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

from apx.e2e.harness import OperatorProcess
from apx.e2e.services import free_port, start_pubsub_emulator, start_redis, stop_pid, wait_for_port

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
        ready, total = await _ready_count(session, api, plural)
        if ready >= expected and total >= expected:
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    raise TimeoutError(f"only {ready}/{expected} {plural} Ready after {timeout}s")


def _p99(ordered: list[float]) -> float:
    """The 99th percentile of ascending ``ordered`` (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(routes: int, products: int, updates: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="apx-bench-operator-"))
    print(f"work directory (logs): {workdir}", flush=True)
    redis_service = start_redis(workdir / "redis")
    pubsub_service = start_pubsub_emulator(workdir / "pubsub")
    port = free_port()
    kubeconfig = workdir / "kubeconfig"
    with (workdir / "kubeemu.log").open("wb") as log:
        emulator = subprocess.Popen(
            [sys.executable, "-m", "apx.e2e.kubeemu", "--port", str(port), "--crds", str(ROOT / "crds"),
             "--kubeconfig", str(kubeconfig)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    operator = OperatorProcess(
        env={
            "KUBECONFIG": str(kubeconfig),
            "APX_REDIS_URL": f"redis://{redis_service.address}/0",
            "PUBSUB_EMULATOR_HOST": pubsub_service.address,
            "APX_PUBSUB_PROJECT": "apx-bench",
            "APX_RESYNC_SECONDS": "3600",
            "APX_LOG_LEVEL": os.environ.get("APX_LOG_LEVEL", "WARNING"),
        },
        log=workdir / "operator.log",
    )
    api = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {}
    try:
        wait_for_port(port, 30, emulator, "emulated Kubernetes API")
        documents = generate_documents(routes, products)
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
            ready_after = await _wait_ready(session, api, "routes", len(route_documents), 600)
            figures["routes"] = len(route_documents)
            figures["create_seconds"] = created
            figures["all_ready_seconds"] = created + ready_after
            figures["operator_rss_after_load_mib"] = _peak_rss_mib(operator.process.pid)  # type: ignore[union-attr]

            client = redis.Redis.from_url(f"redis://{redis_service.address}/0", decode_responses=True)
            latencies: list[float] = []
            api_latencies: list[float] = []
            for index in range(updates):
                route = route_documents[(index * 37) % len(route_documents)]
                namespace = route["metadata"].get("namespace", "default")
                product_key = f"{namespace}/{route['spec']['productRef']['name']}"
                current_key = f"apx:rules:{{{product_key}}}:current"
                before = client.get(current_key)
                url = f"{_path(api, route)}/{route['metadata']['name']}"
                patch = {"spec": {"timeout": f"{31 + index}s"}}
                headers = {"Content-Type": "application/merge-patch+json"}
                sent = time.perf_counter()
                async with session.patch(url, data=json.dumps(patch), headers=headers) as response:
                    await response.read()
                api_latencies.append(time.perf_counter() - sent)
                while client.get(current_key) == before:
                    if time.perf_counter() - sent > 30:
                        raise TimeoutError("rule-set version did not change within 30 s")
                    await asyncio.sleep(0.002)
                latencies.append(time.perf_counter() - sent)
            latencies.sort()
            figures["update_p50_ms"] = statistics.median(latencies) * 1000
            figures["update_p99_ms"] = _p99(latencies) * 1000
            figures["update_max_ms"] = latencies[-1] * 1000
            figures["update_slowest_ms"] = [round(x * 1000) for x in latencies[-5:]]
            figures["patch_p50_ms"] = statistics.median(api_latencies) * 1000
            figures["patch_p99_ms"] = _p99(sorted(api_latencies)) * 1000
            figures["operator_peak_rss_mib"] = _peak_rss_mib(operator.process.pid)  # type: ignore[union-attr]
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
    args = parser.parse_args()
    figures = asyncio.run(run(args.routes, args.products, args.updates))
    baseline = figures["baseline_creates_per_s"]
    routes = figures["routes"]
    print(f"emulated API create rate (baseline): {baseline:8.0f} objects/s")
    print(
        f"{routes} Routes created in {figures['create_seconds']:.2f} s; all Ready after "
        f"{figures['all_ready_seconds']:.2f} s  ({routes / figures['all_ready_seconds']:.0f} Routes/s = "
        f"{routes / figures['all_ready_seconds'] / baseline:.2f}x the bare create rate)"
    )
    print(f"operator peak RSS: {figures['operator_peak_rss_mib']:.0f} MiB (target <= 200 MiB)")
    print(
        f"Route update -> new Redis rule version: p50 {figures['update_p50_ms']:.0f} ms, "
        f"p99 {figures['update_p99_ms']:.0f} ms (target <= 250 ms), max {figures['update_max_ms']:.0f} ms; "
        f"slowest five: {figures['update_slowest_ms']} ms"
    )
    print(
        f"  of which the PATCH answer from the emulated API: p50 {figures['patch_p50_ms']:.0f} ms, "
        f"p99 {figures['patch_p99_ms']:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
