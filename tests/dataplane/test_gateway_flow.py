"""The async path end to end, against real Redis and the Pub/Sub emulator, with what the operator writes.

POST → 202 → poll / Server-Sent Events → result; identity only from the
verified credential; residency (451), backpressure (503), idempotent
resubmission, status privacy; the trace continues from gateway to worker.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apx.controllers.models.route import CanaryStatus
from apx.dataplane.common.requeststate import backlog_key, request_key
from apx.dataplane.common.tracecontext import configure_tracing
from apx.dataplane.gateway.split import choose_track
from e2e.services import Service
from tests.dataplane.conftest import (
    HOST,
    Jwks,
    add_api_key,
    apx_docs,
    deploy,
    pull_all,
    running_gateway,
    running_worker,
    upstream_stub,
    wait_for,
)

pytestmark = pytest.mark.asyncio


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


async def test_post_202_then_poll_and_stream_to_the_result(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    async with upstream_stub() as upstream:
        docs = apx_docs(namespace, jwks, upstream.url)
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        token = jwks.token("acme")
        async with running_gateway(redis_url, project) as gw:
            response = await gw.submit(b'{"rows": 3}', token=token)
            assert response.status == 202, await response.text()
            body = await response.json()
            request_id = body["request_id"]
            assert response.headers["Location"] == f"/status/{request_id}"
            assert response.headers["x-request-id"] == request_id
            status, state = await gw.status(request_id, token)
            assert status == 200 and state["state"] == "queued"
            # Stream while nothing consumes yet, then start the worker: the stream sees it through.
            stream = await gw.client.get(
                f"/status/{request_id}/stream", headers={"Host": HOST, "authorization": f"Bearer {token}"}
            )
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            async with running_worker(redis_url, project, compiled):
                events = await _read_events(stream)
                await wait_for(lambda: _done(gw, request_id, token))
                status, state = await gw.status(request_id, token)
            assert events[0][0] == "state" and events[0][1]["state"] == "queued"
            assert events[-1][0] == "result" and events[-1][1]["state"] == "done"
            assert state["state"] == "done" and state["code"] == 200
            assert state["result"] == {"echo": '{"rows": 3}', "path": "/backend/export"}
            (call,) = upstream.calls
            assert call.tenant == "acme" and call.request_id == request_id
            assert call.headers["x-apx-track"] == "stable"
            # The backlog counter went up on publish and down when the request finished.
            redis = gw.gateway.redis
            assert int(await redis.get(backlog_key(f"{namespace}/jobs", "stable")) or 0) == 0


async def _done(gw: Any, request_id: str, token: str) -> bool:
    _, state = await gw.status(request_id, token)
    return bool(state["state"] == "done")


async def _read_events(response: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    event = ""
    async with asyncio.timeout(20):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: ") :])))
                if event in ("result", "error", "timeout"):
                    break
    return events


def _subscription(compiled: Any, project: str, track: str = "stable", region: str | None = None) -> str:
    plan = next(
        p for p in compiled.pubsub.plans if p.track == track and (region is None or p.region == region)
    )
    return f"projects/{project}/subscriptions/{plan.subscription}"


async def test_tenant_comes_from_the_verified_credential_never_from_a_header(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    docs = apx_docs(namespace, jwks, "http://127.0.0.1:9", regions=("europe-west1",))
    compiled = await deploy(docs, project=project, redis_url=redis_url)
    await add_api_key(redis_url, f"{namespace}/orders", "key-of-initech", "initech")
    async with running_gateway(redis_url, project) as gw:
        spoof = {"x-apx-tenant": "globex", "x-apx-plan": "enterprise"}
        by_token = await gw.submit(token=jwks.token("acme"), headers=spoof)
        by_key = await gw.submit(headers={**spoof, "x-api-key": "key-of-initech"})
        assert by_token.status == 202 and by_key.status == 202
        # A header alone is no credential at all.
        assert (await gw.submit(headers=spoof)).status == 401
        assert (await gw.submit(headers={**spoof, "x-api-key": "not-a-key"})).status == 401
        messages = await asyncio.to_thread(pull_all, _subscription(compiled, project), 2)
        tenants = {m.attributes["request_id"]: (m.attributes["tenant_id"], m.ordering_key) for m in messages}
        assert tenants == {
            by_token.headers["x-request-id"]: ("acme", "acme"),
            by_key.headers["x-request-id"]: ("initech", "initech"),
        }
        stored = await gw.gateway.redis.hget(request_key(by_token.headers["x-request-id"]), "tenant")
        assert stored == b"acme"
        # Attributes the worker relies on, as the issue lists them.
        message = next(m for m in messages if m.attributes["tenant_id"] == "acme")
        for name in ("request_id", "tenant_tier", "policy_version", "residency", "track", "traceparent"):
            assert message.attributes[name], name
        assert message.attributes["residency"] == "EU" and message.attributes["tenant_tier"] == "pro"
        assert message.data == b'{"n": 1}'


async def test_credentials_are_checked_and_status_is_private_to_its_tenant(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    docs = apx_docs(namespace, jwks, "http://127.0.0.1:9", regions=("europe-west1",))
    await deploy(docs, project=project, redis_url=redis_url)
    async with running_gateway(redis_url, project) as gw:
        missing = await gw.submit()
        assert missing.status == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert (await gw.submit(token=jwks.token("acme", audience="someone-else"))).status == 401
        assert (await gw.submit(token=jwks.token("acme", ttl=-120))).status == 401  # expired beyond the skew
        assert (await gw.submit(token=jwks.token(None))).status == 403  # verified, but names no tenant
        tampered = jwks.token("acme")[:-4] + "AAAA"
        assert (await gw.submit(token=tampered)).status == 401
        wrong_host = await gw.client.post("/v1/jobs/x", headers={"Host": "other.example"})
        assert wrong_host.status == 404
        wrong_method = await gw.client.put("/v1/jobs/x", headers={"Host": HOST})
        assert wrong_method.status == 405 and wrong_method.headers["Allow"] == "POST"
        accepted = await gw.submit(token=jwks.token("acme"))
        request_id = accepted.headers["x-request-id"]
        assert (await gw.status(request_id, jwks.token("acme")))[0] == 200
        # Another tenant cannot even learn that the request exists.
        assert (await gw.status(request_id, jwks.token("globex")))[0] == 404
        anonymous = await gw.client.get(f"/status/{request_id}", headers={"Host": HOST})
        assert anonymous.status == 401


async def test_resubmitting_a_request_id_is_idempotent_for_its_tenant_only(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    docs = apx_docs(namespace, jwks, "http://127.0.0.1:9", regions=("europe-west1",))
    compiled = await deploy(docs, project=project, redis_url=redis_url)
    async with running_gateway(redis_url, project) as gw:
        request_id = "client-chosen-0001"
        first = await gw.submit(token=jwks.token("acme"), headers={"x-request-id": request_id})
        again = await gw.submit(token=jwks.token("acme"), headers={"x-request-id": request_id})
        other = await gw.submit(token=jwks.token("globex"), headers={"x-request-id": request_id})
        malformed = await gw.submit(token=jwks.token("acme"), headers={"x-request-id": "{x}"})
        assert (first.status, again.status, other.status, malformed.status) == (202, 202, 409, 400)
        assert (await again.json())["duplicate"] is True
        messages = await asyncio.to_thread(pull_all, _subscription(compiled, project), 2, 2.5)
        assert [m.attributes["request_id"] for m in messages] == [request_id]
        counter = await gw.gateway.redis.get(backlog_key(f"{namespace}/jobs", "stable"))
        assert int(counter) == 1


async def test_a_request_that_would_leave_its_residency_gets_451(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    # The Product model never lets an EU tenant live in a US region, so simulate a rule set
    # that says so anyway (hand-edited or stale): the gateway must refuse, not publish.
    tenants = [{"id": "eve", "plan": "standard", "region": "europe-west4"}]
    docs = apx_docs(namespace, jwks, "http://127.0.0.1:9", tenants=tenants)
    compiled = await deploy(docs, project=project, redis_url=redis_url)
    from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys

    rule_set = compiled.redis.rule_set(f"{namespace}/orders")
    fields = dict(rule_set.fields)
    eve = json.loads(fields["tenant:eve"])
    eve["region"] = "us-central1"
    fields["tenant:eve"] = json.dumps(eve)
    applier = RedisApplier(redis_url)
    try:
        keys = VersionedKeys(
            rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key
        )
        await applier.publish(keys, "doctored0000000", fields)
    finally:
        await applier.close()
    async with running_gateway(redis_url, project) as gw:
        refused = await gw.submit(token=jwks.token("eve"))
        assert refused.status == 451
        body = await refused.json()
        assert body["error"] == "residency" and body["residency"] == "EU" and body["region"] == "us-central1"
        # An EU tenant without a home region is published in the EU, even from a gateway that runs in the US.
        async with running_gateway(redis_url, project, region="us-central1") as us_gateway:
            accepted = await us_gateway.submit(token=jwks.token("acme"))
            assert accepted.status == 202
        messages = await asyncio.to_thread(
            pull_all, _subscription(compiled, project, region="europe-west1"), 1, 4.0
        )
        assert [m.attributes["region"] for m in messages] == ["europe-west1"]
        assert [m.attributes["tenant_id"] for m in messages] == ["acme"]
        assert not await asyncio.to_thread(
            pull_all, _subscription(compiled, project, region="europe-west4"), 1, 2.5
        )
        keys = [k async for k in gw.gateway.redis.scan_iter(match="apx:req:*")]
        tenants = {await gw.gateway.redis.hget(k, "tenant") for k in keys}
        assert b"eve" not in tenants


async def test_backlog_above_the_route_limit_gets_503_with_retry_after(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    docs = apx_docs(
        namespace, jwks, "http://127.0.0.1:9", regions=("europe-west1",), delivery={"backlogLimit": 2}
    )
    compiled = await deploy(docs, project=project, redis_url=redis_url)
    async with running_gateway(redis_url, project) as gw:
        answers = [await gw.submit(token=jwks.token(f"tenant-{i}")) for i in range(3)]
        assert [a.status for a in answers] == [202, 202, 503]
        assert answers[2].headers["Retry-After"] == "5"
        assert (await answers[2].json())["error"] == "backlog"
        # Draining the queue (the worker acks) lets requests in again.
        async with upstream_stub(), running_worker(redis_url, project, compiled):
            counter = backlog_key(f"{namespace}/jobs", "stable")
            await wait_for(lambda: _counter_is(gw, counter, 0))
        assert (await gw.submit(token=jwks.token("tenant-3"))).status == 202


async def _counter_is(gw: Any, key: str, value: int) -> bool:
    return int(await gw.gateway.redis.get(key) or 0) == value


async def test_tenant_concurrency_cap_holds_a_lease_until_the_worker_finishes(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    async with upstream_stub() as upstream:
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",), concurrency=1)
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        token = jwks.token("acme")
        async with running_gateway(redis_url, project) as gw:
            first = await gw.submit(token=token)
            second = await gw.submit(token=token)
            assert (first.status, second.status) == (202, 429)
            assert (await gw.submit(token=jwks.token("globex"))).status == 202  # another tenant's own slot
            async with running_worker(redis_url, project, compiled):
                await wait_for(lambda: _done(gw, first.headers["x-request-id"], token))
            assert (await gw.submit(token=token)).status == 202


async def test_canary_split_is_sticky_per_tenant_and_publishes_to_the_track_topic(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    canary = {"backend": {"url": "http://127.0.0.1:9/v2"}, "steps": [50], "stickiness": {"by": "tenant"}}
    docs = apx_docs(namespace, jwks, "http://127.0.0.1:9", regions=("europe-west1",), canary=canary)
    states = {f"{namespace}/jobs": CanaryStatus(phase="Progressing", step=0, weight=50)}
    compiled = await deploy(docs, project=project, redis_url=redis_url, canary_states=states)
    tenants = [f"tenant-{i}" for i in range(16)]
    async with running_gateway(redis_url, project) as gw:
        for tenant in tenants:
            for _ in range(2):
                # Envoy's own pick (x-apx-track) is not what decides: identity does.
                response = await gw.submit(token=jwks.token(tenant), headers={"x-apx-track": "canary"})
                assert response.status == 202
                assert (await response.json())["track"] == choose_track(
                    [("stable", 50), ("canary", 50)], tenant
                )
    expected = {t: choose_track([("stable", 50), ("canary", 50)], t) for t in tenants}
    assert set(expected.values()) == {"stable", "canary"}
    for track in ("stable", "canary"):
        count = 2 * sum(1 for t in expected.values() if t == track)
        messages = await asyncio.to_thread(pull_all, _subscription(compiled, project, track), count)
        assert len(messages) == count
        assert all(expected[m.attributes["tenant_id"]] == track == m.attributes["track"] for m in messages)


async def test_the_worker_span_continues_the_gateway_trace(
    redis_url: str, emulator: Service, namespace: str, project: str, jwks: Jwks
) -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing("apx-test", exporter=exporter, install=False)
    assert provider is not None
    envoy_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{envoy_trace}-00f067aa0ba902b7-01"
    async with upstream_stub() as upstream:
        docs = apx_docs(namespace, jwks, upstream.url, regions=("europe-west1",))
        compiled = await deploy(docs, project=project, redis_url=redis_url)
        token = jwks.token("acme")
        async with running_gateway(redis_url, project, tracer=provider.get_tracer("gateway")) as gw:
            response = await gw.submit(token=token, headers={"traceparent": traceparent})
            assert response.status == 202
            async with running_worker(redis_url, project, compiled, tracer=provider.get_tracer("worker")):
                await wait_for(lambda: _done(gw, response.headers["x-request-id"], token))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    gateway_span, worker_span = spans["apx.gateway.submit"], spans["apx.worker.process"]
    assert f"{gateway_span.context.trace_id:032x}" == envoy_trace
    assert worker_span.context.trace_id == gateway_span.context.trace_id
    assert worker_span.parent is not None and worker_span.parent.span_id == gateway_span.context.span_id
    assert worker_span.attributes is not None
    assert worker_span.attributes["apx.tenant"] == "acme"  # from the baggage
    assert worker_span.attributes["apx.policy_version"] == "1.0.0"
    (call,) = upstream.calls
    assert call.headers["traceparent"].split("-")[1] == envoy_trace
    assert "apx.tenant=acme" in call.headers["baggage"]
