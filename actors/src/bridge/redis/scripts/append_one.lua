-- append_one.lua: not a script of its own. Prepended (after trim_bytes.lua) to
-- append.lua and append_many.lua, which store one chat message or several.
--
-- append_one(k, a) stores the message whose keys are KEYS[k+1..k+6] and whose own
-- arguments are ARGV[a+1..a+6]; ARGV[1..6] are shared by every message of a call.
-- KEYS[k+1] rdv:room:{ROOM}:seq   KEYS[k+2] rdv:room:{ROOM}:log (stream, id = "SEQ-1")
-- KEYS[k+3] rdv:room:{ROOM}:members   KEYS[k+4] rdv:room:{ROOM}:meta
-- KEYS[k+5] rdv:room:{ROOM}:sent:LEN:SENDER:CLIENT_MSG_ID (LEN = bytes of SENDER): the
--   sender's record of this client_msg_id, "SEQ MSG_ID", living one dedup window;
--   only touched when ARGV[a+5] is not empty
-- KEYS[k+6] rdv:room:{ROOM}:sentids: the room's record keys, oldest first (a list
--   living one dedup window after its last trim)
-- Shared: ARGV[1] stream cap (messages)   ARGV[2] the sending node (not told)
--   ARGV[3] byte cap of the stream   ARGV[4] ttl of a new room's seq and log (ms)
--   ARGV[5] dedup window (ms)   ARGV[6] most ids remembered per room (0 = none)
-- Own: ARGV[a+1] event JSON up to the seq   ARGV[a+2] event JSON after the seq
--   ARGV[a+3] stored message JSON   ARGV[a+4] sender
--   ARGV[a+5] client_msg_id ("" = none: no deduplication)   ARGV[a+6] the msg_id
-- Returns the new seq and the room's members as read (HGETALL: user, node, ...)
-- for telling the other nodes; -1 when the sender is not a member; or {seq,
-- msg_id} of the sender's earlier message with the same client_msg_id (a resend:
-- nothing is stored, and nobody is to be told).
--
-- A record is remembered for the window (its key's lifetime) and while it is one
-- of the room's last ARGV[6] messages: a room never remembers more ids than that,
-- the oldest forgotten first. It holds at most 31 records more than that (the list
-- KEYS[k+6]; records of a list that expired go with the window).
-- The common path is five commands (seven with a client_msg_id): HGETALL, INCR,
-- [SET, RPUSH], HMGET, XADD, HSET. The room's keys are not renewed here: the node
-- that holds the room renews them every third of their margin (touch_room.lua),
-- chatting or not.
local function append_one(k, a)
  local members = redis.call('HGETALL', KEYS[k + 3])
  local member = false
  for i = 1, #members, 2 do
    if members[i] == ARGV[a + 4] then
      member = true
      break
    end
  end
  if not member then
    return -1
  end

  local seq = redis.call('INCR', KEYS[k + 1])
  local max = tonumber(ARGV[6])
  if ARGV[a + 5] ~= '' and max > 0 then
    local record = seq .. ' ' .. ARGV[a + 6]
    -- Stored only if the sender has no record of this id; else the record is returned.
    local prev = redis.call('SET', KEYS[k + 5], record, 'NX', 'PX', ARGV[5], 'GET')
    if prev then
      local sp = string.find(prev, ' ', 1, true)
      local orig = sp and tonumber(string.sub(prev, 1, sp - 1))
      -- The original must be older than this seq (a record outliving an earlier
      -- life of the room is stale) and among the last ARGV[6] messages.
      if orig and orig < seq and seq - orig <= max then
        -- A resend. Giving the seq back is a write of the caller's, so a WAIT after
        -- this reply confirms the replicas hold the original (written before it in
        -- the replication stream), even on a connection that did not store it.
        redis.call('DECR', KEYS[k + 1])
        return {orig, string.sub(prev, sp + 1)}
      end
      -- Forgotten (or unreadable): this message takes the record over.
      redis.call('SET', KEYS[k + 5], record, 'PX', ARGV[5])
    end
    -- The room's records, oldest first, bound its memory: past the most it
    -- remembers (and a batch, so this runs once per 32 records) the oldest are
    -- dropped, but only those a newer message has not taken over.
    local n = redis.call('RPUSH', KEYS[k + 6], KEYS[k + 5])
    if n > max + 31 then
      local old = redis.call('LPOP', KEYS[k + 6], math.min(n - max, 256))
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
      redis.call('PEXPIRE', KEYS[k + 6], ARGV[5])
    end
  end

  local bend, bstart = byte_marks(KEYS[k + 2], KEYS[k + 4])
  bend = bend + #ARGV[a + 3]
  redis.call('XADD', KEYS[k + 2], 'MAXLEN', '~', ARGV[1], seq .. '-1', 'j', ARGV[a + 3], 'c', bend)
  redis.call('HSET', KEYS[k + 4], 'bend', bend)
  if seq == 1 then
    redis.call('PEXPIRE', KEYS[k + 1], ARGV[4])
    redis.call('PEXPIRE', KEYS[k + 2], ARGV[4])
  end
  trim(KEYS[k + 2], KEYS[k + 4], bend, bstart, tonumber(ARGV[3]))
  return seq, members
end
