-- Trim a stream below what every consumer group has read and acknowledged.
-- KEYS[1] = stream. The floor is, over all groups, the smaller of the group's
-- last-delivered-id and its oldest pending id; entries below it are read and acked by all.
-- No group: nothing is trimmed. Returns the number of entries removed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return 0
end

-- less(a, b): stream id order, from stream_ids.lua.
local floor = nil
for _, group in ipairs(groups) do
  local name, last
  for k = 1, #group, 2 do
    if group[k] == 'name' then
      name = group[k + 1]
    elseif group[k] == 'last-delivered-id' then
      last = group[k + 1]
    end
  end
  local candidate = last
  local summary = redis.call('XPENDING', KEYS[1], name)
  if summary[2] and less(summary[2], candidate) then
    candidate = summary[2]
  end
  if floor == nil or less(candidate, floor) then
    floor = candidate
  end
end
if floor == '0-0' then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
