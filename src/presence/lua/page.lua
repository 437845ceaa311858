-- One page of members, ordered by client id, after sweeping dead nodes' members.
-- ARGV[5]  the last client id of the previous page ("" for the first), ARGV[6] page size
-- returns  {more (0 or 1), the page's last client id ("" if empty), member JSON…}
sweep()
local from = '-'
if ARGV[5] ~= '' then
  from = '(' .. ARGV[5]
end
local size = tonumber(ARGV[6])
local ids = redis.call('zrangebylex', KEYS[2], from, '+', 'LIMIT', 0, size + 1)
local more = 0
if #ids > size then
  more = 1
  table.remove(ids)
end
local result = {more, ids[#ids] or ''}
if #ids > 0 then
  for _, json in ipairs(redis.call('hmget', KEYS[1], unpack(ids))) do
    if json then
      table.insert(result, json)
    end
  end
end
return result
