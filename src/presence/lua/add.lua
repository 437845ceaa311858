-- Makes a client present and announces its join (nothing if it already is).
-- KEYS[5]  this node's set of client ids
-- ARGV[5]  client id, ARGV[6] member JSON, ARGV[7] user key (Member::user_key), ARGV[8] node id
-- ARGV[9]  how long this node's entries live without a refresh, ms
-- returns  1 if added, 0 if it was present
if redis.call('hsetnx', KEYS[1], ARGV[5], ARGV[6]) == 0 then
  return 0
end
redis.call('zadd', KEYS[2], 0, ARGV[5])
redis.call('sadd', KEYS[5], ARGV[5])
redis.call('zadd', KEYS[4], now_ms() + tonumber(ARGV[9]), ARGV[8])
local connections = redis.call('hincrby', KEYS[3], ARGV[7], 1)
announce('join', ARGV[6], connections == 1)
keep(KEYS[5])
return 1
