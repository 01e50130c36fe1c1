-- room_open.lua: create a match room with its members.
-- KEYS[1] rdv:room:{ROOM}:members (hash user -> node)   KEYS[2] rdv:room:{ROOM}:meta
-- ARGV[1] kind   ARGV[2] ttl (ms)   ARGV[3..] user, node, user, node, ...
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], 'kind', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
