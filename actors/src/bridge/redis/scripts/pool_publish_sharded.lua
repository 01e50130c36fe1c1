-- pool_publish_sharded.lua: pool_publish.lua on Redis Cluster. One SPUBLISH on the
-- language's shard channel, rdv:{pool:LANG}:ev, in the slot of the pool's keys:
-- only the shard that owns the language delivers it (every node subscribes to
-- every language's channel), and the cluster bus does not copy it to the others.
local function pool_publish(entries, payload)
  redis.call('SPUBLISH', string.sub(entries, 1, -8) .. 'ev', payload)
end
