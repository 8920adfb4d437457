-- One whole decision for one (plan, key) counter, atomically: refill the
-- bucket, roll the quota period, check the throttle then the quota, and
-- spend a token and a unit of quota only if both allow it. Mirrors
-- src/limit/counter.rs; the caller computes calendar bounds.
--
-- KEYS[1]  the counter hash ("<prefix>{<plan>:<key>}")
-- ARGV     op ("decide" | "set" ), now_us, now_secs, day,
--          bucket field ("" = no throttle), rate, burst,
--          period kind ("" = no quota), period start, period end, period limit,
--          remaining (for "set"), ttl secs
local k = KEYS[1]
local op = ARGV[1]
local now_us, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local day = ARGV[4]
local bf, rate, burst = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local kind, pstart, pend, plimit = ARGV[8], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local set_to, ttl = tonumber(ARGV[12]), tonumber(ARGV[13])

local used, allow, remaining = 0, nil, 0
if kind ~= "" then
  local q = redis.call('HMGET', k, 'pk', 'pe', 'used', 'allow')
  if q[1] == kind and q[2] and now < tonumber(q[2]) then
    used = tonumber(q[3]) or 0
    allow = tonumber(q[4])
  else
    -- A new period (or a new period kind): start from the limit.
    redis.call('HSET', k, 'pk', kind, 'ps', pstart, 'pe', pend, 'used', 0)
    redis.call('HDEL', k, 'allow')
  end
  remaining = math.max((allow or plimit) - used, 0)
end

local function record(admitted)
  local prefix = 'd:' .. day
  if redis.call('HSETNX', k, prefix .. ':u', admitted) == 0 then
    redis.call('HINCRBY', k, prefix .. ':u', admitted)
  else
    -- A new day: drop every day before the 100 kept (as counter.rs does).
    local oldest = tonumber(day) - 99
    local dmin = tonumber(redis.call('HGET', k, 'dmin')) or tonumber(day)
    for d = dmin, oldest - 1 do
      redis.call('HDEL', k, 'd:' .. d .. ':u', 'd:' .. d .. ':r')
    end
    redis.call('HSET', k, 'dmin', math.max(dmin, oldest))
  end
  redis.call('HSET', k, prefix .. ':r', remaining)
end

if op == 'set' then
  allow = used + set_to
  remaining = set_to
  redis.call('HSET', k, 'allow', allow)
  record(0)
  redis.call('EXPIRE', k, ttl)
  return { tonumber(redis.call('HGET', k, 'd:' .. day .. ':u')), remaining }
end

local tokens = 0
if bf ~= "" then
  local t = redis.call('HMGET', k, bf .. ':t', bf .. ':u')
  tokens = tonumber(t[1])
  local updated = tonumber(t[2])
  if tokens == nil then
    tokens, updated = burst, now_us
  end
  if now_us > updated then
    tokens = tokens + (now_us - updated) / 1e6 * rate
    updated = now_us
  end
  if tokens > burst then tokens = burst end
  -- 0 admitted, 1 throttled, 2 quota exceeded
  local verdict = 0
  if tokens < 1 then
    verdict = 1
  elseif kind ~= "" and remaining < 1 then
    verdict = 2
  else
    tokens = tokens - 1
  end
  redis.call('HSET', k, bf .. ':t', tostring(tokens), bf .. ':u', updated)
  if verdict ~= 0 then
    redis.call('EXPIRE', k, ttl)
    return { verdict, tostring(tokens), remaining }
  end
elseif kind ~= "" and remaining < 1 then
  redis.call('EXPIRE', k, ttl)
  return { 2, "0", remaining }
end

used = used + 1
if kind ~= "" then
  remaining = remaining - 1
  redis.call('HSET', k, 'used', used)
end
record(1)
redis.call('EXPIRE', k, ttl)
return { 0, tostring(tokens), remaining }
