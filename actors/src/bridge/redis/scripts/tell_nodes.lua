-- tell_nodes.lua: not a script of its own. Prepended (`concat!` in mod.rs) to the
-- room scripts that tell the other nodes of a room about a change: append, event,
-- join, leave, close and rehome.

-- Publish `payload` once to each node that holds a member of the room (the values
-- of the `members` hash, user -> node), except `skip` (the node that acts on its
-- own). `pairs`, when given, is the hash as the script already read it (HGETALL:
-- user, node, user, node, ...), which spares reading it again. Returns how many
-- nodes were told.
local function tell_nodes(members, skip, payload, pairs)
  local nodes, first, step = pairs, 2, 2
  if not nodes then
    nodes, first, step = redis.call('HVALS', members), 1, 1
  end
  local seen = { [skip] = true }
  local told = 0
  for i = first, #nodes, step do
    local node = nodes[i]
    if not seen[node] then
      seen[node] = true
      told = told + 1
      redis.call('PUBLISH', 'rdv:node:' .. node, payload)
    end
  end
  return told
end
