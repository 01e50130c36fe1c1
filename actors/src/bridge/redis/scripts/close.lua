-- close.lua: close a room for everyone (a block).
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] log   KEYS[4] meta
-- ARGV[1] Closed event JSON   ARGV[2] origin node   ARGV[3] ttl of seq and log (ms)
-- Returns the users who held a seat (their membership sets are cleaned after).
-- `tell_nodes` comes from tell_nodes.lua, prepended to this file.
tell_nodes(KEYS[1], ARGV[2], ARGV[1])
local members = redis.call('HKEYS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return members
