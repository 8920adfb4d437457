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
-- Leases carry the counter's epoch ('ep'), which names the leases that
-- 'leased' counts. UpdateUsage ("set", or an "add" that reaches into
-- leased units) starts a new epoch: the outstanding leased units are
-- written off as used. A period that ends starts one too (its leases end
-- with it). A lease of an older epoch given back later adds nothing back
-- (only what it admitted is recorded, for GetUsage); until then 'stale'
-- counts its units. A change of period kind keeps the epoch: the new
-- period counts, as used, the leased and stale units of the one it
-- replaces if the two overlap (what they admitted is not recorded yet),
-- until given back. A lease is given back and reported against the day it
-- was granted on, whatever the clock says by then. "report" records
-- requests a replica admitted from a lease. The daily records
-- ('d:<day>:u') count admitted requests only, never units merely
-- reserved; 'd:<day>:r' is the remaining quota with the outstanding leased
-- units counted as not used; 'dl' is the latest day recorded.
--
-- Holders. Each replica's leases of one bucket are one record
-- ('h:<replica>:<bucket>', see rec_get): the units and tokens they hold,
-- the most units it may have spent without reporting (a share of each
-- grant, rounded up: past that it reports or decides here first), when
-- they expire, and a generation. A record whose leases expired
-- (plus a grace for the holder's own give-back) is reclaimed when the
-- counter is next touched ('hx' says when one may be): its units go back
-- but for that most (which stay used: the holder may have spent them), its
-- tokens stop counting against the burst, and it starts a new generation.
-- A lease of an older generation given back later adds nothing back; what
-- it admitted comes out of the units kept, and the rest of them goes back
-- once every reclaimed lease of the record is back. Tokens out on leases
-- ('<bucket>:l') cap the bucket's refill at the burst less them.
--
-- A dead holder's leases. Redis losing its data before a dead holder's
-- leases were reclaimed loses what they admitted unreported: the copies
-- count no leased unit (each live holder adds its own when it puts the
-- counter back). So the answers to a lease, a give-back or a report tell
-- the replica the units out on the other holders' leases, and the first
-- holder to put the counter back counts them as used and leased ('su',
-- 'sq' names that holder): to the copies they are leased units, none
-- admitted. Any other holder that puts the counter back is alive, and
-- they go again, once. With two replicas one of which died, they stay:
-- what it may have admitted is never admitted again.
--
-- KEYS[1]  the counter hash ("<prefix>{<plan>:<key>}"); KEYS[2], on one
--          server only, the marker whose absence means Redis lost its data,
--          and KEYS[3] the count of each replica's calls applied
-- ARGV     1 op ("decide" | "lease" | "return" | "report" | "settle" | "restore" | "set" | "add"
--          | "refund" | "forget"),
--          2 now_us, 3 now_secs, 4 day,
--          5 bucket field ("" = no throttle), 6 rate, 7 burst,
--          8 period kind ("" = no quota), 9 period start, 10 period end,
--          11 period limit, 12 remaining (for "set") or signed delta (for "add"); for
--          "lease", 1 asks for a lease ahead: no request is decided, only a
--          slice granted (the replica still spends its lease meanwhile; 28
--          is then that lease's cap), 13 ttl secs,
--          14-17 a lease given back (by "lease", "return", "report"): its unspent units,
--          the requests it admitted not yet reported, its unspent tokens, the day it was
--          granted on (for "restore": the day of the copy's count of admitted
--          requests in 19); 18 wanted units (for "restore": the units out on the other
--          holders' leases, as the replica's copy last heard), 19 wanted tokens (for
--          "restore": that count), 20 the returned lease's epoch,
--          21 "1" when it holds quota units, 22 "1" when the replica saw this
--          counter before (a missing hash then means Redis lost its data),
--          23-25 for "restore": the used count, allowance (-1: none) and epoch
--          the replica last saw in the current period,
--          26 the holder's record ("" = none), 27-30 the lease given back: its
--          generation, most unreported units, tokens granted, units reported and
--          not yet acknowledged (for "restore": 27 the tag of the counter as this
--          replica last put it back itself, when the epoch in 25 is of that range
--          ("0": none), 28 a fresh tag for a first restore, see 'ri', and 29
--          what its leases had admitted that that restore added);
--          31 lease lifetime (µs), 32 grace before reclaiming (µs),
--          33 a lease's share that may be spent unacknowledged (2: a half),
--          34 for "restore": the units this replica's own leases of the epoch
--          it saw spent and Redis did not acknowledge (it spends them no more),
--          35 for "lease", "return", "report" and "settle": the call's id
--          (unique to the holder, growing; 0 = none, see "Calls" below;
--          for "decides", the replica's, see "decides"), 36 the
--          holder's oldest call not yet answered (or given up on), 37 the id of
--          the lease given back's report on its way (0 = none), 38 for "restore":
--          the latest epoch the replica's copy held,
--          39-40 on one server (with KEYS[3]): the replica's count's field
--          ("<replica>:<marker>", the marker it knows) and how many of its
--          calls under that marker Redis answered, with how many of every
--          replica's it last read applied ("<answered>:<all>", see
--          "Rollback" below);
--          there, 23 and 25 for other ops: the replica's copy of the counter
--          in the period starting at ARGV[9] (epoch 0: none)
--
-- Calls. A replica that stopped waiting for a "lease", "return" or
-- "report" (its timeout, or the request gone) cannot tell whether Redis
-- applied it, or will: a stalled Redis runs what it was sent once it
-- resumes. So each such call names an id, and the holder's calls applied
-- are recorded ('hd:<holder>:<bucket>', beside its record): the replica
-- sends a "return" or "report" again with the same id, which is then not
-- applied twice, and settles a "lease" ("settle", the same arguments):
-- applied, its grant goes back whole (the replica never got it); not
-- applied (yet), it never will be, and what it gave back goes back now.
local k = KEYS[1]
local op = ARGV[1]
-- Numbers as the replica sends them: 'x + 0' converts once (glibc's
-- strtod, ~400 instructions), tonumber twice.
local now_us, now = ARGV[2] + 0, ARGV[3] + 0
local day = ARGV[4]
local bf, rate, burst = ARGV[5], ARGV[6] + 0, ARGV[7] + 0
local kind, pstart, pend, plimit = ARGV[8], ARGV[9], ARGV[10] + 0, ARGV[11] + 0
-- The ttl as sent: a Lua number passed to redis.call is written into a
-- string again (~2,300 instructions).
local set_to, ttl = ARGV[12] + 0, ARGV[13]
-- A lease ahead (see ARGV[12]): the call decides no request of its own.
local ahead = op == 'lease' and set_to == 1
-- The requests the call decides: one, or none for a lease ahead.
local decided = ahead and 0 or 1
local ret_q, ret_n, ret_t, ret_day, want_q, want_t, ret_epoch = 0, 0, 0, 0, 0, 0, 0
local ret_metered, rec_name, ret_gen, ret_cap, ret_gt, ret_pending = false, '', 0, 0, 0, 0
local ret_report = 0
local lease_us, share = 0, 4
local call, done_f, done_s = 0, '', nil
-- The grace before reclaiming, which a decision needs too.
local grace_us = ARGV[32] + 0
if op == 'lease' or op == 'return' or op == 'report' or op == 'settle' then
  -- A lease's arguments.
  ret_q, ret_n, ret_t = ARGV[14] + 0, ARGV[15] + 0, ARGV[16] + 0
  ret_day = ARGV[17] + 0
  want_q, want_t = ARGV[18] + 0, ARGV[19] + 0
  ret_epoch, ret_metered = ARGV[20] + 0, ARGV[21] == '1'
  rec_name, ret_gen = ARGV[26] or '', ARGV[27] + 0
  ret_cap, ret_gt, ret_pending = ARGV[28] + 0, ARGV[29] + 0,
    ARGV[30] + 0
  lease_us = ARGV[31] + 0
  share = ARGV[33] + 0
  call = ARGV[35] + 0
  ret_report = ARGV[37] + 0
end
-- The field that records the holder's calls applied (see "Calls"): none
-- without a record.
if rec_name ~= '' then
  done_f = 'hd' .. string.sub(rec_name, 2)
else
  call, ret_report = 0, 0
end
-- Whether the replica's copy of the counter (ARGV[23], ARGV[25]: used less
-- leased, plus kept, and the epoch, in the period starting at ARGV[9]) saw
-- more than the counter holds, given its epoch, period start, used, leased,
-- 'rf' and 'kt' as stored (see "Rollback").
-- Numbers as read (arguments, fields; nil for none), each string
-- converted once per call: in a call of many decisions most repeat from
-- one to the next (a plan's limits, the period, the second, small counts),
-- and a conversion costs thousands of instructions (glibc's strtod), as
-- does writing one (printf).
local numbers = {}
local function num(s)
  if not s then
    return nil
  end
  local n = numbers[s]
  if n == nil then
    n = s + 0
    numbers[s] = n
  end
  return n
end

local copy_used, copy_epoch, copy_start = ARGV[23], ARGV[25], ARGV[9]
local function copy_ahead(ep, ps, u, l, rf, kt)
  return num(ep) == num(copy_epoch) and num(ps) == num(copy_start)
    and (num(u) or 0) - (num(l) or 0) + (num(kt) or 0) + (num(rf) or 0) < num(copy_used)
end

-- `tokens` counted at `at` (µs), refilled at rate `r` up to now_us, never
-- past `cap`: the tokens, and when they were counted.
local function refill(tokens, at, r, cap)
  if now_us > at then
    if tokens < cap then
      tokens = math.min(tokens + (now_us - at) / 1e6 * r, cap)
    end
    at = now_us
  end
  return tokens, at
end

-- A holder's record as stored (see rec_get): its first nine numbers (units
-- held, most kept, tokens, expiry, generation, kept units, cap out,
-- reported, epoch), or nil unless it has all eleven fields.
local function record_numbers(s)
  local x = { string.match(s or '',
    '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),[^,]*,[^,]*$') }
  for i = 1, 9 do
    x[i] = tonumber(x[i])
    if x[i] == nil then
      return nil
    end
  end
  return x
end

-- Rollback. On one server Redis counts each replica's calls it applied
-- under each marker (KEYS[3], field ARGV[39]: "<replica>:<marker>"), and
-- the replica counts those Redis answered (ARGV[40]). Fewer applied than
-- answered: Redis came back with older data (an AOF or RDB behind, a
-- failover to a replica that lagged) and lost calls it had answered, or
-- lost its data (the count went with it). The call is refused (6), not
-- applied: the replica drops the stale data and every replica puts back
-- what it saw, as after a loss. Without a marker Redis lost its data: a
-- decision refuses (4), and the replicas put back what they saw first.
-- UpdateUsage ("set", "add") and "forget" are refused alike, answering
-- the code alone ({4}, {6}; {3} for "set" and "add" on a counter the
-- replica saw that is gone), and sent again once it is put back.
-- Redis counts every replica's calls under a marker too (field
-- '*:<marker>'), and a replica reads that count on its rounds (ARGV[40]
-- is "<answered>:<all read>"): fewer there finds Redis gone back though
-- it lost none of this replica's calls. (Before this count, only the
-- replicas whose calls were lost found it: a replica whose leases had
-- made no call since the older data's time had its reports counted
-- there, lost to the put back: up to a lease's report over per rollback.)
-- A "decides" call reads the counts with its record of the replica's calls
-- (see "decides"), and writes them back once (one command fewer than an
-- HINCRBY, a read and a write).
local applied, decides_calls, all, all_f = 0, nil, 0, nil
if KEYS[3] then
  -- The marker the replica knows: its field's end (none before its first).
  local known = string.match(ARGV[39], ':(.+)$')
  all_f = '*:' .. (known or '')
  if op == 'decides' then
    local f = redis.call('HMGET', KEYS[3], ARGV[39], ARGV[39] .. ':d', all_f)
    applied, decides_calls, all = tonumber(f[1]) or 0, f[2] or '', tonumber(f[3]) or 0
  else
    applied = redis.call('HINCRBY', KEYS[3], ARGV[39], 1) - 1
    all = redis.call('HINCRBY', KEYS[3], all_f, 1) - 1
  end
  -- The marker Redis holds (false: none): another one than the replica
  -- knows means Redis went back to data older than the replica's latest
  -- restore (an RDB saved before it), or a replica put it back since:
  -- refused alike, the replica tells them apart.
  local marker = redis.call('GET', KEYS[2])
  local answered, all_read = string.match(ARGV[40], '^(%d+):?(%d*)$')
  local short = applied < tonumber(answered) or all < (tonumber(all_read) or 0)
    or (marker and known and marker ~= known)
  -- A replica whose own calls were not lost finds it too when its copy of
  -- this counter (ARGV[23], ARGV[25]: used less leased plus kept, and the
  -- epoch, in the period starting at ARGV[9]) saw more than the counter
  -- holds: used less leased, plus the units kept from reclaimed leases
  -- ('kt') and what refunds and kept units going back took off ('rf'),
  -- only grows within a period and epoch.
  -- (A give-back reads these fields anyway: it checks there, see
  -- give_back.)
  if not short and op == 'decide' and tonumber(ARGV[25] or 0) > 0 then
    local q = redis.call('HMGET', k, 'used', 'leased', 'rf', 'ep', 'ps', 'kt')
    short = copy_ahead(q[4], q[5], q[1], q[2], q[3], q[6])
  end
  if op == 'decide' or op == 'lease' then
    if not marker then
      return { 4, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
    elseif short then
      return { 6, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
    end
  elseif op == 'decides' then
    -- Every decision of the call refused alike.
    local code = not marker and 4 or (short and 6)
    if code then
      redis.call('HSET', KEYS[3], ARGV[39], string.format('%d', applied + 1),
        all_f, string.format('%d', all + 1))
      local refused = {}
      for i = 1, (#ARGV - 40) / 12 do
        refused[i] = { code, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
      end
      return refused
    end
  elseif op == 'set' or op == 'add' or op == 'forget' then
    -- UpdateUsage (and a key leaving its plan) changes the counter as the
    -- replicas put it back: made on an emptied counter, it was lost under
    -- what they put back after it. The replica puts back first, then
    -- sends it again.
    if not marker then
      return { 4 }
    elseif short then
      return { 6 }
    end
  elseif short and (op == 'return' or op == 'report' or op == 'settle') then
    return { 6 }
  elseif short and op == 'reports' then
    local refused = {}
    for i = 1, (#ARGV - 40) / 10 do
      refused[i] = { 6 }
    end
    return refused
  end
end
-- The holder's oldest call still open.
local oldest_open = ARGV[36] + 0
-- The holder's calls applied (as done_get below reads them), with the
-- call `call` recorded as applied (replacing what it recorded before),
-- the newest last. Kept: the calls from the holder's oldest still
-- open on (those answered before it are not sent again), of the last
-- minute (a replica sends a call again within seconds, and gives up on it
-- after 50 s). No fewer: a stall leaves hundreds of a busy key's calls
-- open, each of which would otherwise be settled as never applied, and
-- what it gave back counted twice.
local function done_record(q, t, g, c, ep, a)
  local kept = {}
  for e in string.gmatch(done_s or redis.call('HGET', k, done_f) or '', ',[^,]+') do
    local id, at = string.match(e, '^,(%d+):.*:(%d+)$')
    id = tonumber(id)
    if id ~= call and id >= oldest_open and tonumber(at) > now - 60 then
      kept[#kept + 1] = e
    end
  end
  kept[#kept + 1] = string.format(',%d:%d:%d:%d:%d:%d:%d:%d', call, q, t, g, c, ep, a, now)
  done_s = table.concat(kept)
  return done_s
end

-- Records the call `call` as applied (see done_record).
local function done_put(q, t, g, c, ep, a)
  if call > 0 then
    redis.call('HSET', k, done_f, done_record(q, t, g, c, ep, a))
  end
end

-- A lease's report, the common case (of the counter's epoch and period,
-- from a lease not reclaimed whose holder's record is of that epoch, its
-- day recorded, no reclaim due, not sent before), with one read and one
-- write of the counter's hash: it does exactly what the rest of the
-- script does for it (give_back, rec_get/rec_put, done_put, reclaim,
-- taken_back; src/store/redis_script_tests.rs runs both on the same
-- calls), for about two thirds of the instructions (BENCHMARKS.md): it
-- parses only the holder record's fields it reads, and writes the rest
-- back as stored. Reports are most of a leasing replica's calls. Any
-- other call goes on below.
-- fast report: begin
-- The common report (k, call, ret_n, ret_epoch, ret_gen, ret_day, rec_name,
-- done_f as set): its answer, or nil (nothing written) when it is not.
local function fast_report()
  local rd = 'd:' .. ret_day .. ':'
  local f = redis.call('HMGET', k, 'ep', 'ps', 'pe', 'used', 'leased', 'rf', 'hx', rec_name,
    done_f, rd .. 'u', rd .. 'r', 'kt')
  -- The fields the common report needs, each number read once.
  if not (f[2] and f[3] and f[4] and f[10]) then
    return nil
  end
  local ep, ps, pe, t = f[1] and f[1] + 0 or 0, f[2] + 0, f[3] + 0, ret_day * 86400
  -- The holder's record (see rec_get): units held, and the rest of it as
  -- stored; generation and epoch (the other fields only to tell whether
  -- it empties).
  local o, rest, g, rep = string.match(f[8] or '',
    '^([^,]*)(,[^,]*,[^,]*,[^,]*,([^,]*),[^,]*,[^,]*,[^,]*,([^,]*),[^,]*,[^,]*)$')
  o = tonumber(o)
  if o and ps <= t and t < pe and ret_epoch == ep
      and tonumber(rep) == ep and tonumber(g) == ret_gen
      and (not f[7] or now_us < f[7] + 0)
      and not string.find(f[9] or '', ',' .. call .. ':', 1, true) then
    local used, leased, kt = f[4] + 0, f[5] and f[5] + 0 or 0, tonumber(f[12]) or 0
    if KEYS[3] and tonumber(copy_epoch or 0) > 0 and copy_ahead(ep, ps, used, leased, f[6], kt) then
      return { 6 }
    end
    o = math.max(o - ret_n, 0)
    leased = math.max(leased - ret_n, 0)
    done_s = f[9] or ''
    local on_day = f[10] + ret_n
    local writes = { 'leased', leased, done_f, done_record(0, 0, 0, 0, 0, 0), rd .. 'u', on_day }
    if f[11] then
      writes[#writes + 1], writes[#writes + 2] = rd .. 'r', math.max(f[11] - ret_n, 0)
    end
    -- Emptied: nothing held, kept, out or still to reclaim on it either.
    local empty = o <= 0
    if empty then
      local u, tk, _, _, kk, pc = string.match(rest, '^,([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*)')
      empty = (tonumber(u) or 0) <= 0 and (tonumber(tk) or 0) <= 0
        and (tonumber(kk) or 0) <= 0 and (tonumber(pc) or 0) <= 0
    end
    if empty then
      redis.call('HDEL', k, rec_name)
    else
      writes[#writes + 1], writes[#writes + 2] = rec_name, string.format('%d', o) .. rest
    end
    redis.call('HSET', k, unpack(writes))
    redis.call('EXPIRE', k, ttl)
    return { 0, used, leased, ep, ps, kt, math.max(leased - kt - o, 0), on_day }
  end
end
if op == 'report' and call > 0 and ret_n > 0 and ret_q == 0 and ret_metered and ret_gen > 0 then
  local answer = fast_report()
  if answer then
    return answer
  end
end
-- "reports": a replica's reports of many leases in one call, on one server.
-- KEYS[1] and KEYS[4], KEYS[5], ... the counters (KEYS[2] and KEYS[3] as
-- for any call), ARGV 1-40 as for any call, then ten per report: the
-- call's id, the requests it reports, the lease's epoch, generation, the
-- day it was granted on, the holder's record, its grant time (µs), and the
-- replica's copy of the counter (ARGV[23], ARGV[25], ARGV[9]). Each
-- answer is a report's, or empty: not the common report, nothing written,
-- for the replica to send alone. One whose copy is ahead (6) stops the
-- rest, answered empty.
if op == 'reports' then
  local answers, stop = {}, false
  for i = 1, (#ARGV - 40) / 10 do
    local a = 40 + (i - 1) * 10
    local answer
    call, ret_n = ARGV[a + 1] + 0, ARGV[a + 2] + 0
    ret_epoch, ret_gen = ARGV[a + 3] + 0, ARGV[a + 4] + 0
    if not stop and call > 0 and ret_n > 0 and ret_gen > 0 then
      k = KEYS[i == 1 and 1 or i + 2]
      ret_day, rec_name = ARGV[a + 5] + 0, ARGV[a + 6]
      done_f = 'hd' .. string.sub(rec_name, 2)
      now_us = ARGV[a + 7] + 0
      now = math.floor(now_us / 1e6)
      copy_used, copy_epoch, copy_start = ARGV[a + 8], ARGV[a + 9], ARGV[a + 10]
      answer = fast_report()
    end
    answers[i] = answer or {}
    stop = stop or (answer ~= nil and answer[1] == 6)
  end
  return answers
end
-- fast report: end
-- A decision, the common case: the counter's quota period is the stored
-- one (or, for a throttle without a quota, the counter has no period),
-- today's record started, no reclaim due. One read and one write of
-- the counter's hash do exactly what the rest of the script does for it
-- (the checks, refill, verdict and record; src/store/redis_script_tests.rs
-- runs both on the same calls), but the EXPIRE: the call that started
-- today's record set the hash's lifetime, as every call that writes one
-- does, so it outlives today by the history kept. Anything else goes on
-- below, alone, as nothing was written.
-- fast decide: begin
-- The common decision (k, now_us and now_us_s as sent, now, day, bf, rate,
-- burst, kind, pend, plimit and the copy's copy_used, copy_epoch,
-- copy_start as set): its answer, or nil (nothing written) when it is not.
local now_us_s
local function fast_decide()
  local du, dr = 'd:' .. day .. ':u', 'd:' .. day .. ':r'
  local f = redis.call('HMGET', k, 'pk', 'pe', 'used', 'allow', 'leased', 'kt', 'hx', 'ep', 'ps',
    'rf', du, bf .. ':t', bf .. ':u', bf .. ':l')
  -- A throttle without a quota: none of the quota's fields count (the
  -- general path reads none), but for a counter with a period (its plan
  -- had a quota), which counts the request in it.
  local metered = kind ~= ''
  if not f[11] or (f[7] and now_us >= num(f[7]))
      or (metered and (f[1] ~= kind or not (f[2] and now < num(f[2]))))
      or (not metered and bf == '') then
    return nil
  end
  local epoch, used, allow, leased, kept_total = num(f[8]) or 0, 0, nil, 0, 0
  if metered then
    used, allow = num(f[3]) or 0, num(f[4])
    leased, kept_total = num(f[5]) or 0, num(f[6]) or 0
  end
  if (num(copy_epoch) or 0) > 0 and copy_ahead(f[8], f[9], f[3], f[5], f[10], f[6]) then
    return { 6, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
  end
  local remaining = metered and math.max((allow or plimit) - used, 0) or 0
  local tokens, updated, writes = 0, now_us_s, {}
  local verdict = 0
  if bf ~= '' then
    local cap = math.max(burst - (num(f[14]) or 0), 0)
    tokens = num(f[12])
    local at = num(f[13])
    if tokens == nil or at == nil then
      tokens = burst
    elseif now_us > at then
      tokens = refill(tokens, at, rate, cap)
    else
      updated = f[13]
    end
    tokens = math.min(tokens, cap)
    if tokens < 1 then
      verdict = 1
    elseif metered and remaining < 1 then
      verdict = 2
    else
      tokens = tokens - 1
    end
    writes = { bf .. ':t', tostring(tokens), bf .. ':u', updated }
  elseif remaining < 1 then
    verdict = 2
  end
  local shown = bf ~= '' and writes[2] or '0'
  if verdict ~= 0 then
    if bf ~= '' then
      redis.call('HSET', k, unpack(writes))
    end
    return { verdict, shown, remaining, 0, 0, epoch, used, allow or -1, 0, 0, leased,
      { kept_total, -1, -1 } }
  end
  used, remaining = used + 1, math.max(remaining - 1, 0)
  local today_used = num(f[11]) + 1
  local n = #writes
  writes[n + 1], writes[n + 2] = du, today_used
  if metered then
    writes[n + 3], writes[n + 4] = 'used', used
    if not f[5] then
      -- (The general path writes it: 0.)
      writes[n + 5], writes[n + 6] = 'leased', 0
    end
  elseif f[1] then
    writes[n + 3], writes[n + 4] = 'used', (num(f[3]) or 0) + 1
  end
  writes[#writes + 1], writes[#writes + 2] = dr, remaining + leased
  redis.call('HSET', k, unpack(writes))
  return { 0, shown, remaining, 0, 0, epoch, used, allow or -1, 0, 0, leased,
    { kept_total, -1, today_used } }
end
-- "decides": a replica's decisions of many counters in one call, on one
-- server. KEYS[1] and KEYS[4], KEYS[5], ... the counters (KEYS[2] and
-- KEYS[3] as for any call), ARGV 1-40 as for any call, then twelve per
-- decision: now_us, now, day, bucket field, rate, burst, period kind,
-- start, end, limit, and the replica's copy of the counter (ARGV[23],
-- ARGV[25]). Each answer is a decision's (as "decide" answers), or empty:
-- not the common decision, nothing written, for the replica to send alone.
--
-- A call names an id too (ARGV[35], growing; 0: none) and the replica's
-- oldest call still open (ARGV[36]): Redis records which of its decisions
-- it admitted (field ARGV[39] .. ':d' of KEYS[3], ',<id>:<i>.<i>...:<now>'
-- per call, kept while open and for a minute at most). A replica whose
-- call went unanswered (its connection died, or it stopped waiting) asks
-- for that record ("settle" in redis_decides.rs) and gives back what the
-- call admitted: its requests were answered by the failure policy,
-- uncounted. A call that finds itself settled before it ran (recorded
-- with 'v') decides nothing.
if op == 'decides' then
  local id, oldest = ARGV[35] + 0, ARGV[36] + 0
  local count, calls = string.format('%d', applied + 1), decides_calls
  local all_count = string.format('%d', all + 1)
  if id > 0 and string.find(calls, ',' .. id .. ':', 1, true) then
    redis.call('HSET', KEYS[3], ARGV[39], count, all_f, all_count)
    return {}
  end
  local answers, admitted = {}, {}
  for i = 1, (#ARGV - 40) / 12 do
    local a = 40 + (i - 1) * 12
    k = KEYS[i == 1 and 1 or i + 2]
    now_us_s = ARGV[a + 1]
    now_us, now, day = num(now_us_s), num(ARGV[a + 2]), ARGV[a + 3]
    bf, rate, burst = ARGV[a + 4], num(ARGV[a + 5]), num(ARGV[a + 6])
    kind, pend, plimit = ARGV[a + 7], num(ARGV[a + 9]), num(ARGV[a + 10])
    copy_used, copy_epoch, copy_start = ARGV[a + 11], ARGV[a + 12], ARGV[a + 8]
    answers[i] = fast_decide() or {}
    if answers[i][1] == 0 then
      admitted[#admitted + 1] = i
    end
  end
  if id > 0 then
    local kept, since = {}, ARGV[3] - 60
    for e in string.gmatch(calls, ',[^,]+') do
      -- A call settled before it ran stays void for the minute (it may
      -- still come, on a connection the replica gave up).
      local other, what, at = string.match(e, '^,(%d+):([^:]*):(%d+)$')
      if other and (tonumber(other) >= oldest or what == 'v') and tonumber(at) > since then
        kept[#kept + 1] = e
      end
    end
    kept[#kept + 1] = ',' .. id .. ':' .. table.concat(admitted, '.') .. ':' .. ARGV[3]
    calls = table.concat(kept)
  end
  redis.call('HSET', KEYS[3], ARGV[39], count, ARGV[39] .. ':d', calls, all_f, all_count)
  return answers
end
-- fast decide: end
-- A lease renewed, the common case: the lease given back is of the
-- counter's epoch and period and of today, with nothing of it reported and
-- unacknowledged, from the holder's record of that epoch and generation,
-- no record to reclaim (a reclaim due with none to make only moves 'hx'),
-- the call not applied before, and the request admitted with a new slice
-- granted. One read and one write of the counter's hash
-- do exactly what the rest of the script does for it (give_back, reclaim,
-- the decision, the grant, done_put, record; src/store/redis_script_tests.rs
-- runs both on the same calls). Renewals cost a leasing replica's Redis
-- about as much as its reports (BENCHMARKS.md). Anything else (a refusal,
-- no grant, another day, a new period) goes on below, as nothing was
-- written.
-- fast lease: begin
if op == 'lease' and not ahead and call > 0 and ret_metered and ret_gen > 0 and ret_pending == 0
    and kind ~= '' and ret_day == tonumber(day) and want_q > 0
    and (bf ~= '' or ret_gt == 0) then
  local du, lf = 'd:' .. day .. ':u', 'b:' .. string.sub(rec_name, 20) .. ':l'
  local f = redis.call('HMGET', k, 'ep', 'pk', 'ps', 'pe', 'used', 'leased', 'allow', 'kt', 'rf',
    'hx', rec_name, done_f, du, bf .. ':t', bf .. ':u', lf)
  local ep, ps, pe = tonumber(f[1]), tonumber(f[3]), tonumber(f[4])
  local x = record_numbers(f[11])
  local day_start = ret_day * 86400
  local hx = tonumber(f[10])
  local reclaim_due = hx and now_us >= hx
  if ep and ep == ret_epoch and f[2] == kind and ps and pe and ps <= day_start
      and day_start < pe and now < pe and x and x[9] == ep and x[5] == ret_gen
      and f[13] and f[5]
      and (bf == '' or lf == bf .. ':l')
      and not string.find(f[12] or '', ',' .. call .. ':', 1, true) then
    if KEYS[3] and tonumber(ARGV[25] or 0) > 0 and copy_ahead(ep, ps, f[5], f[6], f[9], f[8]) then
      return { 6, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
    end
    -- A reclaim due ('hx'): the general path reclaims any other record
    -- that holds something and expired (plus the grace); if none did,
    -- 'hx' becomes what reclaim() makes it, the earliest such expiry.
    local clear, next_due = true, nil
    if reclaim_due then
      local names = {}
      for _, name in ipairs(redis.call('HKEYS', k)) do
        if string.sub(name, 1, 2) == 'h:' and name ~= rec_name then
          names[#names + 1] = name
        end
      end
      local records = #names > 0 and redis.call('HMGET', k, unpack(names)) or {}
      for _, record in ipairs(records) do
        local r = record_numbers(record)
        if not r then
          clear = false
        else
          -- Units of another epoch ended with it (tokens did not).
          local held = r[3] > 0 or (r[9] == ep and (r[1] > 0 or r[2] > 0))
          if held then
            clear = clear and now_us < r[4] + grace_us
            next_due = math.min(next_due or r[4] + grace_us, r[4] + grace_us)
          end
        end
      end
    end
    -- The lease comes back (give_back).
    local used = math.max(tonumber(f[5]) - ret_q, 0)
    local leased = math.max((tonumber(f[6]) or 0) - ret_q - ret_n, 0)
    local allow, kept_total = tonumber(f[7]), tonumber(f[8]) or 0
    local o, u, t = math.max(x[1] - ret_q - ret_n, 0), math.max(x[2] - ret_cap, 0), x[3]
    -- Its bucket (refilled and stored, as settle_bucket does, before the
    -- tokens out on leases change), with its tokens back.
    local tokens, updated, out = 0, now_us, tonumber(f[16]) or 0
    if bf ~= '' then
      tokens = burst
      local stored, at = tonumber(f[14]), tonumber(f[15])
      if ret_gt > 0 then
        if stored and at then
          stored, at = refill(stored, at, rate, math.max(burst - out, 0))
          stored = tonumber(tostring(stored))
        end
        out, t = math.max(out - ret_gt, 0), math.max(t - ret_gt, 0)
      end
      if stored and at then
        tokens, updated = refill(stored, at, rate, math.max(burst - out, 0))
      end
      tokens = math.min(tokens + ret_t, math.max(burst - out, 0))
    end
    -- The request, and the new slice.
    local remaining = math.max((allow or plimit) - used, 0)
    local q_take = math.min(want_q, math.floor((remaining - 1) / 8))
    local t_take = 0
    if bf ~= '' then
      t_take = math.min(want_t, math.floor((tokens - 1) / 2))
    end
    -- The holder's own record, if it still holds a lease after the
    -- give-back, is one a reclaim looks at too.
    if reclaim_due and (o > 0 or u > 0 or t > 0) then
      clear = clear and now_us < x[4] + grace_us
      next_due = math.min(next_due or x[4] + grace_us, x[4] + grace_us)
    end
    if clear and remaining >= 1 and q_take > 0 and (bf == '' or (tokens >= 1 and t_take > 0)) then
      used, remaining = used + 1 + q_take, remaining - 1 - q_take
      leased = leased + q_take
      if bf ~= '' then
        tokens = tokens - 1 - t_take
      end
      local writes = {}
      local g, e, kk, pc, p = x[5], x[4], x[6], x[7], x[8]
      if o <= 0 and u <= 0 and t <= 0 and kk <= 0 and pc <= 0 then
        -- Emptied: a new record, of a new generation.
        g, e, kk, pc, p = redis.call('HINCRBY', k, 'hg', 1), 0, 0, 0, 0
      end
      local cap = math.ceil(q_take / share)
      o, u, t, e = o + q_take, u + cap, t + t_take, math.max(e, now_us + lease_us)
      local n = 0
      local function put(field, value)
        writes[n + 1], writes[n + 2], n = field, value, n + 2
      end
      put(rec_name, string.format('%d,%d,%d,%d,%d,%d,%d,%d,%d,%s,%d', o, u, t, e, g, kk, pc, p,
        ep, tostring(rate), burst))
      if reclaim_due then
        put('hx', math.min(next_due or e + grace_us, e + grace_us))
      elseif not hx or e + grace_us < hx then
        put('hx', e + grace_us)
      end
      if bf ~= '' then
        put(bf .. ':t', tostring(tokens))
        put(bf .. ':u', updated)
        put(lf, out + t_take)
      end
      put('used', used)
      put('leased', leased)
      done_s = f[12] or ''
      put(done_f, done_record(q_take, t_take, g, cap, ep, 0))
      put('d:' .. day .. ':r', remaining + leased)
      local today_used = redis.call('HINCRBY', k, du, ret_n + 1)
      redis.call('HSET', k, unpack(writes))
      redis.call('EXPIRE', k, ttl)
      return { 0, tostring(tokens), remaining, q_take, t_take, ep, used, allow or -1, g, cap,
        leased, { kept_total, math.max(leased - kept_total - o, 0), today_used } }
    end
  end
end
-- fast lease: end
if op == 'forget' then
  -- The key left the plan: its counts and history go, but for the epoch,
  -- which moves on so that no lease of the counter as it was (the caller
  -- revokes them on every replica) is ever spent or given back into it
  -- ('fe': a lease of an older epoch given back later counts nothing, see
  -- give_back).
  local next_epoch = (tonumber(redis.call('HGET', k, 'ep')) or 0) + 1
  redis.call('DEL', k)
  redis.call('HSET', k, 'ep', next_epoch, 'fe', next_epoch)
  redis.call('EXPIRE', k, ttl)
  return next_epoch
end
if ARGV[22] == '1' and (op == 'decide' or op == 'lease') and redis.call('EXISTS', k) == 0 then
  -- Seen before, gone now: the replica checks whether Redis lost its data.
  return { 3, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
end
if ARGV[22] == '1' and (op == 'set' or op == 'add') and redis.call('EXISTS', k) == 0 then
  -- As for a decision (UpdateUsage, see above).
  return { 3 }
end
local epoch = tonumber(redis.call('HGET', k, 'ep')) or 0

-- The replica named in a holder's record ('h:<holder>:<bucket>'), or nil.
local function holder_of(record)
  return string.match(record, '^h:([^:]+):')
end

-- The holder's calls applied (see "Calls" above), each
-- ",<id>:<units granted>:<tokens granted>:<generation>:<cap>:<epoch>:<answer>:<secs>",
-- the newest last: the call `call` if it was applied, or nil.
local function done_get(id)
  done_s = redis.call('HGET', k, done_f) or ''
  local q, t, g, c, ep, a = string.match(done_s,
    ',' .. (id or call) .. ':(%d+):(%d+):(%d+):(%d+):(%d+):(%d+):')
  if not q then
    return nil
  end
  return { q = tonumber(q), t = tonumber(t), g = tonumber(g), c = tonumber(c),
    ep = tonumber(ep), a = tonumber(a) }
end

-- The units this holder's record (as stored, `s`) holds of the counter's
-- epoch (see rec_get).
local function units_held(s)
  local o, ep = string.match(s or '', '^([^,]*),[^,]*,[^,]*,[^,]*,[^,]*,[^,]*,[^,]*,[^,]*,([^,]*)')
  if tonumber(ep) ~= epoch then
    return 0
  end
  return tonumber(o) or 0
end

-- The answer to a give-back or report: `answer`, with what the counter
-- holds now (used, leased, epoch, period start, kept, the units out on
-- the other holders' leases, and the admitted requests recorded on the
-- call's day, -1 for none), for the replica's copy; for a settle, then the
-- verdict of the lease call it settled if that call was applied (0: its
-- request admitted), -1 if not.
local function taken_back(answer, applied)
  local now_q = redis.call('HMGET', k, 'used', 'leased', 'ps', 'kt',
    rec_name ~= '' and rec_name or 'ep', 'd:' .. day .. ':u')
  local leased, kept = tonumber(now_q[2]) or 0, tonumber(now_q[4]) or 0
  local others = -1
  if rec_name ~= '' then
    others = math.max(leased - kept - units_held(now_q[5]), 0)
  end
  return { answer, tonumber(now_q[1]) or 0, leased, epoch, tonumber(now_q[3]) or -1, kept, others,
    tonumber(now_q[6]) or -1, applied }
end

-- A lease call a settle found not applied is recorded as done with this
-- verdict: void, should it come after (and a settle sent again tells it
-- from one applied).
local VOID = 9

-- A call sent again that was applied: it is not applied twice (a "lease"
-- settled first is void). For a settle, the lease call it settles if that
-- was applied, and its verdict (-1: not applied).
local settled, settled_verdict = nil, -1
if call > 0 then
  local d = done_get()
  if d and op == 'lease' then
    return { 5, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
  elseif d and op == 'settle' then
    settled = d
    if d.a ~= VOID then
      settled_verdict = d.a
    end
  elseif d then
    return taken_back(d.a)
  end
end
-- 'kt': of the leased units, those kept from reclaimed leases (their
-- holders may have admitted them: they count as admitted in the copies).
local used, allow, leased, remaining, kept_total = 0, nil, 0, 0, 0
local function quota_left()
  return math.max((allow or plimit) - used, 0)
end

-- The most tokens bucket `b` may hold: its burst less the tokens out on
-- leases of it.
local function bucket_cap(b, most)
  return math.max(most - (tonumber(redis.call('HGET', k, b .. ':l')) or 0), 0)
end

-- Bucket `b` (rate `r`, burst `most`) refilled up to now_us, never past
-- its cap: its tokens and when they were counted; nil before its first
-- decision (it is full then).
local function refilled_bucket(b, r, most)
  local t = redis.call('HMGET', k, b .. ':t', b .. ':u')
  local tokens, updated = tonumber(t[1]), tonumber(t[2])
  if tokens == nil or updated == nil then
    return nil, nil
  end
  if now_us > updated then
    tokens, updated = refill(tokens, updated, r, bucket_cap(b, most))
  end
  return tokens, updated
end

-- The call's bucket `bf`, refilled.
local function refilled()
  return refilled_bucket(bf, rate, burst)
end

-- Bucket `b` refilled up to now and stored: done before the tokens out on
-- its leases change, which changes its cap from now on.
local function settle_bucket(b, r, most)
  local tokens, updated = refilled_bucket(b, r, most)
  if tokens ~= nil then
    redis.call('HSET', k, b .. ':t', tostring(tokens), b .. ':u', updated)
  end
end

-- A holder's record: units it holds (o), most kept on reclaim (u), tokens
-- (t), expiry (e, µs), generation (g), units kept from reclaimed leases (kk),
-- what of their cap and tokens is still out (pc), units reported but
-- unacknowledged when they came back (p), epoch (ep), the bucket's rate and
-- burst (r, b). Units of another epoch ended with it.
local function rec_get(f)
  -- One match of the whole record (a loop over its fields costs 12,000
  -- instructions more a call), or the loop for a record of fewer fields
  -- (written by an earlier version).
  local s = redis.call('HGET', k, f) or ''
  local x = { string.match(s,
    '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*)') }
  if x[1] == nil then
    for n in string.gmatch(s, '[^,]+') do
      x[#x + 1] = n
    end
  end
  for i = 1, 11 do
    x[i] = tonumber(x[i])
  end
  local r = { o = x[1] or 0, u = x[2] or 0, t = x[3] or 0, e = x[4] or 0, g = x[5] or 0,
    kk = x[6] or 0, pc = x[7] or 0, p = x[8] or 0, ep = x[9] or epoch, r = x[10] or 0,
    b = x[11] or 0 }
  if r.ep ~= epoch then
    r.o, r.u, r.kk, r.pc, r.p, r.ep = 0, 0, 0, 0, 0, epoch
  end
  return r
end

local function rec_put(f, r)
  if r.o <= 0 and r.u <= 0 and r.t <= 0 and r.kk <= 0 and r.pc <= 0 then
    redis.call('HDEL', k, f)
    return
  end
  redis.call('HSET', k, f, string.format('%d,%d,%d,%d,%d,%d,%d,%d,%d,%s,%d', r.o, r.u, r.t, r.e,
    r.g, r.kk, r.pc, r.p, r.ep, tostring(r.r), r.b))
end

-- `n` units held for leases are no longer used: given back.
local function unlease(n)
  if n > 0 then
    local q = redis.call('HMGET', k, 'used', 'leased')
    redis.call('HSET', k, 'used', math.max((tonumber(q[1]) or 0) - n, 0),
      'leased', math.max((tonumber(q[2]) or 0) - n, 0))
  end
end

-- A reclaim's mark (see reclaim and late_tokens): its generation, the
-- tokens left to give back, the bucket's count time then and its rate (as
-- written), and what the bucket has refilled since, to its count time
-- `counted`; nil when either is not there.
local function reclaim_mark(mark, counted)
  local g, left, at, r = string.match(mark or '', '^(%d+):(%d+):([^:]+):(.+)$')
  if not (g and tonumber(counted) and tonumber(r)) then
    return nil
  end
  local refilled = tonumber(r) * math.max(tonumber(counted) - tonumber(at), 0) / 1e6
  return tonumber(g), tonumber(left), at, r, refilled
end

-- The tokens a lease given back after its reclaim puts back in the
-- bucket: of its unspent ones (ret_t), what the bucket has not refilled
-- of the room they held since the reclaim. Measured in the bucket's own
-- clock (its count's time, 'b:u', only moves on; refills are credited up
-- to it, at the rate of the calls then): from the reclaim's to now's, at
-- the rate it was reclaimed under; none if the rate is another (the
-- refill's pace in between is not known), none but after the reclaim of
-- the lease's own generation (not after Redis lost its data). Its holder
-- was alive (a stalled Redis): written off, the tokens cost a throttled
-- key minutes of refusals; given back whole, they would count twice with
-- the refill, past the burst.
local function late_tokens()
  if ret_t <= 0 or rec_name == '' or bf == '' then
    return 0
  end
  local field = 'hz' .. string.sub(rec_name, 2)
  local z = redis.call('HMGET', k, field, bf .. ':u')
  local g, left, at, r, refilled = reclaim_mark(z[1], z[2])
  if g ~= ret_gen or r ~= tostring(rate) then
    return 0
  end
  local back = math.floor(math.max(math.min(ret_t, left) - refilled, 0))
  -- (Another lease of that generation shares what is left.)
  redis.call('HSET', k, field, string.format('%s:%d:%s:%s', g, left - back, at, r))
  return back
end

-- Reclaims the leases whose holder neither gave them back nor can spend
-- them any more (expired, plus the grace), once 'hx' says one may be due.
local function reclaim()
  local due = tonumber(redis.call('HGET', k, 'hx'))
  if not due or now_us < due then
    return
  end
  local next_due = nil
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.sub(f, 1, 2) == 'h:' then
      local r = rec_get(f)
      if r.o > 0 or r.u > 0 or r.t > 0 then
        if r.e + grace_us <= now_us then
          local kept = math.min(r.o, r.u)
          unlease(r.o - kept)
          if kept > 0 then
            redis.call('HINCRBY', k, 'kt', kept)
          end
          if r.t > 0 then
            local b = 'b:' .. string.sub(f, 20)
            settle_bucket(b, r.r, r.b)
            redis.call('HSET', k, b .. ':l',
              math.max((tonumber(redis.call('HGET', k, b .. ':l')) or 0) - r.t, 0))
            -- For a late give-back (see late_tokens): the generation, its
            -- tokens, the bucket's clock and rate.
            local at = redis.call('HGET', k, b .. ':u')
            if at then
              redis.call('HSET', k, 'hz' .. string.sub(f, 2),
                string.format('%d:%d:%s:%s', r.g, r.t, at, tostring(r.r)))
            end
          end
          r.kk, r.pc = r.kk + kept, r.pc + r.u + r.t
          r.o, r.u, r.t = 0, 0, 0
          r.g = redis.call('HINCRBY', k, 'hg', 1)
          rec_put(f, r)
        elseif not next_due or r.e + grace_us < next_due then
          next_due = r.e + grace_us
        end
      end
    end
  end
  if next_due then
    redis.call('HSET', k, 'hx', next_due)
  else
    redis.call('HDEL', k, 'hx')
  end
end

-- Starts the record of day `d` if it has none: a new latest day ('dl')
-- drops every day before the 100 kept (as counter.rs does). False for a
-- day older than the history kept.
local function start_day(d)
  if redis.call('HEXISTS', k, 'd:' .. d .. ':u') == 1 then
    return true
  end
  local dmin = tonumber(redis.call('HGET', k, 'dmin')) or d
  if d < dmin then
    return false
  end
  local latest = tonumber(redis.call('HGET', k, 'dl'))
  if d >= (latest or d) then
    local oldest = d - 99
    for x = dmin, oldest - 1 do
      redis.call('HDEL', k, 'd:' .. x .. ':u', 'd:' .. x .. ':r', 'd:' .. x .. ':w')
    end
    redis.call('HSET', k, 'dmin', math.max(dmin, oldest), 'dl', d)
  end
  -- A new day (not the first one recorded, as on a counter just put back
  -- after Redis lost its data, whose restore marks must stay): the
  -- records of calls of replicas gone (or idle) for a minute go, as do
  -- the marks of restores (a lease of the counter as it was comes back
  -- within seconds of one): each replica that ever leased the counter,
  -- or restored it, left one. So do the marks of reclaims whose tokens the
  -- bucket has refilled since (late_tokens would give none back).
  if latest and d > latest then
    for _, f in ipairs(redis.call('HKEYS', k)) do
      local prefix = string.sub(f, 1, 3)
      if prefix == 'hd:' then
        local at = tonumber(string.match(redis.call('HGET', k, f), ':(%d+)$'))
        if not at or at <= now - 60 then
          redis.call('HDEL', k, f)
        end
      elseif prefix == 'hr:' then
        redis.call('HDEL', k, f)
      elseif prefix == 'hz:' then
        local mark = redis.call('HMGET', k, f, 'b:' .. string.sub(f, 21) .. ':u')
        local _, left, _, _, refilled = reclaim_mark(mark[1], mark[2])
        if not left or refilled >= left then
          redis.call('HDEL', k, f)
        end
      end
    end
  end
  redis.call('HSET', k, 'd:' .. d .. ':u', 0)
  return true
end

-- Today's record counts `n` more admitted requests, and the remaining now
-- ('today_used': its count, for the answer; -1: not recorded).
local today_used = -1
local function record(n)
  if start_day(tonumber(day)) then
    today_used = redis.call('HINCRBY', k, 'd:' .. day .. ':u', n)
    redis.call('HSET', k, 'd:' .. day .. ':r', remaining + leased)
  end
end

-- ---------------------------------------------------------------------------
-- op "refund" (kept apart from the other ops on purpose: it shares only the
-- argument layout). Gives back what one admitted decision at now_us spent,
-- for a request that never reached the upstream: its token (refilled up to
-- now_us, plus one, up to the burst) and, while the decision's period (kind,
-- start) is still the stored one, its unit of quota, also in that day's
-- record: the latest day keeps the remaining now, an earlier one records
-- one more. It never starts a period or a bucket. Mirrors Counter::refund
-- in src/limit/counter.rs.
if op == 'refund' then
  if kind ~= "" then
    local q = redis.call('HMGET', k, 'pk', 'ps', 'used', 'allow', 'leased', 'dl')
    local was = tonumber(q[3]) or 0
    if q[1] == kind and q[2] == pstart and was > 0 then
      used, allow, leased = was - 1, tonumber(q[4]), tonumber(q[5]) or 0
      redis.call('HSET', k, 'used', used)
      -- (What refunds took off: see "Rollback".)
      redis.call('HINCRBY', k, 'rf', 1)
      local du, dr = 'd:' .. day .. ':u', 'd:' .. day .. ':r'
      local on_day = tonumber(redis.call('HGET', k, du))
      if on_day then
        redis.call('HSET', k, du, math.max(on_day - 1, 0))
        local left = tonumber(redis.call('HGET', k, dr))
        if tonumber(q[6]) == tonumber(day) then
          redis.call('HSET', k, dr, quota_left() + leased)
        elseif left then
          redis.call('HSET', k, dr, left + 1)
        end
      end
    end
  end
  if bf ~= "" then
    local tokens, updated = refilled()
    if tokens ~= nil then
      redis.call('HSET', k, bf .. ':t', tostring(math.min(tokens + 1, bucket_cap(bf, burst))),
        bf .. ':u', updated)
    end
  end
  return 0
end
-- ---------------------------------------------------------------------------

-- Takes back a lease (ops "lease", "return", "report"; a report gives back
-- no units). The day it was granted on counts the requests it admitted.
-- A quota-less lease's requests count in the stored period if their day
-- lies in it, as a quota-less decision's do (also those admitted before an
-- UpdateUsage or before the period started: the replica cannot tell when
-- it admitted them, so they count, which never admits too much). A lease
-- of quota units of an older epoch changes nothing else: its units ended
-- with its epoch, as used (unless a change of kind counted them: 'carry'),
-- and leave 'stale' now (its day's recorded
-- remaining counted them as not used, unless UpdateUsage wrote them off
-- that day: 'd:<day>:w' counts the units it wrote off, which that day's
-- record counts as used). Otherwise what it held
-- is no longer leased and its unspent units are no longer used; nor are
-- its admitted requests if its day lies outside the stored period (one of
-- another kind that counted it). What now counts as used also comes off
-- the lease day's recorded remaining. Answers whether the lease had been
-- reclaimed, or 'behind' (taking nothing back) when the replica's copy saw
-- more than the counter holds (see "Rollback").
local function give_back()
  -- Its report on its way when it came back: applied since (sent again,
  -- it is not applied twice), its units are pending no more.
  if ret_pending > 0 and ret_report > 0 and done_get(ret_report) then
    ret_pending = 0
  end
  -- The lease day's fields (a number written into a string costs about
  -- as much as a field read: once, not at each use).
  local rd = 'd:' .. ret_day .. ':'
  local p = redis.call('HMGET', k, 'ps', 'pe', 'used', 'leased', 'stale', rd .. 'w',
    'carry', 'rf', 'kt', 'fe')
  -- The replica's copy saw more (see "Rollback"): nothing is taken back,
  -- and the call is refused.
  if KEYS[3] and tonumber(ARGV[25] or 0) > 0 and copy_ahead(epoch, p[1], p[3], p[4], p[8], p[9]) then
    return 'behind'
  end
  -- A lease of the counter as it was before its key left the plan: what
  -- it held and admitted went with that counter's counts and history.
  -- (Recorded on today's record, its admissions were counted again by the
  -- new counter's first period: 97 of a quota of 100 admitted after the
  -- key was added back, in a test run under load.)
  if ret_epoch < (tonumber(p[10]) or 0) then
    return false
  end
  local t = ret_day * 86400
  local in_period = p[1] and tonumber(p[1]) <= t and t < tonumber(p[2])
  local was, counted = tonumber(p[3]) or 0, false
  -- The holder's record, and whether the lease was reclaimed from it.
  -- The record's units are of the current epoch: a lease of quota units of
  -- another one (it ended with its epoch, as after Redis lost its data)
  -- changes none of them, only its tokens.
  local rec, reclaimed = nil, false
  local other_epoch = ret_metered and ret_epoch ~= epoch
  if rec_name ~= '' and ret_gen > 0 then
    rec = rec_get(rec_name)
    reclaimed = rec.g ~= ret_gen
  end
  -- What it held and did not admit in the stored period.
  local unused = ret_q
  if not in_period then
    unused = ret_q + ret_n
  end
  if not ret_metered then
    if in_period then
      redis.call('HSET', k, 'used', was + ret_n)
      counted = true
    end
  elseif ret_epoch ~= epoch then
    redis.call('HSET', k, 'stale', math.max((tonumber(p[5]) or 0) - ret_q - ret_n, 0))
    -- Units a change of kind counted ('carry') are used no more.
    local carry = tonumber(p[7]) or 0
    if carry > 0 then
      local less = math.min(math.min(unused, carry), was)
      redis.call('HSET', k, 'used', was - less, 'carry', math.max(carry - ret_q - ret_n, 0))
      redis.call('HINCRBY', k, 'rf', less)
    end
    local written_off = tonumber(p[6]) or 0
    counted = written_off < ret_q + ret_n
    if not counted then
      redis.call('HSET', k, rd .. 'w', written_off - ret_q - ret_n)
    end
    -- An add that reached into the leased units of this lease's epoch (the
    -- one before the counter's: no change since) counted them all as
    -- spent: what comes back unspent pays what the add took beyond the
    -- rest first ('cd'), then is remaining again. Once every lease is
    -- back, the remaining is what the add asked for, less what the leases
    -- admitted.
    if in_period and ret_q > 0 and ret_epoch + 1 == epoch then
      local c = redis.call('HMGET', k, 'ce', 'cd', 'allow')
      if tonumber(c[1]) == ret_epoch and c[3] then
        local owed = tonumber(c[2]) or 0
        local paid = math.min(owed, ret_q)
        local now_allow = tonumber(c[3]) + ret_q - paid
        redis.call('HSET', k, 'cd', owed - paid, 'allow', now_allow)
        if ret_q > paid and start_day(tonumber(day)) then
          local q = redis.call('HMGET', k, 'used', 'leased')
          local l = tonumber(q[2]) or 0
          redis.call('HSET', k, 'd:' .. day .. ':r',
            math.max(now_allow - (tonumber(q[1]) or 0), 0) + l)
        end
      end
    end
    -- A lease of the counter as it was before Redis lost its data, from a
    -- replica that has not put its copy back yet (its restore counts only
    -- what its leases admitted and Redis did not acknowledge, and this is
    -- acknowledged now): what it admitted counts here.
    local since = tonumber(redis.call('HGET', k, 're'))
    local holder = holder_of(rec_name)
    if since and ret_epoch < since and ret_n > 0 and holder
        and redis.call('HEXISTS', k, 'hr:' .. holder) == 0 then
      redis.call('HINCRBY', k, 'used', ret_n)
    end
  elseif reclaimed then
    -- Its unspent units went back when it was reclaimed. What it admitted
    -- was kept as used (any more is counted now: never admitted twice).
    local covered = math.min(ret_n, rec.kk)
    rec.kk, rec.p = rec.kk - covered, math.max(rec.p - covered, 0)
    redis.call('HSET', k, 'used', was + ret_n - covered,
      'leased', math.max((tonumber(p[4]) or 0) - covered, 0),
      'kt', math.max((tonumber(p[9]) or 0) - covered, 0))
    counted = true
  else
    redis.call('HSET', k, 'used', math.max(was - unused, 0),
      'leased', math.max((tonumber(p[4]) or 0) - ret_q - ret_n, 0))
    if rec then
      rec.o = math.max(rec.o - ret_q - ret_n, 0)
    end
    counted = true
  end
  if ret_n > 0 and start_day(ret_day) then
    redis.call('HINCRBY', k, rd .. 'u', ret_n)
    local left = tonumber(redis.call('HGET', k, rd .. 'r'))
    if counted and left then
      redis.call('HSET', k, rd .. 'r', math.max(left - ret_n, 0))
    end
  end
  if rec and op ~= 'report' then
    if reclaimed then
      -- Once every reclaimed lease is back, the units kept for them go
      -- back too, but for those reported and not yet acknowledged.
      if not other_epoch then
        rec.pc, rec.p = rec.pc - ret_cap - ret_gt, rec.p + ret_pending
        if rec.pc <= 0 then
          -- (No longer kept: what the copies counted of them comes off
          -- as refunds do, see "Rollback".)
          local back = math.max(rec.kk - rec.p, 0)
          if back > 0 then
            unlease(back)
            local kt = tonumber(redis.call('HGET', k, 'kt')) or 0
            redis.call('HSET', k, 'kt', math.max(kt - back, 0))
            redis.call('HINCRBY', k, 'rf', back)
          end
          rec.pc, rec.kk = 0, math.min(rec.kk, rec.p)
        end
      end
    else
      -- Units reported and not yet acknowledged stay keepable.
      if not other_epoch then
        rec.u = math.max(rec.u - ret_cap + ret_pending, 0)
      end
      if ret_gt > 0 then
        if bf ~= "" then
          settle_bucket(bf, rate, burst)
        end
        local lf = 'b:' .. string.sub(rec_name, 20) .. ':l'
        redis.call('HSET', k, lf, math.max((tonumber(redis.call('HGET', k, lf)) or 0) - ret_gt, 0))
        rec.t = math.max(rec.t - ret_gt, 0)
      end
    end
  end
  if rec then
    rec_put(rec_name, rec)
  end
  return reclaimed
end

if op == 'settle' then
  -- A lease call the replica stopped waiting for. Applied: its grant goes
  -- back whole, once. Not applied: it never will be, and the lease it
  -- gave back (the arguments) goes back now.
  if settled and settled.q == 0 and settled.t == 0 then
    -- (With the counter as it is: a bare answer says the counter is gone,
    -- and the replica then keeps the lease the call gave back, which it
    -- did give back.)
    return taken_back(0, settled_verdict)
  elseif settled then
    ret_q, ret_n, ret_t, ret_day, ret_epoch = settled.q, 0, settled.t, tonumber(day), settled.ep
    ret_metered, ret_gen, ret_cap, ret_gt, ret_pending = kind ~= "", settled.g, settled.c,
      settled.t, 0
    done_put(0, 0, 0, 0, 0, settled.a)
  elseif redis.call('EXISTS', k) == 1 then
    done_put(0, 0, 0, 0, 0, VOID)
  end
end

-- A reclaimed lease's tokens come back as late_tokens says.
local ret_tokens = ret_t
if op == 'return' or op == 'report' or op == 'settle' then
  -- A counter that is gone (forgotten, or lost with Redis's data) takes
  -- nothing back. A report of a reclaimed lease answers 1: spend no more.
  local answer = 0
  if redis.call('EXISTS', k) == 1 then
    local reclaimed = give_back()
    if reclaimed == 'behind' then
      return { 6 }
    elseif reclaimed then
      -- (A report gives no tokens back: its lease's return does.)
      ret_tokens, answer = op ~= 'report' and late_tokens() or 0, 1
    end
    if op ~= 'settle' then
      done_put(0, 0, 0, 0, 0, answer)
    end
    reclaim()
    if op ~= 'report' and bf ~= "" then
      local tokens, updated = refilled()
      if tokens ~= nil then
        redis.call('HSET', k, bf .. ':t', tostring(math.min(tokens + ret_tokens, bucket_cap(bf, burst))),
          bf .. ':u', updated)
      end
    end
    redis.call('EXPIRE', k, ttl)
    return taken_back(answer, op == 'settle' and settled_verdict or nil)
  end
  return { answer }
end
if op == 'lease' then
  local reclaimed = give_back()
  if reclaimed == 'behind' then
    return { 6, '0', 0, 0, 0, 0, 0, -1, 0, 0, 0, { 0, -1, -1 } }
  elseif reclaimed then
    ret_tokens = late_tokens()
  end
end
if op == 'decide' or op == 'lease' then
  reclaim()
end

if kind ~= "" then
  local q = redis.call('HMGET', k, 'pk', 'pe', 'used', 'allow', 'leased', 'stale', 'kt')
  used, allow, leased = tonumber(q[3]) or 0, tonumber(q[4]), tonumber(q[5]) or 0
  kept_total = tonumber(q[7]) or 0
  if not (q[1] == kind and q[2] and now < tonumber(q[2])) then
    -- A new period counts what was admitted on its days so far (as
    -- counter.rs does; a first quota too): nothing after a period of the same kind, which
    -- ends in a new epoch with its leases ('stale' keeps their units). A
    -- new period kind that overlaps the stored period (of another kind)
    -- also counts what that period's leases may have admitted and not yet
    -- reported: their units stay counted until given back.
    local stale = tonumber(q[6]) or 0
    local carry = 0
    if q[1] and q[1] ~= kind and tonumber(q[2]) > tonumber(pstart) then
      used, carry = leased + stale, stale
    else
      used, stale, leased, epoch, kept_total = 0, leased, 0, epoch + 1, 0
    end
    if q[1] ~= kind then
      for d = math.floor(tonumber(pstart) / 86400), tonumber(day) do
        used = used + (tonumber(redis.call('HGET', k, 'd:' .. d .. ':u')) or 0)
      end
    end
    allow = nil
    redis.call('HSET', k, 'pk', kind, 'ps', pstart, 'pe', pend, 'used', used, 'leased', leased,
      'stale', stale, 'carry', carry, 'ep', epoch, 'kt', kept_total)
    -- (Units counted for other holders' leases, 'su', are leased units:
    -- none are left in a new epoch.)
    redis.call('HDEL', k, 'allow', 'ae', leased == 0 and 'su' or 'ae')
  end
  remaining = quota_left()
end

if op == 'restore' then
  if kind ~= "" then
    local seen_used, seen_allow = tonumber(ARGV[23]) or 0, tonumber(ARGV[24]) or -1
    local seen_epoch = tonumber(ARGV[25]) or 0
    -- 're': the first epoch after this counter was put back. Epochs seen
    -- from it on were read from Redis as it is now: nothing to put back
    -- (adding them would count twice what Redis admitted since).
    -- Nor from a replica that put this counter back already (its restore
    -- sent again, when Redis lost its data again before it could tell:
    -- what it saw and what its leases admitted are in).
    local since = tonumber(redis.call('HGET', k, 're'))
    -- Unless the copy's range of epochs is one this replica put back
    -- itself under another tag ('ri', drawn by each first restore): that
    -- counter was lost in turn, and the replica that put it back first
    -- since (which had not seen that range) took the same numbers. The
    -- copy then holds what was admitted before that loss, and is put back.
    -- (Skipped, a replica's share was lost: 32,773 over a quota when Redis
    -- lost its data twice within 75 ms in a test run.)
    local tag = redis.call('HGET', k, 'ri')
    local lost_range = ARGV[27] ~= '0' and ARGV[27] ~= tag
    local own = tonumber(ARGV[34]) or 0
    local holder = holder_of(ARGV[26] or '')
    -- A holder putting the counter back is alive: what the first holder
    -- to put it back counted for the others' leases ('su', see "A dead
    -- holder's leases") goes, once.
    local first = holder and redis.call('HGET', k, 'sq')
    if first and first ~= holder then
      local su = tonumber(redis.call('HGET', k, 'su')) or 0
      if su > 0 then
        used, leased = math.max(used - su, 0), math.max(leased - su, 0)
        redis.call('HSET', k, 'used', used, 'leased', leased, 'su', 0)
      end
      if first ~= '-' then
        redis.call('HSET', k, 'sq', '-')
      end
    end
    if (since and seen_epoch >= since and not lost_range)
        or (holder and redis.call('HEXISTS', k, 'hr:' .. holder) == 1) then
      local now_q = redis.call('HMGET', k, 'used', 'leased', 'kt', 'd:' .. day .. ':u')
      return { epoch, tonumber(now_q[1]) or 0, tonumber(now_q[2]) or 0, tonumber(now_q[3]) or 0,
        tag or 0, 0, 0, tonumber(now_q[4]) or 0 }
    end
    -- Counts seen before the loss add what they saw beyond the largest
    -- one put back ('rb'); decisions made on the emptied counter before
    -- the first restore (none on one server) stay counted. A copy of a
    -- range its replica put back itself holds what that replica's leases
    -- had admitted (ARGV[29]), which a copy of an older range cannot
    -- hold: such a copy is measured against the largest less that part
    -- ('rbo', of the range 'rbe'); a copy of a later range than the
    -- largest's adds that part as its own. (Taken as seen, it swallowed
    -- what the other copy saw beyond the first one's: a lease's share
    -- over a quota when Redis lost its data twice within 90 ms.)
    local r = redis.call('HMGET', k, 'rb', 'rbe', 'rbo')
    local base, base_era = tonumber(r[1]) or 0, tonumber(r[2])
    local era = math.floor(seen_epoch / 4294967296)
    local in_copy = math.min(tonumber(ARGV[29]) or 0, seen_used)
    local mine, own_in_copy = seen_used, 0
    if base_era and era < base_era then
      base = math.max(base - (tonumber(r[3]) or 0), 0)
    elseif base_era and era > base_era then
      mine, own_in_copy = seen_used - in_copy, in_copy
    end
    local raised = 0
    if mine > base then
      raised = mine - base
      used = used + raised
      redis.call('HSET', k, 'used', used, 'rb', seen_used, 'rbe', era, 'rbo', in_copy)
    end
    -- Within one range of epochs, every new epoch (UpdateUsage) wrote off
    -- the leases out before it as used: a copy of a later epoch counts the
    -- older leases whole, and what their holders say they admitted with
    -- them is in it already ('oe': the latest epoch whose holders' own
    -- units were added, 'oo': how many, beyond what 'rb' holds). (Added
    -- all the same, an UpdateUsage raced by a loss kept up to all it set
    -- from being admitted: 0 of 21 in a test.) The part of a copy its
    -- own earlier restore added is not a lease's: it stays as above.
    local o = redis.call('HMGET', k, 'oe', 'oo')
    local own_epoch, own_added = tonumber(o[1]), tonumber(o[2]) or 0
    if own_epoch and math.floor(own_epoch / 4294967296) == era then
      if seen_epoch < own_epoch then
        own = 0
      else
        if seen_epoch > own_epoch then
          used = used - math.min(own_added, raised)
          own_added = 0
          redis.call('HSET', k, 'used', used)
        end
        redis.call('HSET', k, 'oe', seen_epoch, 'oo', own_added + own)
      end
    elseif not own_epoch or era > math.floor(own_epoch / 4294967296) then
      redis.call('HSET', k, 'oe', seen_epoch, 'oo', own)
    end
    own = own + own_in_copy
    -- Today's record of admitted requests (GetUsage's used count) as the
    -- copy last heard it (ARGV[17] its day, ARGV[19] its count), beyond
    -- the largest one put back ('rt', "<day>:<count>"), as for 'rb'.
    local seen_day, seen_today = tonumber(ARGV[17]) or 0, tonumber(ARGV[19]) or 0
    if seen_day == tonumber(day) and seen_today > 0 then
      local rt_day, rt = string.match(redis.call('HGET', k, 'rt') or '', '^(%d+):(%d+)$')
      local put = tonumber(rt_day) == seen_day and tonumber(rt) or 0
      if seen_today > put and start_day(seen_day) then
        redis.call('HINCRBY', k, 'd:' .. day .. ':u', seen_today - put)
        redis.call('HSET', k, 'rt', seen_day .. ':' .. seen_today)
      end
    end
    -- The copies count admissions, not leased units: each replica adds
    -- what its own leases admitted unacknowledged, so they add up across
    -- replicas (it spends those leases no more: their unspent units are
    -- admittable again).
    if own > 0 then
      used = used + own
      redis.call('HSET', k, 'used', used)
    end
    -- This replica's leases of the counter as it was are counted: what
    -- they admitted and report or bring back from now on adds nothing.
    if holder then
      redis.call('HSET', k, 'hr:' .. holder, 1)
    end
    if seen_allow >= 0 then
      local allow_epoch = tonumber(redis.call('HGET', k, 'ae'))
      if not allow or (allow_epoch and (seen_epoch > allow_epoch
          or (seen_epoch == allow_epoch and seen_allow < allow))) then
        redis.call('HSET', k, 'allow', seen_allow, 'ae', seen_epoch)
      end
    end
    if not since then
      -- The first restore: a new era of epochs, past any a replica saw
      -- before the loss (2^32 UpdateUsage calls apart), whose leases of
      -- the emptied counter's epochs are stale.
      -- (Past the latest epoch the replica's copy held too: it may have
      -- followed a counter put back and lost again, whose range of epochs
      -- must not come back.)
      redis.call('HINCRBY', k, 'stale', leased)
      epoch, leased = math.max(epoch, seen_epoch, tonumber(ARGV[38]) or 0) + 4294967296, 0
      kept_total = 0
      tag = ARGV[28]
      redis.call('HSET', k, 're', epoch, 'ri', tag)
    end
    -- The first holder to put the counter back counts what the other
    -- holders' leases held as used (ARGV[18], as its copy last heard):
    -- the dead may have admitted it unreported.
    if holder and not first then
      local suspect = tonumber(ARGV[18]) or 0
      if suspect > 0 then
        used, leased = used + suspect, leased + suspect
        redis.call('HSET', k, 'used', used, 'su', suspect)
      end
      redis.call('HSET', k, 'sq', holder)
    end
    redis.call('HSET', k, 'ep', epoch, 'leased', leased, 'kt', kept_total)
    redis.call('EXPIRE', k, ttl)
    -- The counter as it is now, for the replica's copy, its tag, 1: this
    -- replica put it back, what it added as its leases' own, and today's
    -- record (the copy's, else it lags the used count it follows: a second
    -- loss then put back a smaller record, 790 of 20,000 admissions short
    -- in a black-box run with Redis losing its data every 0.3 s).
    return { epoch, used, leased, kept_total, tag or 0, 1, own,
      tonumber(redis.call('HGET', k, 'd:' .. day .. ':u')) or 0 }
  end
  return { 0, 0, 0, 0, 0, 0, 0, 0 }
end

-- UpdateUsage ends the epoch: the outstanding leased units become stale,
-- and today's record (written next) counts them as used.
local function write_off()
  redis.call('HINCRBY', k, 'stale', leased)
  redis.call('HINCRBY', k, 'd:' .. day .. ':w', leased)
end

if op == 'set' then
  -- A new epoch: every outstanding lease ends here, its units used (the
  -- caller then revokes them on every replica before it answers), and
  -- exactly `set_to` remain for leases and decisions from now on.
  write_off()
  epoch = epoch + 1
  leased = 0
  allow = used + set_to
  remaining = quota_left()
  redis.call('HSET', k, 'allow', allow, 'ep', epoch, 'leased', 0, 'carry', 0, 'kt', 0, 'su', 0)
  redis.call('HDEL', k, 'ae')
  record(0)
  redis.call('EXPIRE', k, ttl)
  return { tonumber(redis.call('HGET', k, 'd:' .. day .. ':u')), set_to, used, allow, epoch, 0, 0 }
end

if op == 'add' then
  -- UpdateUsage "add": the remaining quota moves by `set_to` (negative
  -- subtracts), floored at 0, capped at model::MAX_COUNT, in this one step.
  -- Outstanding leases stay valid while what is not leased out covers the
  -- change (they are slices of quota already reserved: more room, or less
  -- of the unreserved rest, never lets a replica admit too much), so adds
  -- stay exact while replicas lease. The remaining it moves counts leased
  -- units as remaining (as counter.rs, which leases nothing, does). A
  -- subtraction that reaches into the leased units starts a new epoch as
  -- "set" does (the caller revokes), and counts every leased unit as
  -- spent until its lease comes back: until the revocation reaches them,
  -- the holders go on admitting with them, unknown to Redis (counted as
  -- remaining at once, 87-136 too many were admitted in a test, 176-487 in
  -- a black-box run). What comes back unspent is remaining again (see
  -- give_back): the remaining reaches what was asked from below.
  local total = math.max((allow or plimit) - (used - leased), 0) + set_to
  total = math.min(math.max(total, 0), 2147483647)
  if total < leased then
    -- What comes back unspent of these leases is remaining again, once
    -- what the add took beyond the rest is paid (see give_back).
    redis.call('HSET', k, 'ce', epoch, 'cd', leased - total)
    total = 0
    write_off()
    epoch, leased, kept_total = epoch + 1, 0, 0
    redis.call('HSET', k, 'su', 0)
  end
  allow = used + total - leased
  remaining = quota_left()
  redis.call('HSET', k, 'allow', allow, 'ep', epoch, 'leased', leased, 'carry', 0,
    'kt', kept_total)
  redis.call('HDEL', k, 'ae')
  record(0)
  redis.call('EXPIRE', k, ttl)
  return { tonumber(redis.call('HGET', k, 'd:' .. day .. ':u')), remaining + leased, used, allow, epoch,
    leased, kept_total }
end

-- The bucket, refilled up to now, with the returned tokens back in it.
local tokens, updated = 0, now_us
if bf ~= "" then
  tokens, updated = refilled()
  if tokens == nil then
    tokens, updated = burst, now_us
  end
  tokens = math.min(tokens + ret_tokens, bucket_cap(bf, burst))
end

local verdict = 0 -- 0 admitted, 1 throttled, 2 quota exceeded
if bf ~= "" then
  if tokens < 1 then
    verdict = 1
  elseif kind ~= "" and remaining < 1 then
    verdict = 2
  else
    tokens = tokens - decided
  end
  redis.call('HSET', k, bf .. ':t', tostring(tokens), bf .. ':u', updated)
elseif kind ~= "" and remaining < 1 then
  verdict = 2
end
if verdict ~= 0 then
  if op == 'lease' then
    done_put(0, 0, 0, 0, epoch, verdict)
  end
  redis.call('EXPIRE', k, ttl)
  return { verdict, tostring(tokens), remaining, 0, 0, epoch, used, allow or -1, 0, 0, leased,
    { kept_total, -1, -1 } }
end

used = used + decided
remaining = math.max(remaining - decided, 0)
local q_take, t_take, gen, cap, held = 0, 0, 0, 0, nil
if op == 'lease' then
  local grant = true
  if kind ~= "" then
    q_take = math.min(want_q, math.floor(remaining / 8))
    grant = q_take > 0
  elseif redis.call('HEXISTS', k, 'pk') == 1 then
    -- Without the quota, on a counter that has a quota period: each request
    -- counts in it when decided here (a lease could not say when its
    -- requests were admitted, before or after the period or an UpdateUsage).
    grant = false
  end
  if bf ~= "" then
    t_take = math.min(want_t, math.floor(tokens / 2))
    grant = grant and t_take > 0
  end
  if grant then
    used, leased, remaining = used + q_take, leased + q_take, remaining - q_take
    tokens = tokens - t_take
    if bf ~= "" then
      redis.call('HSET', k, bf .. ':t', tostring(tokens))
      redis.call('HINCRBY', k, bf .. ':l', t_take)
    end
    -- The holder's record (the caller names one): a new one starts a
    -- generation.
    local r = rec_get(rec_name)
    if r.g == 0 then
      r.g = redis.call('HINCRBY', k, 'hg', 1)
    end
    cap = math.ceil(q_take / share)
    if ahead then
      -- The slice joins the lease the replica still spends, whose cap
      -- (ARGV[28]) is already kept: the most the two may have spent
      -- unacknowledged is the larger cap, not their sum. (Summed, a
      -- replica killed then cost its leases' holders twice the share:
      -- up to 316 of 3,000 in a black-box run, against 106 before.)
      cap = math.max(cap - ret_cap, 0)
    end
    r.o, r.u, r.t = r.o + q_take, r.u + cap, r.t + t_take
    r.e, r.r, r.b = math.max(r.e, now_us + lease_us), rate, burst
    rec_put(rec_name, r)
    gen, held = r.g, r.o
    local due = tonumber(redis.call('HGET', k, 'hx'))
    if not due or r.e + grace_us < due then
      redis.call('HSET', k, 'hx', r.e + grace_us)
    end
  else
    q_take, t_take = 0, 0
  end
end
if kind ~= "" then
  redis.call('HSET', k, 'used', used, 'leased', leased)
elseif decided > 0 and redis.call('HEXISTS', k, 'pk') == 1 then
  -- No quota: the stored period counts the request all the same (as
  -- counter.rs does), so a quota put back within it counts it.
  redis.call('HINCRBY', k, 'used', decided)
end
if op == 'lease' then
  done_put(q_take, t_take, gen, cap, epoch, 0)
end
record(decided)
redis.call('EXPIRE', k, ttl)
-- For a lease, the units out on the other holders' leases (the replica's
-- copy keeps them: see "A dead holder's leases"); -1: not said.
local others = -1
if op == 'lease' then
  others = math.max(leased - kept_total - (held or units_held(redis.call('HGET', k, rec_name))), 0)
end
return { 0, tostring(tokens), remaining, q_take, t_take, epoch, used, allow or -1, gen, cap, leased,
  { kept_total, others, today_used } }
