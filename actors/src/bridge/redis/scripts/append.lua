-- append.lua: store a chat message and send it to every other node with members,
-- in one step, so every node sees the room's messages in seq order. The sending
-- node delivers it itself when this returns.
-- KEYS[1] rdv:room:{ROOM}:seq   KEYS[2] rdv:room:{ROOM}:log (stream, id = "SEQ-1")
-- KEYS[3] rdv:room:{ROOM}:members   KEYS[4] rdv:room:{ROOM}:meta
-- ARGV[1] event JSON up to the seq   ARGV[2] event JSON after the seq
-- ARGV[3] stream cap (messages)   ARGV[4] stored message JSON   ARGV[5] sender
-- ARGV[6] the sending node (not published to)   ARGV[7] byte cap of the stream
-- ARGV[8] ttl of a new room's seq and log (ms)
-- KEYS[5] rdv:room:{ROOM}:sent (hash "SENDER\nCLIENT_MSG_ID" -> "SEQ MSG_ID")
-- KEYS[6] rdv:room:{ROOM}:sentq (sorted set of the same fields by store time, ms)
-- ARGV[9] client_msg_id ("" = none: no deduplication)   ARGV[10] dedup window (ms)
-- ARGV[11] most ids remembered per room (0 = none)   ARGV[12] the message's msg_id
-- Returns the new seq, -1 when the sender is not a member, or {seq, msg_id} of
-- the sender's earlier message with the same client_msg_id within the window (a
-- resend: nothing is stored or published; its record is written again, unchanged).
-- The byte cap's functions (`trim`, `byte_marks`, `field`) come from trim_bytes.lua
-- and `tell_nodes` from tell_nodes.lua, both prepended to this file.
if redis.call('HEXISTS', KEYS[3], ARGV[5]) == 0 then
  return -1
end

local dedup = ARGV[9] ~= '' and tonumber(ARGV[11]) > 0
local sent_field, now
if dedup then
  sent_field = ARGV[5] .. '\n' .. ARGV[9]
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- Forget ids older than the window (a bounded batch per call).
  local old = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(ARGV[10]), 'LIMIT', 0, 64)
  if #old > 0 then
    redis.call('ZREM', KEYS[6], unpack(old))
    redis.call('HDEL', KEYS[5], unpack(old))
  end
  local prev = redis.call('HGET', KEYS[5], sent_field)
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    if sp then
      -- Written again (unchanged) so this reply is a write of the caller's too: a
      -- WAIT after it confirms the replicas hold the original, even on a connection
      -- that did not store it.
      redis.call('HSET', KEYS[5], sent_field, prev)
      return {tonumber(string.sub(prev, 1, sp - 1)), string.sub(prev, sp + 1)}
    end
  end
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

if dedup then
  redis.call('HSET', KEYS[5], sent_field, seq .. ' ' .. ARGV[12])
  redis.call('ZADD', KEYS[6], now, sent_field)
  local over = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[11])
  if over > 0 then
    local gone = redis.call('ZPOPMIN', KEYS[6], over)
    for k = 1, #gone, 2 do
      redis.call('HDEL', KEYS[5], gone[k])
    end
  end
  -- Every remembered id is older than the window once this much time passes
  -- without a new one: the keys go with them.
  redis.call('PEXPIRE', KEYS[5], ARGV[10])
  redis.call('PEXPIRE', KEYS[6], ARGV[10])
end

tell_nodes(KEYS[3], ARGV[6], ARGV[1] .. seq .. ARGV[2])
return seq
