-- mod_load.lua: every moderation record still in force, after dropping ended ones.
-- KEYS[1] rdv:{mod}:ends   KEYS[2] rdv:{mod}:data   ARGV[1] now (ms)
-- Returns the records' JSON, in the order of their ends.
local now = tonumber(ARGV[1])
-- In chunks: unpack() of a long list overflows Lua's stack.
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[2], unpack(gone, i, math.min(i + 999, #gone)))
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
if #keys == 0 then
  return {}
end
local out = {}
for i = 1, #keys, 1000 do
  local data = redis.call('HMGET', KEYS[2], unpack(keys, i, math.min(i + 999, #keys)))
  for j = 1, #data do
    if data[j] then
      out[#out + 1] = data[j]
    end
  end
end
return out
