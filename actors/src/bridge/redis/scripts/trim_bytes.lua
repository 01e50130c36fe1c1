-- trim_bytes.lua: not a script of its own. Prepended to append.lua and reseed.lua
-- (`concat!` in mod.rs), which both cap a room's stream in bytes.
--
-- Every stream entry carries `c`, the room's running count of stored bytes up to
-- and including it (meta `bend` holds the newest, meta `bstart` where the oldest
-- kept entry starts), so the bytes the stream holds are `bend - bstart`. Past the
-- cap the oldest entries are trimmed (the newest is always kept).
--
-- The functions are made by `byte_tools()`, when a script needs them: most
-- appends neither trim nor read an entry, and making four closures on every call
-- cost about 2 % of an append (BENCHMARKS.md).

local function byte_tools()
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

  -- Where the newest entry ends in the running count (nil for an empty stream or
  -- an entry stored without `c`): what `bend` is when meta lost it.
  local function newest_end(log)
    local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
    return newest and tonumber(field(newest, 'c') or '')
  end

  -- The room's byte marks: where the newest entry ends (`bend`) and where the
  -- oldest kept one starts (`bstart`). (append.lua counts `bend` on with HINCRBY
  -- instead.)
  local function byte_marks(log, meta)
    local marks = redis.call('HMGET', meta, 'bend', 'bstart')
    local bend, bstart = tonumber(marks[1] or ''), tonumber(marks[2] or '') or 0
    return bend or newest_end(log) or 0, bstart
  end
  return trim, newest_end, byte_marks
end
