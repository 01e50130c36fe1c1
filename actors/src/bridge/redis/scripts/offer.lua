-- offer.lua: record how a cross-node offer ends, once; answer what is recorded.
-- KEYS[1] rdv:{node:CREATOR}:offer:POOL:ID
-- ARGV[1] the outcome proposed ('aborted' or the opened room as JSON)   ARGV[2] ttl (ms)
local recorded = redis.call('GET', KEYS[1])
if recorded then
  return recorded
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
