"""HTTP handlers of the async gateway: submit (202), ``GET /status/{id}`` and its Server-Sent Events stream.

Built by ``apx.dataplane.gateway.main`` (and by tests and the benchmark,
which pass their own Redis client, publisher and tracer). Envoy forwards every
request of a ``mode: async`` Route here; ``/status/...`` is answered for any
host.

Submitting (any path other than ``/status/...``, ``/healthz``, ``/readyz``):

1. ``x-request-id`` is kept when it is a well-formed id (Envoy generates or
   preserves one), generated otherwise when absent; a malformed one is a 400.
2. The Route is matched in one route-table snapshot (host, path, method; see
   ``common.routetable``): 404 / 405 otherwise, 404 for a sync Route.
3. The caller is authenticated with the policy of a track (``identity``),
   the track is chosen (``split``: by tenant when the Route is sticky, else by
   request id), and if the chosen track has another policy the credential is
   checked against that one too. Tenant identity never comes from a header.
4. Tier and home region come from the tenant's rule in the product's rule set
   (``common.rulesets``; the tenant's own rule, else its token's plan, else
   the default plan).
5. Region and topic are placed (``placement``); residency breaks → 451.
6. One Redis round trip creates ``apx:req:{id}`` (``queued``) and admits the
   request against the Route track's backlog counter (see
   ``common.requeststate``): above ``backlog_limit`` → 503 + ``Retry-After``;
   a request id already used by this tenant on this Route → 202 again
   without a second publish (client retry); used by someone else → 409.
   When the tenant's plan caps concurrency, the request also takes a lease
   (``apx.dataplane.ratelimit.leases``, lease id = request id) in the same
   round trip, held until the worker finishes it: at the cap → 429 +
   ``Retry-After``. Envoy's rate-limit service checks the same cap but cannot
   hold a slot for a request whose end it never sees; the gateway and worker
   can. The lease lasts the rule set's ``lease_ms`` (the slowest Route's
   timeout plus a margin), so a request queued longer than that stops
   counting against the cap: the cap errs towards admitting.
7. Publish (``publisher``) with the attributes the worker reads
   (``apx.contracts.pubsub_attributes``: one encoder, one decoder) —
   ``request_id``, ``tenant_id``, ``tenant_tier``, ``policy_version``,
   ``residency``, ``track``, ``route``, ``region``, ``method``, ``path``,
   ``query``, ``route_base``, ``product``, ``content_type``, ``accept``,
   ``enqueued_ms``, ``lease`` (``1`` when a concurrency slot is held) and the
   trace context (``traceparent``, ``tracestate``, ``baggage`` with tenant and
   policy version) — and the body as the message data; the ordering key is
   the tenant when the Route orders. A failed publish undoes step 6 → 503.
8. ``202 Accepted``, ``Location: /status/{id}``, ``x-request-id``.

``GET /status/{id}`` authenticates the caller with the policy of the track
that took the request and answers only the tenant that submitted it (404 for
anyone else: existence is not revealed). Pending → 200 with ``Retry-After``;
done/failed → 200 with the outcome (the upstream's status code and body:
JSON inlined, other text as a string, binary base64).

``GET /status/{id}/stream`` sends ``event: state`` on every change and a final
``event: result``. It polls the request hash (100 ms, backing off to 1 s)
rather than subscribing to a Redis channel: a poll cannot miss a change that
happened before the subscription, works unchanged on Redis Cluster (no
sharded pub/sub needed) and costs one ``HGETALL`` per open stream per second.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.exceptions import RedisError

from apx.contracts.headers import REQUEST_ID_HEADER, ROUTE_HEADER
from apx.contracts.pubsub_attributes import RequestAttributes, encode_attributes
from apx.dataplane.common.redact import redact_text
from apx.dataplane.common.redisconn import RedisClient
from apx.dataplane.common.requeststate import (
    TERMINAL,
    RequestState,
    ScriptRunner,
    backlog_key,
    request_key,
)
from apx.dataplane.common.routetable import RouteEntry, RouteTableReader, RouteTableUnavailable, TrackEntry
from apx.dataplane.common.rulesets import RuleSetReader
from apx.dataplane.common.tracecontext import extract_context, inject_attributes, with_baggage
from apx.dataplane.ratelimit.leases import ConcurrencyLeases, Lease

from .config import GatewayConfig
from .identity import Authenticator, AuthError, Identity, JwksCache
from .metrics import GatewayMetrics, tier_label
from .placement import NoTopic, ResidencyRefused, place
from .publisher import Publisher
from .split import choose_track

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
# Pub/Sub refuses attribute values over 1024 bytes.
MAX_ATTRIBUTE_BYTES = 1024
STATUS_PREFIX = "/status/"


class Refusal(Exception):
    """A request answered with an error status; ``body`` is its JSON."""

    def __init__(
        self, status: int, error: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ):
        super().__init__(message)
        self.status = status
        self.body = {"error": error, "message": message, **extra}
        self.headers = headers or {}


@dataclass(slots=True)
class _Accepted:
    entry: RouteEntry
    track: TrackEntry
    identity: Identity
    tier: str
    home_region: str | None  # the tenant's home region from its own rule, if it has one
    concurrency: int | None  # the tenant's cap on requests in progress; None: no cap
    lease_ms: int


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )


def _auth_refusal(error: AuthError) -> Refusal:
    headers = {"WWW-Authenticate": error.challenge} if error.challenge else {}
    if error.status == 503:
        headers["Retry-After"] = "1"
    kind = {401: "unauthenticated", 403: "forbidden"}.get(error.status, "unavailable")
    return Refusal(error.status, kind, error.message, headers)


def _ms() -> int:
    return int(time.time() * 1000)


class Gateway:
    """The gateway's state (readers, clients, metrics) and its aiohttp handlers."""

    def __init__(
        self,
        config: GatewayConfig,
        redis_client: RedisClient,
        publisher: Publisher,
        session: aiohttp.ClientSession,
        *,
        metrics: GatewayMetrics | None = None,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.redis = redis_client
        self.publisher = publisher
        self.metrics = metrics or GatewayMetrics()
        self.tracer = tracer or trace.get_tracer("apx.gateway")
        self.routes = RouteTableReader(
            redis_client, refresh_interval=config.route_refresh_seconds, clock=clock, instance=config.instance
        )
        self.rulesets = RuleSetReader(redis_client)
        self.authenticator = Authenticator(JwksCache(session), self.rulesets)
        self.scripts = ScriptRunner(redis_client)
        self.leases = ConcurrencyLeases(redis_client)
        self.stopping = False

    # --- application ------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/status/{request_id}", self.status)
        app.router.add_get("/status/{request_id}/stream", self.stream)
        app.router.add_route("*", "/{tail:.*}", self.submit)
        return app

    def healthy(self) -> str | None:
        return None

    def ready(self) -> str | None:
        if self.stopping:
            return "stopping"
        if self.routes.table is None:
            return "route table not loaded yet"
        return None

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        reason = self.ready()
        if reason is None:
            return web.Response(text="ok\n")
        if self.routes.table is None and not self.stopping:
            # Try now, so readiness does not wait for the first request.
            try:
                await self.routes.snapshot()
                return web.Response(text="ok\n")
            except RouteTableUnavailable as exc:
                reason = str(exc)
        return web.Response(status=503, text=redact_text(reason) + "\n")

    async def close(self) -> None:
        await self.routes.close()
        await self.rulesets.close()

    # --- submit ---------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        # The caller's trace (and baggage) continue here, and from here into the message.
        token = otel_context.attach(extract_context(request.headers))
        try:
            return await self._submit(request, started)
        finally:
            otel_context.detach(token)

    async def _submit(self, request: web.Request, started: float) -> web.Response:
        route_label, track_label, tier = "none", "none", "unknown"
        with self.tracer.start_as_current_span(
            "apx.gateway.submit",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method},
        ) as span:
            try:
                request_id = self._request_id(request)
                span.set_attribute("apx.request_id", request_id)
                accepted = await self._accept(request, request_id)
                route_label, track_label, tier = accepted.entry.key, accepted.track.name, accepted.tier
                span.set_attributes(
                    {
                        "apx.route": accepted.entry.key,
                        "apx.track": accepted.track.name,
                        "apx.tenant": accepted.identity.tenant,
                        "apx.tenant_tier": accepted.tier,
                        "apx.policy_version": accepted.track.policy_version,
                    }
                )
                response = await self._enqueue(request, request_id, accepted)
            except Refusal as refusal:
                span.set_attribute("http.response.status_code", refusal.status)
                if refusal.status >= 500:
                    span.set_status(Status(StatusCode.ERROR, str(refusal)))
                response = _json(refusal.status, refusal.body, refusal.headers)
                if refusal.status in (401, 403, 404, 405, 409, 451):
                    log.info(
                        "request refused",
                        extra={"status": refusal.status, "reason": str(refusal), "path": request.path},
                    )
            span.set_attribute("http.response.status_code", response.status)
        code = str(response.status)
        self.metrics.submissions.labels(route_label, track_label, tier_label(tier), code).inc()
        self.metrics.duration.labels(route_label, code).observe(time.perf_counter() - started)
        return response

    def _request_id(self, request: web.Request) -> str:
        given = request.headers.get(REQUEST_ID_HEADER)
        if given is None or given == "":
            return str(uuid.uuid4())
        if not REQUEST_ID.match(given):
            raise Refusal(
                400,
                "bad_request_id",
                "x-request-id must be 8-128 characters of letters, digits, '.', '_', ':' or '-'",
            )
        return given

    async def _entry(self, request: web.Request) -> RouteEntry:
        try:
            table = await self.routes.snapshot()
        except RouteTableUnavailable as exc:
            raise Refusal(503, "unavailable", str(exc), {"Retry-After": "1"}) from exc
        match = table.match(
            request.host, request.path, request.method, hint=request.headers.get(ROUTE_HEADER)
        )
        if match.entry is None:
            if match.allowed_methods:
                allow = ", ".join(sorted(match.allowed_methods))
                raise Refusal(
                    405, "method_not_allowed", f"{request.method} not allowed here", {"Allow": allow}
                )
            raise Refusal(404, "no_route", f"no async route for {request.host}{request.path}")
        if match.entry.mode != "async":
            raise Refusal(404, "not_async", f"route {match.entry.key} is not an async route")
        return match.entry

    async def _authenticate(self, track: TrackEntry, entry: RouteEntry, request: web.Request) -> Identity:
        try:
            return await self.authenticator.authenticate(
                track.auth, entry.product, request.headers, request.query
            )
        except AuthError as exc:
            raise _auth_refusal(exc) from exc
        except (RedisError, OSError) as exc:
            raise Refusal(503, "unavailable", f"Redis unreachable: {exc}", {"Retry-After": "1"}) from exc

    async def _accept(self, request: web.Request, request_id: str) -> _Accepted:
        entry = await self._entry(request)
        # Identify the caller with the first track policy that accepts the credential...
        identity: Identity | None = None
        verified_by: TrackEntry | None = None
        first_refusal: Refusal | None = None
        for candidate in entry.tracks:
            if verified_by is not None:
                break
            if any(candidate.auth == t.auth for t in entry.tracks[: entry.tracks.index(candidate)]):
                continue
            try:
                identity = await self._authenticate(candidate, entry, request)
                verified_by = candidate
            except Refusal as refusal:
                first_refusal = first_refusal or refusal
        if identity is None or verified_by is None:
            assert first_refusal is not None
            raise first_refusal
        # ...then pick the track, and hold the caller to that track's policy.
        sticky = entry.sticky_by_tenant and identity.method != "anonymous"
        track_name = choose_track(
            [(t.name, t.weight) for t in entry.tracks], identity.tenant if sticky else request_id
        )
        track = entry.track(track_name)
        assert track is not None
        if track.auth != verified_by.auth:
            identity = await self._authenticate(track, entry, request)
        try:
            rule = await self.rulesets.lookup(entry.product, identity.tenant, identity.plan)
        except (RedisError, OSError) as exc:
            raise Refusal(503, "unavailable", f"Redis unreachable: {exc}", {"Retry-After": "1"}) from exc
        if rule is None:
            raise Refusal(
                503, "no_rule_set", f"product {entry.product} has no rule set yet", {"Retry-After": "1"}
            )
        return _Accepted(
            entry,
            track,
            identity,
            rule.rule.tier or "unknown",
            # Only a listed tenant's own rule names a home region.
            rule.rule.region if rule.rule.kind == "tenant" else None,
            rule.rule.concurrency,
            rule.meta.lease_ms,
        )

    async def _enqueue(self, request: web.Request, request_id: str, accepted: _Accepted) -> web.Response:
        entry, track, identity = accepted.entry, accepted.track, accepted.identity
        try:
            placement = place(entry, track.name, identity.tenant, accepted.home_region, self.config.region)
        except ResidencyRefused as exc:
            raise Refusal(
                451, "residency", str(exc), residency=exc.residency, region=exc.region, route=entry.key
            ) from exc
        except NoTopic as exc:
            raise Refusal(503, "no_topic", str(exc), {"Retry-After": "1"}) from exc
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise Refusal(413, "too_large", f"the body exceeds {self.config.max_body_bytes} bytes") from exc
        message = self._message(request, request_id, accepted, placement.region)
        now = _ms()
        key = request_key(request_id)
        counter = backlog_key(entry.key, track.name)
        lease: Lease | None = None
        try:
            record = self.scripts.run(
                [
                    (
                        "create",
                        [key],
                        [identity.tenant, entry.key, track.name, accepted.tier, now, entry.result_ttl_ms],
                    ),
                    ("admit", [counter], [entry.backlog_limit]),
                ]
            )
            if accepted.concurrency is None:
                created, admitted = await record
                got_lease = True
            else:
                # The lease id is the request id: the worker frees it when the request ends.
                (created, admitted), lease = await asyncio.gather(
                    record,
                    self.leases.acquire(
                        entry.product,
                        identity.tenant,
                        limit=accepted.concurrency,
                        lease_ms=accepted.lease_ms,
                        lease_id=request_id,
                    ),
                )
                got_lease = lease is not None
            for answer in (created, admitted):
                if isinstance(answer, Exception):
                    raise answer
            admitted = int(admitted)
            if int(created[0]) == 0:
                if admitted > 0:
                    await self.scripts.call("retire", [counter], [1])
                owner_tenant, owner_route = (
                    v.decode() if isinstance(v, bytes) else str(v) for v in created[1:3]
                )
                if owner_tenant == identity.tenant and owner_route == entry.key:
                    return self._accepted(request_id, entry, track, duplicate=True)
                await self._undo(None, None, lease)
                raise Refusal(409, "request_id_in_use", f"request id {request_id} is already in use")
            if not got_lease:
                await self._undo(key, counter if admitted > 0 else None, None)
                raise Refusal(
                    429,
                    "concurrency",
                    f"tenant has {accepted.concurrency} requests in progress, its plan's limit",
                    {"Retry-After": str(self.config.backlog_retry_after_seconds)},
                )
            if admitted < 0:
                await self._undo(key, None, lease)
                raise Refusal(
                    503,
                    "backlog",
                    f"route {entry.key} has {-admitted - 1} requests waiting (limit {entry.backlog_limit})",
                    {"Retry-After": str(self.config.backlog_retry_after_seconds)},
                )
        except (RedisError, OSError) as exc:
            raise Refusal(503, "unavailable", f"Redis unreachable: {exc}", {"Retry-After": "1"}) from exc
        # With a lease, the worker frees the tenant's slot when the request ends.
        if lease is not None and lease.key is not None:
            message = dataclasses.replace(message, lease=True)
        attributes = encode_attributes(message)
        published = time.perf_counter()
        try:
            await self.publisher.publish(
                placement.topic,
                body,
                attributes,
                ordering_key=identity.tenant if entry.ordering else "",
                region=placement.region,
                residency=entry.residency,
            )
        except Exception as exc:
            log.warning(
                "publish failed", extra={"route": entry.key, "topic": placement.topic, "error": str(exc)}
            )
            try:
                await self._undo(key, counter, lease)
            except (RedisError, OSError):
                log.warning("could not undo a failed publish", extra={"request_id": request_id})
            raise Refusal(
                503, "publish_failed", f"could not queue the request: {exc}", {"Retry-After": "1"}
            ) from exc
        self.metrics.publish_duration.labels(entry.key).observe(time.perf_counter() - published)
        return self._accepted(request_id, entry, track)

    async def _undo(self, key: str | None, counter: str | None, lease: Lease | None) -> None:
        """Take back what admitting a request wrote, when it is not going to be published."""
        if counter is not None:
            await self.scripts.call("retire", [counter], [1])
        if key is not None:
            await self.redis.delete(key)
        if lease is not None:
            await self.leases.release(lease)

    def _message(
        self, request: web.Request, request_id: str, accepted: _Accepted, region: str
    ) -> RequestAttributes:
        entry, track, identity = accepted.entry, accepted.track, accepted.identity
        message = RequestAttributes(
            request_id=request_id,
            tenant_id=identity.tenant,
            tenant_tier=accepted.tier,
            policy_version=track.policy_version,
            residency=entry.residency,
            track=track.name,
            route=entry.key,
            product=entry.product,
            region=region,
            method=request.method,
            # As received (still percent-encoded), so the worker sends the upstream the same bytes.
            path=request.rel_url.raw_path,
            route_base=entry.match_base,
            enqueued_ms=_ms(),
            query=request.rel_url.raw_query_string,
            content_type=request.headers.get("content-type", ""),
            accept=request.headers.get("accept", ""),
        )
        for name, value in encode_attributes(message).items():
            if len(value.encode()) > MAX_ATTRIBUTE_BYTES:
                status = 414 if name in ("path", "query") else 431
                raise Refusal(status, "too_long", f"{name} is longer than {MAX_ATTRIBUTE_BYTES} bytes")
        return dataclasses.replace(
            message, trace_context=inject_attributes(with_baggage(identity.tenant, track.policy_version))
        )

    def _accepted(
        self, request_id: str, entry: RouteEntry, track: TrackEntry, duplicate: bool = False
    ) -> web.Response:
        location = STATUS_PREFIX + request_id
        body: dict[str, Any] = {
            "request_id": request_id,
            "state": "queued",
            "route": entry.key,
            "track": track.name,
            "status_url": location,
            "stream_url": location + "/stream",
        }
        if duplicate:
            body["duplicate"] = True
        headers = {
            "Location": location,
            REQUEST_ID_HEADER: request_id,
            "Retry-After": str(self.config.status_retry_after_seconds),
        }
        return _json(202, body, headers)

    # --- status -----------------------------------------------------------------------------

    async def _owned_state(self, request: web.Request) -> RequestState:
        """The request's state if the authenticated caller is the tenant that submitted it."""
        request_id = request.match_info["request_id"]
        if not REQUEST_ID.match(request_id):
            raise Refusal(404, "not_found", "unknown request")
        state = await self._read_state(request_id)
        if state is None:
            raise Refusal(404, "not_found", "unknown request")
        try:
            table = await self.routes.snapshot()
        except RouteTableUnavailable as exc:
            raise Refusal(503, "unavailable", str(exc), {"Retry-After": "1"}) from exc
        entry = table.entries.get(state.route)
        if entry is None:
            raise Refusal(404, "not_found", "unknown request")
        track = entry.track(state.track) or entry.tracks[0]
        identity = await self._authenticate(track, entry, request)
        if identity.tenant != state.tenant:
            raise Refusal(404, "not_found", "unknown request")
        return state

    async def _read_state(self, request_id: str) -> RequestState | None:
        try:
            fields = await self.redis.hgetall(request_key(request_id))
        except (RedisError, OSError) as exc:
            raise Refusal(503, "unavailable", f"Redis unreachable: {exc}", {"Retry-After": "1"}) from exc
        return RequestState.decode(request_id, fields)

    async def status(self, request: web.Request) -> web.Response:
        try:
            state = await self._owned_state(request)
        except Refusal as refusal:
            self.metrics.status_reads.labels("poll", str(refusal.status)).inc()
            return _json(refusal.status, refusal.body, refusal.headers)
        headers = {REQUEST_ID_HEADER: state.request_id}
        if not state.terminal:
            headers["Retry-After"] = str(self.config.status_retry_after_seconds)
        self.metrics.status_reads.labels("poll", "200").inc()
        return _json(200, status_document(state), headers)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            state = await self._owned_state(request)
        except Refusal as refusal:
            self.metrics.status_reads.labels("stream", str(refusal.status)).inc()
            return _json(refusal.status, refusal.body, refusal.headers)
        self.metrics.status_reads.labels("stream", "200").inc()
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                REQUEST_ID_HEADER: state.request_id,
            }
        )
        await response.prepare(request)
        self.metrics.streams.inc()
        try:
            await self._stream_events(response, state)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            self.metrics.streams.dec()
        return response

    async def _stream_events(self, response: web.StreamResponse, state: RequestState | None) -> None:
        deadline = time.monotonic() + self.config.sse_max_seconds
        last_beat = time.monotonic()
        interval = 0.1
        seen: tuple[str, int] | None = None
        sequence = 0
        while True:
            if state is None:
                await _send_event(
                    response, "error", {"error": "not_found", "message": "the request expired"}, sequence
                )
                return
            marker = (state.state, state.attempts)
            if marker != seen:
                seen = marker
                sequence += 1
                if state.terminal:
                    await _send_event(response, "result", status_document(state), sequence)
                    return
                await _send_event(response, "state", status_document(state), sequence)
                interval = 0.1
            now = time.monotonic()
            if now >= deadline or self.stopping:
                # The client reconnects (EventSource does by itself) and resumes polling.
                await _send_event(response, "timeout", {"request_id": state.request_id}, sequence)
                return
            if now - last_beat >= self.config.sse_heartbeat_seconds:
                await response.write(b": keep-alive\n\n")
                last_beat = now
            await asyncio.sleep(interval)
            interval = min(1.0, interval * 1.5)
            try:
                state = await self._read_state(state.request_id)
            except Refusal:
                await asyncio.sleep(1.0)  # Redis hiccup: keep the stream, try again


async def _send_event(response: web.StreamResponse, event: str, data: dict[str, Any], sequence: int) -> None:
    payload = json.dumps(data, separators=(",", ":"))
    await response.write(f"id: {sequence}\nevent: {event}\ndata: {payload}\n\n".encode())


def status_document(state: RequestState) -> dict[str, Any]:
    """What ``/status`` answers about a request (never the tenant's other requests, never internals)."""
    document: dict[str, Any] = {
        "request_id": state.request_id,
        "state": state.state,
        "route": state.route,
        "track": state.track,
        "attempts": state.attempts,
        "created_ms": state.created_ms,
        "updated_ms": state.updated_ms,
    }
    if state.started_ms is not None:
        document["started_ms"] = state.started_ms
    if state.state in TERMINAL:
        document["finished_ms"] = state.finished_ms
        document["code"] = state.code
        if state.content_type:
            document["content_type"] = state.content_type
        if state.result is not None:
            document.update(_result(state.result, state.content_type))
    if state.error:
        document["error"] = state.error
    return document


def _result(body: bytes, content_type: str) -> dict[str, Any]:
    if "json" in content_type.lower():
        try:
            return {"result": json.loads(body)}
        except ValueError:
            pass
    try:
        return {"result": body.decode()}
    except UnicodeDecodeError:
        return {"result": base64.b64encode(body).decode(), "result_encoding": "base64"}
