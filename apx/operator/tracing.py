"""OpenTelemetry tracing of reconciles: one span per reconciled object, with resource attributes.

Set up by ``apx.operator.main``; the reconciler asks ``tracer()`` for spans.
With an exporter, ``--otlp-endpoint`` or the standard
``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variables, spans are recorded and
exported over OTLP/HTTP by the SDK, which honours the other standard
variables too (``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``): the same rules as the dataplane services
(``apx.dataplane.common.tracecontext``). Without any, the API's no-op tracer
stays in place and the SDK is not even imported: the code paths are the
same, but no span is recorded that nobody would read (that was a span object
per reconciled object per pass).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

SERVICE_NAME = "apx-operator"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure(
    exporter: SpanExporter | None = None, otlp_endpoint: str | None = None
) -> TracerProvider | None:
    """Install an SDK tracer provider exporting to ``exporter`` or over OTLP (None: nowhere to export)."""
    if exporter is None and not otlp_endpoint and not any(os.environ.get(v) for v in ENDPOINT_VARIABLES):
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from apx.dataplane.common.tracecontext import otlp_exporter, service_resource

    provider = TracerProvider(resource=service_resource(SERVICE_NAME))
    provider.add_span_processor(BatchSpanProcessor(exporter or otlp_exporter(otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("apx.operator")
