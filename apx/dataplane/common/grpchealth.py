"""``grpc.health.v1.Health`` (Check and Watch) for services served by ``grpcserver.GrpcServer``.

Used by the rate-limit service: Kubernetes' gRPC probes, ``grpc_health_probe``
and Envoy's gRPC health checker call ``Check``; gRPC clients doing
client-side health checking hold a ``Watch`` open and get each change.
Semantics follow the reference servicer: an unknown service is NOT_FOUND for
``Check`` and SERVICE_UNKNOWN (streamed, kept open) for ``Watch``;
``enter_graceful_shutdown`` turns every service NOT_SERVING and freezes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpc_health.v1 import health_pb2

from .grpcserver import GrpcError, GrpcStatus, Method

OVERALL = ""
SERVICE_NAME = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    """Statuses per service name, answered to ``Check`` and pushed to ``Watch``ers."""

    def __init__(self) -> None:
        self._statuses: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._frozen = False

    def status(self, service: str) -> int | None:
        return self._statuses.get(service)

    def set(self, service: str, status: int) -> None:
        if self._frozen:
            return
        self._statuses[service] = status
        event = self._changed.pop(service, None)
        if event is not None:
            event.set()

    def enter_graceful_shutdown(self) -> None:
        for service in list(self._statuses):
            self.set(service, NOT_SERVING)
        self._frozen = True

    def methods(self) -> dict[str, Method]:
        return {
            f"/{SERVICE_NAME}/Check": Method(self.check),
            f"/{SERVICE_NAME}/Watch": Method(self.watch, streaming=True),
        }

    async def check(self, message: bytes) -> bytes:
        service = health_pb2.HealthCheckRequest.FromString(message).service
        status = self._statuses.get(service)
        if status is None:
            raise GrpcError(GrpcStatus.NOT_FOUND, f"unknown service {service!r}")
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()

    async def watch(self, message: bytes) -> AsyncIterator[bytes]:
        service = health_pb2.HealthCheckRequest.FromString(message).service
        last: int | None = None
        while True:
            event = self._changed.setdefault(service, asyncio.Event())
            status = self._statuses.get(service, SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status).SerializeToString()
                last = status
            await event.wait()
