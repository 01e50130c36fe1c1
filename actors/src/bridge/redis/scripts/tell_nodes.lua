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
  -- The nodes told so far: the first in `one`, and a table only once a second one
  -- comes (a room of two across two nodes, the common case, makes no table).
  local one, seen, told = nil, nil, 0
  for i = first, #nodes, step do
    local node = nodes[i]
    if node ~= skip and node ~= one and not (seen and seen[node]) then
      if not one then
        one = node
      else
        seen = seen or { [one] = true }
        seen[node] = true
      end
      told = told + 1
      redis.call('PUBLISH', 'rdv:node:' .. node, payload)
    end
  end
  return told
end
