"""The Lua scripts behind the cluster-wide limits (README "Redis: cluster-wide limits").

Every script reads the time with ``TIME`` inside Redis, so all nodes judge by one clock and
a node's clock never matters. Times are integer microseconds; values written to Redis are
formatted with ``%.0f`` (Lua's ``tostring`` would round them to 14 digits).

The first key of every script is the cluster's *epoch* key: the Redis time at which this
Redis first saw sipbridge. A Redis that lost its data (restarted without persistence,
failed over to an empty replica) has no epoch: the script that notices writes a new one,
and for ``warmup`` microseconds after it no CPS token and no concurrency slot is granted.
Meanwhile the nodes' heartbeats put back the slots of their live calls, and the CPS
tokens granted just before the loss age out of every 1 s window, so the restart never
lets the cluster go above its caps.
"""

from __future__ import annotations

# Defines now (µs, from Redis) and warm_left: how long the warm-up still lasts (µs, 0 when over).
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end
local function warm_left(warmup_us)
  local epoch = redis.call('GET', KEYS[1])
  if not epoch then
    redis.call('SET', KEYS[1], fmt(now))
    epoch = now
  end
  local left = tonumber(epoch) + warmup_us - now
  if left > 0 then return left end
  return 0
end
local function ms(us) return math.ceil(us / 1000) end
"""

# GCRA (the generic cell rate algorithm, a token bucket of ``burst`` tokens refilled at one
# token per ``interval``): the key holds the theoretical arrival time (TAT). A request is
# admitted when its new TAT is at most ``burst`` intervals ahead of now. Over any interval of
# length T at most burst + T / interval requests are admitted.
# KEYS: epoch, bucket. ARGV: interval_us, burst, warmup_us, 'take' | 'drain'.
# Returns {admitted 0/1, retry_after_ms, now_us}.
GCRA = (
    _PRELUDE
    + """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local left = warm_left(tonumber(ARGV[3]))
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < now then tat = now end
local function store(v)
  redis.call('SET', KEYS[2], fmt(v), 'PX', ms(v - now) + 1000)
end
if ARGV[4] == 'drain' then
  -- the carrier pushed back: drop the tokens held (no burst right after it)
  local full = now + burst * interval
  if full > tat then tat = full end
  store(tat)
  return {0, 0, now}
end
if left > 0 then return {0, ms(left), now} end
local new = tat + interval
if new - now > burst * interval then
  return {0, ms(new - now - burst * interval), now}
end
store(new)
return {1, 0, now}
"""
)

# One concurrency slot: a member of the global sorted set and of the trunk's, scored by its
# expiry (µs). Expired members (their holder stopped renewing: a dead node) are dropped
# first. KEYS: epoch, global set, trunk set. ARGV: slot id, lease_us, global cap, trunk cap
# (-1: none), warmup_us. Returns {acquired 0/1, trunk count, global count, retry_after_ms}.
ACQUIRE = (
    _PRELUDE
    + """
local lease = tonumber(ARGV[2])
local gcap = tonumber(ARGV[3])
local tcap = tonumber(ARGV[4])
local left = warm_left(tonumber(ARGV[5]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now))
local g = redis.call('ZCARD', KEYS[2])
local k = redis.call('ZCARD', KEYS[3])
if left > 0 then return {0, k, g, ms(left)} end
if (gcap >= 0 and g >= gcap) or (tcap >= 0 and k >= tcap) then return {0, k, g, 0} end
local exp = fmt(now + lease)
redis.call('ZADD', KEYS[2], exp, ARGV[1])
redis.call('ZADD', KEYS[3], exp, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ms(lease) + 1000)
redis.call('PEXPIRE', KEYS[3], ms(lease) + 1000)
return {1, k + 1, g + 1, 0}
"""
)

# The holder's heartbeat: every slot it holds gets a new expiry. A slot that is gone (it
# expired during a Redis outage, or Redis lost its data) is added back: the call is live
# and uses the carrier's capacity, so the count must show it.
# KEYS: epoch, global set, then one trunk set per slot. ARGV: lease_us, then the slot ids
# in the order of their trunk keys. Returns now_us.
RENEW = (
    _PRELUDE
    + """
local lease = tonumber(ARGV[1])
warm_left(0)
local exp = fmt(now + lease)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[2], exp, ARGV[i])
  redis.call('ZADD', KEYS[i + 1], exp, ARGV[i])
  redis.call('PEXPIRE', KEYS[i + 1], ms(lease) + 1000)
end
if #ARGV > 1 then redis.call('PEXPIRE', KEYS[2], ms(lease) + 1000) end
return now
"""
)

__all__ = ["ACQUIRE", "GCRA", "RENEW"]
