-- count.lua: one use of a rate-limited action in a fixed window (INCR with expiry).
-- KEYS[1] rdv:user:{USER}:rl:ACTION:WINDOW   ARGV[1] window (ms)
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
