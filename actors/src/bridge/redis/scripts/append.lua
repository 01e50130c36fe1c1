-- append.lua: store a chat message and send it to every other node with members,
-- in one step, so every node sees the room's messages in seq order. The sending
-- node delivers it itself when this returns.
-- KEYS[1] rdv:room:{ROOM}:seq   KEYS[2] rdv:room:{ROOM}:log (stream, id = "SEQ-1")
-- KEYS[3] rdv:room:{ROOM}:members   KEYS[4] rdv:room:{ROOM}:meta
-- ARGV[1] event JSON up to the seq   ARGV[2] event JSON after the seq
-- ARGV[3] stream cap (messages)   ARGV[4] stored message JSON   ARGV[5] sender
-- ARGV[6] the sending node (not published to)   ARGV[7] byte cap of the stream
-- ARGV[8] ttl of a new room's seq and log (ms)
-- Returns the new seq, or -1 when the sender is not a member.
-- The byte cap's functions (`trim`, `byte_marks`, `field`) come from trim_bytes.lua
-- and `tell_nodes` from tell_nodes.lua, both prepended to this file.
if redis.call('HEXISTS', KEYS[3], ARGV[5]) == 0 then
  return -1
end

local seq = redis.call('INCR', KEYS[1])
local bend, bstart = byte_marks(KEYS[2], KEYS[4])
bend = bend + #ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'j', ARGV[4], 'c', bend)
redis.call('HSET', KEYS[4], 'bend', bend)
if seq == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
trim(KEYS[2], KEYS[4], bend, bstart, tonumber(ARGV[7]))

tell_nodes(KEYS[3], ARGV[6], ARGV[1] .. seq .. ARGV[2])
return seq
