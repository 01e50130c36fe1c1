-- event.lua: send a room event to every node with members except the origin.
-- KEYS[1] rdv:room:{ROOM}:members   ARGV[1] event JSON   ARGV[2] origin node
local seen = { [ARGV[2]] = true }
local n = 0
for _, node in ipairs(redis.call('HVALS', KEYS[1])) do
  if not seen[node] then
    seen[node] = true
    n = n + 1
    redis.call('PUBLISH', 'rdv:node:' .. node, ARGV[1])
  end
end
return n
