-- touch_room.lua: keep an open room's keys alive while a node holds a replica of it,
-- and name its members so their keys are refreshed too (seats of users whose node
-- died last until the grace ends). A room nobody holds expires.
-- KEYS[1] rdv:room:{ROOM}:members   KEYS[2] seq   KEYS[3] log   KEYS[4] meta
-- ARGV[1] ttl (ms)
-- Returns the members' user ids ({} when the store holds no seat: closed or empty).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return redis.call('HKEYS', KEYS[1])
