-- Re-drive one dead letter's messages into a stream of another Cluster slot than the letter's
-- own dead-letter stream, once.
-- KEYS[1] = the message stream, KEYS[2] = the marker of this letter in it (same slot).
-- ARGV[1] = seconds the marker lives, ARGV[2] = the entries (packed.lua).
-- Returns the number of entries added: 0 when the marker was set already (an earlier or a
-- concurrent re-drive of the same letter added them). The letter itself is settled after,
-- by settle_dead.lua in its own slot; a re-drive cut short in between is finished by the
-- next one, which adds nothing here again.
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
return add_all(KEYS[1], ARGV[2])
