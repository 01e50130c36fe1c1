-- reseed.lua: restore what the store lacks of a room a node holds, after the node
-- reconnects. Never overwrites: seats are restored only when the store lost the
-- room (Redis restarted empty); messages after the stored seq are appended (the
-- node went on alone while Redis was down); seq only grows. The room's keys get
-- their lifetime again; the stream keeps the byte cap of append.lua.
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] log   KEYS[4] meta
-- ARGV[1] kind   ARGV[2] the node's last seq   ARGV[3] stream cap   ARGV[4] byte cap
-- ARGV[5] ttl of the room's keys (ms)
-- ARGV[6] member count m, then m pairs user, node; then seq, JSON pairs of messages
-- Returns { stored seq before the call, user, node, ... as stored after }.
-- `trim` and `byte_marks` come from trim_bytes.lua (`byte_tools`), prepended to this file.
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local lost = redis.call('EXISTS', KEYS[1]) == 0 and cur == 0
local m = tonumber(ARGV[6])
local i = 7
for _ = 1, m do
  if lost then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
if lost then
  redis.call('HSET', KEYS[4], 'kind', ARGV[1])
end
local trim, _, byte_marks = byte_tools()
local bend, bstart = byte_marks(KEYS[3], KEYS[4])
local added = false
while i < #ARGV do
  local seq = tonumber(ARGV[i])
  if seq > cur then
    bend = bend + #ARGV[i + 1]
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'j', ARGV[i + 1], 'c', bend)
    added = true
  end
  i = i + 2
end
if added then
  redis.call('HSET', KEYS[4], 'bend', bend)
  trim(KEYS[3], KEYS[4], bend, bstart, tonumber(ARGV[4]))
end
if tonumber(ARGV[2]) > cur then
  redis.call('SET', KEYS[2], ARGV[2])
end
for k = 1, 4 do
  redis.call('PEXPIRE', KEYS[k], ARGV[5])
end
local out = { cur }
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do
  out[#out + 1] = v
end
return out
