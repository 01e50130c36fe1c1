-- event.lua: send a room event to every node with members except the origin.
-- KEYS[1] rdv:room:{ROOM}:members   ARGV[1] event JSON   ARGV[2] origin node
-- Returns how many nodes were told. `tell_nodes` comes from tell_nodes.lua.
return tell_nodes(KEYS[1], ARGV[2], ARGV[1])
