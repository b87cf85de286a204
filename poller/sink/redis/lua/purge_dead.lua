-- Remove the entries of one dead-letter stream that are older than a stream id, and count
-- them in the stream's totals. Only `poller dead purge` calls it, on dead-letter streams.
-- KEYS[1] = the dead-letter stream, KEYS[2] = its totals (a hash).
-- ARGV[1] = the first id kept ("<ms>-0"). Returns the number of entries removed.
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if removed > 0 then
  redis.call('HINCRBY', KEYS[2], 'purged', removed)
end
return removed
