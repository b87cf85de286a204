-- Shared by the trim scripts (Script(..., libraries=("stream_ids.lua",)) puts it first).
-- Stream ids compare as two integers; compare them as digit strings (no leading zeros),
-- because Lua numbers are doubles.
local function less_digits(a, b)
  if #a ~= #b then
    return #a < #b
  end
  return a < b
end

-- True when stream id a ("ms-seq") is before stream id b.
local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then
    return less_digits(am, bm)
  end
  return less_digits(as, bs)
end
