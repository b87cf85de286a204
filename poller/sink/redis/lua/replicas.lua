-- The replica registry of one account. KEYS[1] = a hash: instance id -> its state (JSON).
-- ARGV[1] = "beat", "leave" or "list"; ARGV[2] = the instance id; ARGV[3] = its state (JSON,
-- without the heartbeat: the server's clock sets it, so hosts whose clocks differ agree);
-- ARGV[4] = ms the key lives after the last beat; ARGV[5] = ms after which a gone replica with
-- an empty spool is forgotten.
-- Returns {now in ms, instance, state, instance, state, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
if mode == 'beat' or mode == 'leave' then
  local state = cjson.decode(ARGV[3])
  if mode == 'beat' then
    state['heartbeat'] = now / 1000
    redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(state))
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  elseif tonumber(state['rows']) == 0 then
    redis.call('HDEL', KEYS[1], ARGV[2])
  else
    local old = redis.call('HGET', KEYS[1], ARGV[2])
    if old then
      state['heartbeat'] = cjson.decode(old)['heartbeat']
    else
      state['heartbeat'] = now / 1000
    end
    redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(state))
  end
end
local reply = {tostring(now)}
local all = redis.call('HGETALL', KEYS[1])
local forget = tonumber(ARGV[5] or '0')
for i = 1, #all, 2 do
  local state = cjson.decode(all[i + 1])
  local gone = now - tonumber(state['heartbeat'] or 0) * 1000
  if forget > 0 and gone > forget and tonumber(state['rows'] or 0) == 0 then
    redis.call('HDEL', KEYS[1], all[i])
  else
    reply[#reply + 1] = all[i]
    reply[#reply + 1] = all[i + 1]
  end
end
return reply
