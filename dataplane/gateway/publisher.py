"""Publishing accepted requests to Pub/Sub for the async gateway.

Called by ``apx.dataplane.gateway.app`` once per accepted request. One
``PublisherClient`` with message ordering enabled (the ordering key is the
tenant id when the Route asks for ordering) and batch settings tuned for
latency (a batch leaves after ``max_latency`` — 5 ms by default — or 100
messages), since a caller waits for the publish before its 202.

``PublisherClient.publish`` only enqueues into the client's batch (its flow
control is left at ``IGNORE``, so it never blocks); the RPC runs on the
client's own threads and the gateway awaits the returned future through
``asyncio.wrap_future``, so the event loop never blocks on Pub/Sub.

When a publish with an ordering key fails, the client pauses that key (later
publishes fail fast, so order cannot silently break); the gateway answers the
failed request 503 and resumes the key, so the tenant's next request is tried
again.

Topics of residency-restricted products refuse publishes that do not come
through their region's endpoint (``enforce_in_transit``, see
``pubsub_plan``), so against real Pub/Sub there is one client per region,
aimed at the locational endpoint ``<region>-pubsub.googleapis.com``. Against
the emulator (``PUBSUB_EMULATOR_HOST``) one client serves every region.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from google.api_core.client_options import ClientOptions
from google.cloud import pubsub_v1

RESTRICTED_RESIDENCIES = frozenset({"US", "EU", "ASIA"})


class Publisher:
    """Publishes request messages, one client per endpoint, created on first use."""

    def __init__(
        self,
        project: str,
        *,
        max_latency: float = 0.005,
        max_messages: int = 100,
        max_bytes: int = 1_000_000,
        emulator: bool | None = None,
    ) -> None:
        self.project = project
        self._batch = pubsub_v1.types.BatchSettings(
            max_latency=max_latency, max_messages=max_messages, max_bytes=max_bytes
        )
        self._emulator = bool(os.environ.get("PUBSUB_EMULATOR_HOST")) if emulator is None else emulator
        self._clients: dict[str | None, pubsub_v1.PublisherClient] = {}

    def _client(self, region: str, residency: str) -> pubsub_v1.PublisherClient:
        endpoint = None if self._emulator or residency not in RESTRICTED_RESIDENCIES else region
        client = self._clients.get(endpoint)
        if client is None:
            options = (
                ClientOptions(api_endpoint=f"{endpoint}-pubsub.googleapis.com:443") if endpoint else None
            )
            client = pubsub_v1.PublisherClient(
                batch_settings=self._batch,
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
                client_options=options,
            )
            self._clients[endpoint] = client
        return client

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

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
        """Publish and wait for the server's message id; raises on failure (the key is resumed)."""
        client = self._client(region, residency)
        path = self.topic_path(topic)
        future = client.publish(path, data, ordering_key=ordering_key, **attributes)
        try:
            return str(await asyncio.wrap_future(future))
        except BaseException:
            if ordering_key:
                client.resume_publish(path, ordering_key)
            raise

    def stop(self) -> None:
        """Send every batch still pending and stop the clients' threads (blocking; call off the loop)."""
        for client in self._clients.values():
            client.stop()
        self._clients.clear()
