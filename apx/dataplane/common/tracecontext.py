"""OpenTelemetry for the async path: tracer setup and trace context carried in Pub/Sub attributes.

Called by the async gateway (injects the context of its span into the
message attributes it publishes) and the worker (extracts it and starts its
span as a child), so one trace runs from Envoy through Pub/Sub to the
upstream. Propagation uses the globally configured propagators
(``opentelemetry.propagate``: W3C ``traceparent``/``tracestate`` and
``baggage`` unless ``OTEL_PROPAGATORS`` says otherwise). Baggage carries the
tenant and the policy version (``apx.tenant``, ``apx.policy_version``) so
every service on the path can attribute work without adding metric labels.

``configure_tracing`` installs an SDK tracer provider exporting over
OTLP/HTTP when an endpoint is known: ``--otlp-endpoint``/``APX_OTLP_ENDPOINT``
(a collector's base URL, ``/v1/traces`` appended as for
``OTEL_EXPORTER_OTLP_ENDPOINT``), else the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``. The
other standard variables are the SDK's own: ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` (sampler), ``OTEL_SERVICE_NAME`` (overrides the
service's default name), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_PROPAGATORS``,
the exporter's headers and timeout. Without an endpoint it installs nothing:
spans would be recorded only to be dropped, which costs the worker a
noticeable share of its CPU per message. The API's non-recording spans still carry the incoming context, so a
``traceparent`` that arrives (from Envoy, from the message) is passed on
unchanged. Tests pass their own exporter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from apx.contracts import pubsub_attributes

# Baggage keys and the Pub/Sub attribute names the propagators write are part of the
# gateway/worker contract (``apx.contracts.pubsub_attributes``).
BAGGAGE_TENANT = pubsub_attributes.BAGGAGE_TENANT
BAGGAGE_POLICY_VERSION = pubsub_attributes.BAGGAGE_POLICY_VERSION
TRACE_ATTRIBUTES = pubsub_attributes.TRACE_ATTRIBUTES


def configure_tracing(
    service: str,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    *,
    install: bool = True,
    default_ratio: float | None = None,
) -> TracerProvider | None:
    """A tracer provider for ``service``, or None when there is nowhere to export to.

    Installed as the global provider unless ``install`` is false (tests). ``default_ratio``
    samples that share of the traces this service starts itself (parent-based: a sampled
    caller's trace is always continued) unless ``OTEL_TRACES_SAMPLER`` says otherwise; without
    it the SDK's default applies (every trace).
    """
    if exporter is None and not tracing_wanted(otlp_endpoint):
        return None
    sampler = None
    if default_ratio is not None and not os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ParentBased(TraceIdRatioBased(default_ratio))
    provider = TracerProvider(resource=service_resource(service), sampler=sampler)
    if exporter is not None:
        # Given exporters are in-process (tests): export synchronously so spans are visible at once.
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(otlp_exporter(otlp_endpoint)))
    if install:
        trace.set_tracer_provider(provider)
    return provider


def tracing_wanted(otlp_endpoint: str | None) -> bool:
    """True when there is somewhere to export to (the flag, or a standard ``OTEL_*`` endpoint)."""
    return bool(
        otlp_endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def service_resource(service: str) -> Resource:
    """Resource attributes: ``OTEL_RESOURCE_ATTRIBUTES``, and ``OTEL_SERVICE_NAME`` over ``service``."""
    return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service})


def traces_url(endpoint: str) -> str:
    """A collector's base URL (``http://collector:4318``) as the OTLP/HTTP traces URL; full URLs kept."""
    if urlsplit(endpoint).path.rstrip("/").endswith("/v1/traces"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


def otlp_exporter(otlp_endpoint: str | None) -> SpanExporter:
    """The OTLP/HTTP span exporter: to ``otlp_endpoint`` if given, else where the ``OTEL_*`` variables say."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=traces_url(otlp_endpoint) if otlp_endpoint else None)


def with_baggage(tenant: str, policy_version: str, ctx: context.Context | None = None) -> context.Context:
    """``ctx`` (default: the current context) plus the tenant and policy version as baggage."""
    ctx = baggage.set_baggage(BAGGAGE_TENANT, tenant, context=ctx)
    return baggage.set_baggage(BAGGAGE_POLICY_VERSION, policy_version, context=ctx)


def inject_attributes(ctx: context.Context | None = None) -> dict[str, str]:
    """The propagation headers of ``ctx`` as Pub/Sub message attributes."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def extract_context(attributes: Mapping[str, str]) -> context.Context:
    """The remote parent (and baggage) carried by a message's attributes or a request's headers."""
    return propagate.extract(pubsub_attributes.trace_context(attributes))
