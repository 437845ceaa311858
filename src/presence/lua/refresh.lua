-- Keeps this node's entries alive, and removes (announcing their leaves) the members of nodes
-- that stopped refreshing theirs.
-- KEYS[5]  this node's set of client ids
-- ARGV[5]  node id, ARGV[6] how long this node's entries live without a refresh, ms
-- returns  1, or 0 when this node's set is gone (swept, or Redis lost it): add them again
sweep()
if redis.call('exists', KEYS[5]) == 0 then
  return 0
end
redis.call('zadd', KEYS[4], now_ms() + tonumber(ARGV[6]), ARGV[5])
keep(KEYS[5])
return 1
