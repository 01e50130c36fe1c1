-- append.lua: store a chat message and send it to every other node with members,
-- in one step, so every node sees the room's messages in seq order. The sending
-- node delivers it itself when this returns.
-- KEYS[1] rdv:room:{ROOM}:seq   KEYS[2] rdv:room:{ROOM}:log (stream, id = "SEQ-1")
-- KEYS[3] rdv:room:{ROOM}:members   KEYS[4] rdv:room:{ROOM}:meta
-- KEYS[5] rdv:room:{ROOM}:sent: the room's records of client_msg_ids, a hash from
--   "LEN:SENDER:CLIENT_MSG_ID" (LEN = bytes of SENDER) to "SEQ MS MSG_ID" (MS: when
--   it was stored, the sending node's clock); only touched when ARGV[9] is not empty
-- KEYS[6] rdv:room:{ROOM}:sentids: the record fields, oldest first (a list)
-- ARGV[1] event JSON up to the seq   ARGV[2] event JSON after the seq
-- ARGV[3] stream cap (messages)   ARGV[4] stored message JSON   ARGV[5] sender
-- ARGV[6] the sending node (not published to)   ARGV[7] byte cap of the stream
-- ARGV[8] ttl of a new room's seq and log (ms)
-- ARGV[9] the record's field ("" = no client_msg_id: no deduplication)
-- ARGV[10] dedup window (ms)   ARGV[11] most ids remembered per room (0 = none)
-- ARGV[12] the message's msg_id   ARGV[13] now (ms since the epoch, the node's clock)
-- Returns the new seq, -1 when the sender is not a member, or {seq, msg_id} of
-- the sender's earlier message with the same client_msg_id (a resend: nothing is
-- stored or published).
--
-- A record counts for the window (its stored time) and while it is one of the
-- room's last ARGV[11] messages: a room never remembers more ids than that, the
-- oldest forgotten first. The hash holds at most 31 records more than that (the
-- list KEYS[6] drops the oldest 32 at a time). Both live at least one window past
-- the room's last record: their lifetime is renewed to 1.5 windows whenever less
-- than one is left (meta `srenew`: half a window after the last renewal, by the
-- sending node's clock), so renewing costs a command every half window, not every
-- send.
-- The common path is seven commands (nine with a client_msg_id): HGETALL, INCR,
-- HMGET, [HSETNX, RPUSH], XADD, HSET, PUBLISH. The room's keys are not renewed
-- here: the node that holds the room renews them every third of their margin
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

-- Numbers and text: each number is written out once, as an integer (Lua's own
-- tostring and Redis's conversion of numbers passed to redis.call both go through
-- a floating-point printf), and times are compared as text (`less`) rather than
-- parsed (strtod), except where arithmetic needs them.
local function less(a, b)
  -- a < b for decimal integers without sign or leading zeros.
  return #a < #b or (#a == #b and a < b)
end

local seq = redis.call('INCR', KEYS[1])
local sseq = string.format('%d', seq)
local bend, bstart, srenew = byte_marks(KEYS[2], KEYS[4], 'srenew')
local renewed = nil
local max = tonumber(ARGV[11])
if ARGV[9] ~= '' and max > 0 then
  local record = sseq .. ' ' .. ARGV[13] .. ' ' .. ARGV[12]
  -- Stored only if the sender has no record of this id; else the record is read.
  if redis.call('HSETNX', KEYS[5], ARGV[9], record) == 0 then
    local prev = redis.call('HGET', KEYS[5], ARGV[9]) or ''
    local s, t, id = string.match(prev, '^(%d+) (%d+) (.*)$')
    local orig = tonumber(s)
    -- The original must be older than this seq (a record outliving an earlier
    -- life of the room is stale), among the last ARGV[11] messages and stored
    -- within the window.
    local fresh = orig and tonumber(ARGV[13]) - tonumber(t) < tonumber(ARGV[10])
    if orig and orig < seq and seq - orig <= max and fresh then
      -- A resend. Giving the seq back is a write of the caller's, so a WAIT after
      -- this reply confirms the replicas hold the original (written before it in
      -- the replication stream), even on a connection that did not store it.
      redis.call('DECR', KEYS[1])
      return {orig, id}
    end
    -- Forgotten (or unreadable): this message takes the record over.
    redis.call('HSET', KEYS[5], ARGV[9], record)
  end
  -- The room's record fields, oldest first, bound its memory: past the most it
  -- remembers (and a batch, so this runs once per 32 records) the oldest are
  -- dropped, but only those a newer message has not taken over.
  local n = redis.call('RPUSH', KEYS[6], ARGV[9])
  if n > max + 31 then
    local old = redis.call('LPOP', KEYS[6], math.min(n - max, 256))
    local vals = redis.call('HMGET', KEYS[5], unpack(old))
    local gone = {}
    for i, v in ipairs(vals) do
      local s = v and tonumber(string.match(v, '^%d+'))
      if not s or seq - s >= max then
        gone[#gone + 1] = old[i]
      end
    end
    if #gone > 0 then
      redis.call('HDEL', KEYS[5], unpack(gone))
    end
  end
  if not srenew or less(srenew, ARGV[13]) then
    local now, window = tonumber(ARGV[13]), tonumber(ARGV[10])
    local half = math.floor(window / 2)
    redis.call('PEXPIRE', KEYS[5], window + half)
    redis.call('PEXPIRE', KEYS[6], window + half)
    renewed = string.format('%d', now + half)
  end
end

bend = bend + #ARGV[4]
local sbend = string.format('%d', bend)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], sseq .. '-1', 'j', ARGV[4], 'c', sbend)
if renewed then
  redis.call('HSET', KEYS[4], 'bend', sbend, 'srenew', renewed)
else
  redis.call('HSET', KEYS[4], 'bend', sbend)
end
if seq == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
trim(KEYS[2], KEYS[4], bend, bstart, tonumber(ARGV[7]))

tell_nodes(KEYS[3], ARGV[6], ARGV[1] .. sseq .. ARGV[2], members)
return seq
