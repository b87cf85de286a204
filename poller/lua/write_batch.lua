-- Append a batch to a stream exactly once per spool sequence number.
-- KEYS[1] = stream, KEYS[2] = high-water mark of one spool writer (one run of a poller
-- instance) for that stream.
-- ARGV[1] = n (fields per entry), ARGV[2 .. n+1] = field names, ARGV[n+2] = the entries,
-- each as its spool seq followed by its n values, every item as "<byte length>:<bytes>",
-- ARGV[n+3] = seconds the mark lives after this write.
-- One packed argument instead of thousands: redis-py's argument packing, not Redis, was
-- the bottleneck. Entries come in ascending seq. Returns {added, skipped}.
local n = tonumber(ARGV[1])
local blob = ARGV[n + 2]
local ttl = ARGV[n + 3]
local mark = redis.call('GET', KEYS[2])
local top = tonumber(mark or '0')
local top_text = mark or '0'
local added, skipped = 0, 0
local pos = 1
local size = #blob

local function item()
  local colon = string.find(blob, ':', pos, true)
  local len = tonumber(string.sub(blob, pos, colon - 1))
  local value = string.sub(blob, colon + 1, colon + len)
  pos = colon + len + 1
  return value
end

local pairs_ = {}
for j = 1, n do
  pairs_[2 * j - 1] = ARGV[1 + j]
end
while pos <= size do
  local seq_text = item()
  local seq = tonumber(seq_text)
  if seq > top then
    for j = 1, n do
      pairs_[2 * j] = item()
    end
    redis.call('XADD', KEYS[1], '*', unpack(pairs_))
    top = seq
    top_text = seq_text
    added = added + 1
  else
    for _ = 1, n do
      item()
    end
    skipped = skipped + 1
  end
end
-- Written even when unchanged: this write is what makes a WAIT/WAITAOF issued afterwards on
-- this connection also cover an earlier attempt (a redis-py retry) that did the XADDs.
-- The text is stored, not tostring(top), which turns large numbers into 1e+14 notation.
-- The TTL is refreshed with every write: the marks of past runs go away by themselves. A
-- mark that expired lets its writer's rows in again (a duplicate, never a loss).
redis.call('SET', KEYS[2], top_text, 'EX', ttl)
return {added, skipped}
