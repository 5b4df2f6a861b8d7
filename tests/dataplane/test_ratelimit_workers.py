"""``apx-ratelimit --workers N``: N processes on one port (SO_REUSEPORT) under a supervisor.

Real Redis and the real console script as subprocesses, called over real gRPC
connections: both workers serve the same port, ``/metrics`` carries each
worker's series under a ``worker`` label, a killed worker is started again
while the other keeps answering, SIGTERM stops them all with exit 0, a
worker whose supervisor was killed outright stops on its own, and a taken
port or a negative count end the start with a clear error.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import psutil
import pytest
import pytest_asyncio
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from apx.dataplane.ratelimit.main import build_parser
from apx.dataplane.ratelimit.workers import worker_argv, worker_count
from e2e.services import free_port, wait_for_port
from tests.dataplane.conftest import RlsClient, publish_rule_sets, ratelimit_docs, wait_for

OK = 1
BASIC = {"name": "basic", "tier": "free", "rateLimit": {"requestsPerSecond": 10_000, "burst": 10_000}}


@dataclass
class Supervised:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    product: str

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def samples(self, name: str) -> dict[str, float]:
        """``name``'s samples by their ``worker`` label ("" when unlabelled), summed over other labels."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == name:
                    worker = sample.labels.get("worker", "")
                    out[worker] = out.get(worker, 0.0) + sample.value
        return out


async def _ask_on_a_new_connection(supervised: Supervised, tenant: str) -> int:
    # A fresh channel is a fresh TCP connection: the kernel picks a worker for each.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{supervised.port}", options=options) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        response = await stub.ShouldRateLimit(RlsClient.request(supervised.product, tenant=tenant), timeout=5)
        return int(response.overall_code)


@pytest_asyncio.fixture
async def two_workers(redis_url: str, namespace: str) -> AsyncIterator[Supervised]:
    await publish_rule_sets(redis_url, ratelimit_docs(namespace, [BASIC]))
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "apx.dataplane.ratelimit", "--workers", "2",
            "--listen", f"127.0.0.1:{port}", "--redis-url", redis_url,
            "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
            "--grace-seconds", "2",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    supervised = Supervised(process, port, metrics_port, f"{namespace}/shop")
    try:
        await asyncio.to_thread(wait_for_port, port, 30, process, "apx-ratelimit --workers 2")
        await asyncio.to_thread(wait_for_port, metrics_port, 30, process, "apx-ratelimit metrics")
        await wait_for(lambda: supervised.samples("apx_ratelimit_workers") == {"": 2.0}, timeout=30)
        yield supervised
    finally:
        for child in _children(process.pid):
            child.kill()
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_two_workers_serve_one_port_and_metrics_label_each_workers_series(
    two_workers: Supervised,
) -> None:
    assert len(two_workers.workers()) == 2
    calls = 0

    async def both_decided() -> bool:
        nonlocal calls
        for _ in range(8):
            assert await _ask_on_a_new_connection(two_workers, f"t{calls}") == OK
            calls += 1
        decided = two_workers.samples("apx_ratelimit_decisions_total")
        return set(decided) == {"0", "1"} and all(value > 0 for value in decided.values())

    await wait_for(both_decided, timeout=60)
    decided = two_workers.samples("apx_ratelimit_decisions_total")
    assert sum(decided.values()) == calls  # every call counted once, by the worker that decided it
    # Each worker's own process metrics, told apart by the label; no unlabelled duplicate.
    assert set(two_workers.samples("process_resident_memory_bytes")) == {"0", "1"}
    assert two_workers.samples("apx_ratelimit_worker_restarts_total") == {"0": 0.0, "1": 0.0}


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_killed_worker_is_started_again_while_the_other_keeps_answering(
    two_workers: Supervised,
) -> None:
    victim = two_workers.workers()[0]
    victim.kill()
    await asyncio.to_thread(victim.wait, 10)
    # Once it is gone, calls on new connections are answered throughout: the kernel sends none to the dead
    # worker's socket, which closed with it (connections it held, or had not accepted yet, were lost).
    for index in range(20):
        assert await _ask_on_a_new_connection(two_workers, f"during-{index}") == OK

    async def restarted() -> bool:
        return sum(two_workers.samples("apx_ratelimit_worker_restarts_total").values()) == 1.0 and (
            two_workers.samples("apx_ratelimit_workers") == {"": 2.0}
        )

    await wait_for(restarted, timeout=30)
    pids = {worker.pid for worker in two_workers.workers()}
    assert victim.pid not in pids and len(pids) == 2
    assert await _ask_on_a_new_connection(two_workers, "after") == OK


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_sigterm_stops_every_worker_and_the_supervisor_exits_zero(two_workers: Supervised) -> None:
    workers = two_workers.workers()
    two_workers.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(two_workers.process.wait, 30) == 0
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert two_workers.process.stderr is not None
    lines = [json.loads(line) for line in two_workers.process.stderr.read().splitlines() if line.strip()]
    # The supervisor and each worker end with their own "stopped"; no traceback anywhere.
    stopped = [line.get("worker") for line in lines if line["message"] == "stopped"]
    assert sorted(stopped, key=str) == [0, 1, None]  # each worker's lines say which worker it is
    assert not [line for line in lines if "error" in line or line["level"] == "error"]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_workers_stop_on_their_own_when_the_supervisor_is_killed(two_workers: Supervised) -> None:
    workers = two_workers.workers()
    two_workers.process.kill()
    two_workers.process.wait(10)

    def all_gone() -> bool:
        return all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)

    await wait_for(all_gone, timeout=20)


def test_a_taken_port_ends_the_supervisor_with_cannot_start() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "apx.dataplane.ratelimit", "--workers", "2",
                "--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--metrics-port", "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines() if line.strip()]
    assert any(m.startswith("cannot start") for m in messages), messages


def test_a_negative_worker_count_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apx.dataplane.ratelimit", "--workers", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr


def test_zero_workers_means_one_per_usable_cpu_and_the_flag_reads_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
    with pytest.raises(ValueError):
        worker_count(-1)
    assert build_parser().parse_args([]).workers == 1
    monkeypatch.setenv("APX_RATELIMIT_WORKERS", "4")
    assert build_parser().parse_args([]).workers == 4
    assert build_parser().parse_args(["--workers", "2"]).workers == 2


def test_a_worker_gets_the_supervisors_arguments_with_its_own_address_and_metrics_port() -> None:
    given = [
        "--listen",
        "0.0.0.0:8081",
        "--workers",
        "4",
        "--metrics-port",
        "9090",
        "--failure-mode",
        "service",
    ]
    args = build_parser().parse_args(worker_argv(given, 3, "0.0.0.0:8081", 41234))
    assert (args.workers, args.worker_index) == (1, 3)
    assert (args.listen, args.metrics_host, args.metrics_port) == ("0.0.0.0:8081", "127.0.0.1", 41234)
    assert args.failure_mode == "service"  # everything else is the supervisor's
    assert build_parser().parse_args(given).worker_index is None


def test_the_worker_flag_is_not_in_the_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "apx.dataplane.ratelimit", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "--workers" in out.stdout and "APX_RATELIMIT_WORKERS" in out.stdout
    assert "--worker-index" not in out.stdout
