-- begin.lua: make a search the user's one valid search and show it to every node.
-- KEYS[1] rdv:{pool:LANG}:search:USER   (string: the valid search id "node:ticket")
-- KEYS[2] rdv:{pool:LANG}:entries       (hash: search id -> ad JSON, for resyncs)
-- ARGV[1] search id   ARGV[2] ttl (ms)   ARGV[3] ad JSON   ARGV[4] PoolAdd event JSON
-- The entries hash lives as long as its longest search (ads of a node that died
-- before withdrawing them vanish with it).
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[1] then
  redis.call('HDEL', KEYS[2], old)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
pool_publish(KEYS[2], ARGV[4])
return 1
