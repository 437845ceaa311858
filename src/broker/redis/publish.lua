-- Appends one publication to a channel and broadcasts it, atomically: offset assignment,
-- history append and trim, expiries and the pub/sub publish happen in one step, so offsets have
-- no gaps and every node sees the same order.
--
-- KEYS[1]  meta hash: o = last offset, e = epoch
-- KEYS[2]  history list, newest first, entries "offset:payload"
-- ARGV[1]  payload (JSON of data and info)
-- ARGV[2]  history size (0: keep none)
-- ARGV[3]  history TTL, seconds
-- ARGV[4]  position TTL, seconds
-- ARGV[5]  epoch to use if the channel has none (a new history starts)
-- ARGV[6]  pub/sub channel
-- ARGV[7]  "1": sharded pub/sub (SPUBLISH), else PUBLISH
-- KEYS[3]  (optional) idempotency key: "offset:epoch" of the publication stored under it
-- ARGV[8]  (with KEYS[3]) how long the idempotency key is remembered, seconds
-- returns  {offset, epoch}
if KEYS[3] then
  -- A retry within the window gets the first publication's position and publishes nothing.
  local prior = redis.call('get', KEYS[3])
  local current = redis.call('hget', KEYS[1], 'e')
  if prior and current then
    local sep = string.find(prior, ':', 1, true)
    if sep and string.sub(prior, sep + 1) == current then
      return {tonumber(string.sub(prior, 1, sep - 1)), current}
    end
  end
end
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  -- The position was lost (expired or evicted): whatever history is left belongs to the old
  -- epoch and must not be mixed with the new one.
  epoch = ARGV[5]
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('del', KEYS[2])
end
local offset = redis.call('hincrby', KEYS[1], 'o', 1)
redis.call('expire', KEYS[1], ARGV[4])
local entry = offset .. ':' .. ARGV[1]
local size = tonumber(ARGV[2])
if size > 0 then
  redis.call('lpush', KEYS[2], entry)
  redis.call('ltrim', KEYS[2], 0, size - 1)
  redis.call('expire', KEYS[2], ARGV[3])
else
  redis.call('del', KEYS[2])
end
if ARGV[7] == '1' then
  redis.call('spublish', ARGV[6], epoch .. ':' .. entry)
else
  redis.call('publish', ARGV[6], epoch .. ':' .. entry)
end
if KEYS[3] then
  redis.call('set', KEYS[3], offset .. ':' .. epoch, 'EX', ARGV[8])
end
return {offset, epoch}
