-- rehome.lua: a member reconnected to this node; move their seat here.
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] log   KEYS[4] meta
-- ARGV[1] user   ARGV[2] this node   ARGV[3] Member online event JSON
-- ARGV[4] ttl of the room's keys (ms)
-- Returns {} when the user holds no seat, else { seq, kind, user, node, ... }.
-- `tell_nodes` comes from tell_nodes.lua, prepended to this file.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
tell_nodes(KEYS[1], ARGV[2], ARGV[3])
local out = { tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HGET', KEYS[4], 'kind') or 'match' }
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do
  out[#out + 1] = v
end
return out
