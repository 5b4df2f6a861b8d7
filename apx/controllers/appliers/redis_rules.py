"""Redis applier: publishes versioned rule sets and the route table, switching versions atomically.

Called by the operator's reconciler with the Redis renderer's output. A rule
set is written under a content-addressed key (its version is the hash of its
content), then the ``current`` pointer is switched — all in one Lua script, so
a reader sees either the old or the new complete rule set, never half of one.
The previous version is kept (a reader may have fetched the old pointer a
moment ago); older versions are deleted. Every key one script touches shares
a hash tag, so this works on Redis Cluster: a ``redis+cluster://`` URL
(``apx.dataplane.common.redisconn``) gives redis-py's cluster client, which
loads each script on the node that runs it.

Idempotent: publishing the version that is already current does nothing;
re-running after a crash at any point completes the switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from apx.contracts import redis_keys
from apx.dataplane.common.redact import redact_url
from apx.dataplane.common.redisconn import RedisClient, cluster_client, is_cluster_url


# What both publish scripts end with: switch the pointer (nothing when already current) and
# delete the versions beyond the ones kept. Old version hashes are derived from the prefix
# (ARGV[3]) inside the script; they share the hash tag of KEYS, so they live in the same
# cluster slot. A function, not a module string: only whole scripts are module strings.
def _then_switch(write: str) -> str:
    return (
        write
        + """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
local keep = tonumber(ARGV[2])
local stale = redis.call('ZRANGE', KEYS[3], 0, -(keep + 1))
for _, version in ipairs(stale) do
  if version ~= ARGV[1] then
    redis.call('DEL', ARGV[3] .. version)
    redis.call('ZREM', KEYS[3], version)
  end
end
return 1
"""
    )


# KEYS: 1 version hash, 2 current pointer, 3 version log (zset), 4 sequence counter
# ARGV: 1 version, 2 versions to keep, 3 prefix of version hashes, 4.. field/value pairs
_PUBLISH = _then_switch("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 4, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
""")

# The same switch for a version that differs from an earlier one in a few fields: the new hash is
# a server-side COPY of the base version's hash with those fields set and removed (a one-Route
# edit at 10,000 Routes sends two fields, not the whole route table).
# KEYS: 1-4 as _PUBLISH, 5 the base version's hash
# ARGV: 1 version, 2 versions to keep, 3 prefix, 4 number of field/value pairs to set (n),
#       5 .. 4+2n the pairs, then the fields to remove
# Returns -1 when the base version's hash is gone (the caller publishes the whole document).
_PUBLISH_DELTA = _then_switch("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[5]) == 0 then
    return -1
  end
  redis.call('COPY', KEYS[5], KEYS[1])
  local pairs_end = 4 + 2 * tonumber(ARGV[4])
  for i = 5, pairs_end, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  for i = pairs_end + 1, #ARGV do
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
""")

# KEYS: 1 current pointer, 2 version log, 3 sequence counter; ARGV: 1 prefix of version hashes
_DROP = """
local versions = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, version in ipairs(versions) do
  redis.call('DEL', ARGV[1] .. version)
end
local current = redis.call('GET', KEYS[1])
if current then
  redis.call('DEL', ARGV[1] .. current)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return #versions
"""


class RedisUnavailable(Exception):
    """Redis could not be reached or refused the write."""


@dataclass(frozen=True, slots=True)
class VersionedKeys:
    """The keys of one versioned document family (a product's rule set, or the route table)."""

    version_prefix: str  # prefix + version = the hash of that version
    current: str
    versions: str

    @property
    def sequence(self) -> str:
        return redis_keys.sequence_key(self.versions)

    def version_key(self, version: str) -> str:
        return self.version_prefix + version


class RedisApplier:
    """Publishes and drops versioned hashes in Redis."""

    def __init__(self, url: str, keep_versions: int = 2) -> None:
        self.url = url
        # What error messages (and from them status, Events and logs) may show: no password.
        self.shown_url = redact_url(url)
        self.keep_versions = keep_versions
        self._client: RedisClient
        if is_cluster_url(url):
            self._client = cluster_client(
                url, max_connections=64, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
            )
        else:
            self._client = aioredis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
            )
        self._publish = self._client.register_script(_PUBLISH)
        self._publish_delta = self._client.register_script(_PUBLISH_DELTA)
        self._drop = self._client.register_script(_DROP)

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis at {self.shown_url} unreachable: {exc}") from exc

    async def current_version(self, keys: VersionedKeys) -> str | None:
        try:
            value = await self._client.get(keys.current)
            if value is None or not await self._client.exists(keys.version_key(str(value))):
                # A pointer to a missing hash (someone deleted keys) counts as no version: republish.
                return None
            return str(value)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis at {self.shown_url} unreachable: {exc}") from exc

    async def publish(self, keys: VersionedKeys, version: str, fields: Mapping[str, str]) -> bool:
        """Write ``fields`` as ``version`` and make it current; True when the pointer moved."""
        args: list[str] = [version, str(self.keep_versions), keys.version_prefix]
        for name in sorted(fields):
            args += [name, fields[name]]
        try:
            moved = await self._publish(
                keys=[keys.version_key(version), keys.current, keys.versions, keys.sequence], args=args
            )
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis at {self.shown_url} unreachable: {exc}") from exc
        return bool(moved)

    async def publish_changes(
        self,
        keys: VersionedKeys,
        version: str,
        base_version: str,
        changed: Mapping[str, str],
        removed: Sequence[str],
        fields: Mapping[str, str],
    ) -> bool:
        """Publish ``version`` (whose whole content is ``fields``) as ``base_version`` plus the changes.

        The same outcome as ``publish(keys, version, fields)``; only the changed fields travel.
        When the base version's hash is gone (trimmed, flushed), the whole document is published.
        """
        args: list[str] = [version, str(self.keep_versions), keys.version_prefix, str(len(changed))]
        for name in sorted(changed):
            args += [name, changed[name]]
        args += sorted(removed)
        try:
            moved = await self._publish_delta(
                keys=[
                    keys.version_key(version),
                    keys.current,
                    keys.versions,
                    keys.sequence,
                    keys.version_key(base_version),
                ],
                args=args,
            )
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis at {self.shown_url} unreachable: {exc}") from exc
        if int(moved) == -1:
            return await self.publish(keys, version, fields)
        return bool(moved)

    async def drop(self, keys: VersionedKeys) -> int:
        """Delete every version of a family (used for deletionPolicy: Delete)."""
        try:
            return int(
                await self._drop(
                    keys=[keys.current, keys.versions, keys.sequence], args=[keys.version_prefix]
                )
            )
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis at {self.shown_url} unreachable: {exc}") from exc

    async def delete_pattern(self, pattern: str) -> int:
        """Delete keys matching a pattern with SCAN (counters of a deleted product)."""
        deleted = 0
        try:
            async for key in self._client.scan_iter(match=pattern, count=500):
                deleted += int(await self._client.delete(key))
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis at {self.shown_url} unreachable: {exc}") from exc
        return deleted
