-- wrk script of bench/run.py: cycles through pre-built requests read from a file.
--
--   wrk -t1 -c32 -d10s -s bench/requests.lua http://127.0.0.1:PORT -- FILE
--
-- FILE has one request a line, tab-separated: METHOD, PATH, BEARER TOKEN (or empty),
-- CONTENT-TYPE (or empty), BODY (or empty). Each wrk thread starts at its own offset.
-- done() prints one line "BENCH {json}" that run.py parses: counts, latency percentiles
-- in microseconds, errors by kind.

local requests = {}
local index = 0

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_number", counter)
end

function init(args)
  local file = args[1]
  for line in io.lines(file) do
    local method, path, token, ctype, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    if method then
      local headers = {}
      if token ~= "" then
        headers["Authorization"] = "Bearer " .. token
      end
      if ctype ~= "" then
        headers["Content-Type"] = ctype
      end
      if body == "" then
        body = nil
      end
      requests[#requests + 1] = wrk.format(method, path, headers, body)
    end
  end
  if #requests == 0 then
    error("no requests in " .. tostring(file))
  end
  -- Spread the threads over the file.
  index = ((thread_number or 1) * 7919) % #requests
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout
  ))
end
