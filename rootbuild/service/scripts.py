"""The queue's transitions as Lua scripts: each one runs atomically inside Redis.

Job: the text of every script ``queue.py`` registers. Keys (prefix ``P``, "rb" by default):
``P:job:<id>`` (hash: the job record), ``P:q:<tenant>`` (stream of job ids, consumer group
``workers``), ``P:log:<id>`` (stream: the job's log), ``P:ring`` (list: tenants with
backlog, rotated by each claim; a tenant leaves it when its stream has no undelivered
entry and rejoins at its next submit or reap),
``P:active:<tenant>`` (set: the tenant's WORKING jobs), ``P:busy`` (set: tenants with
WORKING jobs), ``P:tenants`` (set), ``P:caps`` (hash: per-tenant concurrency caps),
channel ``P:cancel`` (a cancelled running job's id).

Rules:
- Time is the Redis server's (``TIME``), so workers' clocks never disagree about leases,
  queue_ttl or the times in a record.
- A lease is the job's pending entry in its tenant's stream: a claim (``XREADGROUP``) or a
  reclaim (``XAUTOCLAIM``) delivers it, a heartbeat (``XCLAIM ... JUSTID``) resets its idle
  time without counting a delivery, and the terminal write ``XACK``s it in the same script.
- The job hash's ``attempt`` is the fencing token: heartbeat, log and complete compare it
  with the caller's and change nothing on a mismatch.
- The scripts touch keys they compute from their arguments: fine on one Redis (or Valkey)
  server; a Redis Cluster would put a tenant's keys in one hash slot (``{tenant}``).
"""

from __future__ import annotations

# Shared helpers, prepended to every script.
_PRELUDE = """
local P = ARGV[1]
local G = 'workers'
local function now_ms()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local function jkey(id) return P .. ':job:' .. id end
local function qkey(tenant) return P .. ':q:' .. tenant end
local function note(id, attempt, text)
  redis.call('XADD', P .. ':log:' .. id, '*', 'kind', 'note', 'attempt', attempt, 'data', text)
end
-- End a job (one already ended keeps its state): terminal fields, XACK + XDEL of its
-- entry, out of its tenant's active set; its hash and log expire after the retention time.
local function finish(id, tenant, entry, state, now, reason, message, step, retention)
  local job = jkey(id)
  local current = redis.call('HGET', job, 'state')
  if current == 'QUEUED' or current == 'WORKING' then
    redis.call('HSET', job, 'state', state, 'finished_at', now)
    if reason ~= '' then
      redis.call('HSET', job, 'failure_reason', reason, 'failure_message', message,
                 'failure_step', step)
    end
  end
  redis.call('XACK', qkey(tenant), G, entry)
  redis.call('XDEL', qkey(tenant), entry)
  local active = P .. ':active:' .. tenant
  redis.call('SREM', active, id)
  if redis.call('SCARD', active) == 0 then redis.call('SREM', P .. ':busy', tenant) end
  if current then
    redis.call('PEXPIRE', job, retention)
    redis.call('PEXPIRE', P .. ':log:' .. id, retention)
  end
end
local function entry_job(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'job' then return fields[i + 1] end
  end
  return nil
end
"""

# ARGV: P, id, tenant, spec, credentials_ref. Returns the stream entry id.
SUBMIT = _PRELUDE + """
local id, tenant, spec, cred = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local job = jkey(id)
if redis.call('EXISTS', job) == 1 then return redis.error_reply('job exists') end
local q = qkey(tenant)
if redis.call('SADD', P .. ':tenants', tenant) == 1 or redis.call('EXISTS', q) == 0 then
  local r = redis.pcall('XGROUP', 'CREATE', q, G, '0', 'MKSTREAM')
  if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP') then
    return r
  end
end
local now = now_ms()
local entry = redis.call('XADD', q, '*', 'job', id)
redis.call('HSET', job, 'tenant', tenant, 'state', 'QUEUED', 'spec', spec,
           'credentials_ref', cred, 'queued_at', now, 'attempt', 0, 'entry', entry)
if not redis.call('LPOS', P .. ':ring', tenant) then
  redis.call('RPUSH', P .. ':ring', tenant)
end
return entry
"""

# ARGV: P, worker, default_cap, queue_ttl_ms, reclaim_ms, max_deliveries, retention_ms.
# Returns false or {id, attempt, entry, tenant, spec, credentials_ref}.
CLAIM = _PRELUDE + """
local worker, default_cap = ARGV[2], tonumber(ARGV[3])
local ttl, reclaim = tonumber(ARGV[4]), ARGV[5]
local max_deliveries, retention = tonumber(ARGV[6]), ARGV[7]
local now = now_ms()
local function lease(id, tenant, entry, first)
  local job = jkey(id)
  local attempt = redis.call('HINCRBY', job, 'attempt', 1)
  redis.call('HSET', job, 'state', 'WORKING', 'worker', worker, 'heartbeat_at', now)
  if first then redis.call('HSET', job, 'started_at', now) end
  redis.call('SADD', P .. ':active:' .. tenant, id)
  redis.call('SADD', P .. ':busy', tenant)
  local h = redis.call('HMGET', job, 'spec', 'credentials_ref')
  return {id, attempt, entry, tenant, h[1], h[2]}
end

-- 1. Leases idle for three heartbeats: take them over (attempt + 1), unless delivered
--    too often (a poison job or a crashing worker) or cancelled meanwhile.
for _, tenant in ipairs(redis.call('SMEMBERS', P .. ':busy')) do
  local q = qkey(tenant)
  local start = '0-0'
  repeat
    local r = redis.call('XAUTOCLAIM', q, G, worker, reclaim, start, 'COUNT', 1)
    start = r[1]
    for _, e in ipairs(r[2]) do
      local entry = e[1]
      local id = entry_job(e[2])
      local p = redis.call('XPENDING', q, G, entry, entry, 1)[1]
      local deliveries = tonumber(p[4])
      local h = redis.call('HMGET', jkey(id), 'state', 'cancel', 'attempt')
      if h[1] ~= 'WORKING' then
        finish(id, tenant, entry, h[1] or 'CANCELLED', now, '', '', '', retention)
      elseif h[2] == '1' then
        finish(id, tenant, entry, 'CANCELLED', now, '', '', '', retention)
      elseif deliveries > max_deliveries then
        local msg = 'worker lost: ' .. (deliveries - 1) .. ' deliveries without a result'
        note(id, h[3], msg)
        finish(id, tenant, entry, 'INTERNAL_ERROR', now, 'worker_lost', msg, '', retention)
      else
        note(id, h[3], 'attempt ' .. (tonumber(h[3]) + 1) .. ': lease of attempt ' .. h[3]
             .. ' lost, job taken over by ' .. worker)
        return lease(id, tenant, entry, false)
      end
    end
  until start == '0-0'
end

-- 2. New work: rotate the ring, skip tenants at their cap, one entry per claim.
local ring = P .. ':ring'
for _ = 1, redis.call('LLEN', ring) do
  local tenant = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
  local cap = tonumber(redis.call('HGET', P .. ':caps', tenant) or default_cap)
  if redis.call('SCARD', P .. ':active:' .. tenant) < cap then
    local q = qkey(tenant)
    while true do
      local r = redis.call('XREADGROUP', 'GROUP', G, worker, 'COUNT', 1, 'STREAMS', q, '>')
      if not r or #r[1][2] == 0 then
        redis.call('LREM', ring, 0, tenant)
        break
      end
      local entry = r[1][2][1][1]
      local id = entry_job(r[1][2][1][2])
      if #redis.call('XRANGE', q, '(' .. entry, '+', 'COUNT', 1) == 0 then
        redis.call('LREM', ring, 0, tenant)  -- that was the tenant's last queued entry
      end
      local h = redis.call('HMGET', jkey(id), 'state', 'queued_at')
      if h[1] ~= 'QUEUED' then
        -- cancelled while queued (or its hash expired): drop the entry, take the next
        finish(id, tenant, entry, h[1] or 'CANCELLED', now, '', '', '', retention)
      elseif tonumber(now) - tonumber(h[2]) > ttl then
        finish(id, tenant, entry, 'EXPIRED', now, 'expired',
               'queued longer than queue_ttl (' .. (ttl / 1000) .. ' s)', '', retention)
      else
        return lease(id, tenant, entry, true)
      end
      if redis.call('LPOS', ring, tenant) == false then break end
    end
  end
end
return false
"""

# ARGV: P, id, attempt, worker. Returns {alive, cancel_requested}.
HEARTBEAT = _PRELUDE + """
local id, attempt, worker = ARGV[2], ARGV[3], ARGV[4]
local h = redis.call('HMGET', jkey(id), 'state', 'attempt', 'tenant', 'entry', 'cancel')
if h[1] ~= 'WORKING' or h[2] ~= attempt then return {0, 0} end
local got = redis.call('XCLAIM', qkey(h[3]), G, worker, 0, h[4], 'JUSTID')
if #got == 0 then return {0, 0} end
redis.call('HSET', jkey(id), 'heartbeat_at', now_ms(), 'worker', worker)
return {1, h[5] == '1' and 1 or 0}
"""

# ARGV: P, id, attempt, state, result_json, reason, message, step, retention_ms.
# Returns {accepted, state now}.
COMPLETE = _PRELUDE + """
local id, attempt, state = ARGV[2], ARGV[3], ARGV[4]
local h = redis.call('HMGET', jkey(id), 'state', 'attempt', 'tenant', 'entry')
if h[1] ~= 'WORKING' or h[2] ~= attempt then return {0, h[1] or ''} end
redis.call('HSET', jkey(id), 'result', ARGV[5])
finish(id, h[3], h[4], state, now_ms(), ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return {1, state}
"""

# ARGV: P, id, retention_ms. Returns the state after the call ('' for no such job).
CANCEL = _PRELUDE + """
local id = ARGV[2]
local job = jkey(id)
local state = redis.call('HGET', job, 'state')
if not state then return '' end
if state == 'QUEUED' then
  -- the stream entry stays; the claim that reads it drops it (state is no longer QUEUED)
  redis.call('HSET', job, 'state', 'CANCELLED', 'finished_at', now_ms(), 'cancel', 1)
  redis.call('PEXPIRE', job, ARGV[3])
  return 'CANCELLED'
end
if state == 'WORKING' then
  redis.call('HSET', job, 'cancel', 1)
  redis.call('PUBLISH', P .. ':cancel', id)
end
return state
"""

# ARGV: P, reclaim_ms, max_deliveries, queue_ttl_ms, retention_ms. Returns jobs ended.
# What a claim would decide about jobs no worker has room to claim: poison leases ->
# INTERNAL_ERROR, cancelled lost leases -> CANCELLED, expired or cancelled queue heads;
# every tenant with queued work is put back in the ring if it is missing there; consumers
# with nothing pending, idle past the reclaim time, are deleted.
REAP = _PRELUDE + """
local reclaim, max_deliveries = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, retention = tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local ended = 0
for _, tenant in ipairs(redis.call('SMEMBERS', P .. ':busy')) do
  local q = qkey(tenant)
  for _, p in ipairs(redis.call('XPENDING', q, G, 'IDLE', reclaim, '-', '+', 100)) do
    local entry, deliveries = p[1], tonumber(p[4])
    local e = redis.call('XRANGE', q, entry, entry)
    local id = e[1] and entry_job(e[1][2])
    if id then
      local h = redis.call('HMGET', jkey(id), 'state', 'cancel', 'attempt')
      if h[1] ~= 'WORKING' or h[2] == '1' then
        finish(id, tenant, entry, h[1] == 'WORKING' and 'CANCELLED' or (h[1] or 'CANCELLED'),
               now, '', '', '', retention)
        ended = ended + 1
      elseif deliveries >= max_deliveries then
        local msg = 'worker lost: ' .. deliveries .. ' deliveries without a result'
        note(id, h[3], msg)
        finish(id, tenant, entry, 'INTERNAL_ERROR', now, 'worker_lost', msg, '', retention)
        ended = ended + 1
      end
    end
  end
end
local ring = P .. ':ring'
for _, tenant in ipairs(redis.call('SMEMBERS', P .. ':tenants')) do
  local q = qkey(tenant)
  -- consumers (one per worker name) with nothing pending, idle a while: forget them
  if redis.call('EXISTS', q) == 1 then
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', q, G)) do
      local info = {}
      for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
      if tonumber(info['pending']) == 0 and tonumber(info['idle']) > reclaim then
        redis.call('XGROUP', 'DELCONSUMER', q, G, info['name'])
      end
    end
  end
  while redis.call('EXISTS', q) == 1 do
    local last = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', q)) do
      local name, id = nil, nil
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] end
        if g[i] == 'last-delivered-id' then id = g[i + 1] end
      end
      if name == G then last = id end
    end
    local head = redis.call('XRANGE', q, '(' .. last, '+', 'COUNT', 1)[1]
    if not head then
      redis.call('LREM', ring, 0, tenant)
      break
    end
    local id = entry_job(head[2])
    local h = redis.call('HMGET', jkey(id), 'state', 'queued_at')
    local expired = h[1] == 'QUEUED' and tonumber(now) - tonumber(h[2]) > ttl
    if h[1] == 'QUEUED' and not expired then
      -- work waits: the tenant belongs in the ring (heals a ring an AOF loss cut short)
      if not redis.call('LPOS', ring, tenant) then redis.call('RPUSH', ring, tenant) end
      break
    end
    redis.call('XREADGROUP', 'GROUP', G, 'reaper', 'COUNT', 1, 'STREAMS', q, '>')
    if expired then
      finish(id, tenant, head[1], 'EXPIRED', now, 'expired',
             'queued longer than queue_ttl (' .. (ttl / 1000) .. ' s)', '', retention)
    else
      finish(id, tenant, head[1], h[1] or 'CANCELLED', now, '', '', '', retention)
    end
    ended = ended + 1
  end
end
return ended
"""

# ARGV: P, id, attempt, data, max_entries, max_bytes. Returns the entry id or false
# (dropped: over a cap, or the lease is stale).
APPEND_LOG = _PRELUDE + """
local id, attempt, data = ARGV[2], ARGV[3], ARGV[4]
local max_entries, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local job = jkey(id)
local h = redis.call('HMGET', job, 'state', 'attempt', 'log_entries', 'log_bytes', 'log_capped')
if h[1] ~= 'WORKING' or h[2] ~= attempt then return redis.error_reply('STALE lease') end
if h[5] == '1' then
  redis.call('HINCRBY', job, 'log_dropped', 1)
  return false
end
local entries, bytes = tonumber(h[3] or '0'), tonumber(h[4] or '0')
if entries + 1 > max_entries or bytes + #data > max_bytes then
  redis.call('HSET', job, 'log_capped', 1)
  redis.call('HINCRBY', job, 'log_dropped', 1)
  note(id, attempt, 'log capped at ' .. max_entries .. ' entries or ' .. max_bytes
       .. ' bytes: later output is dropped')
  return false
end
redis.call('HINCRBY', job, 'log_entries', 1)
redis.call('HINCRBY', job, 'log_bytes', #data)
return redis.call('XADD', P .. ':log:' .. id, '*', 'kind', 'out', 'attempt', attempt,
                  'data', data)
"""
