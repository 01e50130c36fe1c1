-- rehome.lua: a member reconnected to this node; move their seat here.
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] meta   KEYS[4] log
-- ARGV[1] user   ARGV[2] this node   ARGV[3] Member online event JSON
-- ARGV[4] ttl of the room's keys (ms)
-- Returns {} when the user holds no seat, else { seq, kind, user, node, ... }.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
local seen = { [ARGV[2]] = true }
for _, n in ipairs(redis.call('HVALS', KEYS[1])) do
  if not seen[n] then
    seen[n] = true
    redis.call('PUBLISH', 'rdv:node:' .. n, ARGV[3])
  end
end
local out = { tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HGET', KEYS[3], 'kind') or 'match' }
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do
  out[#out + 1] = v
end
return out
