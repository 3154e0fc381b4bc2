-- wrk script for the edge benchmark: POST one JSON body, optionally paced, and print the
-- figures as one JSON line that bench/edge_bench.py reads.
--   BENCH_BODY      request body (JSON)
--   BENCH_AUTH      value of the Authorization header
--   BENCH_DELAY_MS  pause of each connection between two requests (0 = as fast as possible)

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if delay_ms > 0 then
  -- wrk calls delay() only when the script defines it; the pause is not counted as latency.
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
