-- Reads a channel's position and (optionally) its history in one step, so the two agree.
-- A channel without a position gets one (offset 0, a new epoch) so that the epoch a subscriber
-- is told stays valid for the publications that follow.
--
-- KEYS[1]  meta hash: o = last offset, e = epoch
-- KEYS[2]  history list, newest first, entries "offset:payload"
-- ARGV[1]  epoch to use if the channel has none
-- ARGV[2]  position TTL, seconds
-- ARGV[3]  "1": also return the history
-- returns  {offset, epoch, entries}
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('del', KEYS[2])
end
redis.call('expire', KEYS[1], ARGV[2])
local offset = tonumber(redis.call('hget', KEYS[1], 'o') or '0')
local entries = {}
if ARGV[3] == '1' then
  entries = redis.call('lrange', KEYS[2], 0, -1)
end
return {offset, epoch, entries}
