"""``apx-ratelimit --workers N``: N service processes on one gRPC port, kept running by a supervisor.

Called by ``main.main`` when ``--workers`` asks for more than one process;
each worker is ``apx-ratelimit`` itself, started with the same arguments
plus ``--worker-index i`` (and its own loopback metrics port), so a worker
is configured exactly as a single process would be. One Python process
carries one core at most; a host (or pod) with more cores than one serves
more decisions per second, and at a given rate each worker's loop is less
busy, so fewer calls wait behind others (``bench/bench_ratelimit.py
--workers 1,2`` measures both in the same run; ``TRANSPORT.md`` has the
figures).

* **One port, SO_REUSEPORT.** Every worker listens on the same address with
  ``SO_REUSEPORT``; the kernel spreads new connections over the listening
  sockets (Envoy opens one per worker thread, so its connections land on
  different processes). The supervisor binds the address first with
  ``SO_REUSEPORT`` and never listens on it: that checks the address (a taken
  port ends the start with "cannot start", as in one process), picks the
  port when ``:0`` was asked for, and keeps the port while a worker is
  being restarted. A socket that does not listen gets no connections.
* **Restarts.** A worker that exits while the supervisor is not stopping is
  started again, after a pause that doubles with each exit within
  ``STABLE_SECONDS`` of its start (from ``RESTART_DELAY`` up to
  ``MAX_RESTART_DELAY``), so a worker that cannot start does not spin. Calls
  on the dead worker's connections fail (Envoy applies its failure mode and
  reconnects); the others are untouched. Counted in
  ``apx_ratelimit_worker_restarts_total``.
* **Stopping.** SIGTERM/SIGINT to the supervisor is forwarded to every
  worker as SIGTERM; each does what one process does (health NOT_SERVING,
  GOAWAY, in-flight calls finish within ``--grace-seconds``) and the
  supervisor exits 0 once all have; a worker still running
  ``KILL_MARGIN`` seconds after its grace is killed. Workers run in their
  own process group, so a terminal's Ctrl-C reaches them once, through the
  supervisor, and a worker whose supervisor vanished (SIGKILL) stops on its
  own (``watch_parent``).
* **Metrics.** ``/metrics`` on ``--metrics-port`` is the supervisor's: at
  each scrape it reads every worker's registry (each worker serves it on a
  loopback port of its own) and returns all of it with a ``worker`` label
  (``"0"``..``"N-1"``; bounded by N), beside ``apx_ratelimit_workers`` (live
  workers) and ``apx_ratelimit_worker_restarts_total``. Every counter and
  histogram is therefore per process, and sums over ``worker`` are the
  service's; gauges (connections, calls in flight, ``redis_up``) are each
  worker's own. A worker that does not answer within ``SCRAPE_TIMEOUT`` is
  left out of that scrape (its series vanish for it; ``apx_ratelimit_workers``
  says how many answered).
* **Health.** gRPC health is answered by whichever worker got the probe's
  connection: ``""`` is SERVING while that process runs, and the
  ``RateLimitService`` status follows Redis as that worker sees it (each
  worker probes Redis itself). A probe cannot tell a restarting worker from
  the others; the supervisor is the one that notices and restarts it.

With ``--workers 1`` (the default) none of this runs: the process serves
alone, as before. ``--workers 0`` means one worker per CPU the process may
run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from apx.dataplane.common.shutdown import stop_event

log = logging.getLogger(__name__)

WORKER_INDEX_FLAG = "--worker-index"
RESTART_DELAY = 0.25
MAX_RESTART_DELAY = 10.0
STABLE_SECONDS = 10.0
KILL_MARGIN = 5.0
SCRAPE_TIMEOUT = 2.0
PARENT_CHECK_SECONDS = 1.0


def worker_count(requested: int) -> int:
    """How many processes ``--workers requested`` means: 0 is one per CPU this process may use."""
    if requested < 0:
        raise ValueError("--workers must be 0 (one per CPU) or more")
    if requested:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` and not listening: checks and holds the port.

    Raises ``OSError`` when the address is taken by a socket without ``SO_REUSEPORT`` (or by another user).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_argv(argv: Sequence[str], index: int, listen: str, metrics_port: int) -> list[str]:
    """A worker's arguments: the supervisor's own, then what differs (argparse keeps the last value)."""
    return [
        *argv,
        "--workers",
        "1",
        WORKER_INDEX_FLAG,
        str(index),
        "--listen",
        listen,
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
    ]


def tag_worker_logs(index: int) -> None:
    """Every log line of this process carries ``"worker": index`` (workers share the pod's stderr)."""

    def tag(record: logging.LogRecord) -> bool:
        setattr(record, "worker", index)  # noqa: B010  (an extra field of the JSON line)
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


async def watch_parent(stopping: asyncio.Event, parent: int) -> None:
    """Set ``stopping`` once the process that started this worker is gone (it was killed outright)."""
    while not stopping.is_set():
        if os.getppid() != parent:
            log.warning("the supervisor is gone; stopping this worker")
            stopping.set()
            return
        await asyncio.sleep(PARENT_CHECK_SECONDS)


@dataclass
class Worker:
    """One worker slot: its index, and the process running in it now (None between restarts)."""

    index: int
    process: asyncio.subprocess.Process | None = None
    metrics_port: int = 0
    started_at: float = 0.0
    quick_exits: int = 0
    restarts: int = 0
    waiter: asyncio.Task[int] | None = field(default=None, repr=False)


class WorkerMetrics(Collector):
    """The supervisor's ``/metrics``: every worker's registry with a ``worker`` label, and its own two."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def describe(self) -> Iterable[Metric]:
        return []  # names are the workers': nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        answered = 0
        for worker in self.supervisor.workers:
            if worker.process is None or worker.process.returncode is not None or not worker.metrics_port:
                continue
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=SCRAPE_TIMEOUT
                ) as response:
                    text = response.read().decode()
            except OSError:
                continue  # starting, stopping or stuck: left out of this scrape
            answered += 1
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(worker.index)}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
        yield from families.values()
        live = Metric("apx_ratelimit_workers", "Worker processes that answered this scrape.", "gauge")
        live.add_sample("apx_ratelimit_workers", {}, answered)
        yield live
        restarts = Metric(
            "apx_ratelimit_worker_restarts",
            "Worker processes started again after they exited on their own (crash, kill), by worker.",
            "counter",
        )
        for worker in self.supervisor.workers:
            restarts.add_sample(
                "apx_ratelimit_worker_restarts_total", {"worker": str(worker.index)}, worker.restarts
            )
        yield restarts


class Supervisor:
    """Starts ``count`` workers on ``host:port``, restarts those that exit, stops them all on SIGTERM."""

    def __init__(
        self, argv: Sequence[str], count: int, host: str, port: int, *, metrics: bool, grace_seconds: float
    ) -> None:
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.metrics = metrics
        self.grace_seconds = grace_seconds
        self.workers = [Worker(index) for index in range(count)]
        self.stopping = False

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def _start(self, worker: Worker) -> None:
        worker.metrics_port = free_loopback_port() if self.metrics else 0
        command = worker_argv(self.argv, worker.index, self.listen, worker.metrics_port)
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apx.dataplane.ratelimit", *command, process_group=0
        )
        worker.started_at = time.monotonic()
        worker.waiter = asyncio.ensure_future(worker.process.wait())
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    def _delay(self, worker: Worker) -> float:
        """The pause before a worker that exited is started again (doubling while it keeps dying early)."""
        if time.monotonic() - worker.started_at >= STABLE_SECONDS:
            worker.quick_exits = 0
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * float(1 << min(worker.quick_exits, 16)))
        worker.quick_exits += 1
        return delay

    async def run(self, stopping: asyncio.Event) -> int:
        """Serve until ``stopping`` is set, then stop every worker; the exit code."""
        for worker in self.workers:
            await self._start(worker)
        stop_wait = asyncio.ensure_future(stopping.wait())
        restarts: dict[asyncio.Task[None], Worker] = {}
        try:
            while not stopping.is_set():
                waiting: set[asyncio.Future[Any]] = {stop_wait, *restarts}
                waiting |= {w.waiter for w in self.workers if w.waiter is not None}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for worker in self.workers:
                    if worker.waiter is not None and worker.waiter in done and not stopping.is_set():
                        code = worker.waiter.result()
                        worker.waiter = None
                        delay = self._delay(worker)
                        log.warning(
                            "worker exited; starting it again",
                            extra={"worker": worker.index, "exit_code": code, "delay_seconds": delay},
                        )
                        restarts[asyncio.ensure_future(asyncio.sleep(delay))] = worker
                for pause in [p for p in restarts if p in done]:
                    worker = restarts.pop(pause)
                    worker.restarts += 1
                    await self._start(worker)
        finally:
            stop_wait.cancel()
            for pause in restarts:
                pause.cancel()
            self.stopping = True
            await self._stop_all()
        return 0

    async def _stop_all(self) -> None:
        running = [w for w in self.workers if w.process is not None and w.process.returncode is None]
        for worker in running:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = self.grace_seconds + KILL_MARGIN
        for worker in running:
            assert worker.process is not None
            try:
                await asyncio.wait_for(worker.process.wait(), timeout=deadline)
            except TimeoutError:
                log.warning("worker did not stop in time; killing it", extra={"worker": worker.index})
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        for worker in self.workers:
            if worker.waiter is not None:
                worker.waiter.cancel()


async def supervise(
    argv: Sequence[str],
    count: int,
    host: str,
    port: int,
    *,
    metrics_host: str,
    metrics_port: int,
    grace_seconds: float,
) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; the exit code (1 when the address cannot be used)."""
    stopping = stop_event()
    try:
        reserved = reserve_port(host, port)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    with reserved:
        port = int(reserved.getsockname()[1])
        supervisor = Supervisor(
            argv, count, host, port, metrics=bool(metrics_port), grace_seconds=grace_seconds
        )
        if metrics_port:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(WorkerMetrics(supervisor))
            start_http_server(metrics_port, addr=metrics_host, registry=registry)
        log.info("rate-limit service workers starting", extra={"workers": count, "port": port})
        code = await supervisor.run(stopping)
    log.info("stopped")
    return code
