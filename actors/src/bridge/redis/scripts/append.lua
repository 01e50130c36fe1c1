-- append.lua: store a chat message and send it to every other node with members,
-- in one step, so every node sees the room's messages in seq order. The sending
-- node delivers it itself when this returns.
-- KEYS[1] rdv:room:{ROOM}:seq   KEYS[2] rdv:room:{ROOM}:log (stream, id = "SEQ-1")
-- KEYS[3] rdv:room:{ROOM}:members   KEYS[4] rdv:room:{ROOM}:meta
-- KEYS[5] rdv:room:{ROOM}:sent: the room's records of client_msg_ids, a hash from
--   "LEN:SENDER:CLIENT_MSG_ID" (LEN = bytes of SENDER) to "SEQ MS MSG_ID" (MS: when
--   it was stored, the sending node's clock), plus the field "~" (see below); only
--   touched when ARGV[5] is not empty
-- KEYS[6] rdv:room:{ROOM}:sentids: the record fields, oldest first (a list)
-- ARGV[1] the event JSON up to the seq (ending `"seq":`)
-- ARGV[2] the stored message JSON, which is also the rest of the event: the event
--   published is ARGV[1] .. SEQ .. ',' .. ARGV[2] without its opening brace .. '}'
--   (the node makes the stored JSON from the event's own text, `append_payloads`,
--   so the text travels once)
-- ARGV[3] sender   ARGV[4] the sending node (not published to)
-- ARGV[5] the record's field ("" = no client_msg_id: no deduplication), with a
--   leading "+" when the node asks for the records' lifetime to be renewed
-- ARGV[6] "NOW MSG_ID": now (ms since the epoch, the node's clock) and the
--   message's msg_id, the end of its record
-- The node's settings are constants of the script, not arguments (each argument
-- costs Redis a string on the wire and one in Lua, on every call): the node puts
-- a line defining STREAM_CAP (most messages in the stream, text), BYTE_CAP (most
-- bytes, --history-bytes), KEY_TTL (life of a new room's seq and log in ms, text),
-- WINDOW (--dedup-window-ms) and MAX (--dedup-max-per-room, 0 = none) before
-- this file, so nodes with other settings load a script of their own.
-- Returns the new seq, -1 when the sender is not a member, or {seq, msg_id} of
-- the sender's earlier message with the same client_msg_id (a resend: nothing is
-- stored or published).
--
-- A record counts for the window (its stored time) and while it is one of the
-- room's last MAX messages: a room never remembers more ids than that, the
-- oldest forgotten first. The hash holds at most 31 records more than that (the
-- list KEYS[6] drops the oldest 32 at a time). Both live at least one window past
-- the room's last record: their lifetime is set to 1.5 windows when they are made
-- and when the sending node asks ("+" on ARGV[5]: it has not renewed them for
-- half a window, renew.rs), so renewing costs two commands per node every half window,
-- not a command every send. (Nodes of an earlier version decided by meta
-- `srenew`, which they alone keep; either rule keeps the records alive.)
-- The records hash starts with the field "~" holding a value longer than Redis
-- keeps in a listpack (`hash-max-listpack-value`, 64 bytes by default), so it is
-- a hash table from its first record: a listpack is searched end to end, twice
-- per HSETNX, which made a room's 100th send cost a sixth more than its first.
-- The hash table costs about 60 % more memory until 128 records, where Redis
-- would have converted it anyway (BENCHMARKS.md).
-- The common path is five commands (seven with a client_msg_id): HGETALL, INCR,
-- [HSETNX, RPUSH], HINCRBY, XADD, PUBLISH. The stream's length cap (STREAM_CAP,
-- approximate) is applied by an XTRIM every 64th message rather than by MAXLEN on
-- every XADD, which spared each send three arguments; the byte cap, lower in
-- practice, trims on every send that passes it. The room's keys are not renewed
-- here: the node that holds the room renews them every third of their margin
-- (touch_room.lua), chatting or not.
-- The byte cap's functions (`trim`, `newest_end`) come from trim_bytes.lua
-- (`byte_tools`, called only when needed) and `tell_nodes` from tell_nodes.lua,
-- both prepended to this file.
local members = redis.call('HGETALL', KEYS[3])
local member = false
for i = 1, #members, 2 do
  if members[i] == ARGV[3] then
    member = true
    break
  end
end
if not member then
  return -1
end

-- Numbers: each is written out once, as an integer (Lua's own tostring and
-- Redis's conversion of numbers passed to redis.call both go through a
-- floating-point printf), and the clock is parsed (strtod) only for a resend.
local seq = redis.call('INCR', KEYS[1])
local sseq = string.format('%d', seq)
local field = ARGV[5]
if field ~= '' and MAX > 0 then
  -- "+": renew the records' lifetime (see above). A field starts with a digit.
  local renew = string.byte(field) == 43
  if renew then
    field = string.sub(field, 2)
  end
  local record = sseq .. ' ' .. ARGV[6]
  -- Stored only if the sender has no record of this id; else the record is read.
  if redis.call('HSETNX', KEYS[5], field, record) == 0 then
    local prev = redis.call('HGET', KEYS[5], field) or ''
    local s, t, id = string.match(prev, '^(%d+) (%d+) (.*)$')
    local orig = tonumber(s)
    -- The original must be older than this seq (a record outliving an earlier
    -- life of the room is stale), among the last MAX messages and stored within
    -- the window.
    local now = tonumber(string.match(ARGV[6], '^%d+'))
    local fresh = orig and now and now - tonumber(t) < WINDOW
    if orig and orig < seq and seq - orig <= MAX and fresh then
      -- A resend. Giving the seq back is a write of the caller's, so a WAIT after
      -- this reply confirms the replicas hold the original (written before it in
      -- the replication stream), even on a connection that did not store it.
      redis.call('DECR', KEYS[1])
      return {orig, id}
    end
    -- Forgotten (or unreadable): this message takes the record over.
    redis.call('HSET', KEYS[5], field, record)
  end
  -- The room's record fields, oldest first, bound its memory: past the most it
  -- remembers (and a batch, so this runs once per 32 records) the oldest are
  -- dropped, but only those a newer message has not taken over.
  local n = redis.call('RPUSH', KEYS[6], field)
  if n == 1 then
    -- New records: "~" makes the hash a hash table (see above). No record's field
    -- starts with "~", and the list never names it, so it is never dropped.
    redis.call('HSET', KEYS[5], '~', string.rep('~', 72))
  elseif n > MAX + 31 then
    local old = redis.call('LPOP', KEYS[6], math.min(n - MAX, 256))
    local vals = redis.call('HMGET', KEYS[5], unpack(old))
    local gone = {}
    for i, v in ipairs(vals) do
      local s = v and tonumber(string.match(v, '^%d+'))
      if not s or seq - s >= MAX then
        gone[#gone + 1] = old[i]
      end
    end
    if #gone > 0 then
      redis.call('HDEL', KEYS[5], unpack(gone))
    end
  end
  if n == 1 or renew then
    local ttl = string.format('%d', WINDOW + math.floor(WINDOW / 2))
    redis.call('PEXPIRE', KEYS[5], ttl)
    redis.call('PEXPIRE', KEYS[6], ttl)
  end
end

-- The room's running byte count (trim_bytes.lua), counted on in place. Only the
-- room's first message ends at its own length; any other that does found meta
-- without `bend` (lost), and counts on from the newest entry's.
local len = #ARGV[2]
local bend = redis.call('HINCRBY', KEYS[4], 'bend', len)
if bend == len and seq ~= 1 then
  local _, newest_end = byte_tools()
  local before = newest_end(KEYS[2])
  if before then
    bend = before + len
    redis.call('HSET', KEYS[4], 'bend', string.format('%d', bend))
  end
end
redis.call('XADD', KEYS[2], sseq .. '-1', 'j', ARGV[2], 'c', string.format('%d', bend))
if seq % 64 == 0 then
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', STREAM_CAP)
end
if seq == 1 then
  redis.call('PEXPIRE', KEYS[1], KEY_TTL)
  redis.call('PEXPIRE', KEYS[2], KEY_TTL)
end
-- Where the oldest kept entry starts matters only once the room holds more than
-- the cap in all.
if bend > BYTE_CAP then
  local trim = byte_tools()
  trim(KEYS[2], KEYS[4], bend, tonumber(redis.call('HGET', KEYS[4], 'bstart') or '') or 0, BYTE_CAP)
end

-- The event: its start, the seq, the stored JSON's fields, the event's end.
local event = ARGV[1] .. sseq .. ',' .. string.sub(ARGV[2], 2) .. '}'
tell_nodes(KEYS[3], ARGV[4], event, members)
return seq
