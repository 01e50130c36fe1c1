-- tell_nodes.lua: not a script of its own. Prepended (`concat!` in mod.rs) to the
-- room scripts that tell the other nodes of a room about a change: append, event,
-- join, leave, close and rehome.

-- Publish `payload` once to each node that holds a member of the room (the values
-- of the `members` hash, user -> node), except `skip` (the node that acts on its
-- own). Returns how many nodes were told.
local function tell_nodes(members, skip, payload)
  local seen = { [skip] = true }
  local told = 0
  for _, node in ipairs(redis.call('HVALS', members)) do
    if not seen[node] then
      seen[node] = true
      told = told + 1
      redis.call('PUBLISH', 'rdv:node:' .. node, payload)
    end
  end
  return told
end
