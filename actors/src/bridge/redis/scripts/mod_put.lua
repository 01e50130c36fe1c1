-- mod_put.lua: store, replace or remove one lasting moderation record (a ban, a
-- block, a report) with its own end. Expired records of the collection are
-- dropped on the way, and both keys live as long as their longest record.
-- KEYS[1] rdv:{mod}:ends (sorted set: record key -> end, ms)
-- KEYS[2] rdv:{mod}:data (hash: record key -> the event's JSON)
-- ARGV[1] record key   ARGV[2] end (ms; 0 = remove)   ARGV[3] JSON   ARGV[4] now (ms)
local now = tonumber(ARGV[4])
-- In chunks: unpack() of a long list overflows Lua's stack.
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[2], unpack(gone, i, math.min(i + 999, #gone)))
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local until_ms = tonumber(ARGV[2])
if until_ms <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], until_ms, ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  local ttl = tonumber(last[2]) - now
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
