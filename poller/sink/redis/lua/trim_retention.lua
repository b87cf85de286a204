-- Keep a stream within its retention, never removing an entry a consumer group has not read
-- and acknowledged.
-- KEYS[1] = stream. ARGV[1] = milliseconds an entry is kept (0: no age limit), ARGV[2] =
-- entries kept (0: no length limit), ARGV[3] = most entries one call removes for the length
-- limit (a long backlog is trimmed over several calls, none of them long).
-- The retention point is the stream id below which entries are too old or too many. With
-- consumer groups, the trim stops at the oldest entry any group still needs (its oldest
-- pending entry, or the first it has not been delivered); with none, retention alone
-- decides. Returns the number of entries removed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local age_ms = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local step = tonumber(ARGV[3])

-- less(a, b): stream id order, from stream_ids.lua.
local target = nil
if age_ms > 0 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  target = string.format('%d-0', now_ms - age_ms)
end
if keep > 0 then
  local extra = redis.call('XLEN', KEYS[1]) - keep
  if extra > 0 then
    local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(extra, step) + 1)
    local first_kept = entries[#entries][1]
    if target == nil or less(target, first_kept) then
      target = first_kept
    end
  end
end
if target == nil then
  return 0
end

-- The floor: no group may lose an entry it has pending or has not been delivered yet.
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for k = 1, #group, 2 do
    if group[k] == 'name' then
      name = group[k + 1]
    elseif group[k] == 'last-delivered-id' then
      last = group[k + 1]
    end
  end
  -- Entries after last-delivered-id are not delivered yet: keep them (the next id is the
  -- first one that may not be removed).
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  local undelivered = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
  if less(undelivered, target) then
    target = undelivered
  end
  local summary = redis.call('XPENDING', KEYS[1], name)
  if summary[2] and less(summary[2], target) then
    target = summary[2]
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', target)
