-- claim.lua: the atomic match claim. Succeeds only if every member's search id is
-- still their valid one, and then ends all of them; otherwise changes nothing.
-- KEYS[1] rdv:{pool:LANG}:entries   KEYS[2..n+1] rdv:{pool:LANG}:search:USER_i
-- ARGV[1..n] expected search ids   ARGV[n+1] PoolRemove event JSON
-- Returns the 1-based indexes of members whose search was no longer valid
-- (empty = claimed). All keys share the {pool:LANG} hash slot.
local n = #KEYS - 1
local lost = {}
for i = 1, n do
  if redis.call('GET', KEYS[i + 1]) ~= ARGV[i] then
    lost[#lost + 1] = i
  end
end
if #lost > 0 then
  return lost
end
for i = 1, n do
  redis.call('DEL', KEYS[i + 1])
  redis.call('HDEL', KEYS[1], ARGV[i])
end
pool_publish(KEYS[1], ARGV[n + 1])
return lost
