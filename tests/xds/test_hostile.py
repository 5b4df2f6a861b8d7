"""Hostile peers against the ADS server, each while a legitimate client keeps receiving updates.

The server runs in the test's loop with small limits (so each protection
shows within a second or two). During every attack a legitimate SotW client
on its own connection must get each new snapshot within ``DEADLINE``; after
it, the server still accepts new clients. Attacks: a request flood on one
stream, an oversized message, garbage bytes on the port, a reader that never
reads its responses (bounded memory, the stream is closed), and many idle
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hpack
import psutil
import pytest
import pytest_asyncio
from envoy.service.discovery.v3 import discovery_pb2

from apx.operator.xds import XdsLimits, XdsServer, XdsSnapshot
from tests.dataplane.h2peer import DATA, END_HEADERS, HEADERS, PREFACE, SETTINGS, grpc_message, raw
from tests.xds.adsclient import CDS, RDS, DeltaStream, SotwStream, channel, node
from tests.xds.conftest import edit_route, render, sample_docs, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from workload import generate_documents

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

DEADLINE = 3.0
LIMITS = XdsLimits(
    requests_per_second=20.0,
    request_burst=40,
    write_timeout=1.5,
    handshake_timeout=1.0,
    max_connections=64,
    max_connection_idle=2.0,
)
SOTW_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


class Legit:
    """A well-behaved client: subscribed to clusters, ACKs everything, must see every push in time."""

    def __init__(self, server: XdsServer) -> None:
        self.server = server
        docs = sample_docs()
        self.variants = [render(edit_route(docs, "payments-legacy", timeout=f"{s}s")) for s in (5, 6)]
        self.turn = 0

    async def __aenter__(self) -> Legit:
        self.channel = channel(self.server.port)
        self.stream = SotwStream(self.channel, node("legit"))
        self.stream.send(RDS, ["apx-routes"])
        first = await self.stream.next(DEADLINE)
        self.stream.ack(first, ["apx-routes"])
        return self

    async def check(self) -> None:
        """Push a new snapshot; the client must receive it within the deadline."""
        self.turn += 1
        self.server.set_snapshot(XdsSnapshot.from_envoy(self.variants[self.turn % 2], self.server.snapshot))
        response = await self.stream.next(DEADLINE)
        assert response.type_url == RDS
        self.stream.ack(response, ["apx-routes"])

    async def __aexit__(self, *exc: Any) -> None:
        await self.stream.close()
        await self.channel.close()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[XdsServer]:
    running = await start_server(sample_docs(), LIMITS)
    try:
        yield running
    finally:
        await running.stop(0)


async def _during(attack: asyncio.Task[Any], legit: Legit, rounds: int = 4) -> None:
    for _ in range(rounds):
        await legit.check()
        await asyncio.sleep(0.1)
    attack.cancel()
    await asyncio.gather(attack, return_exceptions=True)


async def test_request_flood_on_one_stream_closes_that_stream_only(server: XdsServer) -> None:
    async with Legit(server) as legit:
        ch = channel(server.port)
        flooder = DeltaStream(ch, node("flooder"))

        async def flood() -> None:
            for i in range(5000):
                flooder.send(CDS, [f"name-{i}"])
                if i % 50 == 0:
                    await asyncio.sleep(0)

        attack = asyncio.create_task(flood())
        await _during(attack, legit)
        # The flooder's stream was ended by the server (the client may see its own failed send first).
        with pytest.raises(ConnectionError):
            while True:
                await flooder.next(DEADLINE)
        assert server.stream_count == 1
        await flooder.close()
        await ch.close()
        await legit.check()


async def test_oversized_request_is_refused_and_others_continue(server: XdsServer) -> None:
    async with Legit(server) as legit:
        async with channel(server.port) as ch:
            big = DeltaStream(ch, node("big"))
            big.send(CDS, ["x" * (LIMITS.max_receive_bytes + 1024)])
            attack = asyncio.create_task(asyncio.sleep(0))
            await _during(attack, legit, rounds=2)
            with pytest.raises(ConnectionError, match="RESOURCE_EXHAUSTED"):
                await big.next(DEADLINE)
            await big.close()
        await legit.check()


async def test_garbage_bytes_on_the_port_are_dropped(server: XdsServer) -> None:
    async with Legit(server) as legit:

        async def garbage() -> None:
            for i in range(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(bytes((i * 37 + k) % 256 for k in range(4096)))
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), DEADLINE)
                assert len(data) < 65536  # a GOAWAY at most, then the connection is closed
                writer.close()

        attack = asyncio.create_task(garbage())
        await _during(attack, legit)
        await attack if not attack.cancelled() else None
        await legit.check()


def _slow_reader(port: int) -> socket.socket:
    """An HTTP/2 client that asks for the route table and then never reads a byte."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    headers = hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", SOTW_PATH),
            (":authority", "xds"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    request = discovery_pb2.DiscoveryRequest(type_url=RDS, resource_names=["apx-routes"])
    request.node.id = "slow"
    sock.sendall(
        PREFACE
        + raw(SETTINGS, 0, 0)
        + raw(HEADERS, END_HEADERS, 1, headers)
        + raw(DATA, 0, 1, grpc_message(request.SerializeToString()))
    )
    return sock


async def test_reader_that_never_reads_holds_one_response_and_is_closed() -> None:
    docs = generate_documents(1000)
    big = [render(docs), render(edit_route(docs, docs[-1]["metadata"]["name"], timeout="9s"))]
    server = await start_server(None, LIMITS)
    server.set_snapshot(XdsSnapshot.from_envoy(big[0]))
    process = psutil.Process()
    try:
        async with Legit(server) as legit:
            slow = [_slow_reader(server.port) for _ in range(5)]
            await asyncio.sleep(0.3)
            legit.variants = big

            async def push(turns: int) -> None:
                for _ in range(turns):
                    await legit.check()  # the legitimate client gets every push meanwhile

            await push(2)
            baseline = process.memory_info().rss
            # Many more snapshots while the slow readers read nothing: nothing accumulates per snapshot.
            await push(10)
            growth = process.memory_info().rss - baseline
            size = len(server.snapshot.get(RDS, "apx-routes").any_bytes)  # type: ignore[union-attr]
            # Buffering per snapshot would be 10 x 5 x size (a response per push per slow stream); the
            # bound leaves room for the allocator and the legitimate client in this same process.
            assert growth < 10 * size, (growth, size)
            # The slow streams are closed once a write has waited write_timeout.
            for _ in range(50):
                if server.stream_count == 1:
                    break
                await asyncio.sleep(0.1)
            assert server.stream_count == 1
            await legit.check()
            for sock in slow:
                sock.close()
    finally:
        await server.stop(0)


async def test_many_idle_connections_do_not_lock_out_clients(server: XdsServer) -> None:
    async with Legit(server) as legit:
        idle: list[Any] = []

        async def open_idle() -> None:
            for _ in range(150):
                with contextlib.suppress(OSError):
                    idle.append(await asyncio.open_connection("127.0.0.1", server.port))
            await asyncio.sleep(10)

        attack = asyncio.create_task(open_idle())
        await _during(attack, legit)
        # Idle connections are closed by the handshake timeout; a new client is accepted.
        await asyncio.sleep(LIMITS.handshake_timeout + 0.5)
        closed = 0
        for reader, writer in idle:
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.5)
            except TimeoutError:
                continue
            closed += data == b"" or reader.at_eof()
            writer.close()
        assert closed >= len(idle) // 2
        async with channel(server.port) as ch:
            fresh = SotwStream(ch, node("fresh"))
            fresh.send(CDS)
            assert (await fresh.next(DEADLINE)).resources
            await fresh.close()
        await legit.check()
