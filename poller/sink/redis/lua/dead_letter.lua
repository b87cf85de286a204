-- Move one entry a consumer group cannot process to the dead-letter stream, and acknowledge
-- it, in one step: a consumer that dies in between can neither lose nor repeat it.
-- KEYS[1] = the stream, KEYS[2] = its dead-letter stream (same Cluster slot).
-- ARGV[1] = group, ARGV[2] = entry id, ARGV[3] = reason.
-- Returns 1 when the entry was moved, 0 when it was no longer pending in the group.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return 0
end
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local fields = {}
if #entry == 1 then
  local raw = entry[1][2]
  for i = 1, #raw, 2 do
    fields[raw[i]] = raw[i + 1]
  end
end
redis.call('XADD', KEYS[2], '*',
  'reason', ARGV[3],
  'raw', fields['payload'] or '',
  'app', fields['app'] or '',
  'pulled_at', fields['pulled_at'] or '',
  'schema', 'infobip.push.mo.dead.v1')
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
