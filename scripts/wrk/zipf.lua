-- wrk script: GET /users/{id} with ids drawn from a Zipf distribution.
--   wrk ... -s scripts/wrk/zipf.lua URL -- IDS_FILE [EXPONENT]
-- IDS_FILE holds one id per line; line k is the k-th most popular (rank k).
local ids = {}
local cdf = {}

function init(args)
  local file = assert(io.open(args[1], "r"), "ids file required")
  for line in file:lines() do ids[#ids + 1] = line end
  file:close()
  local s = tonumber(args[2] or "0.99")
  local sum = 0
  for k = 1, #ids do
    sum = sum + 1 / (k ^ s)
    cdf[k] = sum
  end
  for k = 1, #ids do cdf[k] = cdf[k] / sum end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local u = math.random()
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/users/" .. ids[lo])
end
