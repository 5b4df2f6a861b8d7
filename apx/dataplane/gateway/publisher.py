"""Publishing accepted requests to Pub/Sub for the async gateway: batched, ordered, on the event loop.

Called by ``apx.dataplane.gateway.app`` once per accepted request (the caller
waits for the publish before its 202). Why not ``PublisherClient``: with
message ordering enabled it keeps one batch per ordering key and commits each
batch from a new thread, so with one request per tenant in flight every
message became its own RPC and thread; profiled, its threads and locks took
over 80 % of the gateway's CPU (``bench/bench_gateway.py``). Here:

* Messages wait at most ``max_latency`` (5 ms) and go out together — whatever
  their ordering keys — in one ``Publish`` RPC of up to ``max_messages``
  (1,000) or ``max_bytes``; a full batch leaves at once.
* Per topic, one RPC is in flight at a time and batches leave in the order
  they were filled, so the messages of one ordering key (one tenant) reach
  Pub/Sub in the order the gateway accepted them. While an RPC is in flight
  the next batch fills up, so batches grow with the load.
* The RPC is the ``google.pubsub.v1.Publisher/Publish`` method called on a
  ``grpc.aio`` channel with the raw protobuf messages: no thread, no
  proto-plus wrapping on the hot path.
* Transient failures (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``ABORTED``,
  ``INTERNAL``, ``UNKNOWN``, ``RESOURCE_EXHAUSTED``, ``CANCELLED``, as the
  client library's own retry policy) are retried with backoff within
  ``publish_timeout``; a retried batch may be stored twice, which the worker's
  idempotency by request id absorbs. A batch that still fails fails every
  request in it (the gateway answers them 503 and undoes their admission).

Endpoints: against the emulator (``PUBSUB_EMULATOR_HOST``) one insecure
channel serves every region. Against real Pub/Sub, topics of residency-
restricted products refuse publishes that do not come through their region's
endpoint (``enforce_in_transit``, see ``pubsub_plan``), so those go to the
locational endpoint ``<region>-pubsub.googleapis.com`` and the others to the
global one, each channel authenticated with the default Google credentials.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.pubsub_v1.types import pubsub as pubsub_types

log = logging.getLogger(__name__)

RESTRICTED_RESIDENCIES = frozenset({"US", "EU", "ASIA"})
PUBLISH_METHOD = "/google.pubsub.v1.Publisher/Publish"
GLOBAL_ENDPOINT = "pubsub.googleapis.com:443"
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
# Pub/Sub's limits on one Publish request.
MAX_REQUEST_MESSAGES = 1000
MAX_REQUEST_BYTES = 10_000_000

_PublishRequest: Any = pubsub_types.PublishRequest.pb()
_PublishResponse: Any = pubsub_types.PublishResponse.pb()
_PubsubMessage: Any = pubsub_types.PubsubMessage.pb()


class PublishError(Exception):
    """The message could not be published (after retries)."""


@dataclass(slots=True)
class _Topic:
    """Messages waiting for one topic on one endpoint, and whether an RPC for it is in flight."""

    endpoint: str | None
    path: str
    pending: list[tuple[Any, asyncio.Future[str]]] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None
    sending: bool = False


class Publisher:
    """Publishes request messages in batches; create and use it on the gateway's event loop."""

    def __init__(
        self,
        project: str,
        *,
        max_latency: float = 0.005,
        max_messages: int = MAX_REQUEST_MESSAGES,
        max_bytes: int = 9_000_000,
        publish_timeout: float = 5.0,
        emulator_host: str | None = None,
    ) -> None:
        self.project = project
        self.max_latency = max_latency
        self.max_messages = min(max_messages, MAX_REQUEST_MESSAGES)
        self.max_bytes = min(max_bytes, MAX_REQUEST_BYTES)
        self.publish_timeout = publish_timeout
        self.emulator_host = (
            emulator_host if emulator_host is not None else os.environ.get("PUBSUB_EMULATOR_HOST")
        )
        self._channels: dict[str | None, tuple[grpc.aio.Channel, Any]] = {}
        self._topics: dict[tuple[str | None, str], _Topic] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self.rpcs = 0  # Publish RPCs sent (for metrics and tests)

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def _endpoint(self, region: str, residency: str) -> str | None:
        if self.emulator_host:
            return None
        return (
            f"{region}-pubsub.googleapis.com:443" if residency in RESTRICTED_RESIDENCIES else GLOBAL_ENDPOINT
        )

    def _call(self, endpoint: str | None) -> Any:
        entry = self._channels.get(endpoint)
        if entry is None:
            if endpoint is None:
                assert self.emulator_host is not None
                channel = grpc.aio.insecure_channel(self.emulator_host)
            else:
                from google.pubsub_v1.services.publisher.transports.grpc_asyncio import (
                    PublisherGrpcAsyncIOTransport,
                )

                channel = PublisherGrpcAsyncIOTransport.create_channel(endpoint)
            call = channel.unary_unary(
                PUBLISH_METHOD,
                request_serializer=_PublishRequest.SerializeToString,
                response_deserializer=_PublishResponse.FromString,
            )
            entry = self._channels[endpoint] = (channel, call)
        return entry[1]

    async def publish(
        self,
        topic: str,
        data: bytes,
        attributes: Mapping[str, str],
        *,
        ordering_key: str,
        region: str,
        residency: str,
    ) -> str:
        """Queue one message and wait for its message id; raises ``PublishError``."""
        loop = asyncio.get_running_loop()
        endpoint = self._endpoint(region, residency)
        path = self.topic_path(topic)
        queue = self._topics.get((endpoint, path))
        if queue is None:
            queue = self._topics[(endpoint, path)] = _Topic(endpoint, path)
        message = _PubsubMessage(data=data, attributes=attributes, ordering_key=ordering_key)
        future: asyncio.Future[str] = loop.create_future()
        queue.pending.append((message, future))
        queue.size += message.ByteSize() + 8
        if len(queue.pending) >= self.max_messages or queue.size >= self.max_bytes:
            self._flush(queue)
        elif queue.timer is None and not queue.sending:
            queue.timer = loop.call_later(self.max_latency, self._flush, queue)
        return await future

    def _flush(self, queue: _Topic) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if queue.sending or not queue.pending:
            return  # the RPC in flight sends what accumulated when it completes
        count = size = 0
        for message, _ in queue.pending:
            message_size = message.ByteSize() + 8
            if count == self.max_messages or (count and size + message_size > self.max_bytes):
                break
            count += 1
            size += message_size
        batch = queue.pending[:count]
        del queue.pending[:count]
        queue.size = max(0, queue.size - size)
        queue.sending = True
        task = asyncio.get_running_loop().create_task(self._send(queue, batch))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, queue: _Topic, batch: list[tuple[Any, asyncio.Future[str]]]) -> None:
        try:
            request = _PublishRequest(topic=queue.path, messages=[message for message, _ in batch])
            ids = await self._rpc(queue.endpoint, request)
            if len(ids) != len(batch):
                raise PublishError(f"Pub/Sub returned {len(ids)} ids for {len(batch)} messages")
            for (_, future), message_id in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(message_id)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, PublishError)
                else PublishError(f"publish to {queue.path} failed: {exc}")
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        finally:
            queue.sending = False
            if queue.pending:
                # These waited at least one RPC: send them now.
                self._flush(queue)

    async def _rpc(self, endpoint: str | None, request: Any) -> list[str]:
        call = self._call(endpoint)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        delay = 0.1
        while True:
            remaining = deadline - loop.time()
            try:
                response = await call(request, timeout=max(0.1, remaining))
                self.rpcs += 1
                return list(response.message_ids)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or loop.time() + delay >= deadline:
                    raise PublishError(f"{exc.code().name}: {exc.details()}") from exc
                log.info("publish retried", extra={"code": exc.code().name, "delay_s": delay})
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 1.3)

    async def close(self) -> None:
        """Send what is still queued, wait for it, and close the channels."""
        for queue in list(self._topics.values()):
            self._flush(queue)
        while self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
