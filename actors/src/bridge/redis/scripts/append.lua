-- append.lua: store a chat message and send it to every other node with members,
-- in one step, so every node sees the room's messages in seq order. The sending
-- node delivers it itself when this returns.
-- KEYS[1] rdv:room:{ROOM}:seq   KEYS[2] rdv:room:{ROOM}:log (stream, id = "SEQ-1")
-- KEYS[3] rdv:room:{ROOM}:members   KEYS[4] rdv:room:{ROOM}:meta
-- KEYS[5] rdv:room:{ROOM}:sent:LEN:SENDER:CLIENT_MSG_ID (LEN = bytes of SENDER): the
--   sender's record of this client_msg_id, "SEQ MSG_ID", living one dedup window;
--   only touched when ARGV[9] is not empty
-- KEYS[6] rdv:room:{ROOM}:sentids: the room's record keys, oldest first (a list
--   living one dedup window after its last trim)
-- ARGV[1] event JSON up to the seq   ARGV[2] event JSON after the seq
-- ARGV[3] stream cap (messages)   ARGV[4] stored message JSON   ARGV[5] sender
-- ARGV[6] the sending node (not published to)   ARGV[7] byte cap of the stream
-- ARGV[8] ttl of a new room's seq and log (ms)
-- ARGV[9] client_msg_id ("" = none: no deduplication)   ARGV[10] dedup window (ms)
-- ARGV[11] most ids remembered per room (0 = none)   ARGV[12] the message's msg_id
-- Returns the new seq, -1 when the sender is not a member, or {seq, msg_id} of
-- the sender's earlier message with the same client_msg_id (a resend: nothing is
-- stored or published).
--
-- A record is remembered for the window (its key's lifetime) and while it is one
-- of the room's last ARGV[11] messages: a room never remembers more ids than that,
-- the oldest forgotten first. It holds at most 31 records more than that (the list
-- KEYS[6]; records of a list that expired go with the window).
-- The common path is six commands (eight with a client_msg_id): HGETALL, INCR,
-- [SET, RPUSH], HMGET, XADD, HSET, PUBLISH. The room's keys are not renewed here:
-- the node that holds the room renews them every third of their margin
-- (touch_room.lua), chatting or not.
-- The byte cap's functions (`trim`, `byte_marks`, `field`) come from trim_bytes.lua
-- and `tell_nodes` from tell_nodes.lua, both prepended to this file.
local members = redis.call('HGETALL', KEYS[3])
local member = false
for i = 1, #members, 2 do
  if members[i] == ARGV[5] then
    member = true
    break
  end
end
if not member then
  return -1
end

local seq = redis.call('INCR', KEYS[1])
if ARGV[9] ~= '' and tonumber(ARGV[11]) > 0 then
  local record = seq .. ' ' .. ARGV[12]
  -- Stored only if the sender has no record of this id; else the record is returned.
  local prev = redis.call('SET', KEYS[5], record, 'NX', 'PX', ARGV[10], 'GET')
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    local orig = sp and tonumber(string.sub(prev, 1, sp - 1))
    -- The original must be older than this seq (a record outliving an earlier
    -- life of the room is stale) and among the last ARGV[11] messages.
    if orig and orig < seq and seq - orig <= tonumber(ARGV[11]) then
      -- A resend. Giving the seq back is a write of the caller's, so a WAIT after
      -- this reply confirms the replicas hold the original (written before it in
      -- the replication stream), even on a connection that did not store it.
      redis.call('DECR', KEYS[1])
      return {orig, string.sub(prev, sp + 1)}
    end
    -- Forgotten (or unreadable): this message takes the record over.
    redis.call('SET', KEYS[5], record, 'PX', ARGV[10])
  end
  -- The room's records, oldest first, bound its memory: past the most it remembers
  -- (and a batch, so this runs once per 32 records) the oldest are dropped, but
  -- only those a newer message has not taken over.
  local max = tonumber(ARGV[11])
  local n = redis.call('RPUSH', KEYS[6], KEYS[5])
  if n > max + 31 then
    local old = redis.call('LPOP', KEYS[6], math.min(n - max, 256))
    local vals = redis.call('MGET', unpack(old))
    local gone = {}
    for i, v in ipairs(vals) do
      local s = v and tonumber(string.match(v, '^%d+'))
      if not s or seq - s >= max then
        gone[#gone + 1] = old[i]
      end
    end
    if #gone > 0 then
      redis.call('UNLINK', unpack(gone))
    end
  end
  if n == 1 or n > max + 31 then
    redis.call('PEXPIRE', KEYS[6], ARGV[10])
  end
end

local bend, bstart = byte_marks(KEYS[2], KEYS[4])
bend = bend + #ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'j', ARGV[4], 'c', bend)
redis.call('HSET', KEYS[4], 'bend', bend)
if seq == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
trim(KEYS[2], KEYS[4], bend, bstart, tonumber(ARGV[7]))

tell_nodes(KEYS[3], ARGV[6], ARGV[1] .. seq .. ARGV[2], members)
return seq
