"""The attributes of a request message on Pub/Sub: what the async gateway publishes and the worker reads.

The gateway (``apx.dataplane.gateway.app``) fills a ``RequestAttributes`` and
publishes ``encode_attributes(...)`` with the request body as the message
data; the worker (``apx.dataplane.worker.processor``) reads them back with
``decode_attributes``. Pub/Sub attributes are string → string, so every
value is text: ``enqueued_ms`` a decimal integer, ``lease`` ``"1"`` when the
gateway holds a concurrency slot the worker must free.

The trace context travels next to them under the names the propagators
write (W3C ``traceparent``/``tracestate`` and ``baggage``, ``TRACE_ATTRIBUTES``);
the baggage carries the tenant and the policy version under
``BAGGAGE_TENANT`` / ``BAGGAGE_POLICY_VERSION``.

Decoding is lenient: an attribute that is missing reads as empty (the worker
validates the request id itself, and falls back to its own settings for route
and track), so a message of an older gateway is still processed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# W3C trace context and baggage, as the OpenTelemetry propagators name them (lower-case).
TRACE_ATTRIBUTES = ("traceparent", "tracestate", "baggage")
BAGGAGE_TENANT = "apx.tenant"
BAGGAGE_POLICY_VERSION = "apx.policy_version"

REQUEST_ID = "request_id"
TENANT_ID = "tenant_id"
TENANT_TIER = "tenant_tier"
POLICY_VERSION = "policy_version"
RESIDENCY = "residency"
TRACK = "track"
ROUTE = "route"
PRODUCT = "product"
REGION = "region"
METHOD = "method"
PATH = "path"
QUERY = "query"
ROUTE_BASE = "route_base"
CONTENT_TYPE = "content_type"
ACCEPT = "accept"
ENQUEUED_MS = "enqueued_ms"
LEASE = "lease"


# Not frozen: built and decoded once per message on the gateway's and worker's hot paths, where a
# frozen dataclass's __init__ costs about six times as much. Treat instances as immutable
# (``dataclasses.replace`` for a changed copy).
@dataclass(slots=True)
class RequestAttributes:
    """One accepted async request, as the worker needs it (the body travels as the message data)."""

    request_id: str
    tenant_id: str = ""
    tenant_tier: str = ""
    policy_version: str = ""
    residency: str = ""
    track: str = ""
    route: str = ""  # "<ns>/<route>"
    product: str = ""  # "<ns>/<product>"
    region: str = ""
    method: str = ""
    path: str = ""  # as received, still percent-encoded
    route_base: str = ""  # the exact path or prefix the Route matched on
    enqueued_ms: int | None = None
    query: str = ""  # raw query string, without "?"
    content_type: str = ""
    accept: str = ""
    lease: bool = False  # the gateway took a concurrency lease (lease id = request id)
    trace_context: Mapping[str, str] = field(default_factory=dict)  # TRACE_ATTRIBUTES present


def encode_attributes(message: RequestAttributes) -> dict[str, str]:
    """The Pub/Sub attributes of ``message``; empty optional values are left out."""
    attributes = {
        REQUEST_ID: message.request_id,
        TENANT_ID: message.tenant_id,
        TENANT_TIER: message.tenant_tier,
        POLICY_VERSION: message.policy_version,
        RESIDENCY: message.residency,
        TRACK: message.track,
        ROUTE: message.route,
        PRODUCT: message.product,
        REGION: message.region,
        METHOD: message.method,
        PATH: message.path,
        ROUTE_BASE: message.route_base,
    }
    if message.enqueued_ms is not None:
        attributes[ENQUEUED_MS] = str(message.enqueued_ms)
    for name, value in (
        (QUERY, message.query),
        (CONTENT_TYPE, message.content_type),
        (ACCEPT, message.accept),
    ):
        if value:
            attributes[name] = value
    if message.lease:
        attributes[LEASE] = "1"
    attributes.update(message.trace_context)
    return attributes


def decode_attributes(attributes: Mapping[str, str]) -> RequestAttributes:
    """The request carried by a message's attributes (missing ones read as empty)."""
    get = attributes.get
    enqueued = get(ENQUEUED_MS, "")
    return RequestAttributes(
        request_id=get(REQUEST_ID, ""),
        tenant_id=get(TENANT_ID, ""),
        tenant_tier=get(TENANT_TIER, ""),
        policy_version=get(POLICY_VERSION, ""),
        residency=get(RESIDENCY, ""),
        track=get(TRACK, ""),
        route=get(ROUTE, ""),
        product=get(PRODUCT, ""),
        region=get(REGION, ""),
        method=get(METHOD, ""),
        path=get(PATH, ""),
        route_base=get(ROUTE_BASE, ""),
        enqueued_ms=int(enqueued) if enqueued.isdigit() else None,
        query=get(QUERY, ""),
        content_type=get(CONTENT_TYPE, ""),
        accept=get(ACCEPT, ""),
        lease=get(LEASE) == "1",
        trace_context=trace_context(attributes),
    )


def trace_context(attributes: Mapping[str, str]) -> dict[str, str]:
    """The trace-context entries of a message's attributes or a request's headers (names lower-cased)."""
    found = {name: attributes[name] for name in TRACE_ATTRIBUTES if name in attributes}
    if len(found) == len(TRACE_ATTRIBUTES) or all(key.islower() for key in attributes):
        return found  # the usual case: the propagators' own lower-case names
    return {k.lower(): v for k, v in attributes.items() if k.lower() in TRACE_ATTRIBUTES}
