-- tell_nodes_sharded.lua: what tell_nodes.lua becomes on Redis Cluster (the bridge
-- swaps the fragment when it loads the scripts). One SPUBLISH on the room's own
-- shard channel, rdv:room:{ROOM}:ev, which is in the slot of the room's keys: the
-- shard that owns the room delivers it to the nodes subscribed to the room (those
-- holding a replica), and no other shard sees it. The acting node is subscribed
-- too and drops its own events (their origin is itself), so `skip` and the
-- members already read (`pairs`) are unused.
local function tell_nodes(members, skip, payload, pairs)
  return redis.call('SPUBLISH', string.sub(members, 1, -8) .. 'ev', payload)
end
