-- leave.lua: remove a member (only if still on the expected node, when given) and
-- tell the other nodes; a match room left with one member is closed.
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] log   KEYS[4] meta
-- ARGV[1] user   ARGV[2] expected node ('' = any)   ARGV[3] Member left event JSON
-- ARGV[4] Closed event JSON   ARGV[5] kind   ARGV[6] ttl of a closed room's seq and log (ms)
-- ARGV[7] origin node (its replica acts on its own)
-- Returns { 1, users whose seat went with the room's close ... } when this call
-- removed the member, else { 0 }. `tell_nodes` comes from tell_nodes.lua, prepended.
local node = redis.call('HGET', KEYS[1], ARGV[1])
if not node or (ARGV[2] ~= '' and node ~= ARGV[2]) then
  return { 0 }
end
tell_nodes(KEYS[1], ARGV[7], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('HLEN', KEYS[1])
local out = { 1 }
if (ARGV[5] == 'match' and left <= 1) or left == 0 then
  if ARGV[5] == 'match' then
    tell_nodes(KEYS[1], ARGV[7], ARGV[4])
  end
  for _, u in ipairs(redis.call('HKEYS', KEYS[1])) do
    out[#out + 1] = u
  end
  redis.call('DEL', KEYS[1], KEYS[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return out
