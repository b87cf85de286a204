-- Shared by the dead-letter scripts (Script(..., libraries=("packed.lua",)) puts it first).
-- Stream entries travel in one argument as items "<byte length>:<bytes>": per entry, an item
-- with its number of fields, then each field's name and value.
local function entries_of(blob)
  local list = {}
  local pos = 1
  local function item()
    local colon = string.find(blob, ':', pos, true)
    local len = tonumber(string.sub(blob, pos, colon - 1))
    local value = string.sub(blob, colon + 1, colon + len)
    pos = colon + len + 1
    return value
  end
  while pos <= #blob do
    local fields = {}
    for i = 1, 2 * tonumber(item()) do
      fields[i] = item()
    end
    list[#list + 1] = fields
  end
  return list
end

-- XADD every entry of a packed argument to a stream; the number added.
local function add_all(stream, blob)
  local added = 0
  for _, fields in ipairs(entries_of(blob)) do
    redis.call('XADD', stream, '*', unpack(fields))
    added = added + 1
  end
  return added
end
