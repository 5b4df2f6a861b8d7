"""The rate-limit service's pipelined Redis connection (``apx.dataplane.common.pipe``) on a private Redis.

Password and database from the URL, replies matched to callers in order
under concurrency, ``NOSCRIPT`` after ``SCRIPT FLUSH``, a slow Redis failing
the calls in flight with a timeout, reconnection after a restart, and the
commands of one loop turn in one write.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apx.dataplane.common.pipe import PipelinedRedis, encode_command
from e2e.services import start_redis

ECHO = b"return {KEYS[1], ARGV[1]}"
ECHO_SHA = hashlib.sha1(ECHO).hexdigest().encode()


def evalsha(key: bytes, arg: bytes) -> bytes:
    return encode_command([b"EVALSHA", ECHO_SHA, b"1", key, arg])


@pytest.mark.asyncio
async def test_pipelined_calls_get_their_own_replies_with_auth_database_and_script_reload(
    tmp_path: Path,
) -> None:
    service = start_redis(tmp_path / "redis")
    admin = aioredis.Redis.from_url(f"redis://{service.address}/0")
    try:
        await admin.config_set("requirepass", "s3cret")
        pipe = PipelinedRedis(f"redis://:s3cret@{service.address}/3", timeout=2)
        try:
            replies = await asyncio.gather(
                *(pipe.evalsha(ECHO_SHA, ECHO, evalsha(b"k%d" % i, b"v%d" % i)) for i in range(200))
            )
            assert replies == [[b"k%d" % i, b"v%d" % i] for i in range(200)]
            await pipe.execute(encode_command([b"SET", b"where", b"db3"]))
            authed = aioredis.Redis.from_url(f"redis://:s3cret@{service.address}/3")
            assert await authed.get("where") == b"db3"
            await authed.script_flush()
            await authed.aclose()
            assert await pipe.evalsha(ECHO_SHA, ECHO, evalsha(b"a", b"b")) == [b"a", b"b"]
            with pytest.raises(ResponseError):
                await pipe.execute(encode_command([b"NOSUCHCOMMAND"]))
            assert await pipe.execute(encode_command([b"PING"])) == b"PONG"
        finally:
            await pipe.close()
    finally:
        await admin.aclose()
        service.stop()


@pytest.mark.asyncio
async def test_a_slow_redis_times_out_the_calls_in_flight_and_a_restarted_one_is_reconnected(
    tmp_path: Path,
) -> None:
    service = start_redis(tmp_path / "redis")
    pipe = PipelinedRedis(f"redis://{service.address}/0", timeout=0.2)
    try:
        assert await pipe.execute(encode_command([b"PING"])) == b"PONG"
        os.kill(service.pid, signal.SIGSTOP)  # a hung Redis: connected, silent
        try:
            with pytest.raises(RedisTimeoutError):
                await asyncio.gather(*(pipe.execute(encode_command([b"PING"])) for _ in range(5)))
        finally:
            os.kill(service.pid, signal.SIGCONT)
        assert await pipe.execute(encode_command([b"PING"])) == b"PONG"

        service.stop()
        with pytest.raises(RedisConnectionError):
            await pipe.execute(encode_command([b"PING"]))
        service = start_redis(tmp_path / "redis", port=service.port)
        assert await pipe.execute(encode_command([b"PING"])) == b"PONG"
    finally:
        await pipe.close()
        service.stop()


@pytest.mark.asyncio
async def test_a_batch_gets_every_reply_in_order_with_error_replies_in_place(tmp_path: Path) -> None:
    service = start_redis(tmp_path / "redis")
    pipe = PipelinedRedis(f"redis://{service.address}/0", timeout=2)
    try:
        assert await pipe.execute_many([]) == []
        batch = [
            encode_command([b"SET", b"a", b"1"]),
            encode_command([b"NOSUCHCOMMAND"]),
            evalsha(b"k", b"v"),  # not loaded yet
            encode_command([b"INCR", b"a"]),
        ]
        # Batches and single commands share the socket; each caller gets its own replies.
        many, single, again = await asyncio.gather(
            pipe.execute_many(batch),
            pipe.execute(encode_command([b"GET", b"a"])),
            pipe.execute_many([encode_command([b"PING"]), encode_command([b"GET", b"a"])]),
        )
        assert many[0] == b"OK" and many[3] == 2
        assert isinstance(many[1], ResponseError) and not isinstance(many[1], NoScriptError)
        assert isinstance(many[2], NoScriptError)
        assert single == b"2" and again == [b"PONG", b"2"]
    finally:
        await pipe.close()
        service.stop()


@pytest.mark.asyncio
async def test_the_commands_of_one_loop_turn_leave_in_one_write_and_get_their_own_replies(
    tmp_path: Path,
) -> None:
    service = start_redis(tmp_path / "redis")
    pipe = PipelinedRedis(f"redis://{service.address}/0", timeout=2)
    try:
        assert await pipe.execute(encode_command([b"PING"])) == b"PONG"  # connected, idle
        protocol = pipe._protocol
        assert protocol is not None and protocol.transport is not None
        writes: list[bytes] = []
        real_write = protocol.transport.write

        def counting_write(data: bytes) -> None:
            writes.append(bytes(data))
            real_write(data)

        protocol.transport.write = counting_write  # type: ignore[method-assign]
        commands = [encode_command([b"ECHO", b"m%d" % i]) for i in range(5)]
        calls = [asyncio.ensure_future(pipe.execute(command)) for command in commands]
        assert await asyncio.gather(*calls) == [b"m%d" % i for i in range(5)]
        assert writes == [b"".join(commands)]  # five calls of one turn: one write, in order
    finally:
        await pipe.close()
        service.stop()
