-- touch_user.lua: keep a user's keys alive while this node serves them (routing and
-- membership) or holds a room they have a seat in (membership only: a seat lasts
-- the grace after its session, and the routing key must not outlive the session by
-- more than one lifetime). Every node refreshes its users periodically; a key
-- nobody refreshes expires: the user is gone.
-- KEYS[1] rdv:user:{USER}:node   KEYS[2] rdv:user:{USER}:rooms
-- ARGV[1] ttl (ms)   ARGV[2] this node when the user's session is here, else ''
if ARGV[2] ~= '' then
  -- Restore the routing key if it expired (this node was cut off meanwhile); never
  -- overwrite another node's: the user may have moved there.
  redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
