"""Real ``apx-gateway`` and ``apx-worker`` processes export one trace over OTLP/HTTP, and serve /metrics.

A small OTLP/HTTP receiver (aiohttp, decoding ``ExportTraceServiceRequest``
from ``opentelemetry-proto``) stands in for the collector. The gateway is
told its endpoint with ``--otlp-endpoint`` (a base URL: ``/v1/traces`` is
appended, as for the standard variable); the worker gets only the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_SERVICE_NAME``, as a platform would set them. The request carries a
``traceparent`` as Envoy would send it; the spans of the gateway and of the
worker (through Pub/Sub attributes) must be in that one trace, each the child
of the previous hop. The processes' ``/metrics`` are scraped too: ``process_*``
series, no ``_created`` series, APX names.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from e2e.services import Service, free_port, stop_pid
from tests.dataplane.conftest import HOST, Jwks, apx_docs, deploy, upstream_stub

ENVOY_TRACE = "0af7651916cd43dd8448eb211c80319c"
ENVOY_SPAN = "b7ad6b7169203331"


@dataclass
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str


@dataclass
class OtlpReceiver:
    url: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)


@pytest_asyncio.fixture
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    port = free_port()
    receiver = OtlpReceiver(f"http://127.0.0.1:{port}")

    async def export(request: web.Request) -> web.Response:
        receiver.content_types.add(request.content_type)
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    receiver.spans.append(
                        ReceivedSpan(
                            attributes.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_pid(process.pid)


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / command[0]), *command[1:]],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def _eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except (OSError, aiohttp.ClientError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_gateway_and_worker_processes_export_one_trace_through_pubsub_over_otlp_http(
    redis_url: str,
    emulator: Service,
    namespace: str,
    project: str,
    jwks: Jwks,
    otlp_receiver: OtlpReceiver,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # Every variable the services read comes from here, not from the test runner's environment.
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        os.environ.pop(name)
    async with upstream_stub() as upstream:
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",), api_key=False)
        docs[1]["spec"]["auth"]["jwt"]["allowInsecureJwks"] = True  # the local JWKS is served over http
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        gateway_port, gateway_metrics, worker_metrics = free_port(), free_port(), free_port()
        processes.append(
            _spawn(
                [
                    "apx-gateway",
                    "--host=127.0.0.1",
                    f"--port={gateway_port}",
                    "--metrics-host=127.0.0.1",
                    f"--metrics-port={gateway_metrics}",
                    f"--redis-url={redis_url}",
                    f"--pubsub-project={project}",
                    f"--pubsub-emulator-host={emulator.address}",
                    f"--otlp-endpoint={otlp_receiver.url}",
                    "--log-level=WARNING",
                ],
                {"OTEL_TRACES_SAMPLER": "parentbased_always_on", "OTEL_BSP_SCHEDULE_DELAY": "200"},
                tmp_path / "gateway.log",
            )
        )
        (deployment,) = [
            m
            for m in compiled.kubernetes.manifests
            if m["kind"] == "Deployment" and m["metadata"]["labels"].get("apx.dev/track") == "stable"
        ]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        worker_env = {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}
        worker_env.update(
            APX_REDIS_URL=redis_url,
            APX_PUBSUB_PROJECT=project,
            PUBSUB_EMULATOR_HOST=emulator.address,
            APX_METRICS_HOST="127.0.0.1",
            APX_METRICS_PORT=str(worker_metrics),
            APX_LOG_LEVEL="WARNING",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.url,
            OTEL_TRACES_SAMPLER="always_on",
            OTEL_SERVICE_NAME="apx-worker-jobs",
            OTEL_BSP_SCHEDULE_DELAY="200",
        )
        processes.append(_spawn(container["command"], worker_env, tmp_path / "worker.log"))

        token = jwks.token("acme")
        headers = {
            "Host": HOST,
            "content-type": "application/json",
            "authorization": f"Bearer {token}",
            "traceparent": f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01",
        }
        async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway_port}") as client:

            async def submitted() -> str | None:
                async with client.post("/v1/jobs/export", data=b'{"n": 1}', headers=headers) as response:
                    return response.headers["x-request-id"] if response.status == 202 else None

            request_id = await _eventually(submitted, 30, "the gateway to accept the request")

            async def done() -> bool:
                status_headers = {"Host": HOST, "authorization": f"Bearer {token}"}
                async with client.get(f"/status/{request_id}", headers=status_headers) as response:
                    return response.status == 200 and (await response.json())["state"] == "done"

            await _eventually(done, 45, "the worker to finish the request")

        def names() -> set[str]:
            return {s.name for s in otlp_receiver.spans}

        async def exported() -> bool:
            return {"apx.gateway.submit", "apx.worker.process"} <= names()

        await _eventually(exported, 20, "both services' spans at the receiver")
        gateway_text, worker_text = _scrape(gateway_metrics), _scrape(worker_metrics)

    assert otlp_receiver.content_types == {"application/x-protobuf"}
    gateway_span = next(s for s in otlp_receiver.spans if s.name == "apx.gateway.submit")
    worker_span = next(s for s in otlp_receiver.spans if s.name == "apx.worker.process")
    assert gateway_span.service == "apx-gateway"
    assert worker_span.service == "apx-worker-jobs"  # OTEL_SERVICE_NAME honoured
    # One trace from Envoy's traceparent through the gateway and Pub/Sub to the worker.
    assert gateway_span.trace_id == worker_span.trace_id == ENVOY_TRACE
    assert gateway_span.parent_span_id == ENVOY_SPAN
    assert worker_span.parent_span_id == gateway_span.span_id
    (call,) = upstream.calls
    assert call.headers["traceparent"].split("-")[1] == ENVOY_TRACE
    for text, prefix in ((gateway_text, "apx_gateway_"), (worker_text, "apx_")):
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= families, families
        assert "_created" not in text
        own = {f for f in families if not f.startswith("process_")}
        assert own and all(f.startswith(prefix) for f in own), own
