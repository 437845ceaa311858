-- Makes a client absent and announces its leave (nothing if it was not present).
-- KEYS[5]  this node's set of client ids
-- ARGV[5]  client id
-- returns  1 if removed, 0 if it was not present
redis.call('srem', KEYS[5], ARGV[5])
if drop(ARGV[5]) then
  return 1
end
return 0
