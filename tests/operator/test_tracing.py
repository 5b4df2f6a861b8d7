"""Reconcile spans: exported when an exporter is configured, not recorded otherwise."""

from __future__ import annotations

from tests.operator.processes import in_fresh_process


def test_spans_reach_the_configured_exporter_with_the_service_name() -> None:
    out = in_fresh_process(
        """
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from apx.operator import tracing
        exporter = InMemorySpanExporter()
        provider = tracing.configure(exporter=exporter)
        with tracing.tracer().start_as_current_span("apx.reconcile.route") as span:
            span.set_attribute("apx.name", "payments")
        provider.force_flush()
        [finished] = exporter.get_finished_spans()
        print(finished.name, finished.attributes["apx.name"], finished.resource.attributes["service.name"])
        """
    )
    assert out == "apx.reconcile.route payments apx-operator"


def test_without_an_exporter_spans_are_not_recorded() -> None:
    out = in_fresh_process(
        """
        import sys
        from apx.operator import tracing
        print(tracing.configure())
        with tracing.tracer().start_as_current_span("apx.reconcile.route") as span:
            print(span.is_recording())
        print(any(name.startswith("opentelemetry.sdk.trace") for name in sys.modules))
        """
    )
    assert out.splitlines() == ["None", "False", "False"]
