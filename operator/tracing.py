"""OpenTelemetry tracing of reconciles: one span per reconciled object, with resource attributes.

Set up by ``apx.operator.main``; the reconciler asks ``tracer()`` for spans.
Without an OTLP endpoint, spans are created (so context propagates) but not
exported.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

SERVICE_NAME = "apx-operator"


def configure(exporter: SpanExporter | None = None, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install a tracer provider; export to ``exporter`` or an OTLP endpoint when given."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if exporter is None and otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:  # the exporter is an optional extra
            raise SystemExit(
                "--otlp-endpoint needs opentelemetry-exporter-otlp-proto-http installed"
            ) from exc
        exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("apx.operator")
