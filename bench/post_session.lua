-- wrk script: every request POSTs a new session, {"session_id": "<prefix>-<thread>-<n>"}.
-- Arguments after `--`: prefix, Authorization header value ("" for none), expected status.
-- done() prints one line, "BENCH {json}", that bench/load.py parses.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  prefix = args[1]
  expected = tonumber(args[3]) or 201
  headers = { ["Content-Type"] = "application/json" }
  if args[2] and args[2] ~= "" then
    headers["Authorization"] = args[2]
  end
  sent, unexpected = 0, 0
end

function request()
  sent = sent + 1
  local body = string.format('{"session_id":"%s-%d-%d"}', prefix, tid, sent)
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status ~= expected then
    unexpected = unexpected + 1
  end
end

function done(summary, latency, requests)
  -- wrk calls request() once on the first thread's state to verify the script before
  -- the run (script_verify_request); that request is never sent.
  local total_sent, total_unexpected = -1, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_unexpected = total_unexpected + thread:get("unexpected")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "sent": %d, "unexpected": %d, '
      .. '"p50_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, total_sent, total_unexpected,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout))
end
