-- connect.lua: the user is now served by this node; close their session elsewhere.
-- KEYS[1] rdv:user:{USER}:node   KEYS[2] rdv:user:{USER}:rooms
-- ARGV[1] this node   ARGV[2] Kick event JSON   ARGV[3] ttl (ms)
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if old and old ~= ARGV[1] then
  redis.call('PUBLISH', 'rdv:node:' .. old, ARGV[2])
end
return 1
