"""A minimal xDS client built only from the official protos (xds-protos stubs + grpc.aio).

It deliberately imports nothing of the server: the tests check the protocol,
not our own reading of it. ``SotwStream`` and ``DeltaStream`` wrap one ADS
stream each; requests go through a queue, responses are awaited with a
deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
VHDS = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
MESSAGES: dict[str, Any] = {
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
    CDS: cluster_pb2.Cluster,
    VHDS: route_components_pb2.VirtualHost,
}
TIMEOUT = 10.0


def node(node_id: str = "test-node", envoy: bool = False) -> Any:
    return base_pb2.Node(id=node_id, cluster="test", user_agent_name="envoy" if envoy else "apx-test-client")


def unpack(type_url: str, packed: Any) -> Any:
    assert packed.type_url == type_url, packed.type_url
    return MESSAGES[type_url].FromString(packed.value)


class _Stream:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def _request_iterator(self) -> AsyncIterator[Any]:
        while True:
            request = await self.requests.get()
            if request is None:
                return
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self.responses.put(response)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        await self.responses.put(None)

    def _start(self, call: Any) -> None:
        self.call = call
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def next(self, timeout: float = TIMEOUT) -> Any:
        response = await asyncio.wait_for(self.responses.get(), timeout)
        if response is None:
            raise ConnectionError(f"stream ended: {self.error}")
        return response

    async def nothing_for(self, seconds: float) -> None:
        """Assert no response arrives within ``seconds``."""
        try:
            response = await asyncio.wait_for(self.responses.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {response}")

    async def close(self) -> None:
        await self.requests.put(None)
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class SotwStream(_Stream):
    """State of the world: ``StreamAggregatedResources``."""

    def __init__(self, channel: grpc.aio.Channel, node_: Any) -> None:
        super().__init__(channel)
        self.node = node_
        self.sent_node = False
        self._start(
            ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
                self._request_iterator()
            )
        )

    def send(
        self,
        type_url: str,
        names: Iterable[str] = (),
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if not self.sent_node:
            request.node.CopyFrom(self.node)
            self.sent_node = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.requests.put_nowait(request)

    def ack(self, response: Any, names: Iterable[str] = ()) -> None:
        self.send(response.type_url, names, response.version_info, response.nonce)

    def nack(self, response: Any, message: str, names: Iterable[str] = (), version: str = "") -> None:
        self.send(response.type_url, names, version, response.nonce, error=message)


class DeltaStream(_Stream):
    """Incremental: ``DeltaAggregatedResources``."""

    def __init__(self, channel: grpc.aio.Channel, node_: Any) -> None:
        super().__init__(channel)
        self.node = node_
        self.sent_node = False
        self._start(
            ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(
                self._request_iterator()
            )
        )

    def send(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        nonce: str = "",
        initial: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=dict(initial or {}),
        )
        if not self.sent_node:
            request.node.CopyFrom(self.node)
            self.sent_node = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.requests.put_nowait(request)

    def ack(self, response: Any) -> None:
        self.send(response.type_url, nonce=response.nonce)

    def nack(self, response: Any, message: str) -> None:
        self.send(response.type_url, nonce=response.nonce, error=message)


def channel(port: int, **options: Any) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_receive_message_length", 256 * 1024 * 1024), *options.items()],
    )
