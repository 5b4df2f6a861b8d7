"""OpenTelemetry for the async path: tracer setup and trace context carried in Pub/Sub attributes.

Called by the async gateway (injects the context of its span into the
message attributes it publishes) and the worker (extracts it and starts its
span as a child), so one trace runs from Envoy through Pub/Sub to the
upstream. Propagation uses the globally configured propagators
(``opentelemetry.propagate``: W3C ``traceparent``/``tracestate`` and
``baggage`` unless ``OTEL_PROPAGATORS`` says otherwise). Baggage carries the
tenant and the policy version (``apx.tenant``, ``apx.policy_version``) so
every service on the path can attribute work without adding metric labels.

``configure_tracing`` installs an SDK tracer provider (sampler from the
standard ``OTEL_TRACES_SAMPLER*`` variables) exporting to an OTLP endpoint
when one is given. Without one it installs nothing: spans would be recorded
only to be dropped, which costs the worker a noticeable share of its CPU per
message. The API's non-recording spans still carry the incoming context, so a
``traceparent`` that arrives (from Envoy, from the message) is passed on
unchanged. Tests pass their own exporter.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

BAGGAGE_TENANT = "apx.tenant"
BAGGAGE_POLICY_VERSION = "apx.policy_version"
# Pub/Sub attribute names the propagators write (lower-case, as W3C defines them).
TRACE_ATTRIBUTES = ("traceparent", "tracestate", "baggage")


def configure_tracing(
    service: str,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    *,
    install: bool = True,
) -> TracerProvider | None:
    """A tracer provider for ``service``, or None when there is nowhere to export to.

    Installed as the global provider unless ``install`` is false (tests).
    """
    if exporter is None and not otlp_endpoint:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        # Given exporters are in-process (tests): export synchronously so spans are visible at once.
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:  # the exporter is an optional extra, as for the operator
            raise SystemExit(
                "--otlp-endpoint needs opentelemetry-exporter-otlp-proto-http installed"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if install:
        trace.set_tracer_provider(provider)
    return provider


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
    carrier = {k.lower(): v for k, v in attributes.items() if k.lower() in TRACE_ATTRIBUTES}
    return propagate.extract(carrier)
