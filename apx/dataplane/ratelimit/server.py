"""The gRPC side of the rate-limit service: Envoy's ``RateLimitService`` and ``grpc.health.v1``.

``RateLimitService`` answers ``envoy.service.ratelimit.v3.RateLimitService/
ShouldRateLimit`` (messages from ``xds-protos``), so a stock Envoy with the
``envoy.filters.http.ratelimit`` filters the core renders calls it unchanged.
``start_service`` wires it up (Redis pool, rule reader, limiter, metrics,
health, the gRPC server of ``common.grpcserver`` on its ``--grpc-transport``) for ``main`` and
for the tests and benchmark, which run it in-process. Any gRPC client talks
to it (the tests use ``grpcio``'s, the benchmark h2load with raw frames).

What Envoy gets back:

* ``overall_code`` OK or OVER_LIMIT; one ``DescriptorStatus`` per descriptor,
  in request order (identity → the tenant's limits, first API key → that
  key's rate), with ``limit_remaining`` and ``duration_until_reset``.
* ``response_headers_to_add``: ``x-ratelimit-limit``, ``-remaining``,
  ``-reset`` of the most restrictive limit, ``retry-after`` and
  ``x-apx-reason`` when refused, ``x-apx-credits-remaining`` for prepaid plans.
  Envoy adds them to the 429 and to admitted responses alike. The statuses
  leave ``current_limit`` unset on purpose: Envoy's
  ``enable_x_ratelimit_headers`` (which the core turns on) builds its own
  ``x-ratelimit-*`` from statuses that have one, and would duplicate ours;
  ours describe the limit that decided across all descriptors, Envoy's would
  be the per-descriptor minimum and cannot express windows such as 2.2 s.
* ``raw_body`` (JSON, with ``content-type``) on refusals. Envoy's RLS API
  cannot pick the status code (the filter's ``rate_limited_status`` is fixed
  per filter), so exhausted credits are OVER_LIMIT with ``x-apx-reason:
  credits-exhausted``; the listener turns that into 402 with a
  ``local_reply_config`` mapper on that header (see README.md).

When the service cannot judge a request (Redis unreachable, no rule set for
the product, a malformed call), ``failure_mode`` says who decides:
``envoy`` (default, the contract in ``REDIS_KEYS.md``): answer gRPC
UNAVAILABLE and let Envoy's per-Route filter instance (fail-open or
fail-closed) admit or deny; ``service``: answer OK or OVER_LIMIT from the
product's ``meta.failure_mode`` as last seen (``open`` when never seen), for
callers that have no failure mode of their own. Both count the event in
``apx_ratelimit_failures_total``. Either way nothing needs a restart when
Redis comes back: the pool reconnects and redis-py reloads the scripts.

Overload is answered the same way: rule-set and API-key reads share a pool of
``redis_max_connections`` that queues callers when every connection is busy
(``common.redisconn.BoundedBlockingPool``: at most ``redis_pool_max_waiting``
waiting, each for at most ``redis_pool_timeout_ms``) instead of failing with
"Too many connections". A caller past that deadline, or turned away by a full
queue, gets the failure mode like an outage, counted in
``apx_ratelimit_overload_total`` (and ``apx_ratelimit_failures_total`` with
``reason="overload"``); Redis is not marked down for it.

Health: the overall service (``""``, what Kubernetes' gRPC probes ask) is
SERVING while the process runs, so a Redis outage never restarts the pods;
``envoy.service.ratelimit.v3.RateLimitService`` follows Redis (probed every
second), for health-checking Envoys and dashboards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import DecodeError
from opentelemetry import trace
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from apx.dataplane.common.clusterpipe import open_pipe
from apx.dataplane.common.grpchealth import NOT_SERVING, OVERALL, SERVING, HealthService
from apx.dataplane.common.grpclimits import TransportLimits
from apx.dataplane.common.grpcserver import (
    DEFAULT_TRANSPORT,
    GrpcError,
    GrpcServer,
    GrpcStatus,
    Method,
    parse_listen,
)
from apx.dataplane.common.pipe import PipelinedRedis
from apx.dataplane.common.redact import redact_text, redact_url
from apx.dataplane.common.redisconn import (
    PoolOverloaded,
    RedisClient,
    bounded_pool,
    cluster_client,
    is_cluster_url,
)
from apx.dataplane.common.rulesets import RuleSetReader

from .limiter import (
    API_KEY_KEY,
    PRODUCT_KEY,
    UNAVAILABLE,
    UNKNOWN_API_KEY,
    BadRequest,
    Decision,
    Limiter,
    LimiterError,
    LimitRequest,
    LimitStatus,
)
from .metrics import RateLimitMetrics

log = logging.getLogger(__name__)

RLS_SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
SHOULD_RATE_LIMIT = f"/{RLS_SERVICE_NAME}/ShouldRateLimit"
FAILURE_MODES = ("envoy", "service")

Response = rls_pb2.RateLimitResponse
OK = Response.OK
OVER_LIMIT = Response.OVER_LIMIT
TENANT_PURPOSES = ("rate", "quota", "concurrency", "credits")
# Distinct call messages remembered with their parsed form (``RateLimitService._calls``): Envoy's
# descriptor sets per tenant, plan and API key; past this the oldest are forgotten.
PARSED_CALLS_KEPT = 8192


def to_limit_request(request: Any) -> LimitRequest:
    """Envoy's ``RateLimitRequest`` as a ``LimitRequest``.

    Hits: a descriptor's own ``hits_addend`` wins (0 there means "check, do
    not count"); else the request's, where 0 means unset, so 1.
    """
    descriptors = tuple([tuple([(e.key, e.value) for e in d.entries]) for d in request.descriptors])
    own = [d.hits_addend.value for d in request.descriptors if d.HasField("hits_addend")]
    hits = max(own) if own else (request.hits_addend or 1)
    return LimitRequest(domain=request.domain, descriptors=descriptors, hits=int(hits))


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """What the bytes of one ``ShouldRateLimit`` call say, read once per distinct message.

    Envoy sends the same few descriptor sets over and over (one per tenant,
    plan and API key), so ``RateLimitService`` keeps these per message bytes
    and a repeated call skips protobuf parsing and descriptor reading.
    """

    domain: str
    limit_request: LimitRequest
    # Per descriptor, in request order: does it carry an API key (its status is the key's)?
    key_descriptors: tuple[bool, ...]
    product: str | None


def parse_call(request: Any) -> ParsedCall:
    """A ``ParsedCall`` of Envoy's ``RateLimitRequest``."""
    limit_request = to_limit_request(request)
    product = None
    for entries in limit_request.descriptors:
        for key, value in entries:
            if key == PRODUCT_KEY:
                product = value
                break
        if product is not None:
            break
    key_descriptors = tuple([any(key == API_KEY_KEY for key, _ in d) for d in limit_request.descriptors])
    return ParsedCall(request.domain, limit_request, key_descriptors, product)


def _fill_status(status: Any, code: int, shown: LimitStatus | None) -> None:
    status.code = code
    if shown is not None:
        status.limit_remaining = max(shown.remaining, 0)
        ms = max(shown.reset_ms, 0)
        reset = status.duration_until_reset
        reset.SetInParent()  # present even when zero, as Envoy reads it
        reset.seconds = ms // 1000
        reset.nanos = (ms % 1000) * 1_000_000


def _rest_remaining(status: LimitStatus) -> int:
    return max(status.remaining, 0)


def add_descriptor_statuses(response: Any, call: ParsedCall, decision: Decision) -> None:
    """One status per descriptor of ``call``, in request order, added to ``response``."""
    add = response.statuses.add
    if decision.failed:
        # Answered by the failure mode: no limit was consulted, every descriptor gets the answer.
        code = OK if decision.allowed else OVER_LIMIT
        for _ in call.key_descriptors:
            add().code = code
        return
    allowed = decision.allowed
    deciding = decision.deciding
    tenant_shown: LimitStatus | None = None
    key_shown: LimitStatus | None = None
    tenant_limits = []
    for status in decision.statuses:
        purpose = status.purpose
        if purpose == "rate" or purpose == "quota":
            tenant_limits.append(status)
            if not allowed and purpose == deciding:
                tenant_shown = status
        elif purpose == "api_key_rate":
            key_shown = status
    if tenant_shown is None and tenant_limits:
        tenant_shown = min(tenant_limits, key=_rest_remaining)
    tenant_code = OVER_LIMIT if not allowed and deciding in TENANT_PURPOSES else OK
    key_refused = not allowed and (deciding == "api_key_rate" or decision.reason == UNKNOWN_API_KEY)
    key_code = OVER_LIMIT if key_refused else OK
    first_key = True
    for is_key in call.key_descriptors:
        if is_key:
            _fill_status(add(), key_code, key_shown if first_key else None)
            first_key = False
        else:
            _fill_status(add(), tenant_code, tenant_shown)


def to_response(call: ParsedCall, decision: Decision) -> Any:
    """The ``RateLimitResponse`` for one decision (filled in place: fewer objects than keyword building)."""
    response = Response()
    response.overall_code = OK if decision.allowed else OVER_LIMIT
    add_descriptor_statuses(response, call, decision)
    add_header = response.response_headers_to_add.add
    for key, value in decision.headers():
        add_header(key=key, value=value)
    if not decision.allowed:
        retry = decision.retry_after_ms()
        body = {
            "error": "payment_required" if decision.deciding == "credits" else "too_many_requests",
            "reason": decision.reason,
            "retry_after_seconds": None if retry is None else max(1, -(-retry // 1000)),
        }
        response.raw_body = json.dumps(body, separators=(",", ":")).encode()
        add_header(key="content-type", value="application/json")
    return response


class RateLimitService:
    """``ShouldRateLimit`` on top of a ``Limiter``: serialised request in, serialised response out."""

    def __init__(self, limiter: Limiter, metrics: RateLimitMetrics, failure_mode: str = "envoy") -> None:
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}, not {failure_mode!r}")
        self.limiter = limiter
        self.metrics = metrics
        self.failure_mode = failure_mode
        self.redis_ok = True
        # Set by ``main`` when traces are exported; None: no tracing code at all on the hot path.
        self.tracer: trace.Tracer | None = None
        # Share of the calls handed to ``tracer`` (``main`` sets it when the sampling ratio is the
        # service's own): the others never create a span object, not even a non-recording one.
        self.trace_ratio = 1.0
        self._calls: dict[bytes, ParsedCall] = {}

    async def should_rate_limit(self, message: bytes) -> bytes:
        call = self._calls.get(message)
        if call is None:
            call = self._parse(message)
        tracer = self.tracer
        if tracer is None or (self.trace_ratio < 1.0 and random.random() >= self.trace_ratio):
            response = await self.decide(call)
        else:
            response = await self._traced(tracer, call)
        return cast(bytes, response.SerializeToString())

    def _parse(self, message: bytes) -> ParsedCall:
        try:
            request = rls_pb2.RateLimitRequest.FromString(message)
        except DecodeError as exc:
            self.metrics.failures.labels(
                self.limiter.failure_mode(None), self.failure_mode, "bad_request"
            ).inc()
            raise GrpcError(GrpcStatus.INVALID_ARGUMENT, f"not a RateLimitRequest: {exc}") from exc
        call = parse_call(request)
        calls = self._calls
        if len(calls) >= PARSED_CALLS_KEPT:
            del calls[next(iter(calls))]  # the oldest first: a flood of distinct calls only churns
        calls[message] = call
        return call

    async def _traced(self, tracer: trace.Tracer, call: ParsedCall) -> Any:
        with tracer.start_as_current_span("apx.ratelimit.decide", kind=trace.SpanKind.SERVER) as span:
            response = await self.decide(call)
            if span.is_recording():
                span.set_attributes(
                    {
                        "apx.ratelimit.domain": call.domain,
                        "apx.product": call.product or "",
                        "apx.ratelimit.code": Response.Code.Name(response.overall_code),
                    }
                )
        return response

    async def decide(self, call: ParsedCall) -> Any:
        """The ``RateLimitResponse`` to one call; ``GrpcError`` when Envoy decides."""
        started = time.perf_counter()
        try:
            decision = await self.limiter.decide(call.limit_request)
        except LimiterError as exc:
            return self._cannot_decide(call, exc)
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)
        if not self.redis_ok:
            self.set_redis(True)
        self.metrics.decided(
            call.domain, decision.tier, "OK" if decision.allowed else "OVER_LIMIT", decision.limit_label
        )
        return to_response(call, decision)

    def _cannot_decide(self, call: ParsedCall, exc: LimiterError) -> Any:
        product = call.product
        mode = self.limiter.failure_mode(product)
        self.metrics.failures.labels(mode, self.failure_mode, exc.reason).inc()
        if exc.reason == "redis":
            if self.redis_ok:
                log.warning("Redis unavailable: %s", exc, extra={"failure_mode": mode})
            self.set_redis(False)
        elif exc.reason == "overload":
            # Counted, not logged per call: under overload a log line per refusal would add to it.
            self.metrics.overload.labels(mode, self.failure_mode).inc()
        else:
            log.info("cannot judge a request: %s", exc, extra={"product": product, "reason": exc.reason})
        if self.failure_mode == "envoy":
            code = GrpcStatus.INVALID_ARGUMENT if isinstance(exc, BadRequest) else GrpcStatus.UNAVAILABLE
            # The gRPC message reaches Envoy's logs: no Redis URL with its password in it.
            raise GrpcError(code, redact_text(str(exc)))
        allowed = mode == "open"
        decision = Decision(
            allowed=allowed,
            product=product or "",
            tenant="",
            tier="none",
            version=None,
            reason=None if allowed else UNAVAILABLE,
            failed=True,
        )
        return to_response(call, decision)

    def set_redis(self, up: bool) -> None:
        self.redis_ok = up
        self.metrics.redis_up.set(1 if up else 0)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Everything ``start_service`` needs; ``main`` fills it from flags and ``APX_*`` variables."""

    listen: str = "0.0.0.0:8081"
    redis_url: str = "redis://127.0.0.1:6379/0"
    failure_mode: str = "envoy"
    pointer_ttl: float = 1.0
    redis_timeout_ms: int = 250
    redis_max_connections: int = 128
    # How long a rule-set read waits for a pooled connection, and how many may wait at once.
    redis_pool_timeout_ms: int = 250
    redis_pool_max_waiting: int = 10_000
    health_interval: float = 1.0
    grace_seconds: float = 5.0
    transport: TransportLimits = field(default_factory=TransportLimits)
    # Which HTTP/2 transport serves (``grpcserver.TRANSPORTS``, ``--grpc-transport``).
    grpc_transport: str = DEFAULT_TRANSPORT
    # Listen with SO_REUSEPORT: set for the worker processes of ``--workers`` (``workers.py``).
    reuse_port: bool = False


@dataclass
class RunningService:
    """A started service: its port, parts, and the way to stop it."""

    port: int
    server: GrpcServer
    redis: RedisClient
    pipe: PipelinedRedis
    reader: RuleSetReader
    limiter: Limiter
    service: RateLimitService
    health: HealthService
    metrics: RateLimitMetrics
    settings: ServiceSettings
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, finish in-flight calls (up to ``grace`` seconds), close Redis."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        await self.reader.close()
        await self.pipe.close()
        await self.redis.aclose()


def redis_client(settings: ServiceSettings) -> RedisClient:
    timeout = settings.redis_timeout_ms / 1000
    if is_cluster_url(settings.redis_url):
        # redis-py's cluster client: a pool per node, which fails at once when full instead of
        # waiting (see redisconn); it retries on MOVED/ASK and on a lost node itself.
        return cluster_client(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    pool = bounded_pool(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        pool_timeout=settings.redis_pool_timeout_ms / 1000,
        max_waiting=settings.redis_pool_max_waiting,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One immediate retry replaces a pooled connection Redis closed (a restart)
        # without failing the request; more would only delay the failure mode.
        retry=Retry(NoBackoff(), 1),
    )
    return aioredis.Redis(connection_pool=pool)


async def start_service(
    settings: ServiceSettings,
    *,
    metrics: RateLimitMetrics | None = None,
    clock_us: Callable[[], int] | None = None,
) -> RunningService:
    """Start the gRPC server on ``settings.listen`` (port 0 picks a free one)."""
    metrics = metrics or RateLimitMetrics()
    client = redis_client(settings)
    # A ClusterPipe (one pipe per primary, routed by slot) for a redis+cluster:// URL.
    pipe = open_pipe(settings.redis_url, timeout=settings.redis_timeout_ms / 1000)
    reader = RuleSetReader(client, pointer_ttl=settings.pointer_ttl)
    limiter = Limiter(reader, pipe, clock_us=clock_us)
    service = RateLimitService(limiter, metrics, settings.failure_mode)
    health_service = HealthService()
    server = GrpcServer(
        {SHOULD_RATE_LIMIT: Method(service.should_rate_limit), **health_service.methods()},
        limits=settings.transport,
        transport=settings.grpc_transport,
        on_rejected=metrics.rejected_peer,
    )
    host, requested_port = parse_listen(settings.listen)
    port = await server.start(host, requested_port, reuse_port=settings.reuse_port)
    # Read at scrape time: nothing to update per call.
    metrics.connections.set_function(lambda: server.connections)
    metrics.in_flight.set_function(lambda: server.in_flight)
    health_service.set(OVERALL, SERVING)
    running = RunningService(
        port, server, client, pipe, reader, limiter, service, health_service, metrics, settings
    )
    running._tasks.append(asyncio.create_task(_watch_redis(running)))
    log.info(
        "rate-limit service listening",
        extra={
            "listen": settings.listen,
            "port": port,
            "failure_mode": settings.failure_mode,
            "redis": redact_url(settings.redis_url),
            "redis_max_connections": settings.redis_max_connections,
        },
    )
    return running


async def _watch_redis(running: RunningService) -> None:
    """Keep the RLS health status and ``apx_ratelimit_redis_up`` in step with Redis."""
    loads_seen = 0
    last: int | None = None
    while True:
        try:
            await running.redis.ping()
            up = True
        except PoolOverloaded:
            # Every connection is busy with calls: that is overload, not an outage; keep the last state.
            up = running.service.redis_ok
        except (RedisError, OSError):
            up = False
        running.service.set_redis(up)
        status = SERVING if up else NOT_SERVING
        if status != last:
            running.health.set(RLS_SERVICE_NAME, status)
            last = status
        loads = running.reader.version_loads
        if loads > loads_seen:
            running.metrics.rule_set_loads.inc(loads - loads_seen)
            loads_seen = loads
        await asyncio.sleep(running.settings.health_interval)
