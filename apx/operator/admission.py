"""The validating webhook server as the API server must reach it: through a Service, not a URL.

Used by ``apx.operator.main`` when ``--admission managed``. kopf's own
``WebhookServer`` registers ``https://<host>:<port>/…`` in the webhook
configuration it manages; inside a cluster the API server reaches the
operator through the chart's Service (``apx-webhook``, port 443 → 9443), so
this server keeps kopf's TLS serving and certificate reloading and only
rewrites the client config it registers into a ``service`` reference with the
CA bundle of the chart's certificate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kopf


class ServiceWebhookServer(kopf.WebhookServer):
    """A kopf webhook server that registers itself as ``service: {namespace, name, port}``."""

    def __init__(
        self, *, service_name: str, service_namespace: str, service_port: int = 443, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.service_name = service_name
        self.service_namespace = service_namespace
        self.service_port = service_port

    async def __call__(self, fn: Any) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for served in super().__call__(fn):
            config = kopf.WebhookClientConfig(
                service=kopf.WebhookClientConfigService(
                    namespace=self.service_namespace,
                    name=self.service_name,
                    port=self.service_port,
                    path=self.path or "/",
                )
            )
            if served.get("caBundle"):
                config["caBundle"] = served["caBundle"]
            yield config
