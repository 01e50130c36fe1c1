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
--
-- Byte cap: every entry carries `c`, the room's running count of stored bytes up
-- to and including it (meta `bend` holds the newest, meta `bstart` where the
-- oldest kept entry starts), so the bytes the stream holds are `bend - bstart`.
-- Past the cap the oldest entries are trimmed (the newest is always kept).
if redis.call('HEXISTS', KEYS[3], ARGV[5]) == 0 then
  return -1
end

local function field(e, name)
  local f = e[2]
  for k = 1, #f, 2 do
    if f[k] == name then
      return f[k + 1]
    end
  end
  return nil
end

-- Where an entry starts in the running count (nil for an entry stored without `c`).
local function start_of(e)
  local c, j = tonumber(field(e, 'c') or ''), field(e, 'j')
  if c and j then
    return c - #j
  end
  return nil
end

local function trim(log, meta, bend, bstart, cap)
  if bend - bstart <= cap then
    return
  end
  local floor = bend - cap
  local from = '-'
  local keep, keep_start, last, last_start = nil, nil, nil, nil
  while not keep do
    local batch = redis.call('XRANGE', log, from, '+', 'COUNT', 16)
    if #batch == 0 then
      break
    end
    for _, e in ipairs(batch) do
      local s = start_of(e)
      -- An entry without `c` (stored by an older version) stops the trim.
      if s == nil or s >= floor then
        keep, keep_start = e[1], s or floor
        break
      end
      last, last_start = e[1], s
      from = '(' .. e[1]
    end
  end
  if not keep then
    keep, keep_start = last, last_start
  end
  if keep then
    redis.call('XTRIM', log, 'MINID', keep)
    redis.call('HSET', meta, 'bstart', keep_start)
  end
end

local seq = redis.call('INCR', KEYS[1])
local marks = redis.call('HMGET', KEYS[4], 'bend', 'bstart')
local bend, bstart = tonumber(marks[1] or ''), tonumber(marks[2] or '') or 0
if not bend then
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  bend = (newest and tonumber(field(newest, 'c') or '')) or 0
end
bend = bend + #ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'j', ARGV[4], 'c', bend)
redis.call('HSET', KEYS[4], 'bend', bend)
if seq == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
trim(KEYS[2], KEYS[4], bend, bstart, tonumber(ARGV[7]))

local payload = ARGV[1] .. seq .. ARGV[2]
local seen = {[ARGV[6]] = true}
for _, node in ipairs(redis.call('HVALS', KEYS[3])) do
  if not seen[node] then
    seen[node] = true
    redis.call('PUBLISH', 'rdv:node:' .. node, payload)
  end
end
return seq
