-- append.lua: store one chat message and send it to every other node with
-- members, in one step, so every node sees the room's messages in seq order. The
-- sending node delivers it itself when this returns.
-- KEYS[1..6] and ARGV[1..12]: append_one's keys (k = 0) and its shared arguments,
-- then the message's own (a = 6); see append_one.lua, prepended to this file with
-- trim_bytes.lua and tell_nodes.lua.
-- Returns the new seq, -1 when the sender is not a member, or {seq, msg_id} of the
-- sender's earlier message with the same client_msg_id (a resend: nothing is
-- stored or published).
local seq, members = append_one(0, 6)
if members then
  tell_nodes(KEYS[3], ARGV[2], ARGV[7] .. seq .. ARGV[8], members)
end
return seq
