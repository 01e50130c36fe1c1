-- append_many.lua: append.lua for several messages at once (of any rooms), as the
-- node's command pipe sends them when it has more than one queued: N = #KEYS / 6
-- messages, message i (from 0) with keys KEYS[6i+1..6i+6] and own arguments
-- ARGV[6+6i+1..6+6i+6] after the six shared ones (see append_one.lua, prepended
-- with trim_bytes.lua). Messages are stored in the order given.
-- Every other node with members in any of the rooms is told with one PUBLISH on
-- rdv:node:ID for the whole call: the events meant for it, in order, one JSON
-- object per line. One server only: on Redis Cluster a room's keys are in the
-- room's own slot, so the pipe never gathers two rooms into one call there (nor
-- loads this script with classic PUBLISH swapped for SPUBLISH).
-- Returns an array with each message's answer, as append.lua would give it.
local out, lines, nodes = {}, {}, {}
local me = ARGV[2]
for i = 0, #KEYS / 6 - 1 do
  local a = 6 + 6 * i
  local seq, members = append_one(6 * i, a)
  out[i + 1] = seq
  if members then
    local payload = ARGV[a + 1] .. seq .. ARGV[a + 2]
    local told = {}
    for j = 2, #members, 2 do
      local node = members[j]
      if node ~= me and not told[node] then
        told[node] = true
        local l = lines[node]
        if not l then
          l = {}
          lines[node] = l
          nodes[#nodes + 1] = node
        end
        l[#l + 1] = payload
      end
    end
  end
end
for _, node in ipairs(nodes) do
  redis.call('PUBLISH', 'rdv:node:' .. node, table.concat(lines[node], '\n'))
end
return out
