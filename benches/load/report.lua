-- wrk script: prints one machine-readable line with the run's totals and latency percentiles
-- (microseconds), read by benches/load.rs.

-- Requests as an HTTP client library sends them (wrk alone sends Host only), the same as the
-- harness's own keep-alive requests: a proxy forwards these, and they cost what they cost.
wrk.headers["User-Agent"] = "load"
wrk.headers["Accept"] = "*/*"
-- `--post BYTES` (benches/load.rs): a POST of a JSON document of BYTES bytes (at least 11),
-- the same as the harness's own clients send.
local post = tonumber(os.getenv("LOAD_POST_BYTES") or "")
if post then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"data":"' .. string.rep("x", math.max(post - 11, 0)) .. '"}'
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.2f,"max":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
