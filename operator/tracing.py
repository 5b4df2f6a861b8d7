"""OpenTelemetry tracing of reconciles: one span per reconciled object, with resource attributes.

Set up by ``apx.operator.main``; the reconciler asks ``tracer()`` for spans.
With an exporter or an OTLP endpoint, spans are recorded and exported by the
SDK. Without one the API's no-op tracer stays in place: the code paths are
the same, but no span is recorded that nobody would read (that was a span
object per reconciled object per pass).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

SERVICE_NAME = "apx-operator"


def configure(
    exporter: SpanExporter | None = None, otlp_endpoint: str | None = None
) -> TracerProvider | None:
    """Install an SDK tracer provider exporting to ``exporter`` or an OTLP endpoint (None: neither given)."""
    if exporter is None and not otlp_endpoint:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:  # the exporter is an optional extra
            raise SystemExit(
                "--otlp-endpoint needs opentelemetry-exporter-otlp-proto-http installed"
            ) from exc
        exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("apx.operator")
