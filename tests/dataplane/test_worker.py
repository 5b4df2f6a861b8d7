"""The worker against real Redis and the Pub/Sub emulator: dead letters, idempotent redelivery, per-tenant
ordering (and none where the Route has none), permanent failures, metrics, and a clean SIGTERM drain of the
real ``apx-worker`` process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import pytest
from google.cloud import pubsub_v1

from apx.controllers.renderers.kubernetes.workers import upstream_url
from apx.dataplane.common.requeststate import RequestState, backlog_key, request_key
from e2e.services import Service, free_port
from tests.dataplane.conftest import (
    Jwks,
    apx_docs,
    deploy,
    pull_all,
    running_gateway,
    running_worker,
    upstream_stub,
    wait_for,
)


async def _state(gw: Any, request_id: str) -> RequestState | None:
    return RequestState.decode(request_id, await gw.gateway.redis.hgetall(request_key(request_id)))


async def _terminal(gw: Any, request_id: str) -> bool:
    state = await _state(gw, request_id)
    return state is not None and state.terminal


def _sample(processor: Any, name: str, **labels: str) -> float:
    value = processor.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


@pytest.mark.asyncio
async def test_a_message_that_keeps_failing_is_dead_lettered_after_max_attempts(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    # The emulator dead-letters only unordered subscriptions (an ordered one keeps redelivering),
    # so this Route turns ordering off; Pub/Sub itself dead-letters ordered subscriptions too.
    async with upstream_stub() as upstream:
        upstream.status = 503
        delivery = {
            "ordering": False,
            "maxDeliveryAttempts": 5,
            "minimumBackoff": "0s",
            "maximumBackoff": "1s",
        }
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",), delivery=delivery)
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        (plan,) = [p for p in compiled.pubsub.plans if p.track == "stable"]
        async with running_gateway(redis_url, project) as gw:
            response = await gw.submit(token=jwks.token("acme"))
            request_id = response.headers["x-request-id"]
            async with running_worker(redis_url, project, compiled) as worker:
                dead = await asyncio.to_thread(
                    pull_all, f"projects/{project}/subscriptions/{plan.dead_letter_subscription}", 1, 40.0
                )
                state = await _state(gw, request_id)
                metric = _sample(
                    worker,
                    "apx_requests_total",
                    route=plan.route,
                    track="stable",
                    tenant_tier="pro",
                    code="503",
                )
                dead_lettered = _sample(
                    worker,
                    "apx_worker_messages_total",
                    route=plan.route,
                    track="stable",
                    outcome="dead_lettered",
                )
            counter = await gw.gateway.redis.get(backlog_key(plan.route, "stable"))
    assert [m.attributes["request_id"] for m in dead] == [request_id]
    assert dead[0].attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert len(upstream.calls_for(request_id)) == 5
    assert state is not None and state.state == "failed" and state.dead_lettered and state.code == 503
    assert state.attempts == 5
    assert metric == 5 and dead_lettered == 1
    assert int(counter or 0) == 0


@pytest.mark.asyncio
async def test_a_redelivered_message_does_not_run_twice_once_it_finished(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    async with upstream_stub() as upstream:
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",))
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        async with running_gateway(redis_url, project) as gw:
            response = await gw.submit(token=jwks.token("acme"))
            request_id = response.headers["x-request-id"]
            async with running_worker(redis_url, project, compiled) as worker:
                # The first run stores its result but its ack is lost (as when a worker dies right
                # after writing): Pub/Sub delivers the message again.
                consumer = worker.consumer
                real_ack = consumer.ack
                lost: list[str] = []

                def lose_first_ack(delivery: Any) -> None:
                    if not lost:
                        lost.append(delivery.message_id)
                        consumer.nack(delivery)
                    else:
                        real_ack(delivery)

                consumer.ack = lose_first_ack
                route = worker.config.route
                await wait_for(
                    lambda: (
                        _sample(
                            worker,
                            "apx_worker_messages_total",
                            route=route,
                            track="stable",
                            outcome="duplicate",
                        )
                        == 1
                    )
                )
                state = await _state(gw, request_id)
    assert lost, "the first delivery was acked"
    assert len(upstream.calls_for(request_id)) == 1
    assert state is not None and state.state == "done" and state.attempts == 1


@pytest.mark.asyncio
async def test_each_tenant_is_served_in_order_one_at_a_time(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    async with upstream_stub() as upstream:
        upstream.delay = 0.03
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",))
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        submitted: dict[str, list[str]] = {"acme": [], "globex": []}
        async with running_gateway(redis_url, project) as gw:
            for i in range(8):
                for tenant in submitted:
                    response = await gw.submit(f'{{"i": {i}}}'.encode(), token=jwks.token(tenant))
                    submitted[tenant].append(response.headers["x-request-id"])
            async with running_worker(redis_url, project, compiled, max_outstanding=50):
                await wait_for(lambda: len(upstream.calls) == 16)
                await wait_for(lambda: all(c.finished for c in upstream.calls))
    for tenant, ids in submitted.items():
        assert [c.request_id for c in upstream.calls if c.tenant == tenant] == ids
    assert upstream.max_active_per_tenant == 1
    # Two tenants did run side by side.
    acme = [c for c in upstream.calls if c.tenant == "acme"]
    globex = [c for c in upstream.calls if c.tenant == "globex"]
    assert any(a.started < g.finished and g.started < a.finished for a in acme for g in globex)


@pytest.mark.asyncio
async def test_ordering_keys_on_a_route_without_ordering_do_not_hold_a_tenant_back(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    async with upstream_stub() as upstream:
        upstream.delay = 0.3
        docs = apx_docs(
            namespace, jwks, upstream.url, regions=("europe-west1",), delivery={"ordering": False}
        )
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        plan = next(p for p in compiled.pubsub.plans if p.track == "stable")
        # Another publisher set the tenant as ordering key anyway; the subscription has no ordering.
        publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        )
        topic = publisher.topic_path(project, plan.topic)
        sent = [
            publisher.publish(
                topic,
                b"{}",
                ordering_key="acme",
                request_id=f"unordered-{i:04d}-{uuid.uuid4().hex[:8]}",
                tenant_id="acme",
                tenant_tier="pro",
                route=plan.route,
                track="stable",
                method="POST",
                path="/v1/jobs",
            )
            for i in range(6)
        ]
        for future in sent:
            await asyncio.wrap_future(future)
        publisher.stop()
        async with running_worker(redis_url, project, compiled, max_outstanding=50):
            await wait_for(lambda: len(upstream.calls) == 6 and all(c.finished for c in upstream.calls))
    # Six 0.3 s calls of one tenant overlapped instead of running one after another.
    assert upstream.max_active_per_tenant > 1


@pytest.mark.asyncio
async def test_a_client_error_fails_for_good_and_a_server_error_is_retried(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    async with upstream_stub() as upstream:
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",))
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        async with running_gateway(redis_url, project) as gw:
            bad = (await gw.submit(token=jwks.token("acme"))).headers["x-request-id"]
            flaky = (await gw.submit(token=jwks.token("globex"))).headers["x-request-id"]
            upstream.statuses[bad] = 422
            upstream.statuses[flaky] = 500
            async with running_worker(redis_url, project, compiled) as worker:
                await wait_for(lambda: _terminal(gw, bad))
                await wait_for(lambda: len(upstream.calls_for(flaky)) >= 2)
                del upstream.statuses[flaky]
                await wait_for(lambda: _terminal(gw, flaky))
                route = worker.config.route
                ok = _sample(
                    worker, "apx_requests_total", route=route, track="stable", tenant_tier="pro", code="200"
                )
                unprocessable = _sample(
                    worker, "apx_requests_total", route=route, track="stable", tenant_tier="pro", code="422"
                )
                in_flight = _sample(worker, "apx_in_flight_requests", route=route, track="stable")
                queued_count = _sample(
                    worker, "apx_queue_latency_seconds_count", route=route, track="stable", tenant_tier="pro"
                )
            bad_state, flaky_state = await _state(gw, bad), await _state(gw, flaky)
    assert bad_state is not None and bad_state.state == "failed" and bad_state.code == 422
    assert not bad_state.dead_lettered and len(upstream.calls_for(bad)) == 1
    assert flaky_state is not None and flaky_state.state == "done" and flaky_state.attempts >= 2
    assert ok == 1 and unprocessable == 1 and in_flight == 0 and queued_count >= 3


def _worker_env(
    compiled: Any, project: str, redis_url: str, emulator: Service, metrics_port: int
) -> dict[str, str]:
    """The environment the worker Deployment of the stable track sets (renderers.kubernetes.workers)."""
    deployment = next(m for m in compiled.kubernetes.manifests if m["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(
        APX_PUBSUB_PROJECT=project,
        PUBSUB_EMULATOR_HOST=emulator.address,
        APX_REDIS_URL=redis_url,
        APX_METRICS_PORT=str(metrics_port),
        APX_JSON_LOGS="true",
    )
    assert container["command"] == ["apx-worker"]
    return env


async def _start_worker_process(
    env: dict[str, str], drain_seconds: float, metrics_port: int
) -> subprocess.Popen[bytes]:
    command = [
        os.path.join(os.path.dirname(sys.executable), "apx-worker"),
        "--drain-seconds",
        str(drain_seconds),
    ]
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{metrics_port}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                return False

        await wait_for(ready, timeout=30)
    return process


@pytest.mark.parametrize(("drain_seconds", "delay"), [(5.0, 0.8), (0.2, 3.0)], ids=["finishes", "nacks"])
@pytest.mark.asyncio
async def test_sigterm_drains_the_worker_process_and_loses_nothing(
    redis_url: str,
    emulator: Service,
    namespace: str,
    project: str,
    jwks: Jwks,
    drain_seconds: float,
    delay: float,
) -> None:
    async with upstream_stub() as upstream:
        upstream.delay = delay
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",))
        docs[2]["spec"]["worker"]["maxOutstandingMessages"] = 4
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        route = next(r for r in compiled.ir.routes)
        metrics_port = free_port()
        env = _worker_env(compiled, project, redis_url, emulator, metrics_port)
        assert env["APX_UPSTREAM_URL"] == upstream_url(route.stable.backend)
        assert env["APX_MAX_OUTSTANDING_MESSAGES"] == "4"
        async with running_gateway(redis_url, project) as gw:
            ids = [
                (await gw.submit(token=jwks.token(f"tenant-{i}"))).headers["x-request-id"] for i in range(10)
            ]
            process = await _start_worker_process(env, drain_seconds, metrics_port)
            try:
                await wait_for(lambda: sum(upstream.active.values()) >= 3, timeout=20)
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
                ):
                    exposition = await response.text()
                assert "apx_in_flight_requests" in exposition
                in_flight = {c.request_id for c in upstream.calls if not c.finished}
                stopped_at = time.monotonic()
                os.kill(process.pid, signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, drain_seconds + 10)
                took = time.monotonic() - stopped_at
                logs = process.stderr.read().decode() if process.stderr else ""
            finally:
                if process.poll() is None:
                    process.kill()
            assert code == 0, logs
            assert took < drain_seconds + 6, took
            assert '"message": "drained"' in logs
            first_run = {c.request_id for c in upstream.calls}
            # Whatever the stopped worker did not finish is redelivered and done by the next one.
            upstream.delay = 0.0
            async with running_worker(redis_url, project, compiled):
                for request_id in ids:
                    await wait_for(lambda rid=request_id: _terminal(gw, rid), timeout=30)
            states = [await _state(gw, request_id) for request_id in ids]
    assert all(s is not None and s.state == "done" for s in states)
    assert all(upstream.calls_for(r) for r in ids)
    # Without an exporter the worker makes no span but passes the message's trace context on unchanged.
    assert all(c.headers.get("traceparent", "").startswith("00-") for c in upstream.calls)
    assert len(in_flight) >= 3 and in_flight <= first_run
    if drain_seconds > delay:
        # In-flight work finished during the drain: none of it ran twice.
        assert all(len(upstream.calls_for(r)) == 1 for r in in_flight)
    else:
        # In-flight work was nacked at the deadline and ran again after redelivery.
        assert all(len(upstream.calls_for(r)) == 2 for r in in_flight)


def test_both_console_scripts_have_help() -> None:
    for script, flag in (("apx-gateway", "--redis-url"), ("apx-worker", "--subscriptions")):
        path = os.path.join(os.path.dirname(sys.executable), script)
        result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert flag in result.stdout and "PUBSUB_EMULATOR_HOST" in result.stdout
