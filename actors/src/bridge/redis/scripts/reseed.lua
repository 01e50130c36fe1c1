-- reseed.lua: restore what the store lacks of a room a node holds (Redis restarted
-- empty, or the node went on alone while Redis was down). Never overwrites: seats
-- are added if missing, messages after the stored seq are appended, seq only grows.
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] log   KEYS[4] meta
-- ARGV[1] kind   ARGV[2] the node's last seq   ARGV[3] stream cap
-- ARGV[4] member count m, then m pairs user, node; then seq, JSON pairs of messages
-- Returns the stored seq before the call.
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local m = tonumber(ARGV[4])
local i = 5
for _ = 1, m do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  local seq = tonumber(ARGV[i])
  if seq > cur then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'j', ARGV[i + 1])
  end
  i = i + 2
end
if tonumber(ARGV[2]) > cur then
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('HSETNX', KEYS[4], 'kind', ARGV[1])
return cur
