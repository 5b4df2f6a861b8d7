"""The Redis Lua scripts of the rate-limit service, the concurrency leases and the credits balance.

Run with ``EVALSHA`` and loaded again on ``NOSCRIPT`` (after a Redis
restart): the decision script by ``limiter`` over its pipelined connection
(``pipe``), the lease and credit scripts by ``leases`` through redis-py's
``register_script``. Key layout and TTLs are the operator's contract
(``REDIS_KEYS.md``, "Counters"); the Python side computes every key with ``redis_rules.request_counter_keys``
and hands them over as ``KEYS``, all under one ``{<product>/<tenant>}`` hash
tag, so each script runs on one Redis Cluster slot.

Time is Redis ``TIME`` (several service replicas agree on one clock; Redis 7
replicates script effects, so a non-deterministic call is allowed). A caller
may pass a fixed time instead, which the tests use to put requests exactly on
a window edge; the service never does.

A fixed-window key depends on the window, known only once the script has
read the clock: the caller passes the key up to the window index and the
script appends it. The full key keeps the caller's hash tag, so it lives in
the slot Redis Cluster routed the script to.

Numbers cross Lua as doubles; microsecond timestamps (~1.7e15) are exact
below 2^53, but Lua's ``tostring`` keeps 14 digits only, so every number sent
back to Redis goes through ``string.format('%.0f')``.
"""

from __future__ import annotations

# DECIDE: check every limit of one request, then count it in all of them or in none.
#
# KEYS[i]   counter of check i; for fixed windows ("fw") the key up to the
#           window index, which the script appends from Redis time.
# ARGV[1]   now in microseconds, "0" for Redis TIME
# ARGV[2]   hits to count (0: check only)
# ARGV[3]   request id: member of sliding-window logs (unique per request)
# then 5 per check: kind, limit, param, ttl_ms, flag
#   sw  sliding window log      limit = burst, param = window in ms
#   tb  token bucket (GCRA)     limit = burst, param = emission interval in µs
#   fw  fixed window / quota    limit = requests, param = window in ms,
#                               flag 1: ttl_ms is measured from the window's start
#   cc  concurrency (read only) limit = slots, param = retry-after cap in ms
#   cr  credits                 limit unused, param = cost per hit
#
# Returns {allowed, now_ms, then per check: allowed, remaining, reset_ms, retry_ms}
# (retry_ms -1: waiting does not help, e.g. credits).
DECIDE = """
local function num(x) return string.format('%.0f', x) end
local now_us = tonumber(ARGV[1])
if now_us == 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now_ms = math.floor(now_us / 1000)
local hits = tonumber(ARGV[2])
local need = math.max(hits, 1)
local id = ARGV[3]
local out = {1, now_ms}
local commits = {}
for i = 1, #KEYS do
  local a = 3 + (i - 1) * 5
  local kind = ARGV[a + 1]
  local limit = tonumber(ARGV[a + 2])
  local param = tonumber(ARGV[a + 3])
  local ttl = tonumber(ARGV[a + 4])
  local key = KEYS[i]
  local ok, remaining, reset_us, retry_us
  if kind == 'sw' then
    -- The log holds arrival times in ms (the contract); the window is (now - param, now].
    redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now_ms - param))
    local count = redis.call('ZCARD', key)
    ok = count + need <= limit
    if ok then
      remaining = limit - count - hits
      retry_us = 0
    else
      remaining = limit - count
      if need > limit then
        retry_us = -1
      else
        -- The request fits once the (count + need - limit) oldest entries have left.
        local nth = count + need - limit - 1
        local entry = redis.call('ZRANGE', key, nth, nth, 'WITHSCORES')
        retry_us = (tonumber(entry[2]) + param - now_ms) * 1000
      end
    end
    -- Reset: when the window is whole again, i.e. the newest entry has left.
    if ok and hits > 0 then
      reset_us = param * 1000
    else
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      if newest[2] then reset_us = (tonumber(newest[2]) + param - now_ms) * 1000 else reset_us = 0 end
    end
    commits[i] = {kind, key, ttl}
  elseif kind == 'tb' then
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now_us then tat = now_us end
    local span = param * limit
    ok = tat + param * need - now_us <= span + 0.5
    if ok then
      local after = tat + param * hits
      remaining = math.floor((span - (after - now_us)) / param + 1e-9)
      reset_us = after - now_us
      retry_us = 0
      commits[i] = {kind, key, ttl, after}
    else
      remaining = math.floor((span - (tat - now_us)) / param + 1e-9)
      reset_us = tat - now_us
      if need > limit then
        retry_us = -1
      else
        retry_us = tat + param * need - now_us - span
      end
    end
  elseif kind == 'fw' then
    local index = math.floor(now_ms / param)
    key = key .. num(index)
    local count = tonumber(redis.call('GET', key) or '0')
    ok = count + need <= limit
    if ok then remaining = limit - count - hits else remaining = limit - count end
    reset_us = ((index + 1) * param - now_ms) * 1000
    if ok then retry_us = 0 elseif need > limit then retry_us = -1 else retry_us = reset_us end
    if tonumber(ARGV[a + 5]) == 1 then ttl = ttl - (now_ms - index * param) end
    commits[i] = {kind, key, ttl}
  elseif kind == 'cc' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now_ms))
    local count = redis.call('ZCARD', key)
    ok = count < limit
    remaining = limit - count
    reset_us = 0
    retry_us = 0
    if not ok then
      -- A slot frees when a running request ends, which Redis cannot foresee:
      -- suggest the earliest lease expiry, capped.
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      retry_us = param * 1000
      if first[2] then retry_us = math.min(tonumber(first[2]) - now_ms, param) * 1000 end
    end
  elseif kind == 'cr' then
    local balance = tonumber(redis.call('GET', key) or '0')
    ok = balance >= param * need
    if ok then remaining = balance - param * hits else remaining = balance end
    reset_us = 0
    if ok then retry_us = 0 else retry_us = -1 end
    commits[i] = {kind, key, param * hits}
  else
    return redis.error_reply('unknown check kind ' .. tostring(kind))
  end
  if not ok then out[1] = 0 end
  local retry_ms = -1
  if retry_us >= 0 then retry_ms = math.ceil(retry_us / 1000) end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset_us / 1000)
  out[#out + 1] = retry_ms
end
-- Count the request only when every limit admitted it: a request refused by
-- one limit burns nothing in the others.
if out[1] == 1 and hits > 0 then
  for i = 1, #KEYS do
    local c = commits[i]
    if c then
      local kind, key = c[1], c[2]
      if kind == 'sw' then
        local score = num(now_ms)
        if hits == 1 then
          redis.call('ZADD', key, score, id)
        else
          for j = 1, hits do redis.call('ZADD', key, score, id .. ':' .. j) end
        end
        redis.call('PEXPIRE', key, num(c[3]))
      elseif kind == 'tb' then
        redis.call('SET', key, string.format('%.3f', c[4]), 'PX', num(c[3]))
      elseif kind == 'fw' then
        redis.call('INCRBY', key, hits)
        redis.call('PEXPIRE', key, num(c[3]))
      elseif kind == 'cr' then
        redis.call('DECRBY', key, num(c[3]))
      end
    end
  end
end
return out
"""

# LEASE_ACQUIRE: take one concurrency slot if fewer than `limit` live leases remain.
# KEYS[1] the tenant's concurrency zset (member: lease id, score: expiry ms)
# ARGV[1] limit, ARGV[2] lease ms, ARGV[3] lease id, ARGV[4] now ms or "0" for TIME
# Returns {acquired, live leases after, expiry ms}
LEASE_ACQUIRE = """
local function num(x) return string.format('%.0f', x) end
local now = tonumber(ARGV[4])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now))
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[1]) then
  return {0, count, 0}
end
redis.call('ZADD', KEYS[1], num(now + lease), ARGV[3])
-- The key outlives its longest lease, whatever lease length each caller used.
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], num(lease))
end
return {1, count + 1, now + lease}
"""

# LEASE_RENEW: push a live lease's expiry (long jobs heartbeat); 0 if it already expired.
# KEYS[1] zset, ARGV[1] lease id, ARGV[2] lease ms, ARGV[3] now ms or "0"
LEASE_RENEW = """
local function num(x) return string.format('%.0f', x) end
local now = tonumber(ARGV[3])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', num(now + lease), ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], num(lease))
end
return 1
"""

# CREDITS_SPEND: take `cost` from the balance only if it covers it.
# KEYS[1] balance, ARGV[1] cost. Returns {spent, balance after}
CREDITS_SPEND = """
local balance = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[1])
if balance < cost then
  return {0, balance}
end
return {1, redis.call('DECRBY', KEYS[1], ARGV[1])}
"""
