-- One whole decision for one (plan, key) counter, atomically: refill the
-- bucket, roll the quota period, check the throttle then the quota, and
-- spend a token and a unit of quota only if both allow it. The rules it
-- follows are the table in src/limit/mod.rs (the one statement of them;
-- src/limit/counter.rs is MemoryStore's implementation); the caller
-- computes calendar bounds. tests/store_props.rs checks that both agree.
--
-- "lease" also gives back what a replica's previous lease left unspent and
-- grants a new slice (quota units and tokens) that the replica spends
-- locally. Leased units count as used for enforcement until given back
-- ('leased' holds the outstanding ones), and UpdateUsage ("set") leaves
-- room for them, so no replica can ever admit more than the quota. Slices
-- shrink with the remaining quota (an eighth of it), down to none: near the
-- limit every request is decided here.
--
-- Leases carry the counter's epoch ('ep'). UpdateUsage ("set") starts a
-- new epoch: the outstanding leased units are written off as used, and a
-- lease of an older epoch given back later adds nothing back (only its
-- spent units are recorded, for GetUsage). "report" records units a replica spent from a
-- lease. The daily records ('d:<day>:u') count admitted requests only,
-- never units merely reserved; 'd:<day>:r' is the remaining quota with
-- the outstanding leased units counted as not used.
--
-- KEYS[1]  the counter hash ("<prefix>{<plan>:<key>}"); KEYS[2], on one
--          server only, the marker whose absence means Redis lost its data
-- ARGV     1 op ("decide" | "lease" | "return" | "report" | "restore" | "set" | "add"), 2 now_us, 3 now_secs, 4 day,
--          5 bucket field ("" = no throttle), 6 rate, 7 burst,
--          8 period kind ("" = no quota), 9 period start, 10 period end,
--          11 period limit, 12 remaining (for "set") or signed delta (for "add"), 13 ttl secs,
--          14 returned units, 15 units of the returned lease, 16 returned tokens,
--          17 period start of the returned lease, 18 wanted units, 19 wanted tokens,
--          20 epoch of the returned lease, 21 its units already reported spent,
--          22 spent units to record (for "report"), 23 "1" when the replica saw this
--          counter before (a missing hash then means Redis lost its data),
--          24-26 for "restore": the used count, allowance (-1: none) and epoch
--          the replica last saw in the current period
--
-- "restore" puts back what a replica saw of a counter after Redis lost its
-- data: the used count goes up by what the replica saw beyond what earlier
-- restores of this hash put back ('rb'), so admissions made since the loss
-- are kept and a second replica's restore adds only what it saw more. Of
-- the allowances replicas saw (UpdateUsage's), the one of the latest epoch
-- wins ('ae' keeps the epoch of a restored one; within an epoch, the
-- smaller), whatever order the restores come in; one set or added after
-- the loss (no 'ae') is never replaced by what replicas saw before it.
local k = KEYS[1]
local op = ARGV[1]
local now_us, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local day = ARGV[4]
local bf, rate, burst = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local kind, pstart, pend, plimit = ARGV[8], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local set_to, ttl = tonumber(ARGV[12]), tonumber(ARGV[13])
local ret_q, ret_granted, ret_t = tonumber(ARGV[14]) or 0, tonumber(ARGV[15]) or 0, tonumber(ARGV[16]) or 0
local ret_pstart = ARGV[17] or ""
local want_q, want_t = tonumber(ARGV[18]) or 0, tonumber(ARGV[19]) or 0
local ret_epoch, ret_reported = tonumber(ARGV[20]) or 0, tonumber(ARGV[21]) or 0
local report_n = tonumber(ARGV[22]) or 0
if KEYS[2] and (op == 'decide' or op == 'lease') and redis.call('EXISTS', KEYS[2]) == 0 then
  -- No marker: Redis lost its data; the replicas put back what they saw first.
  return { 4, '0', 0, 0, 0, 0, 0, -1 }
end
if ARGV[23] == '1' and (op == 'decide' or op == 'lease') and redis.call('EXISTS', k) == 0 then
  -- Seen before, gone now: the replica checks whether Redis lost its data.
  return { 3, '0', 0, 0, 0, 0, 0, -1 }
end
local epoch = tonumber(redis.call('HGET', k, 'ep')) or 0

-- ---------------------------------------------------------------------------
-- op "refund" (kept apart from the other ops on purpose: it shares only the
-- argument layout). Gives back what one admitted decision at now_us spent,
-- for a request that never reached the upstream: its token (refilled up to
-- now_us, plus one, up to the burst) and, while the decision's period (kind,
-- start) is still the stored one, its unit of quota, also in that day's
-- record. It never starts a period or a bucket. Mirrors Counter::refund in
-- src/limit/counter.rs.
if op == 'refund' then
  if kind ~= "" then
    local q = redis.call('HMGET', k, 'pk', 'ps', 'used')
    local was = tonumber(q[3]) or 0
    if q[1] == kind and q[2] == pstart and was > 0 then
      redis.call('HSET', k, 'used', was - 1)
      local du = 'd:' .. day .. ':u'
      local on_day = tonumber(redis.call('HGET', k, du)) or 0
      if on_day > 0 then
        redis.call('HSET', k, du, on_day - 1)
        local dr = 'd:' .. day .. ':r'
        local left = tonumber(redis.call('HGET', k, dr))
        if left then
          redis.call('HSET', k, dr, left + 1)
        end
      end
    end
  end
  if bf ~= "" then
    local t = redis.call('HMGET', k, bf .. ':t', bf .. ':u')
    local tokens, updated = tonumber(t[1]), tonumber(t[2])
    if tokens ~= nil and updated ~= nil then
      if now_us > updated then
        tokens = tokens + (now_us - updated) / 1e6 * rate
        updated = now_us
      end
      tokens = math.min(tokens + 1, burst)
      redis.call('HSET', k, bf .. ':t', tostring(tokens), bf .. ':u', updated)
    end
  end
  return 0
end
-- ---------------------------------------------------------------------------

local used, allow, leased, remaining = 0, nil, 0, 0
local function quota_left()
  return math.max((allow or plimit) - used, 0)
end
-- Whether the stored period is the one this call speaks of.
local current = false
if kind ~= "" then
  local q = redis.call('HMGET', k, 'pk', 'pe', 'used', 'allow', 'leased')
  if q[1] == kind and q[2] and now < tonumber(q[2]) then
    used = tonumber(q[3]) or 0
    allow = tonumber(q[4])
    leased = tonumber(q[5]) or 0
    current = true
  elseif op == 'return' or op == 'report' then
    -- A lease of a period that is over, or of the plan's former period
    -- kind: nothing to give back to, and no period to start.
  else
    current = true
    -- A period that ended leaves a new one empty; a new period kind counts
    -- what was admitted on the new period's days so far (as counter.rs).
    if q[1] and q[1] ~= kind then
      for d = math.floor(tonumber(pstart) / 86400), tonumber(day) do
        used = used + (tonumber(redis.call('HGET', k, 'd:' .. d .. ':u')) or 0)
      end
    end
    redis.call('HSET', k, 'pk', kind, 'ps', pstart, 'pe', pend, 'used', used)
    redis.call('HDEL', k, 'allow', 'ae', 'leased')
  end
  remaining = quota_left()
end

-- Adds `delta` (negative for units given back) to today's used count.
local function record(delta)
  local prefix = 'd:' .. day
  local current = redis.call('HGET', k, prefix .. ':u')
  if current then
    redis.call('HSET', k, prefix .. ':u', math.max(tonumber(current) + delta, 0))
  else
    redis.call('HSET', k, prefix .. ':u', math.max(delta, 0))
    -- A new day: drop every day before the 100 kept (as counter.rs does).
    local oldest = tonumber(day) - 99
    local dmin = tonumber(redis.call('HGET', k, 'dmin')) or tonumber(day)
    for d = dmin, oldest - 1 do
      redis.call('HDEL', k, 'd:' .. d .. ':u', 'd:' .. d .. ':r')
    end
    redis.call('HSET', k, 'dmin', math.max(dmin, oldest))
  end
  redis.call('HSET', k, prefix .. ':r', remaining + leased)
end

if op == 'report' then
  if current and ret_pstart == pstart and report_n > 0 then
    if ret_epoch == epoch then
      leased = math.max(leased - report_n, 0)
      redis.call('HSET', k, 'leased', leased)
    end
    record(report_n)
    redis.call('EXPIRE', k, ttl)
  end
  return 0
end

if op == 'restore' then
  if current then
    local seen_used, seen_allow = tonumber(ARGV[24]) or 0, tonumber(ARGV[25]) or -1
    local base = tonumber(redis.call('HGET', k, 'rb')) or 0
    if seen_used > base then
      used = used + seen_used - base
      redis.call('HSET', k, 'used', used, 'rb', seen_used)
    end
    local seen_epoch = tonumber(ARGV[26]) or 0
    if seen_allow >= 0 then
      local allow_epoch = tonumber(redis.call('HGET', k, 'ae'))
      if not allow or (allow_epoch and (seen_epoch > allow_epoch
          or (seen_epoch == allow_epoch and seen_allow < allow))) then
        redis.call('HSET', k, 'allow', seen_allow, 'ae', seen_epoch)
      end
    end
    epoch = math.max(epoch, seen_epoch + 1)
    redis.call('HSET', k, 'ep', epoch)
    redis.call('EXPIRE', k, ttl)
  end
  return 0
end

if op == 'set' then
  -- A new epoch: every outstanding lease ends here, its units used (the
  -- caller then revokes them on every replica before it answers), and
  -- exactly `set_to` remain for leases and decisions from now on.
  epoch = epoch + 1
  leased = 0
  allow = used + set_to
  remaining = quota_left()
  redis.call('HSET', k, 'allow', allow, 'ep', epoch, 'leased', 0)
  redis.call('HDEL', k, 'ae')
  record(0)
  redis.call('EXPIRE', k, ttl)
  return { tonumber(redis.call('HGET', k, 'd:' .. day .. ':u')), set_to, used, allow, epoch, 1 }
end

if op == 'add' then
  -- UpdateUsage "add": the remaining quota moves by `set_to` (negative
  -- subtracts), floored at 0, capped at model::MAX_COUNT, in this one step.
  -- Outstanding leases stay valid while what is not leased out covers the
  -- change (they are slices of quota already reserved: more room, or less
  -- of the unreserved rest, never lets a replica admit too much), so adds
  -- stay exact while replicas lease. A subtraction that reaches into the
  -- leased units starts a new epoch as "set" does (the caller revokes):
  -- nothing remains, and the leases' unspent units are lost, as with "set".
  local target = math.min(quota_left() + set_to, 2147483647)
  local revoke = 0
  if target < 0 then
    epoch, leased, target, revoke = epoch + 1, 0, 0, 1
  end
  allow = used + target
  remaining = quota_left()
  redis.call('HSET', k, 'allow', allow, 'ep', epoch, 'leased', leased)
  redis.call('HDEL', k, 'ae')
  record(0)
  redis.call('EXPIRE', k, ttl)
  return { tonumber(redis.call('HGET', k, 'd:' .. day .. ':u')), remaining + leased, used, allow, epoch, revoke }
end

if (op == 'lease' or op == 'return') and current and ret_pstart == pstart and ret_granted > 0 then
  local spent = math.max(ret_granted - ret_reported - ret_q, 0)
  if ret_epoch == epoch then
    -- Unspent units come back; what is still outstanding of this lease ends.
    used = math.max(used - ret_q, 0)
    leased = math.max(leased - (ret_granted - ret_reported), 0)
    remaining = quota_left()
    redis.call('HSET', k, 'used', used, 'leased', leased)
  end
  record(spent)
end

-- The bucket, refilled up to now, with the returned tokens back in it.
local tokens, updated = 0, now_us
if bf ~= "" then
  local t = redis.call('HMGET', k, bf .. ':t', bf .. ':u')
  tokens, updated = tonumber(t[1]), tonumber(t[2])
  if tokens == nil then
    tokens, updated = burst, now_us
  end
  if now_us > updated then
    tokens = tokens + (now_us - updated) / 1e6 * rate
    updated = now_us
  end
  tokens = math.min(tokens + ret_t, burst)
end

if op == 'return' then
  if bf ~= "" then
    redis.call('HSET', k, bf .. ':t', tostring(tokens), bf .. ':u', updated)
  end
  redis.call('EXPIRE', k, ttl)
  return { 0, tostring(tokens), remaining, 0, 0, epoch, used, allow or -1 }
end

local verdict = 0 -- 0 admitted, 1 throttled, 2 quota exceeded
if bf ~= "" then
  if tokens < 1 then
    verdict = 1
  elseif kind ~= "" and remaining < 1 then
    verdict = 2
  else
    tokens = tokens - 1
  end
  redis.call('HSET', k, bf .. ':t', tostring(tokens), bf .. ':u', updated)
elseif kind ~= "" and remaining < 1 then
  verdict = 2
end
if verdict ~= 0 then
  redis.call('EXPIRE', k, ttl)
  return { verdict, tostring(tokens), remaining, 0, 0, epoch, used, allow or -1 }
end

used = used + 1
remaining = math.max(remaining - 1, 0)
local q_take, t_take = 0, 0
if op == 'lease' then
  local grant = true
  if kind ~= "" then
    q_take = math.min(want_q, math.floor(remaining / 8))
    grant = q_take > 0
  end
  if bf ~= "" then
    t_take = math.min(want_t, math.floor(tokens / 2))
    grant = grant and t_take > 0
  end
  if grant then
    used, leased, remaining = used + q_take, leased + q_take, remaining - q_take
    tokens = tokens - t_take
    if bf ~= "" then redis.call('HSET', k, bf .. ':t', tostring(tokens)) end
  else
    q_take, t_take = 0, 0
  end
end
if kind ~= "" then
  redis.call('HSET', k, 'used', used, 'leased', leased)
end
record(1)
redis.call('EXPIRE', k, ttl)
return { 0, tostring(tokens), remaining, q_take, t_take, epoch, used, allow or -1 }
