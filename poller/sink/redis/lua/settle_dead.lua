-- Settle one dead letter, all or nothing: add its messages to the streams of its own Cluster
-- slot, take it out of its dead-letter stream, put what still fails in its place, and count
-- the messages re-driven in the stream's totals.
-- KEYS[1] = the dead-letter stream, KEYS[2] = its totals (a hash), KEYS[3..] = message
-- streams in the same slot. ARGV[1] = the letter's entry id, ARGV[2] = the leftovers
-- (dead-letter entries, packed.lua), ARGV[3] = the messages re-driven from the letter in all
-- streams (counted here, by the one call that settles), ARGV[4..] = the entries of KEYS[3..].
-- Returns {0} when the letter is gone (another re-drive or a purge took it: nothing is
-- added), else {1, the entries added to each of KEYS[3..], the ids of the leftovers...}.
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return {0}
end
local reply = {1}
for k = 3, #KEYS do
  reply[#reply + 1] = add_all(KEYS[k], ARGV[k + 1])
end
redis.call('XDEL', KEYS[1], ARGV[1])
for _, fields in ipairs(entries_of(ARGV[2])) do
  reply[#reply + 1] = redis.call('XADD', KEYS[1], '*', unpack(fields))
end
local redriven = tonumber(ARGV[3])
if redriven > 0 then
  redis.call('HINCRBY', KEYS[2], 'redriven', redriven)
end
return reply
