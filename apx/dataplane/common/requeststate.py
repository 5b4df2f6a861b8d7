"""State of async requests in Redis, shared by the async gateway (writes ``queued``, reads) and the worker.

Keys (dataplane-owned; the operator never writes them)::

    apx:req:{<request_id>}            HASH   state of one request, TTL = the Route's result TTL
    apx:backlog:{<ns>/<route>}:<track> STRING requests published and not yet finished (backpressure)

``apx:req:{<id>}`` fields: ``state`` (``queued|running|done|failed``),
``tenant``, ``route``, ``track``, ``tier``, ``created_ms``, ``updated_ms``,
``started_ms``, ``finished_ms``, ``attempts``, ``code`` (upstream HTTP
status), ``content_type``, ``result`` (upstream body, bytes), ``error``,
``dead_lettered`` and, while running, ``owner`` and ``lease_until_ms`` (the
worker instance holding it and until when). Every transition is one Lua
script on the one key, so gateway and workers never interleave half-writes.

Transitions:

* ``create`` (gateway, before publishing): only if the key does not exist;
  otherwise it returns who owns it. A request id sent twice by the same tenant
  on the same Route is an idempotent retry (no second publish); by anyone else
  it is refused, so a client-chosen ``x-request-id`` can never read or
  overwrite another tenant's request.
* ``claim`` (worker, before calling the upstream): ``done`` → the message is a
  redelivery of finished work and is acked without running again
  (idempotency by request id); ``failed`` → acked too, unless it failed by
  exhausting its deliveries (``dead_lettered``), then it is nacked again so
  Pub/Sub completes the move to the dead-letter topic; ``running`` under
  another worker's unexpired lease (a duplicate delivery while the first run
  is in progress) → the worker keeps the message and asks again when the
  lease ends, rather than nack it and spend one of its delivery attempts;
  otherwise the worker takes it, with a lease of the upstream timeout plus a
  margin (a crashed worker's requests are free again after that).
* ``finish`` (worker): ``done`` or ``failed``, once; returns whether this call
  made the request terminal, which is when the backlog counter goes down.
* ``release`` (worker, on a retryable failure or when stopping): back to
  ``queued`` if this worker still holds it, so a redelivery may claim it at once.

Backlog (the gateway's 503): Pub/Sub's backlog metric lives in Cloud
Monitoring, which the emulator does not have and which lags by minutes, so the
dataplane counts it itself: the gateway increments ``apx:backlog:…`` when it
admits a request (refusing above the Route's ``backlog_limit``) and
decrements it if publishing fails; the worker decrements it when a request
becomes terminal (done, failed, or dead-lettered on its last delivery).
Limits, accepted for a bound that only has to be roughly right: a message
that expires unacked (past the subscription's retention) or that a crash
between ``finish`` and the decrement leaves counted keeps the counter high
until an operator resets the key (``SET … 0``); the counter never goes below 0.
Cluster note: the request hash and the counter are in different slots, so they
are written by separate commands, never by one script.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from apx.contracts import redis_keys

from .pipe import PipelinedRedis
from .redisconn import RedisClient

STATES = ("queued", "running", "done", "failed")
TERMINAL = frozenset({"done", "failed"})
# Key names are the contract's (``apx.contracts.redis_keys``); re-exported for the gateway and worker.
REQUEST_PREFIX = redis_keys.REQUEST_PREFIX
BACKLOG_PREFIX = redis_keys.BACKLOG_PREFIX
request_key = redis_keys.request_key
backlog_key = redis_keys.backlog_key


# KEYS[1] request; ARGV: tenant, route, track, tier, now_ms, ttl_ms
# -> {1} created, or {0, tenant, route} of the existing request
CREATE = """
local owner = redis.call('HMGET', KEYS[1], 'tenant', 'route')
if owner[1] then
  return {0, owner[1], owner[2] or ''}
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'tenant', ARGV[1], 'route', ARGV[2], 'track', ARGV[3],
  'tier', ARGV[4], 'created_ms', ARGV[5], 'updated_ms', ARGV[5], 'attempts', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {1}
"""

# KEYS[1] request; ARGV: owner, now_ms, lease_until_ms, attempt, ttl_ms, tenant, route, track, tier
# -> {'claimed'} | {'done'} | {'failed'} | {'dead'} | {'busy', lease_until_ms of the holder}
CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then return {'done'} end
if state == 'failed' then
  if redis.call('HGET', KEYS[1], 'dead_lettered') == '1' then return {'dead'} end
  return {'failed'}
end
if state == 'running' then
  local holder = redis.call('HMGET', KEYS[1], 'owner', 'lease_until_ms')
  if holder[1] ~= ARGV[1] and tonumber(holder[2] or '0') > tonumber(ARGV[2]) then
    return {'busy', holder[2]}
  end
end
if not state then
  -- The gateway's record expired (or was never written): rebuild it from the message.
  redis.call('HSET', KEYS[1], 'tenant', ARGV[6], 'route', ARGV[7], 'track', ARGV[8], 'tier', ARGV[9],
    'created_ms', ARGV[2])
end
local attempt = tonumber(ARGV[4])
if attempt == 0 then
  -- No dead-letter policy, so Pub/Sub does not count deliveries: count claims instead.
  attempt = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1], 'started_ms', ARGV[2],
  'updated_ms', ARGV[2], 'lease_until_ms', ARGV[3], 'attempts', attempt)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'claimed'}
"""

# KEYS[1] request; ARGV: state, now_ms, ttl_ms, code, content_type, result, error, dead_lettered
# -> 1 when this call made the request terminal, 0 when it already was
FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_ms', ARGV[2], 'finished_ms', ARGV[2], 'code', ARGV[4],
  'content_type', ARGV[5], 'result', ARGV[6], 'error', ARGV[7], 'dead_lettered', ARGV[8])
redis.call('HDEL', KEYS[1], 'owner', 'lease_until_ms')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] request; ARGV: owner, now_ms, error, ttl_ms -> 1 released, 0 not held by this owner
RELEASE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_ms', ARGV[2], 'error', ARGV[3])
redis.call('HDEL', KEYS[1], 'owner', 'lease_until_ms')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS[1] backlog counter; ARGV: limit -> the new count, or -(count) when refused
ADMIT = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return -n
end
return n
"""

# KEYS[1] backlog counter; ARGV: how many finished -> the new count (never below 0)
RETIRE = """
local n = redis.call('DECRBY', KEYS[1], ARGV[1])
if n < 0 then
  redis.call('SET', KEYS[1], 0)
  return 0
end
return n
"""


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    text = _text(value)
    try:
        return int(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RequestState:
    """A decoded ``apx:req:{<id>}`` hash."""

    request_id: str
    state: str
    tenant: str
    route: str
    track: str
    tier: str
    created_ms: int | None
    updated_ms: int | None
    started_ms: int | None
    finished_ms: int | None
    attempts: int
    code: int | None
    content_type: str
    result: bytes | None
    error: str
    dead_lettered: bool

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def decode(cls, request_id: str, fields: Mapping[Any, Any]) -> RequestState | None:
        """From ``HGETALL`` output (bytes or str keys); None when the hash is empty."""
        values = {_text(k): v for k, v in fields.items()}
        if not values.get("state"):
            return None
        result = values.get("result")
        if isinstance(result, str):
            result = result.encode()
        return cls(
            request_id=request_id,
            state=_text(values.get("state")),
            tenant=_text(values.get("tenant")),
            route=_text(values.get("route")),
            track=_text(values.get("track")),
            tier=_text(values.get("tier")),
            created_ms=_int(values.get("created_ms")),
            updated_ms=_int(values.get("updated_ms")),
            started_ms=_int(values.get("started_ms")),
            finished_ms=_int(values.get("finished_ms")),
            attempts=_int(values.get("attempts")) or 0,
            code=_int(values.get("code")),
            content_type=_text(values.get("content_type")),
            result=result if "result" in values else None,
            error=_text(values.get("error")),
            dead_lettered=_text(values.get("dead_lettered")) == "1",
        )


SCRIPTS = {
    "create": CREATE,
    "claim": CLAIM,
    "finish": FINISH,
    "release": RELEASE,
    "admit": ADMIT,
    "retire": RETIRE,
}

# Plain commands that may ride in the same pipelines (freeing a concurrency lease is a ZREM).
RAW_COMMANDS = frozenset({"zrem"})

# One queued call: (script name or raw command, keys, args).
Call = tuple[str, Sequence[str], Sequence[Any]]


class ScriptRunner:
    """Runs the scripts above by SHA, many per round trip.

    ``EVALSHA`` keeps each call small; after a Redis restart (``NOSCRIPT``)
    the scripts are loaded again and only the calls that failed that way are
    re-sent, so no call runs twice. Results come back in call order; a call
    that failed otherwise comes back as its exception, for the caller to judge.

    The calls go out as one packed write and their replies come back in order
    — what a non-transactional pipeline does, without redis-py's per-command
    pipeline bookkeeping and with hiredis's C packer. At the
    worker's rate (two calls per message) the pipeline machinery was a fifth
    of its CPU. With ``pipe`` (the worker) the batch rides a
    ``pipe.PipelinedRedis`` connection: one future per batch, replies parsed by
    hiredis as they arrive, instead of one awaited ``read_response`` per reply
    on a pooled redis-py connection (the gateway's way). A pooled connection
    interrupted mid-exchange (cancellation, I/O error) is dropped, never
    reused with replies unread.
    """

    def __init__(self, client: RedisClient, pipe: PipelinedRedis | None = None) -> None:
        self.client = client
        self.pipe = pipe
        self._sha = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}

    async def load(self) -> None:
        for text in SCRIPTS.values():
            await self.client.script_load(text)

    def _command(self, call: Call) -> tuple[Any, ...]:
        name, keys, args = call
        if name in RAW_COMMANDS:
            return (name.upper(), *keys, *args)
        return ("EVALSHA", self._sha[name], len(keys), *keys, *args)

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if self.pipe is not None:
            return await self.pipe.execute_many([pack_command(command) for command in commands])
        if isinstance(self.client, RedisCluster):
            return await self._exchange_cluster(commands)
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(b"".join(pack_command(command) for command in commands))
            answers: list[Any] = []
            for _ in commands:
                try:
                    answers.append(await connection.read_response())
                except ResponseError as exc:  # the reply was read whole; the next ones follow
                    answers.append(exc)
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        return answers

    async def _exchange_cluster(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        # Redis Cluster without a pipe (the gateway): the calls of a batch live in different slots
        # (request hash, backlog counter), so each goes through redis-py's cluster routing on its
        # own, concurrently. Error replies come back in place, as above; a lost node raises.
        client = self.client
        answers = await asyncio.gather(
            *(client.execute_command(*command) for command in commands), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, ResponseError):
                raise answer
        return list(answers)

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            answers = await self._exchange([self._command(calls[index]) for index in pending])
            retry = []
            for index, answer in zip(pending, answers, strict=True):
                if isinstance(answer, NoScriptError) and attempt == 0:
                    retry.append(index)
                results[index] = answer
            if not retry:
                break
            await self.load()
            pending = retry
        return results

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call; raises what it raised."""
        (answer,) = await self.run([(name, keys, args)])
        if isinstance(answer, Exception):
            raise answer
        return answer
