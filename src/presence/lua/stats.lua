-- Connections and users present, after sweeping dead nodes' members: O(1) in the members.
-- returns  {clients, users}
sweep()
return {redis.call('hlen', KEYS[1]), redis.call('hlen', KEYS[3])}
