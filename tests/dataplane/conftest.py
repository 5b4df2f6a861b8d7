"""Fixtures for the dataplane tests: real Redis and Pub/Sub emulator (from tests/conftest.py), a local
JWKS server, an upstream stub, and helpers that deploy APX objects with the operator's own appliers.

The gateway and worker tests run against exactly what the operator writes:
``deploy`` compiles Product/PolicyBundle/Route documents with
``compile_resources`` and publishes the route table, rule sets, topics and
subscriptions with ``RedisApplier`` and ``PubSubApplier``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import pubsub_v1
from opentelemetry.sdk.trace import TracerProvider

from apx.controllers import names
from apx.controllers.appliers.pubsub import PubSubApplier
from apx.controllers.appliers.redis_rules import RedisApplier, VersionedKeys
from apx.controllers.pipeline import Compiled, compile_resources
from apx.controllers.renderers.redis_rules import api_key_id
from e2e.services import Service, free_port

# --- JWKS -----------------------------------------------------------------------------------------


@dataclass
class Jwks:
    """A local identity provider: an RSA key served as a JWKS, and a token factory."""

    url: str
    issuer: str
    key: rsa.RSAPrivateKey
    kid: str
    requests: list[str] = field(default_factory=list)

    def token(self, tenant: str | None, audience: str = "orders", ttl: int = 300, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "iat": now,
            "exp": now + ttl,
            **claims,
        }
        if tenant is not None:
            payload["tenant"] = tenant
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="session")
def jwks() -> Iterator[Jwks]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="test-key-1", use="sig", alg="RS256")
    body = json.dumps({"keys": [public]}).encode()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield Jwks(f"http://127.0.0.1:{port}/jwks.json", "https://id.test.example/", key, "test-key-1", seen)
    finally:
        server.shutdown()
        server.server_close()


# --- upstream stub ------------------------------------------------------------------------------------


@dataclass
class Call:
    request_id: str
    tenant: str
    path: str
    body: bytes
    headers: Mapping[str, str]
    started: float
    finished: float = 0.0


@dataclass
class Upstream:
    """An HTTP server standing in for a Route's backend; records every call."""

    url: str
    calls: list[Call] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)  # request id -> status, overrides ``status``
    active: dict[str, int] = field(default_factory=dict)  # tenant -> calls in progress
    max_active_per_tenant: int = 0

    def calls_for(self, request_id: str) -> list[Call]:
        return [c for c in self.calls if c.request_id == request_id]


@contextlib.asynccontextmanager
async def upstream_stub() -> AsyncIterator[Upstream]:
    port = free_port()
    stub = Upstream(f"http://127.0.0.1:{port}")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        call = Call(
            request.headers.get("x-request-id", ""),
            request.headers.get("x-apx-tenant", ""),
            request.path_qs,
            body,
            dict(request.headers),
            time.monotonic(),
        )
        stub.calls.append(call)
        stub.active[call.tenant] = stub.active.get(call.tenant, 0) + 1
        stub.max_active_per_tenant = max(stub.max_active_per_tenant, stub.active[call.tenant])
        try:
            if stub.delay:
                await asyncio.sleep(stub.delay)
        finally:
            stub.active[call.tenant] -= 1
            call.finished = time.monotonic()
        status = stub.statuses.get(call.request_id, stub.status)
        return web.json_response(
            {"echo": body.decode(errors="replace"), "path": request.path_qs}, status=status
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield stub
    finally:
        await runner.cleanup()


# --- APX objects ------------------------------------------------------------------------------------


def apx_docs(
    namespace: str,
    jwks: Jwks,
    upstream_url: str,
    *,
    residency: str = "EU",
    regions: tuple[str, ...] = ("europe-west1", "europe-west4"),
    tenants: list[dict[str, Any]] | None = None,
    delivery: dict[str, Any] | None = None,
    canary: dict[str, Any] | None = None,
    concurrency: int | None = None,
    api_key: bool = True,
    timeout: str = "5s",
) -> list[dict[str, Any]]:
    """A Product, a PolicyBundle (JWT against ``jwks`` + API key) and an async Route to ``upstream_url``."""
    plan: dict[str, Any] = {
        "name": "standard",
        "tier": "pro",
        "rateLimit": {"requestsPerSecond": 1000, "burst": 2000},
    }
    if concurrency is not None:
        plan["concurrency"] = concurrency
    auth: dict[str, Any] = {
        "jwt": {
            "issuer": jwks.issuer,
            "jwksUri": jwks.url,
            # The test key server listens on plain http on loopback.
            "allowInsecureJwks": True,
            "audiences": ["orders"],
            "tenantClaim": "tenant",
            "tierClaim": "plan",
        }
    }
    if api_key:
        auth["apiKey"] = {"header": "x-api-key"}
    route_spec: dict[str, Any] = {
        "productRef": {"name": "orders"},
        "policyRef": {"name": "orders-policy", "version": "1.0.0"},
        "match": {"hosts": ["orders.test.example"], "pathPrefix": "/v1/jobs", "methods": ["POST"]},
        "mode": "async",
        "backend": {"url": upstream_url + "/backend"},
        "worker": {"image": "example.com/worker:1", "replicas": 1, "maxOutstandingMessages": 50},
        "timeout": timeout,
        "async": {
            "maxDeliveryAttempts": 5,
            "minimumBackoff": "0s",
            "maximumBackoff": "1s",
            "backlogLimit": 1000,
            "resultTtl": "10m",
            **(delivery or {}),
        },
    }
    if canary is not None:
        route_spec["canary"] = canary
    return [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": "orders", "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {
                "residency": residency,
                "regions": list(regions),
                "plans": [plan],
                "tenants": tenants or [],
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "orders-policy", "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"version": "1.0.0", "auth": auth, "authz": {"defaultAction": "allow"}},
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": "jobs", "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": route_spec,
        },
    ]


async def deploy(
    docs: list[dict[str, Any]],
    *,
    project: str,
    redis_url: str,
    canary_states: Mapping[str, Any] | None = None,
) -> Compiled:
    """Compile ``docs`` and apply them with the operator's appliers (Redis and the Pub/Sub emulator)."""
    compiled = compile_resources(docs, canary_states, project=project)
    assert not compiled.stalled_messages(), compiled.stalled_messages()
    applier = RedisApplier(redis_url)
    try:
        for rule_set in compiled.redis.rule_sets:
            keys = VersionedKeys(
                rule_set.key[: -len(rule_set.version)], rule_set.current_key, rule_set.versions_key
            )
            await applier.publish(keys, rule_set.version, dict(rule_set.fields))
        table = compiled.redis.route_table
        keys = VersionedKeys(
            table.key[: -len(table.version)], table.current_key, names.route_table_versions_key()
        )
        await applier.publish(keys, table.version, dict(table.entries))
    finally:
        await applier.close()
    pubsub = PubSubApplier()
    try:
        problems = await pubsub.ensure(compiled.pubsub.topics, compiled.pubsub.subscriptions)
    finally:
        pubsub.close()
    assert not problems, problems
    return compiled


async def add_api_key(redis_url: str, product: str, key: str, tenant: str) -> None:
    """What key management does: map the key's id to its tenant in the product's key table."""
    applier = RedisApplier(redis_url)
    try:
        await applier._client.hset(
            names.api_key_table_key(product), api_key_id(key), json.dumps({"tenant": tenant})
        )
    finally:
        await applier.close()


def pull_all(subscription: str, expected: int, timeout: float = 20.0) -> list[Any]:
    """Pull (and ack) until ``expected`` messages arrived from ``subscription`` or ``timeout`` passed."""
    client = pubsub_v1.SubscriberClient()
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            try:
                response = client.pull(request={"subscription": subscription, "max_messages": 100}, timeout=5)
            except Exception:
                continue
            if response.received_messages:
                client.acknowledge(
                    request={
                        "subscription": subscription,
                        "ack_ids": [m.ack_id for m in response.received_messages],
                    }
                )
                got.extend(m.message for m in response.received_messages)
    finally:
        client.close()
    return got


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_url(redis_service: Service) -> str:
    return f"redis://{redis_service.address}/0"


@pytest.fixture
def emulator(pubsub_service: Service, monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_service.address)
    return pubsub_service


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def project() -> str:
    # One Pub/Sub project per test keeps topics and subscriptions apart on the shared emulator.
    return f"p-{uuid.uuid4().hex[:12]}"


# --- the services in process -------------------------------------------------------------------------

HOST = "orders.test.example"


@dataclass
class RunningGateway:
    gateway: Any  # apx.dataplane.gateway.app.Gateway
    client: aiohttp.ClientSession  # base URL: the gateway
    url: str

    async def submit(
        self, body: bytes = b'{"n": 1}', *, token: str | None = None, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        sent = {"Host": HOST, "content-type": "application/json", **(headers or {})}
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        response = await self.client.post("/v1/jobs/export", data=body, headers=sent)
        await response.read()
        return response

    async def status(self, request_id: str, token: str) -> tuple[int, dict[str, Any]]:
        response = await self.client.get(
            f"/status/{request_id}", headers={"Host": HOST, "authorization": f"Bearer {token}"}
        )
        return response.status, await response.json()


@contextlib.asynccontextmanager
async def running_gateway(
    redis_url: str, project: str, *, tracer: Any = None, region: str | None = None
) -> AsyncIterator[RunningGateway]:
    import redis.asyncio as aioredis

    from apx.dataplane.common import redisconn
    from apx.dataplane.gateway.app import Gateway
    from apx.dataplane.gateway.config import GatewayConfig
    from apx.dataplane.gateway.publisher import Publisher

    port = free_port()
    config = GatewayConfig(
        redis_url=redis_url, pubsub_project=project, port=port, metrics_port=0, region=region
    )
    # A redis+cluster:// URL gets the cluster client, as apx-gateway's main builds it.
    redis_client: Any = (
        redisconn.connect(redis_url)
        if redisconn.is_cluster_url(redis_url)
        else aioredis.Redis.from_url(redis_url)
    )
    session = aiohttp.ClientSession()
    publisher = Publisher(project)
    if tracer is None:
        # As main() does: an SDK tracer, so spans are real and their context propagates.
        tracer = TracerProvider().get_tracer("apx.gateway")
    gateway = Gateway(config, redis_client, publisher, session, tracer=tracer)
    runner = web.AppRunner(gateway.application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
    try:
        yield RunningGateway(gateway, client, f"http://127.0.0.1:{port}")
    finally:
        await client.close()
        await runner.cleanup()
        await publisher.close()
        await gateway.close()
        await session.close()
        await redis_client.aclose()


@contextlib.asynccontextmanager
async def running_worker(
    redis_url: str,
    project: str,
    compiled: Compiled,
    *,
    tracer: Any = None,
    track: str = "stable",
    max_outstanding: int = 50,
    drain_seconds: float = 5.0,
) -> AsyncIterator[Any]:
    """A worker (``Processor``) consuming every subscription of the compiled Route's ``track``.

    Configured as ``renderers.kubernetes.workers`` configures the Deployment of that track.
    """
    import redis.asyncio as aioredis

    from apx.controllers.renderers.kubernetes.workers import upstream_url
    from apx.dataplane.common import redisconn
    from apx.dataplane.common.clusterpipe import open_pipe
    from apx.dataplane.common.requeststate import ScriptRunner
    from apx.dataplane.worker.config import WorkerConfig
    from apx.dataplane.worker.processor import Processor
    from apx.dataplane.worker.upstream import UpstreamClient

    plans = [p for p in compiled.pubsub.plans if p.track == track]
    route = plans[0].route
    ir_route = next(r for r in compiled.ir.routes if r.key == route)
    track_ir = next(t for t in ir_route.tracks if t.name == track)
    config = WorkerConfig(
        subscriptions=tuple(p.subscription for p in plans),
        upstream_url=upstream_url(track_ir.backend),
        redis_url=redis_url,
        pubsub_project=project,
        route=route,
        product=plans[0].product,
        track=track,
        timeout_ms=ir_route.timeout_ms,
        result_ttl_ms=ir_route.delivery.result_ttl_ms,
        max_outstanding_messages=max_outstanding,
        drain_seconds=drain_seconds,
        metrics_port=0,
    )
    redis_client: Any = (
        redisconn.connect(redis_url)
        if redisconn.is_cluster_url(redis_url)
        else aioredis.Redis.from_url(redis_url)
    )
    upstream = UpstreamClient(
        config.upstream_url, max_connections=max_outstanding, max_body=config.max_result_bytes
    )
    if tracer is None:
        tracer = TracerProvider().get_tracer("apx.worker")
    # As apx-worker runs it: the scripts' batches on a pipelined connection of their own
    # (a ClusterPipe for a redis+cluster:// URL).
    redis_pipe = open_pipe(redis_url, timeout=10)
    processor = Processor(config, ScriptRunner(redis_client, redis_pipe), upstream, tracer=tracer)
    await processor.start()
    try:
        yield processor
    finally:
        await processor.drain()
        await upstream.close()
        await redis_pipe.close()
        await redis_client.aclose()


async def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> None:
    """Wait until ``predicate()`` (sync or async) is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# --- rate-limit service (tests/dataplane/test_ratelimit*.py) ---------------------------------------
# The rate-limit tests publish rule sets exactly as the operator does (translate → render_redis →
# RedisApplier.publish) and talk to an in-process ``apx-ratelimit`` over real gRPC, with Envoy's
# RateLimitRequest messages. Each test's Product lives in its own namespace, so its rule set and
# counters never meet another test's in the shared Redis.

RL_EPOCH_US = 1_800_000_000_000_000  # a multiple of every window the tests use


@dataclass
class RlClock:
    """A settable clock (µs) the rate-limit service passes to its scripts instead of Redis TIME."""

    now_us: int = RL_EPOCH_US

    def __call__(self) -> int:
        return self.now_us

    def ms(self) -> int:
        return self.now_us // 1000

    def advance(self, ms: float) -> None:
        self.now_us += int(ms * 1000)

    def set_ms(self, ms_after_epoch: float) -> None:
        self.now_us = RL_EPOCH_US + int(ms_after_epoch * 1000)


def ratelimit_docs(
    namespace: str,
    plans: list[dict[str, Any]],
    *,
    algorithm: str = "sliding-window",
    failure_mode: str = "open",
    tenants: list[dict[str, Any]] | None = None,
    default_plan: str | None = None,
    product: str = "shop",
    policy_version: str = "1.0.0",
) -> list[dict[str, Any]]:
    """A Product with ``plans``, a PolicyBundle (JWT with tenant/plan claims, API key) and a sync Route."""
    spec: dict[str, Any] = {
        "residency": "GLOBAL",
        "regions": ["us-central1"],
        "plans": plans,
        "tenants": tenants or [],
    }
    if default_plan:
        spec["defaultPlan"] = default_plan
    return [
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Product",
            "metadata": {"name": product, "namespace": namespace},
            "spec": spec,
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "PolicyBundle",
            "metadata": {"name": "shop-policy", "namespace": namespace},
            "spec": {
                "version": policy_version,
                "auth": {
                    "jwt": {
                        "issuer": "https://id.test.example/",
                        "jwksUri": "https://id.test.example/jwks.json",
                        "tenantClaim": "tenant",
                        "tierClaim": "plan",
                    },
                    "apiKey": {"header": "x-api-key"},
                },
                "authz": {"defaultAction": "allow"},
                "rateLimit": {"algorithm": algorithm, "failureMode": failure_mode},
            },
        },
        {
            "apiVersion": "apx.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": "shop-api", "namespace": namespace},
            "spec": {
                "productRef": {"name": product},
                "policyRef": {"name": "shop-policy", "version": policy_version},
                "match": {"hosts": [f"{product}.test.example"], "pathPrefix": "/"},
                "mode": "sync",
                "backend": {"url": "http://backend.test.example:8080"},
            },
        },
    ]


async def publish_rule_sets(redis_url: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the operator writes for ``docs``: each Product's rule set, published and made current."""
    from apx.controllers.renderers.redis_rules import render_redis
    from apx.controllers.translate import translate

    result = translate(docs)
    assert not result.stalled, [s.message for s in result.stalled]
    output = render_redis(result.ir)
    applier = RedisApplier(redis_url)
    try:
        for rule_set in output.rule_sets:
            prefix = rule_set.key[: -len(rule_set.version)]
            keys = VersionedKeys(prefix, rule_set.current_key, rule_set.versions_key)
            await applier.publish(keys, rule_set.version, dict(rule_set.fields))
    finally:
        await applier.close()
    return {rule_set.product: rule_set for rule_set in output.rule_sets}


@dataclass
class RlsClient:
    """A gRPC client of one in-process rate-limit service, speaking Envoy's messages."""

    running: Any  # apx.dataplane.ratelimit.server.RunningService
    channel: Any  # grpc.aio.Channel
    stub: Any  # RateLimitServiceStub

    @staticmethod
    def request(
        product: str,
        *,
        tenant: str | None = None,
        plan: str | None = None,
        api_keys: tuple[str, ...] = (),
        hits: int = 0,
        domain: str = "apx",
    ) -> Any:
        """The RateLimitRequest Envoy sends for one request (DESCRIPTORS.md): identity, then API keys."""
        from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
        from envoy.service.ratelimit.v3 import rls_pb2

        entry = ratelimit_pb2.RateLimitDescriptor.Entry
        identity = [entry(key="product", value=product)]
        if plan is not None:
            identity.append(entry(key="plan", value=plan))
        if tenant is not None:
            identity.append(entry(key="tenant", value=tenant))
        descriptors = [ratelimit_pb2.RateLimitDescriptor(entries=identity)]
        for key in api_keys:
            descriptors.append(
                ratelimit_pb2.RateLimitDescriptor(
                    entries=[entry(key="product", value=product), entry(key="api_key", value=key)]
                )
            )
        return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)

    async def ask(self, product: str, **kwargs: Any) -> Any:
        return await self.stub.ShouldRateLimit(self.request(product, **kwargs), timeout=5)

    async def allowed(self, product: str, count: int, **kwargs: Any) -> int:
        """Send ``count`` requests one after another; how many were admitted."""
        admitted = 0
        for _ in range(count):
            admitted += (await self.ask(product, **kwargs)).overall_code == 1
        return admitted

    @staticmethod
    def headers(response: Any) -> dict[str, str]:
        return {h.key: h.value for h in response.response_headers_to_add}

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = self.running.metrics.registry.get_sample_value(name, dict(labels or {}))
        return float(value or 0.0)


@contextlib.asynccontextmanager
async def rls_service(
    redis_url: str, *, clock: RlClock | None = None, failure_mode: str = "envoy", pointer_ttl: float = 0.05
) -> AsyncIterator[RlsClient]:
    """``apx-ratelimit`` in process on a free port, and a gRPC channel to it."""
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2_grpc

    from apx.dataplane.ratelimit.server import ServiceSettings, start_service

    settings = ServiceSettings(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        failure_mode=failure_mode,
        pointer_ttl=pointer_ttl,
        health_interval=0.1,
        grace_seconds=1.0,
    )
    running = await start_service(settings, clock_us=clock)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield RlsClient(running, channel, rls_pb2_grpc.RateLimitServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(grace=1.0)


@pytest.fixture
def rl_clock() -> RlClock:
    return RlClock()
