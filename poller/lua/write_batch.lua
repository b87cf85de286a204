-- Append a batch to a stream exactly once per spool sequence number.
-- KEYS[1] = stream, KEYS[2] = high-water mark of this poller instance for that stream.
-- ARGV[1] = n (fields per entry), ARGV[2 .. n+1] = field names,
-- then per entry: its spool seq followed by its n values. Entries come in ascending seq.
-- Returns {added, skipped}.
local n = tonumber(ARGV[1])
local mark = redis.call('GET', KEYS[2])
local top = tonumber(mark or '0')
local top_text = mark or '0'
local added, skipped = 0, 0
local pairs_ = {}
for j = 1, n do
  pairs_[2 * j - 1] = ARGV[1 + j]
end
local i = n + 2
while i <= #ARGV do
  local seq = tonumber(ARGV[i])
  if seq > top then
    for j = 1, n do
      pairs_[2 * j] = ARGV[i + j]
    end
    redis.call('XADD', KEYS[1], '*', unpack(pairs_))
    top = seq
    top_text = ARGV[i]
    added = added + 1
  else
    skipped = skipped + 1
  end
  i = i + n + 1
end
-- Written even when unchanged: this write is what makes a WAIT/WAITAOF issued afterwards on
-- this connection also cover an earlier attempt (a redis-py retry) that did the XADDs.
-- The original text is stored because tostring() turns large numbers into 1e+14 notation.
redis.call('SET', KEYS[2], top_text)
return {added, skipped}
