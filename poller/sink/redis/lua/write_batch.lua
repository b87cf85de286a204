-- Append a batch to a stream exactly once per spool sequence number.
-- KEYS[1] = stream, KEYS[2] = high-water mark of one spool writer (one run of a poller
-- instance) for that stream, KEYS[3] (when ARGV[n+4] > 0) = the stream's recent message ids.
-- ARGV[1] = n (fields per entry), ARGV[2 .. n+1] = field names, ARGV[n+2] = the entries,
-- each as its spool seq followed by its n values, every item as "<byte length>:<bytes>",
-- ARGV[n+3] = seconds the mark lives after this write, ARGV[n+4] = milliseconds a message id
-- is remembered (0: no entry asks for it).
-- One packed argument instead of thousands: redis-py's argument packing, not Redis, was
-- the bottleneck. Entries come in ascending seq. A seq written as "d<seq>" marks an entry
-- that is also skipped when its first value (the message id) was written to this stream
-- within the window: a delivery Infobip repeated (HTTP forward), whatever process took it.
-- Returns {added, skipped, position of each such duplicate in the batch (1-based)...}.
local n = tonumber(ARGV[1])
local blob = ARGV[n + 2]
local ttl = ARGV[n + 3]
local window = tonumber(ARGV[n + 4] or '0')
local mark = redis.call('GET', KEYS[2])
local top = tonumber(mark or '0')
local top_text = mark or '0'
local added, skipped = 0, 0
local duplicates = {}
local pos = 1
local size = #blob
local now, oldest = 0, 0
if window > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  oldest = now - window
end

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
local index = 0
while pos <= size do
  index = index + 1
  local seq_text = item()
  local dedupe = string.byte(seq_text, 1) == 100 -- 'd'
  if dedupe then
    seq_text = string.sub(seq_text, 2)
  end
  local seq = tonumber(seq_text)
  if seq > top then
    for j = 1, n do
      pairs_[2 * j] = item()
    end
    local seen = false
    if dedupe and window > 0 then
      local at = redis.call('ZSCORE', KEYS[3], pairs_[2])
      seen = at and tonumber(at) >= oldest
    end
    if seen then
      duplicates[#duplicates + 1] = index
    else
      redis.call('XADD', KEYS[1], '*', unpack(pairs_))
      if dedupe and window > 0 then
        redis.call('ZADD', KEYS[3], now, pairs_[2])
      end
      added = added + 1
    end
    top = seq
    top_text = seq_text
  else
    for _ = 1, n do
      item()
    end
    skipped = skipped + 1
  end
end
if window > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. oldest)
  redis.call('PEXPIRE', KEYS[3], window)
end
-- Written even when unchanged: this write is what makes a WAIT/WAITAOF issued afterwards on
-- this connection also cover an earlier attempt (a redis-py retry) that did the XADDs.
-- The text is stored, not tostring(top), which turns large numbers into 1e+14 notation.
-- The TTL is refreshed with every write: the marks of past runs go away by themselves. A
-- mark that expired lets its writer's rows in again (a duplicate, never a loss).
redis.call('SET', KEYS[2], top_text, 'EX', ttl)
local reply = {added, skipped}
for _, at in ipairs(duplicates) do
  reply[#reply + 1] = at
end
return reply
