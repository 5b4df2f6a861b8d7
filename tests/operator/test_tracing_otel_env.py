"""Tracing as installed: the standard ``OTEL_*`` variables, the OTLP URL, and the rate-limit service's spans.

Each configuration check runs in a fresh interpreter (the tracer provider and
the environment are process-wide). The rate-limit service is driven in
process with a limiter stub that cannot decide (so no Redis is needed): with
a tracer it records one span per sampled call, without one it creates none.
"""

from __future__ import annotations

import asyncio
from typing import Any

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apx.dataplane.common.tracecontext import traces_url
from apx.dataplane.ratelimit.limiter import RedisUnavailable
from apx.dataplane.ratelimit.metrics import RateLimitMetrics
from apx.dataplane.ratelimit.server import RateLimitService
from tests.operator.processes import in_fresh_process


def test_a_collector_base_url_gets_the_traces_path_and_full_urls_are_kept() -> None:
    assert traces_url("http://otel-collector.observability:4318") == (
        "http://otel-collector.observability:4318/v1/traces"
    )
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://collector/otlp/v1/traces") == "https://collector/otlp/v1/traces"


def test_standard_variables_switch_tracing_on_and_name_the_service_and_sampler() -> None:
    out = in_fresh_process(
        """
        import os
        os.environ.update(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
            OTEL_SERVICE_NAME="payments-operator",
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment=staging",
            OTEL_TRACES_SAMPLER="traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.25",
        )
        from apx.operator import tracing
        provider = tracing.configure()
        attributes = provider.resource.attributes
        exporter = provider._active_span_processor._span_processors[0].span_exporter
        print(attributes["service.name"], attributes["deployment.environment"])
        print(provider.sampler.get_description())
        print(exporter._endpoint)
        """
    )
    assert out.splitlines() == [
        "payments-operator staging",
        "TraceIdRatioBased{0.25}",
        "http://127.0.0.1:4318/v1/traces",
    ]


def test_the_flag_endpoint_is_a_base_url_and_the_default_service_name_stays() -> None:
    out = in_fresh_process(
        """
        from apx.dataplane.common.tracecontext import configure_tracing
        provider = configure_tracing("apx-gateway", "http://collector:4318", install=False)
        exporter = provider._active_span_processor._span_processors[0].span_exporter
        print(provider.resource.attributes["service.name"], exporter._endpoint)
        print(configure_tracing("apx-gateway", None, install=False))
        """
    )
    assert out.splitlines() == ["apx-gateway http://collector:4318/v1/traces", "None"]


def test_rate_limit_service_samples_one_percent_by_default_unless_the_sampler_variable_says() -> None:
    code = """
        import os, sys
        if sys.argv[-1] == "override":
            os.environ["OTEL_TRACES_SAMPLER"] = "always_off"
        from apx.dataplane.common.tracecontext import configure_tracing
        from apx.dataplane.ratelimit.main import TRACE_RATIO
        provider = configure_tracing(
            "apx-ratelimit", "http://collector:4318", install=False, default_ratio=TRACE_RATIO
        )
        print(provider.sampler.get_description())
        """
    default = in_fresh_process(code)
    assert default.startswith("ParentBased{root:TraceIdRatioBased{0.01},remoteParentSampled:AlwaysOnSampler")
    overridden = in_fresh_process(code.replace('sys.argv[-1] == "override"', "True"))
    assert overridden == "AlwaysOffSampler"


class _Undecided:
    """A limiter whose Redis is down: every call gets the failure mode (here: open)."""

    async def decide(self, request: Any) -> Any:
        raise RedisUnavailable("connection refused")

    def failure_mode(self, product: str | None) -> str:
        return "open"


def _request() -> bytes:
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="product", value="team-a/orders")]
    )
    return rls_pb2.RateLimitRequest(domain="apx", descriptors=[descriptor]).SerializeToString()


def test_rate_limit_calls_get_a_span_with_a_tracer_and_none_without() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = RateLimitService(_Undecided(), RateLimitMetrics(), failure_mode="service")  # type: ignore[arg-type]

    untraced = rls_pb2.RateLimitResponse.FromString(asyncio.run(service.should_rate_limit(_request())))
    assert exporter.get_finished_spans() == ()
    service.tracer = provider.get_tracer("apx.ratelimit")
    traced = rls_pb2.RateLimitResponse.FromString(asyncio.run(service.should_rate_limit(_request())))

    assert traced == untraced and traced.overall_code == rls_pb2.RateLimitResponse.OK  # failing open
    (span,) = exporter.get_finished_spans()
    assert span.name == "apx.ratelimit.decide"
    assert span.attributes is not None
    assert span.attributes["apx.product"] == "team-a/orders"
    assert span.attributes["apx.ratelimit.code"] == "OK"
