-- The lifecycle store in Redis: every key under one hash tag (KEYS[1], "{PREFIX:wh}"), so that
-- each call is one atomic step on one shard, in Redis Cluster too.
--
-- Keys (P = KEYS[1]):
--   P:n:NODE    set of the holding keys NODE holds     P:nodes   set of nodes holding any
--   P:alive:NODE  exists while NODE is alive (PX)      P:count   hash: key -> nodes holding it
--   P:pending   zset: key -> when its out is due       P:queue   list of event JSON
--   P:seq, P:era  event ids "ERA-SEQ"                   P:lease   the sending node (PX)
--   P:r:CHANNEL zset: "EPOCH|OFFSET|USER" -> when due   P:rdue    zset: channel -> when to look
--   P:ra:CHANNEL  the highest acknowledged "EPOCH|OFFSET" (PX)
--
-- ARGV[1] is the operation; ARGV[2..4] the debounce of channel, member and user outs (ms);
-- ARGV[5] this node; ARGV[6] its liveness TTL (ms); the operation's own arguments follow.

local P = KEYS[1]
local op = ARGV[1]
local debounce = { c = tonumber(ARGV[2]), m = tonumber(ARGV[3]), u = tonumber(ARGV[4]) }
local node = ARGV[5]
local alive_ttl = tonumber(ARGV[6])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function emit(event)
  local era = redis.call('GET', P .. ':era')
  if not era then
    era = tostring(now_ms())
    redis.call('SET', P .. ':era', era)
  end
  event.id = era .. '-' .. redis.call('INCR', P .. ':seq')
  event.time_ms = now_ms()
  redis.call('RPUSH', P .. ':queue', cjson.encode(event))
end

local NAMES = {
  c = { 'channel_occupied', 'channel_vacated' },
  m = { 'member_added', 'member_removed' },
  u = { 'user_online', 'user_offline' },
}

local function transition(key, enter)
  local h = cjson.decode(key)
  local names = NAMES[h[1]]
  if not names then return end
  local event = { type = names[enter and 1 or 2] }
  if h[2] ~= '' then event.channel = h[2] end
  if h[3] ~= '' then event.user = h[3] end
  emit(event)
end

local function enter(holder, key)
  if redis.call('SADD', P .. ':n:' .. holder, key) == 0 then return end
  if redis.call('HINCRBY', P .. ':count', key, 1) ~= 1 then return end
  -- Back within the debounce: neither the out nor this in happened.
  if redis.call('ZREM', P .. ':pending', key) == 1 then return end
  transition(key, true)
end

local function leave(holder, key)
  if redis.call('SREM', P .. ':n:' .. holder, key) == 0 then return end
  if redis.call('HINCRBY', P .. ':count', key, -1) > 0 then return end
  redis.call('HDEL', P .. ':count', key)
  local kind = string.sub(key, 3, 3)
  redis.call('ZADD', P .. ':pending', now_ms() + (debounce[kind] or 0), key)
end

local function keep_alive()
  redis.call('SADD', P .. ':nodes', node)
  redis.call('SET', P .. ':alive:' .. node, '1', 'PX', alive_ttl)
end

if op == 'apply' then
  for i = 7, #ARGV, 2 do
    if ARGV[i] == 'e' then enter(node, ARGV[i + 1]) else leave(node, ARGV[i + 1]) end
  end
  return 0
end

if op == 'tick' then
  -- This node's liveness lapsed (Redis lost its data, or the node was cut off long enough for
  -- the others to release what it held): it must tell again what it holds.
  local fresh = redis.call('EXISTS', P .. ':alive:' .. node) == 0 and 1 or 0
  keep_alive()
  local max = tonumber(ARGV[7])
  local lease_ttl = tonumber(ARGV[9])
  -- Dead nodes: release what they held, a bounded number of keys per tick.
  for _, other in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
    if redis.call('EXISTS', P .. ':alive:' .. other) == 0 then
      local held = P .. ':n:' .. other
      -- Members and users before channels: a channel is vacated after its members leave.
      local keys = redis.call('SRANDMEMBER', held, 1000)
      table.sort(keys, function(a, b) return string.sub(a, 3, 3) > string.sub(b, 3, 3) end)
      -- A full batch with members in it may leave members behind: its channels wait.
      local channels_wait = #keys == 1000 and keys[1] and string.sub(keys[1], 3, 3) ~= 'c'
      for _, key in ipairs(keys) do
        if not (channels_wait and string.sub(key, 3, 3) == 'c') then leave(other, key) end
      end
      if redis.call('SCARD', held) == 0 then
        redis.call('SREM', P .. ':nodes', other)
      end
    end
  end
  local now = now_ms()
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. ':pending', '-inf', now, 'LIMIT', 0, max)) do
    redis.call('ZREM', P .. ':pending', key)
    if redis.call('HEXISTS', P .. ':count', key) == 0 then transition(key, false) end
  end
  local coalesce = tonumber(ARGV[8])
  for _, channel in ipairs(redis.call('ZRANGEBYSCORE', P .. ':rdue', '-inf', now, 'LIMIT', 0, max)) do
    local pending = P .. ':r:' .. channel
    local groups, order = {}, {}
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', now)) do
      local epoch, offset, user = string.match(member, '^([^|]*)|(%d+)|(.*)$')
      local group = groups[epoch]
      if not group then
        group = { type = 'undelivered', channel = channel, user = user, epoch = epoch, offsets = {} }
        groups[epoch] = group
        table.insert(order, group)
      end
      table.insert(group.offsets, tonumber(offset))
      redis.call('ZREM', pending, member)
    end
    for _, group in ipairs(order) do
      table.sort(group.offsets)
      emit(group)
    end
    local next_due = redis.call('ZRANGE', pending, 0, 0, 'WITHSCORES')[2]
    if next_due then
      redis.call('ZADD', P .. ':rdue', tonumber(next_due) + coalesce, channel)
    else
      redis.call('ZREM', P .. ':rdue', channel)
    end
  end
  -- Events older than the retry window are given up on, sent or not: an outage of the
  -- receiver must not grow the queue without bound.
  local cutoff = now - tonumber(ARGV[10])
  local expired = 0
  while expired < 10000 do
    local head = redis.call('LINDEX', P .. ':queue', 0)
    if not head or cjson.decode(head).time_ms > cutoff then break end
    redis.call('LPOP', P .. ':queue')
    expired = expired + 1
  end
  -- The sending lease: taken when free, renewed by its holder.
  local lead = 0
  if redis.call('SET', P .. ':lease', node, 'NX', 'PX', lease_ttl) then
    lead = 1
  elseif redis.call('GET', P .. ':lease') == node then
    redis.call('PEXPIRE', P .. ':lease', lease_ttl)
    lead = 1
  end
  return { redis.call('LLEN', P .. ':queue'), lead, fresh, expired }
end

-- An acknowledgement mark per channel ("EPOCH|OFFSET", the highest acked): a publication
-- acknowledged before its publisher tracked it (another node, another connection) is not
-- tracked at all.
local function acked(channel, epoch, offset)
  local mark = redis.call('GET', P .. ':ra:' .. channel)
  if not mark then return false end
  local marked_epoch, marked = string.match(mark, '^(.*)|(%d+)$')
  return marked_epoch == epoch and offset <= tonumber(marked)
end

if op == 'track' then
  local channel, user, epoch = ARGV[7], ARGV[8], ARGV[9]
  local offset, within, coalesce = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
  if acked(channel, epoch, offset) then return 0 end
  local due = now_ms() + within
  -- NX: tracking the same publication again (an idempotent retry) changes nothing.
  if redis.call('ZADD', P .. ':r:' .. channel, 'NX', due, epoch .. '|' .. offset .. '|' .. user) == 1 then
    redis.call('ZADD', P .. ':rdue', 'NX', due + coalesce, channel)
  end
  return 0
end

if op == 'ack' then
  local channel, epoch, offset, mark_ttl = ARGV[7], ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
  local pending = P .. ':r:' .. channel
  for _, member in ipairs(redis.call('ZRANGE', pending, 0, -1)) do
    local e, o = string.match(member, '^([^|]*)|(%d+)|')
    if e == epoch and tonumber(o) <= offset then redis.call('ZREM', pending, member) end
  end
  if redis.call('ZCARD', pending) == 0 then redis.call('ZREM', P .. ':rdue', channel) end
  if not acked(channel, epoch, offset) then
    redis.call('SET', P .. ':ra:' .. channel, epoch .. '|' .. offset, 'PX', mark_ttl)
  end
  return 0
end

if op == 'pop' then
  -- Only the lease holder removes what it sent (another node has taken over and sends it).
  if redis.call('GET', P .. ':lease') ~= node then return 0 end
  redis.call('LTRIM', P .. ':queue', tonumber(ARGV[7]), -1)
  return 1
end

if op == 'close' then
  if redis.call('GET', P .. ':lease') == node then redis.call('DEL', P .. ':lease') end
  redis.call('DEL', P .. ':alive:' .. node)
  return 0
end

return redis.error_reply('unknown lifecycle operation ' .. tostring(op))
