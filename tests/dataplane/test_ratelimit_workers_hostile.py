"""Hostile peers against ``apx-ratelimit --workers 2``, while legitimate callers on both workers call.

The real console script runs as a subprocess with two workers on one port
(``SO_REUSEPORT``), the small ``APX_GRPC_*`` limits of
``test_transport_hostile.py`` (each worker enforces them on its own) and the
default ``lean`` transport. Before each attack, legitimate ``grpcio`` callers
are opened, each on a connection of its own, until both workers hold at
least two of them (which worker holds a connection is read from the
workers' sockets with psutil). Each attack is repeated on new connections
until both workers have been hit (the ``worker`` label of
``apx_ratelimit_grpc_rejected_total`` shows it). Afterwards: no legitimate
call failed or missed its deadline, both workers decided calls during the
attack, the supervisor and both workers run with the PIDs they started with
(no crash hidden by a restart; ``apx_ratelimit_worker_restarts_total`` still
0) and the RSS of the three processes stayed within the single-process
bound. The attacks: a CONTINUATION flood, rapid reset, a request flood on one
connection, a gzip bomb, and idle connections up to both workers' caps.
Helpers (the legitimate caller, the RSS watch, the frame builders) are the
single-process suite's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.services import Service, free_port, wait_for_port
from tests.dataplane.conftest import publish_rule_sets, ratelimit_docs
from tests.dataplane.h2peer import (
    CONTINUATION,
    END_HEADERS,
    ENHANCE_YOUR_CALM,
    HEADERS,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    Closed,
    RawPeer,
    grpc_message,
    raw,
    request_headers,
)
from tests.dataplane.test_transport_hostile import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    LEGIT_DEADLINE,
    MAX_CONNECTIONS,
    MAX_STREAMS,
    PATH,
    RESETS_PER_SECOND,
    LegitCaller,
    RunningService,
    attack,
    call_bytes,
    error_code,
    gzip_bomb,
)

WORKERS = ("0", "1")  # the ``worker`` label values of two workers
MIN_ATTACK_SECONDS = 1.0  # each attack goes on at least this long, so callers overlap it
MAX_ATTACK_CONNECTIONS = 40  # both workers are hit long before (two workers: 2**-39 to miss one)


@dataclass
class SupervisedService(RunningService):
    """The supervisor is ``process``; RSS, rejections and samples cover its workers too."""

    worker_pids: frozenset[int] = frozenset()

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def rss(self) -> int:
        # The pod's memory: an attacked connection lands on either worker.
        processes = [psutil.Process(self.process.pid), *self.workers()]
        return sum(int(p.memory_info().rss) for p in processes)

    def samples(self, name: str, **labels: str) -> dict[str, float]:
        """``name``'s samples matching ``labels``, by ``worker`` ("" if unlabelled), summed over the rest."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    worker = sample.labels.get("worker", "")
                    out[worker] = out.get(worker, 0.0) + sample.value
        return out

    def rejected(self) -> dict[str, float]:
        """Rejections by reason, summed over the workers."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read()
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == "apx_ratelimit_grpc_rejected_total":
                    reason = sample.labels["reason"]
                    counts[reason] = counts.get(reason, 0.0) + sample.value
        return counts

    def rejected_by_worker(self, reason: str) -> dict[str, float]:
        return self.samples("apx_ratelimit_grpc_rejected_total", reason=reason)

    def holder_of(self, client_port: int) -> int | None:
        """The PID of the worker that accepted the connection from ``client_port`` (None: none has)."""
        for worker in self.workers():
            with contextlib.suppress(psutil.Error):
                for conn in worker.net_connections("tcp"):
                    if conn.raddr and conn.raddr.port == client_port and conn.laddr.port == self.port:
                        return int(worker.pid)
        return None


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ask_once(service: SupervisedService) -> None:
    # A fresh channel with a local subchannel pool is a fresh TCP connection: the kernel picks a worker.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{service.port}", options=options) as channel:
        call = channel.unary_unary(PATH, request_serializer=None, response_deserializer=None)
        call(service.request, timeout=5)


@pytest.fixture(scope="module")
def two_workers(
    redis_service: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SupervisedService]:
    """``apx-ratelimit --workers 2`` with the single-process suite's limits, both workers warmed up."""
    redis_url = f"redis://{redis_service.address}/0"
    namespace = f"hostile-workers-{uuid.uuid4().hex[:8]}"
    plans = [{"name": "basic", "tier": "free", "rateLimit": {"requestsPerSecond": 100_000, "burst": 100_000}}]
    asyncio.run(publish_rule_sets(redis_url, ratelimit_docs(namespace, plans, default_plan="basic")))
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("hostile-workers") / "apx-ratelimit.log"
    env = {
        **os.environ,
        "APX_GRPC_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "APX_GRPC_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
        "APX_GRPC_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "APX_GRPC_MAX_CONCURRENT_STREAMS": str(MAX_STREAMS),
        "APX_GRPC_MAX_RESETS_PER_SECOND": str(RESETS_PER_SECOND),
        "APX_GRPC_TRANSPORT": "lean",
    }
    command = [
        sys.executable, "-m", "apx.dataplane.ratelimit", "--workers", "2", "--listen", f"127.0.0.1:{port}",
        "--redis-url", redis_url, "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
        "--grace-seconds", "1",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    running = SupervisedService(process, port, metrics_port, log, f"{namespace}/shop", "lean")
    try:
        wait_for_port(port, 30, process, "apx-ratelimit --workers 2")
        wait_for_port(metrics_port, 30, process, "apx-ratelimit metrics")
        _until(lambda: running.samples("apx_ratelimit_workers") == {"": 2.0}, 30, "two workers")

        def both_decided() -> bool:  # each worker has loaded the rule set, the scripts and its code paths
            _ask_once(running)
            decided = running.samples("apx_ratelimit_decisions_total")
            return all(decided.get(worker, 0) > 0 for worker in WORKERS)

        _until(both_decided, 30, "a decision by each worker")
        running.worker_pids = frozenset(w.pid for w in running.workers())
        assert len(running.worker_pids) == 2
        running.baseline_rss = running.rss()
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(process.pid).children():
                    child.kill()
                process.kill()
                process.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    assert "never retrieved" not in text, text[-4000:]


def _client_ports(service: SupervisedService) -> set[int]:
    """Local ports of this test process's established connections to the service."""
    return {
        conn.laddr.port
        for conn in psutil.Process().net_connections("tcp")
        if conn.raddr and conn.raddr.port == service.port and conn.status == psutil.CONN_ESTABLISHED
    }


@contextlib.contextmanager
def callers_on_both_workers(service: SupervisedService) -> Iterator[dict[int, list[LegitCaller]]]:
    """Legitimate callers on connections of their own, opened until each worker holds two: {pid: callers}."""
    held: dict[int, list[LegitCaller]] = {pid: [] for pid in service.worker_pids}
    with contextlib.ExitStack() as stack:
        while min(len(callers) for callers in held.values()) < 2:
            assert sum(len(callers) for callers in held.values()) < 16, (
                "the kernel sent every connection to one worker"
            )
            before = _client_ports(service)
            caller = stack.enter_context(LegitCaller(service, own_connection=True, pause=0.02))
            (client_port,) = _client_ports(service) - before  # connected and answered once by now
            holder = service.holder_of(client_port)
            assert holder in held, (holder, held)
            held[holder].append(caller)
        yield held
    for callers in held.values():
        for caller in callers:
            assert not caller.failures, caller.failures
            assert caller.slowest < LEGIT_DEADLINE


@contextlib.contextmanager
def attack_on_two_workers(service: SupervisedService) -> Iterator[None]:
    """The single-process ``attack`` (its caller, RSS bound, process alive), plus callers on both workers.

    Checked afterwards: each worker's callers were answered during the block, both workers
    decided calls in it, and no worker was restarted (same PIDs, restart counter at 0).
    """
    with callers_on_both_workers(service) as held:
        answered = {id(c): c.answered for callers in held.values() for c in callers}
        decided = service.samples("apx_ratelimit_decisions_total")
        with attack(service):
            yield
            served_during = {
                pid: sum(c.answered - answered[id(c)] for c in callers) for pid, callers in held.items()
            }
        decided_after = service.samples("apx_ratelimit_decisions_total")
    assert all(count > 0 for count in served_during.values()), served_during
    assert all(decided_after[w] > decided[w] for w in WORKERS), (decided, decided_after)
    assert service.process.poll() is None, "the supervisor died"
    assert {w.pid for w in service.workers()} == service.worker_pids, "a worker was restarted"
    assert service.samples("apx_ratelimit_worker_restarts_total") == {"0": 0.0, "1": 0.0}
    assert service.samples("apx_ratelimit_workers") == {"": 2.0}


def on_both_workers(service: SupervisedService, one: Callable[[RawPeer], None]) -> int:
    """Run ``one`` on new connections until both workers were hit and MIN_ATTACK_SECONDS passed; how many."""
    hit: set[int] = set()
    started = time.monotonic()
    connections = 0
    while hit != service.worker_pids or time.monotonic() - started < MIN_ATTACK_SECONDS:
        # The cap is on reaching both workers; once both are hit the attack goes on for its time.
        assert connections < MAX_ATTACK_CONNECTIONS or hit == service.worker_pids, (
            f"only workers {hit} were hit"
        )
        peer = RawPeer(service.port)
        try:
            # The server's SETTINGS come once the worker has accepted the connection: it is in its sockets.
            assert peer.read_until(lambda f: f.type == SETTINGS) is not None
            holder = service.holder_of(peer.sock.getsockname()[1])
            assert holder in service.worker_pids, holder
            hit.add(holder)
            one(peer)
        finally:
            peer.close()
        connections += 1
    return connections


def _increase(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {w: after.get(w, 0.0) - before.get(w, 0.0) for w in WORKERS}


# --- attacks ----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_continuation_floods_on_both_workers_are_cut_and_callers_on_both_are_served(
    two_workers: SupervisedService,
) -> None:
    service = two_workers

    def flood(peer: RawPeer) -> None:
        block = peer.block(request_headers(PATH, port=service.port))
        peer.send(raw(HEADERS, 0, 1, block) + raw(CONTINUATION, 0, 1, b"") * 50_000)  # never END_HEADERS
        goaway = peer.goaway()
        assert error_code(goaway) == ENHANCE_YOUR_CALM and b"CONTINUATION" in goaway.additional_data

    before = service.rejected_by_worker("header_block")
    with attack_on_two_workers(service):
        connections = on_both_workers(service, flood)
    grown = _increase(before, service.rejected_by_worker("header_block"))
    assert all(count >= 1 for count in grown.values()) and sum(grown.values()) == connections, grown


@pytest.mark.timeout(60)
def test_rapid_reset_on_both_workers_gets_enhance_your_calm_and_callers_on_both_are_served(
    two_workers: SupervisedService,
) -> None:
    service = two_workers

    def opened_and_reset(peer: RawPeer) -> None:
        block = peer.block(request_headers(PATH, port=service.port))
        peer.send(
            b"".join(
                raw(HEADERS, END_HEADERS, 1 + 2 * i, block) + raw(RST_STREAM, 0, 1 + 2 * i, b"\0\0\0\x08")
                for i in range(5_000)
            )
        )
        assert error_code(peer.goaway()) == ENHANCE_YOUR_CALM

    before = service.rejected_by_worker("reset_rate")
    with attack_on_two_workers(service):
        connections = on_both_workers(service, opened_and_reset)
    grown = _increase(before, service.rejected_by_worker("reset_rate"))
    assert all(count >= 1 for count in grown.values()) and sum(grown.values()) == connections, grown


@pytest.mark.timeout(60)
def test_a_request_flood_on_one_connection_starves_no_caller_of_either_worker(
    two_workers: SupervisedService,
) -> None:
    service = two_workers

    def flood(peer: RawPeer) -> None:
        # As many calls as the connection may have open, again and again, as fast as they are answered...
        stream = 1
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            batch = list(range(stream, stream + 2 * MAX_STREAMS, 2))
            peer.send(b"".join(call_bytes(peer, service, s) for s in batch))
            for s in batch:
                assert (peer.trailers_of(s) or {}).get("grpc-status") == "0"
            stream += 2 * MAX_STREAMS
        # ...then the same flood ignoring the advertised limit: refused, then cut off.
        peer.send(b"".join(call_bytes(peer, service, stream + 2 * i) for i in range(2_000)))
        assert error_code(peer.goaway(timeout=5)) == ENHANCE_YOUR_CALM
        assert any(getattr(f, "error_code", None) == REFUSED_STREAM for f in peer.frames)

    with attack_on_two_workers(service):
        on_both_workers(service, flood)


@pytest.mark.timeout(60)
def test_gzip_bombs_on_both_workers_are_refused_and_callers_on_both_are_served(
    two_workers: SupervisedService,
) -> None:
    service = two_workers
    bomb = gzip_bomb()
    headers = request_headers(PATH, ("grpc-encoding", "gzip"), port=service.port)
    small = zlib.compressobj(6, zlib.DEFLATED, 31)
    message = small.compress(service.request) + small.flush()

    def bombard(peer: RawPeer) -> None:
        peer.send(peer.request(1, headers, grpc_message(bomb, compressed=True)))
        trailers = peer.trailers_of(1, timeout=10) or {}
        assert trailers.get("grpc-status") == "8", trailers  # RESOURCE_EXHAUSTED
        # A gzip message within the limit is still inflated and answered on the same connection.
        peer.send(peer.request(3, headers, grpc_message(message, compressed=True)))
        assert (peer.trailers_of(3) or {}).get("grpc-status") == "0"

    with attack_on_two_workers(service):
        on_both_workers(service, bombard)


@pytest.mark.timeout(60)
def test_idle_connections_up_to_both_workers_caps_are_refused_or_closed_and_callers_are_served(
    two_workers: SupervisedService,
) -> None:
    service = two_workers
    refused_before = service.rejected_by_worker("max_connections")
    idle_before = service.rejected_by_worker("idle_timeout")
    attempted = 2 * MAX_CONNECTIONS + 24  # past both caps, whichever way the kernel spreads them
    with attack_on_two_workers(service):
        peers = [RawPeer(service.port) for _ in range(attempted)]
        greeted, refused = [], 0
        for peer in peers:
            try:
                settings_frame = peer.read_until(lambda f: f.type == SETTINGS, timeout=2)
            except Closed:
                refused += 1
                continue
            if settings_frame is not None:
                greeted.append(peer)
        # The legitimate connections (at least five) hold places too: at least 24 + 5 are refused.
        assert refused >= attempted - 2 * MAX_CONNECTIONS + 5, refused
        assert len(greeted) + refused == attempted
        # Handshake done, no call: GOAWAY and close after the idle timeout, on both workers.
        for peer in greeted:
            assert peer.eof(timeout=IDLE_TIMEOUT + 3)
        for peer in peers:
            peer.close()
    refusals = _increase(refused_before, service.rejected_by_worker("max_connections"))
    idled = _increase(idle_before, service.rejected_by_worker("idle_timeout"))
    assert sum(refusals.values()) == refused, refusals
    assert all(count >= 1 for count in idled.values()) and sum(idled.values()) >= len(greeted), idled
