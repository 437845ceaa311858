-- Shared by every presence script (prepended to each). All keys of a channel C share the hash
-- tag {C}, so they live in one cluster slot with the channel's pub/sub channel.
--
-- KEYS[1]  members: hash, client id -> member JSON
-- KEYS[2]  order: sorted set, every score 0, client ids (ordered by id, for paging)
-- KEYS[3]  users: hash, user key ("a:NAME" authenticated, "n:NAME" anonymous) -> connections
-- KEYS[4]  nodes: sorted set, node id -> when its entries expire (ms, Redis clock)
-- ARGV[1]  prefix of a node's own set of client ids (the node id follows)
-- ARGV[2]  pub/sub channel of C
-- ARGV[3]  "1": sharded pub/sub (SPUBLISH), else PUBLISH
-- ARGV[4]  how long the keys outlive the last write, seconds

local function now_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- "~" marks an event among the channel's publications (which start with their epoch).
local function announce(op, json, edge)
  local message = '~{"op":"' .. op .. '","member":' .. json .. ',"user_edge":' ..
    tostring(edge) .. ',"clients":' .. redis.call('hlen', KEYS[1]) .. '}'
  if ARGV[3] == '1' then
    redis.call('spublish', ARGV[2], message)
  else
    redis.call('publish', ARGV[2], message)
  end
end

-- Removes one client and announces its leave; false if it was not present.
local function drop(client)
  local json = redis.call('hget', KEYS[1], client)
  if not json then
    return false
  end
  redis.call('hdel', KEYS[1], client)
  redis.call('zrem', KEYS[2], client)
  -- As Member::user_key: an authenticated user and an anonymous namesake are two people.
  local member = cjson.decode(json)
  local user = (member.authenticated and 'a:' or 'n:') .. member.user
  local left = redis.call('hincrby', KEYS[3], user, -1)
  if left <= 0 then
    redis.call('hdel', KEYS[3], user)
  end
  announce('leave', json, left <= 0)
  return true
end

-- Removes the members of every node whose entries expired: it stopped refreshing them.
local function sweep()
  local dead = redis.call('zrangebyscore', KEYS[4], '-inf', now_ms())
  for _, node in ipairs(dead) do
    local set = ARGV[1] .. node
    for _, client in ipairs(redis.call('smembers', set)) do
      drop(client)
    end
    redis.call('del', set)
    redis.call('zrem', KEYS[4], node)
  end
end

local function keep(extra)
  for i = 1, 4 do
    redis.call('expire', KEYS[i], ARGV[4])
  end
  if extra then
    redis.call('expire', extra, ARGV[4])
  end
end
