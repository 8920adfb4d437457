-- wrk script: rotate over the 1,000 bench keys, or use one hot key
-- (HOT_KEY=1). Counts non-2xx answers so a refusal cannot pass as speed.
local hot = os.getenv("HOT_KEY") == "1"
local i = 0
request = function()
  i = (i + 1) % 1000
  local n = hot and 0 or i
  return wrk.format("GET", "/", { ["x-api-key"] = string.format("bench-key-%020d", n) })
end
