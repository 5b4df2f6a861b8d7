"""Benchmark: the ADS server with 100 delta and 10 SotW streams, one Route edit at a time.

The server runs in this process (as in the operator); the clients run in a
child process (``--clients``), each stream on its own connection, built only
from the protos: delta streams present themselves as Envoy (so they get VHDS:
route configuration without hosts + ``VirtualHost`` resources), SotW streams
subscribe to CDS, LDS and RDS. Every response is ACKed.

Per edit (a timeout change of one Route, alternating between two values), the
time from the new snapshot being served until every stream has ACKed the
change (read from the server's ACK records), and the bytes written to each
delta stream. Printed beside the baseline of the same run: the time to
serialise the full snapshot once (``SerializeToString`` of every resource)
and its size. Also: server RSS growth per connected stream (the clients
connect in two halves; the second half's growth divided by its streams is the
marginal cost, the average over all streams after the edits is printed too),
the p50/p99 of the delta streams alone, and the time to build the next
snapshot (``XdsSnapshot.from_envoy(...).prepare()``, done off the event loop
in the operator). ``--sotw 0`` shows the delta path without the SotW streams'
whole-table pushes competing for the same two cores. The SotW floor (``--floor``,
on by default): the same client processes against a bare ``grpc.aio`` handler
that writes the same route table, serialised once, to every SotW stream and
waits for the ACKs; no server can send a SotW proxy its whole route table
faster than that over this transport on this machine.

Targets: p99 ≤ 250 ms until every stream ACKed; bytes per delta stream for one
edit ≤ 1 % of the full snapshot; ≤ 256 KiB RSS per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import generate_documents

from apx.controllers.renderers.envoy import EnvoyOutput, render_envoy
from apx.controllers.translate import translate
from apx.operator.xds import XdsServer, XdsSnapshot
from apx.operator.xds.snapshot import CLUSTER, LISTENER, ROUTE_CONFIGURATION, VIRTUAL_HOST
from apx.runtime.process import release_free_memory, tune_process

ROUTE_NAME = "apx-routes"


# --- clients (child process) ---------------------------------------------------------


async def _client(port: int, delta_count: int, sotw_count: int, offset: int) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    def open_channel() -> Any:
        return grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[
                ("grpc.max_receive_message_length", 512 * 1024 * 1024),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )

    async def delta(index: int) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        node = base_pb2.Node(id=f"delta-{offset + index}", user_agent_name="envoy")

        async def requests() -> Any:
            while True:
                yield await queue.get()

        for position, (type_url, names) in enumerate(
            ((CLUSTER, []), (LISTENER, []), (ROUTE_CONFIGURATION, [ROUTE_NAME]), (VIRTUAL_HOST, [ROUTE_NAME]))
        ):
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names)
            if position == 0:
                request.node.CopyFrom(node)
            queue.put_nowait(request)
        async with open_channel() as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(requests())
            async for response in call:
                queue.put_nowait(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=response.type_url, response_nonce=response.nonce
                    )
                )

    async def sotw(index: int) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        names = {CLUSTER: [], LISTENER: [], ROUTE_CONFIGURATION: [ROUTE_NAME]}

        async def requests() -> Any:
            while True:
                yield await queue.get()

        for position, (type_url, subscribed) in enumerate(names.items()):
            request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=subscribed)
            if position == 0:
                request.node.CopyFrom(base_pb2.Node(id=f"sotw-{offset + index}", user_agent_name="envoy"))
            queue.put_nowait(request)
        async with open_channel() as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests())
            async for response in call:
                queue.put_nowait(
                    discovery_pb2.DiscoveryRequest(
                        type_url=response.type_url,
                        resource_names=names[response.type_url],
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                    )
                )

    try:
        await asyncio.gather(*(delta(i) for i in range(delta_count)), *(sotw(i) for i in range(sotw_count)))
    except grpc.aio.AioRpcError:
        return  # the server stopped at the end of the run


# --- server side (this process) --------------------------------------------------------


def _edit(documents: list[dict[str, Any]], index: int, timeout: str) -> list[dict[str, Any]]:
    edited = list(documents)
    # A sync Route: its own timeout is in its Envoy route (an async one's goes to the gateway).
    routes = [i for i, d in enumerate(documents) if d["kind"] == "Route" and d["spec"].get("mode") != "async"]
    position = routes[index % len(routes)]
    doc = dict(documents[position])
    doc["spec"] = {**doc["spec"], "timeout": timeout}
    edited[position] = doc
    return edited


def _all_acked(
    server: XdsServer, snapshot: XdsSnapshot, sotw_rds_version: str, nodes: int, prefix: str = ""
) -> bool:
    records = server.acks.nodes
    if len(records) < nodes:
        return False
    for name, record in records.items():
        if not name.startswith(prefix):
            continue
        if name.startswith("delta-"):
            if record.acked.get(VIRTUAL_HOST) != snapshot.version:
                return False
        elif record.acked.get(ROUTE_CONFIGURATION) != sotw_rds_version:
            return False
    return True


def _sotw_rds_version(server: XdsServer) -> str:
    return server.snapshot.sotw(ROUTE_CONFIGURATION, frozenset({ROUTE_NAME})).version


async def _wait(predicate: Any, timeout: float) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("streams did not ACK in time")
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


class _SotwFloor:
    """The least any ADS server can do for SotW clients: the same pre-serialised response, written.

    A bare ``grpc.aio`` stream handler (no protocol logic) that, per edit, writes one
    ``DiscoveryResponse`` holding the route configuration APX serves SotW clients (built and
    serialised once, shared by every stream, as APX's server does) and waits until every stream
    has ACKed its nonce. The same client processes as APX's SotW streams. What it takes is the
    transport's cost of moving the whole route table to every SotW proxy: a floor for the
    "edit -> every SotW stream ACKed" figure, measured in the same run.
    """

    def __init__(self, version: str, entries: tuple[Any, ...]) -> None:
        self.version = version
        self.entries = entries
        self.queues: list[asyncio.Queue[bytes]] = []
        self.acked: dict[int, str] = {}
        self.server: Any = None
        self.port = 0

    async def start(self) -> None:
        import grpc
        from envoy.service.discovery.v3 import discovery_pb2

        async def stream(requests: Any, context: Any) -> Any:
            index = len(self.queues)
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            self.queues.append(queue)

            async def read() -> None:
                async for request in requests:
                    if request.response_nonce:
                        self.acked[index] = request.response_nonce

            reader = asyncio.create_task(read())
            try:
                while not reader.done():
                    getting = asyncio.ensure_future(queue.get())
                    await asyncio.wait((getting, reader), return_when=asyncio.FIRST_COMPLETED)
                    if not getting.done():
                        getting.cancel()
                        break
                    yield getting.result()
            finally:
                reader.cancel()

        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    stream, request_deserializer=discovery_pb2.DiscoveryRequest.FromString
                )
            },
        )
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 4 << 20), ("grpc.max_send_message_length", -1)]
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def push(self, nonce: str) -> float:
        from apx.operator.xds.snapshot import sotw_response

        response = sotw_response(ROUTE_CONFIGURATION, self.version, self.entries, nonce)
        started = time.perf_counter()
        for queue in self.queues:
            queue.put_nowait(response)
        await _wait(lambda: all(self.acked.get(i) == nonce for i in range(len(self.queues))), 120)
        return time.perf_counter() - started


async def _sotw_floor(
    port_spawn: Any, version: str, entries: tuple[Any, ...], streams: int, edits: int
) -> list[float]:
    floor = _SotwFloor(version, entries)
    await floor.start()
    children = port_spawn(floor.port, streams)
    try:
        await _wait(lambda: len(floor.queues) == streams, 120)
        times = [await floor.push(f"floor-{turn}") for turn in range(edits + 2)]
    finally:
        # The clients first: their streams end, so no handler is cancelled mid-RPC by the stop.
        for child in children:
            child.terminate()
            child.wait(10)
        await asyncio.sleep(0.5)
        await floor.server.stop(1.0)
    return times[2:]  # the first two are not counted, as for APX's server


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _bench(args: argparse.Namespace) -> int:
    tune_process()  # as the operator's process does (malloc arenas, GIL switch interval)
    documents = generate_documents(args.routes)
    result = translate(documents)
    output = render_envoy(result.ir)
    resources = list(output.resources())
    started = time.perf_counter()
    encoded = [r.SerializeToString() for r in resources]
    serialize_s = time.perf_counter() - started
    full_bytes = sum(len(b) for b in encoded)

    server = XdsServer("127.0.0.1", 0, registry=CollectorRegistry())
    snapshot = XdsSnapshot.from_envoy(output).prepare()
    server.set_snapshot(snapshot)
    await server.start()
    process = psutil.Process()
    outputs: list[EnvoyOutput] = [render_envoy(translate(_edit(documents, 7, f"{s}s")).ir) for s in (11, 12)]
    # The same snapshot churn without clients first, so the baseline holds what the snapshots cost.
    for turn in range(4):
        server.set_snapshot(XdsSnapshot.from_envoy(outputs[turn % 2], server.snapshot).prepare())
    server.set_snapshot(snapshot)
    gc.collect()
    # Long-lived objects out of the collector's scans, as the operator's HeapKeeper does after a pass.
    gc.freeze()
    release_free_memory()
    rss_before = process.memory_info().rss

    streams = args.delta + args.sotw
    children: list[subprocess.Popen[bytes]] = []

    def spawn(delta: int, sotw: int, offset: int) -> None:
        # Delta and SotW clients in processes of their own: a SotW client parsing the whole route
        # table must not delay the delta clients' ACKs (each Envoy has its own process).
        for d, w in ((delta, 0), (0, sotw)):
            if d or w:
                command = [sys.executable, __file__, "--clients", str(server.port), "--delta", str(d)]
                children.append(subprocess.Popen([*command, "--sotw", str(w), "--offset", str(offset)]))

    try:
        # Two halves: the second half's RSS growth is the marginal cost of a connected stream (the
        # first half also pays the allocator's high-water mark of an initial sync).
        initial_rds = _sotw_rds_version(server)
        first_delta, first_sotw = args.delta // 2, args.sotw // 2
        started = time.perf_counter()
        spawn(first_delta, first_sotw, 0)
        await _wait(lambda: _all_acked(server, server.snapshot, initial_rds, first_delta + first_sotw), 300)
        await asyncio.sleep(0.5)
        gc.collect()
        release_free_memory()
        rss_half = process.memory_info().rss
        spawn(args.delta - first_delta, args.sotw - first_sotw, 10_000)
        await _wait(lambda: _all_acked(server, server.snapshot, initial_rds, streams), 300)
        sync_s = time.perf_counter() - started
        await asyncio.sleep(0.5)
        gc.collect()
        release_free_memory()
        marginal = (process.memory_info().rss - rss_half) / max(1, streams - first_delta - first_sotw)

        # Edits: build each next snapshot first (the operator does it in a thread), then serve it.
        build_times: list[float] = []
        ack_times: list[float] = []
        delta_times: list[float] = []
        delta_bytes: list[int] = []
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        warmup = 2  # the first edits after the initial sync are not counted (clients still settling)
        for turn in range(args.edits + warmup):
            if turn == warmup:
                build_times.clear()
                ack_times.clear()
                delta_times.clear()
                delta_bytes.clear()
            started = time.perf_counter()
            # As the operator's builder thread does: SotW responses of the subscriptions held now too.
            next_snapshot = XdsSnapshot.from_envoy(outputs[turn % 2], server.snapshot).prepare(
                server.sotw_subscriptions()
            )
            build_times.append(time.perf_counter() - started)
            before = server.stream_bytes()
            server.set_snapshot(next_snapshot)
            pushed = time.perf_counter()
            rds_version = _sotw_rds_version(server) if args.sotw else ""
            if args.delta:
                await _wait(
                    functools.partial(_all_acked, server, next_snapshot, rds_version, streams, "delta-"), 60
                )
                delta_times.append(time.perf_counter() - pushed)
            await _wait(functools.partial(_all_acked, server, next_snapshot, rds_version, streams), 60)
            ack_times.append(time.perf_counter() - pushed)
            after = server.stream_bytes()
            delta_bytes.extend(after[n][1] - before[n][1] for n in after if after[n][0])
            await asyncio.sleep(0.05)
        # Steady state: per-snapshot caches hold only the last edit's responses; freed pages returned.
        await asyncio.sleep(1.0)
        gc.collect()
        release_free_memory()
        rss_per_stream = (process.memory_info().rss - rss_before) / streams
        server_rds = server.snapshot.sotw(ROUTE_CONFIGURATION, frozenset({ROUTE_NAME}))
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    finally:
        # The server first (its streams end with their RPCs), then the clients.
        await server.stop(1.0)
        for child in children:
            child.terminate()
            child.wait(10)

    floor_times: list[float] = []
    if args.sotw and args.floor:
        # The same SotW clients against a bare grpc.aio handler writing the same route table.
        rds = server_rds

        def spawn_floor(port: int, count: int) -> list[subprocess.Popen[bytes]]:
            command = [sys.executable, __file__, "--clients", str(port), "--delta", "0"]
            return [subprocess.Popen([*command, "--sotw", str(count), "--offset", "0"])]

        floor_times = await _sotw_floor(spawn_floor, rds.version, rds.entries, args.sotw, args.edits)

    per_delta = statistics.mean(delta_bytes) if delta_bytes else 0.0
    if args.verbose:
        print("every edit (ms):", [round(t * 1000, 1) for t in ack_times])
    print(f"input: {args.routes} Routes; {args.delta} delta + {args.sotw} SotW streams; {args.edits} edits")
    print(
        f"snapshot: {len(snapshot.listeners)} listeners, {len(snapshot.virtual_hosts)} virtual hosts, "
        f"{len(snapshot.clusters)} clusters"
    )
    print(f"baseline serialise full snapshot once: {serialize_s * 1000:8.1f} ms, {full_bytes / 1e6:.2f} MB")
    print(f"initial sync of every stream:          {sync_s * 1000:8.1f} ms")
    print(
        f"edit -> every stream ACKed: p50 {_p(ack_times, 0.5) * 1000:.1f} ms, "
        f"p99 {_p(ack_times, 0.99) * 1000:.1f} ms  (target p99 <= 250 ms; "
        f"{_p(ack_times, 0.99) / serialize_s:.1f}x the baseline serialisation)"
    )
    if floor_times:
        print(
            f"floor: the same {len(server_rds.response) / 1e6:.1f} MB route table written by a bare grpc.aio "
            f"handler to {args.sotw} SotW streams and ACKed: p50 {_p(floor_times, 0.5) * 1000:.1f} ms, "
            f"p99 {_p(floor_times, 0.99) * 1000:.1f} ms"
        )
    if delta_times:
        print(
            f"edit -> every delta stream ACKed: p50 {_p(delta_times, 0.5) * 1000:.1f} ms, "
            f"p99 {_p(delta_times, 0.99) * 1000:.1f} ms"
        )
    print(
        f"bytes per delta stream per edit:       {per_delta / 1024:8.1f} KiB = "
        f"{per_delta / full_bytes * 100:.2f} % of the full snapshot  (target <= 1 %)"
    )
    print(
        f"next snapshot build (from_envoy):      {statistics.median(build_times) * 1000:8.1f} ms median "
        f"({statistics.median(build_times) / serialize_s:.2f}x the baseline)"
    )
    print(
        f"server RSS per connected stream:       {marginal / 1024:8.1f} KiB marginal (second half of the "
        f"streams; target <= 256 KiB); {rss_per_stream / 1024:.1f} KiB average over all streams after the "
        f"edits, initial-sync high-water included"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--delta", type=int, default=100)
    parser.add_argument("--sotw", type=int, default=10)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="profile the server during the edits")
    parser.add_argument("--verbose", action="store_true", help="print every edit's time")
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the SotW floor: a bare grpc.aio handler writing the same route table",
    )
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients is not None:
        asyncio.run(_client(args.clients, args.delta, args.sotw, args.offset))
        return 0
    return asyncio.run(_bench(args))


if __name__ == "__main__":
    sys.exit(main())
