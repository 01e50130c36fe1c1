-- join.lua: seat a user (on this node) in a public room.
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] log   KEYS[4] meta
-- ARGV[1] user   ARGV[2] node   ARGV[3] Member joined event JSON   ARGV[4] kind
-- ARGV[5] ttl of the room's keys (ms)
-- Returns { seq, user, node, user, node, ... } as the room is after the join.
-- `tell_nodes` comes from tell_nodes.lua, prepended to this file.
local before = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[4], 'kind', ARGV[4])
-- A room revived within a closed room's lifetime keeps its seq and log: renew them.
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[5])
end
if before ~= ARGV[2] then
  tell_nodes(KEYS[1], ARGV[2], ARGV[3])
end
local out = { tonumber(redis.call('GET', KEYS[2]) or '0') }
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do
  out[#out + 1] = v
end
return out
