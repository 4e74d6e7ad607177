-- wrk script: GET /users/{id} with ids drawn uniformly from a file.
--   wrk ... -s scripts/wrk/uniform.lua URL -- IDS_FILE
-- Every request is formatted once at start, so the client's own cost per request stays
-- small (as pgbench's is, the ceiling these runs are compared with).
local reqs = {}

function init(args)
  local file = assert(io.open(args[1], "r"), "ids file required")
  for line in file:lines() do reqs[#reqs + 1] = wrk.format("GET", "/users/" .. line) end
  file:close()
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  return reqs[math.random(#reqs)]
end
