-- pool_publish.lua: not a script of its own. Prepended to begin, end and claim:
-- how a change of a language's pool is shown to every node. On one server, one
-- PUBLISH on rdv:cluster; on Redis Cluster the bridge swaps in
-- pool_publish_sharded.lua.
local function pool_publish(entries, payload)
  redis.call('PUBLISH', 'rdv:cluster', payload)
end
