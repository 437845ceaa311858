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
--   P:qstat     hash: what P:queue holds (n events, b bytes; cn, cb of channel events)
--
-- ARGV[1] is the operation; ARGV[2..4] the debounce of channel, member and user outs (ms);
-- ARGV[5] this node; ARGV[6] its liveness TTL (ms); ARGV[7], ARGV[8] the queue's bound in
-- events and bytes (channel events: half of each); the operation's own arguments follow.

local P = KEYS[1]
local op = ARGV[1]
local debounce = { c = tonumber(ARGV[2]), m = tonumber(ARGV[3]), u = tonumber(ARGV[4]) }
local node = ARGV[5]
local alive_ttl = tonumber(ARGV[6])
local max_events, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local A = 8 -- the operation's arguments are ARGV[A + 1], ARGV[A + 2]…
local Q = P .. ':qstat'
-- Events this call found the queue full for.
local full = 0

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Inside a JSON string every quote is escaped: the bare "type":"channel_ is the key itself.
local function is_channel(encoded)
  return string.find(encoded, '"type":"channel_', 1, true) ~= nil
    or string.find(encoded, '"type":"client_event"', 1, true) ~= nil
    or string.find(encoded, '"type":"cache_miss"', 1, true) ~= nil
end

-- Counts an event into (sign 1) or out of (-1) the queue's figures.
local function count(encoded, sign)
  redis.call('HINCRBY', Q, 'n', sign)
  redis.call('HINCRBY', Q, 'b', sign * #encoded)
  if is_channel(encoded) then
    redis.call('HINCRBY', Q, 'cn', sign)
    redis.call('HINCRBY', Q, 'cb', sign * #encoded)
  end
end

-- Channel events, which anyone can cause, may fill half the queue: never the room of user,
-- member and receipt events.
local function admits(encoded)
  local stat = redis.call('HMGET', Q, 'n', 'b', 'cn', 'cb')
  local n, b = tonumber(stat[1]) or 0, tonumber(stat[2]) or 0
  local len = #encoded
  if n >= max_events or b + len > max_bytes then return false end
  if is_channel(encoded) then
    local cn, cb = tonumber(stat[3]) or 0, tonumber(stat[4]) or 0
    if cn >= math.floor(max_events / 2) or cb + len > math.floor(max_bytes / 2) then return false end
  end
  return true
end

local function emit(event)
  local era = redis.call('GET', P .. ':era')
  if not era then
    era = tostring(now_ms())
    redis.call('SET', P .. ':era', era)
  end
  event.id = era .. '-' .. redis.call('INCR', P .. ':seq')
  event.time_ms = now_ms()
  local encoded = cjson.encode(event)
  if not admits(encoded) then
    full = full + 1
    return
  end
  redis.call('RPUSH', P .. ':queue', encoded)
  count(encoded, 1)
end

-- Removes the queue's first event, counting it out.
local function drop_head()
  local head = redis.call('LPOP', P .. ':queue')
  if head then count(head, -1) end
  return head
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
  for i = A + 1, #ARGV, 2 do
    if ARGV[i] == 'e' then enter(node, ARGV[i + 1]) else leave(node, ARGV[i + 1]) end
  end
  return full
end

-- Occurrences, not transitions (a client event, a cache miss): queued as they come.
if op == 'push' then
  for i = A + 1, #ARGV do emit(cjson.decode(ARGV[i])) end
  return full
end

if op == 'tick' then
  -- This node's liveness lapsed (Redis lost its data, or the node was cut off long enough for
  -- the others to release what it held): it must tell again what it holds.
  local fresh = redis.call('EXISTS', P .. ':alive:' .. node) == 0 and 1 or 0
  keep_alive()
  -- How much due work one tick does (a script blocks Redis while it runs); more is reported,
  -- and the node ticks again at once.
  local max = tonumber(ARGV[A + 1])
  local lease_ttl = tonumber(ARGV[A + 3])
  local more = 0
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
  local due = redis.call('ZRANGEBYSCORE', P .. ':pending', '-inf', now, 'LIMIT', 0, max)
  if #due == max then more = 1 end
  for _, key in ipairs(due) do
    redis.call('ZREM', P .. ':pending', key)
    if redis.call('HEXISTS', P .. ':count', key) == 0 then transition(key, false) end
  end
  local coalesce = tonumber(ARGV[A + 2])
  local ripe = redis.call('ZRANGEBYSCORE', P .. ':rdue', '-inf', now, 'LIMIT', 0, max)
  if #ripe == max then more = 1 end
  for _, channel in ipairs(ripe) do
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
  local cutoff = now - tonumber(ARGV[A + 4])
  local expired = 0
  while expired < 10000 do
    local head = redis.call('LINDEX', P .. ':queue', 0)
    if not head or cjson.decode(head).time_ms > cutoff then break end
    drop_head()
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
  local queued = redis.call('LLEN', P .. ':queue')
  -- Figures left from before they were kept (or gone astray) start over with the queue.
  if queued == 0 then redis.call('DEL', Q) end
  return { queued, lead, fresh, expired, full, more }
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
  local channel, user, epoch = ARGV[A + 1], ARGV[A + 2], ARGV[A + 3]
  local offset, within, coalesce = tonumber(ARGV[A + 4]), tonumber(ARGV[A + 5]), tonumber(ARGV[A + 6])
  if acked(channel, epoch, offset) then return 0 end
  local due = now_ms() + within
  -- NX: tracking the same publication again (an idempotent retry) changes nothing.
  if redis.call('ZADD', P .. ':r:' .. channel, 'NX', due, epoch .. '|' .. offset .. '|' .. user) == 1 then
    redis.call('ZADD', P .. ':rdue', 'NX', due + coalesce, channel)
  end
  return 0
end

if op == 'ack' then
  local channel, epoch, offset, mark_ttl = ARGV[A + 1], ARGV[A + 2], tonumber(ARGV[A + 3]), tonumber(ARGV[A + 4])
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
  for _ = 1, tonumber(ARGV[A + 1]) do
    if not drop_head() then break end
  end
  return 1
end

if op == 'close' then
  if redis.call('GET', P .. ':lease') == node then redis.call('DEL', P .. ':lease') end
  redis.call('DEL', P .. ':alive:' .. node)
  return 0
end

return redis.error_reply('unknown lifecycle operation ' .. tostring(op))
