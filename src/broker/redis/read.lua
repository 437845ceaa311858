-- Reads a channel's position and (optionally) its history in one step, so the two agree.
-- A channel without a stored position (never published to, or forgotten) stores nothing here:
-- its position is offset 0 in an unpublished epoch, "~GENERATION.SECONDS", where GENERATION is
-- this Redis server's run id (a restart, which may have lost data, changes it) and SECONDS its
-- clock. The first publication starts a real epoch (publish.lua).
--
-- KEYS[1]  meta hash: o = last offset, e = epoch
-- KEYS[2]  history list, newest first, entries "offset:payload"
-- ARGV[1]  position TTL, seconds
-- ARGV[2]  "1": also return the history
-- ARGV[3]  (optional) an unpublished epoch to vouch for: this server's, read less than the
--          position TTL ago (so no stored position can have come and gone since)
-- returns  {offset, epoch, entries, vouched (1 or 0)}
local ttl = tonumber(ARGV[1])
local generation, now
local function clock()
  if not generation then
    generation = string.sub(string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '', 1, 12)
    now = tonumber(redis.call('TIME')[1])
  end
end
local epoch = redis.call('hget', KEYS[1], 'e')
local offset = 0
local entries = {}
if epoch then
  redis.call('expire', KEYS[1], ttl)
  offset = tonumber(redis.call('hget', KEYS[1], 'o') or '0')
  if ARGV[2] == '1' then
    entries = redis.call('lrange', KEYS[2], 0, -1)
  end
else
  clock()
  epoch = '~' .. generation .. '.' .. now
end
local vouched = 0
if ARGV[3] then
  local g, t = string.match(ARGV[3], '^~(%x+)%.(%d+)$')
  if g then
    clock()
    t = tonumber(t)
    if g == generation and t <= now and now - t < ttl then vouched = 1 end
  end
end
return {offset, epoch, entries, vouched}
