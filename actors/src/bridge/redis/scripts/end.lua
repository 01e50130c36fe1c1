-- end.lua: end a search if it is still the user's valid one (cancel, timeout, purge).
-- KEYS[1] rdv:{pool:LANG}:search:USER   KEYS[2] rdv:{pool:LANG}:entries
-- ARGV[1] search id   ARGV[2] PoolRemove event JSON ('' = publish nothing)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  pool_publish(KEYS[2], ARGV[2])
end
return 1
