"""The pipelined hot-path connection (``pipe.PipelinedRedis``) for a Redis Cluster: one pipe per primary.

Built by ``open_pipe`` for the rate-limit service's decisions and the worker's
request-state batches when the Redis URL is a cluster URL
(``redis+cluster://``, see ``redisconn``); for a plain URL ``open_pipe``
returns a ``PipelinedRedis`` as before. ``ClusterPipe`` is a
``PipelinedRedis`` (the callers keep their type and their pre-encoded RESP
commands) that routes each command to the primary owning its key's hash slot:

* The slot map comes from ``CLUSTER SLOTS`` (asked of the seed node, else of
  any node already known), loaded on the first call and again after any
  ``MOVED`` or lost connection; a ``MOVED`` also updates that one slot at once,
  so the retried call does not wait for the whole map.
* The key is read from the encoded command: the first key of ``EVAL``/``EVALSHA``
  (every script of APX keeps its keys in one slot, ``REDIS_KEYS.md``), else the
  first argument. Slots are computed by redis-py's ``key_slot`` (hash tags
  included) and remembered per key (bounded).
* ``ASK`` (a slot being migrated, the key already moved) is answered by
  ``ASKING`` and the command, sent together on the target's pipe so nothing
  comes between them; ``TRYAGAIN`` (a multi-key script whose keys are split
  mid-migration) is retried after a millisecond. At most ``MAX_REDIRECTS``
  redirections per call, then the error is raised.
* ``NOSCRIPT`` is handled by the node's own ``PipelinedRedis.evalsha`` (or,
  after ``ASK``, here): a script is loaded on the node that lacks it.
* The map is loaded on first use, so the service starts while Redis is down;
  a call then fails like a lost connection and the next one asks again.

Each node pipe is one socket with every call of a loop turn in one write, as
on a single server; ``bench/bench_redis_cluster.py`` measures it against
redis-py's ``RedisCluster`` running the same decision script.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .pipe import PipelinedRedis, encode_command
from .redisconn import is_cluster_url, seed_url

MAX_REDIRECTS = 5
# Keys whose slot is remembered; past this the cache starts again (a slot costs a CRC16 to recompute).
MAX_CACHED_KEYS = 65_536
CLUSTER_SLOTS = encode_command([b"CLUSTER", b"SLOTS"])
ASKING = encode_command([b"ASKING"])


def open_pipe(url: str, timeout: float) -> PipelinedRedis:
    """The hot-path connection for ``url``: a ``ClusterPipe`` for a cluster URL, else a ``PipelinedRedis``."""
    if is_cluster_url(url):
        return ClusterPipe(url, timeout=timeout)
    return PipelinedRedis(url, timeout=timeout)


# The head of an EVAL-family command up to its script (or SHA) argument's length, and after that
# argument, the number of keys and the first key's length. Regular expressions because the hot path
# sees every decision here: two matches cost a fraction of walking the bulk strings in Python.
_EVAL_HEAD = re.compile(rb"\*\d+\r\n\$\d+\r\n(?:EVALSHA|EVAL|EVALSHA_RO|EVAL_RO|evalsha|eval)\r\n\$(\d+)\r\n")
_KEYS_HEAD = re.compile(rb"\$\d+\r\n(\d+)\r\n\$(\d+)\r\n")
_FIRST_ARG = re.compile(rb"\*\d+\r\n\$\d+\r\n[^\r]*\r\n\$(\d+)\r\n")


def command_key(command: bytes) -> bytes | None:
    """The key a RESP-encoded command is routed by (None: no key, any node will do).

    ``EVAL``/``EVALSHA``: the first key (None with no keys); any other command: its first argument.
    """
    head = _EVAL_HEAD.match(command)
    if head is not None:
        keys = _KEYS_HEAD.match(command, head.end() + int(head[1]) + 2)
        if keys is None or keys[1] == b"0":
            return None
        start = keys.end()
        return command[start : start + int(keys[2])]
    first = _FIRST_ARG.match(command)
    if first is None:
        return None
    start = first.end()
    return command[start : start + int(first[1])]


def _redirect(error: ResponseError) -> tuple[str, int, str] | None:
    """(``MOVED``|``ASK``|``TRYAGAIN``, slot, address) of a redirection error, else None."""
    message = str(error)
    kind = message.split(" ", 1)[0]
    if kind == "TRYAGAIN":
        return kind, -1, ""
    if kind not in ("MOVED", "ASK"):
        return None
    parts = message.split()
    if len(parts) < 3:
        return None
    return kind, int(parts[1]), parts[2]


class ClusterPipe(PipelinedRedis):
    """Pipelined connections to every primary of a cluster, commands routed by hash slot."""

    def __init__(self, url: str, timeout: float = 0.25) -> None:
        # The inherited state keeps the seed's host, credentials and timeout; the inherited socket is
        # never opened (its handshake would go through the routing ``execute`` below): the seed's own
        # pipe asks for the slot map.
        super().__init__(seed_url(url), timeout=timeout)
        self._seed = PipelinedRedis(seed_url(url), timeout=timeout)
        parsed = urllib.parse.urlsplit(seed_url(url))
        self._scheme = parsed.scheme
        self._userinfo = parsed.netloc.rpartition("@")[0]
        self._slots: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._nodes: dict[str, PipelinedRedis] = {}
        self._key_slots: dict[bytes, int] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self.refreshes = 0
        self.redirects = 0

    # --- routing -------------------------------------------------------------------------------

    def _node(self, address: str) -> PipelinedRedis:
        node = self._nodes.get(address)
        if node is None:
            userinfo = f"{self._userinfo}@" if self._userinfo else ""
            host, _, port = address.rpartition(":")
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"  # an IPv6 address, as a URL writes it
            node = PipelinedRedis(f"{self._scheme}://{userinfo}{host}:{port}/0", timeout=self.timeout)
            self._nodes[address] = node
        return node

    def _slot(self, command: bytes) -> int | None:
        key = command_key(command)
        if key is None:
            return None
        slot = self._key_slots.get(key)
        if slot is None:
            if len(self._key_slots) >= MAX_CACHED_KEYS:
                self._key_slots.clear()
            slot = self._key_slots[key] = key_slot(key)
        return slot

    def _lookup(self, command: bytes) -> PipelinedRedis | None:
        """The pipe of the node serving the command's slot, None while the slot map lacks it."""
        slot = self._slot(command)
        # A command without a key may go anywhere: the node of slot 0.
        address = self._slots[slot if slot is not None else 0]
        return self._node(address) if address is not None else None

    async def _route(self, command: bytes) -> PipelinedRedis:
        node = self._lookup(command)
        if node is None:
            await self.refresh()
            node = self._lookup(command)
            if node is None:
                raise RedisConnectionError("no Redis Cluster node serves this command's slot")
        return node

    async def refresh(self) -> None:
        """Load the slot map now (one refresh at a time; callers arriving meanwhile wait for it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._load_slots())
        await asyncio.shield(self._refreshing)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._load_slots())
            # Retrieved here so a failed background refresh is not reported as never awaited.
            self._refreshing.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _load_slots(self) -> None:
        reply: Any = None
        errors: list[str] = []
        # The seed first, then every node seen so far: the seed may be the node that went away.
        for asker in [self._seed, *self._nodes.values()]:
            try:
                reply = await asker.execute(CLUSTER_SLOTS)
                break
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
                errors.append(str(exc))
        if reply is None:
            raise RedisConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS: {'; '.join(errors)}")
        slots: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            # An empty or "?" host means "the address you asked me on" (a node that knows no own IP).
            address = f"{host if host not in ('', '?') else self._host}:{int(primary[1])}"
            for slot in range(start, end + 1):
                slots[slot] = address
        self._slots = slots
        self.refreshes += 1

    # --- the PipelinedRedis interface ------------------------------------------------------------

    async def execute(self, command: bytes) -> Any:
        """Send one command to the primary of its slot, following redirections."""
        return await self._call(command, None)

    async def evalsha(self, sha: bytes, source: bytes, command: bytes) -> Any:
        """``EVALSHA`` on the primary of its keys' slot; ``NOSCRIPT`` loads the script on that node."""
        return await self._call(command, (sha, source))

    async def _call(self, command: bytes, script: tuple[bytes, bytes] | None) -> Any:
        node = self._lookup(command) or await self._route(command)
        asking = False
        for _ in range(MAX_REDIRECTS):
            try:
                if asking:
                    replies = await node.execute_many([ASKING, command])
                    if isinstance(replies[1], NoScriptError) and script is not None:
                        # The importing node has not run this script yet: load it there, ask again.
                        await node.execute(encode_command([b"SCRIPT", b"LOAD", script[1]]))
                        continue
                    if isinstance(replies[1], Exception):
                        raise replies[1]
                    return replies[1]
                if script is not None:
                    return await node.evalsha(script[0], script[1], command)
                return await node.execute(command)
            except ResponseError as exc:
                redirect = _redirect(exc)
                if redirect is None:
                    raise
                self.redirects += 1
                kind, slot, address = redirect
                if kind == "TRYAGAIN":
                    await asyncio.sleep(0.001)
                    continue
                address = self._address(address)
                asking = kind == "ASK"
                if kind == "MOVED":
                    self._slots[slot] = address
                    self._refresh_soon()
                node = self._node(address)
            except RedisConnectionError:
                # The node may be gone (failover, resharding): the next call asks the cluster again.
                self._refresh_soon()
                raise
        raise RedisConnectionError(f"Redis Cluster redirected a call more than {MAX_REDIRECTS} times")

    def _address(self, address: str) -> str:
        host, _, port = address.rpartition(":")
        return f"{host or self._host}:{port}"

    async def execute_many(self, commands: Sequence[bytes]) -> list[Any]:
        """Commands grouped per node (one write each), replies in call order; redirected ones sent again."""
        if not commands:
            return []
        groups: dict[int, tuple[PipelinedRedis, list[int]]] = {}
        for index, command in enumerate(commands):
            node = await self._route(command)
            groups.setdefault(id(node), (node, []))[1].append(index)
        results: list[Any] = [None] * len(commands)
        batches = [(node, indexes) for node, indexes in groups.values()]
        answers = await asyncio.gather(
            *(node.execute_many([commands[i] for i in indexes]) for node, indexes in batches),
            return_exceptions=True,
        )
        for (_, indexes), answer in zip(batches, answers, strict=True):
            if isinstance(answer, BaseException):
                # A node's whole batch failed (lost connection, timeout): as on one server, the call fails.
                if isinstance(answer, RedisConnectionError):
                    self._refresh_soon()
                raise answer
            for index, reply in zip(indexes, answer, strict=True):
                if isinstance(reply, ResponseError) and _redirect(reply) is not None:
                    try:
                        reply = await self._call(commands[index], None)
                    except ResponseError as exc:
                        reply = exc
                results[index] = reply
        return results

    async def close(self) -> None:
        """Close every node's socket and the seed's; calls in flight fail."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
        for node in [self._seed, *self._nodes.values()]:
            await node.close()
        await super().close()
