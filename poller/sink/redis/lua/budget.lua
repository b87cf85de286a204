-- The request budget of one Infobip account, shared by every poller of it (GCRA: a
-- theoretical arrival time). KEYS[1] = the budget, a hash: `tat` = the ms (server time) from
-- which the next request may go, `paused` = the ms until which none may (a 429's Retry-After).
-- ARGV[1] = "take" or "pause"; ARGV[2] = ms between requests (take) or ms to pause (pause);
-- ARGV[3] = ms the key lives after its last use.
-- take: reserves the next turn and returns the ms to wait for it (0: go now). Turns are handed
-- out in arrival order across processes, each `interval` after the one before, so N pollers
-- together never exceed the rate, whatever N. pause: no turn starts before now + ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local amount = tonumber(ARGV[2])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused') or '0')
if ARGV[1] == 'pause' then
  if now + amount > paused then
    redis.call('HSET', KEYS[1], 'paused', now + amount)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 0
end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
local start = math.max(tat, now, paused)
redis.call('HSET', KEYS[1], 'tat', start + amount)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return start - now
