-- wrk: POST /v1/batch with ~480 KB bodies (1,000 messages of ~480 bytes, unique messageIds), as a sender of large
-- batches that honours 503 + Retry-After does: after a 503 the thread waits 2 s before its next request.
local thread_counter = 0
local threads = {}
function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
  table.insert(threads, thread)
end
local write_key = os.getenv("WRITE_KEY") or "wk_bench"
local run = os.getenv("RUN_ID") or tostring(os.time())
local per = tonumber(os.getenv("PER") or "1000")
local counter = 0
local pad = string.rep("x", 120)
local track = '{"type":"track","event":"Product Viewed","userId":"user-%d","messageId":"%s",' ..
  '"timestamp":"2026-11-20T10:00:00.000Z","properties":{"product_id":"p-%d","category":"Shoes","price":49.99,' ..
  '"note":"' .. pad .. '"},"context":{"library":{"name":"analytics-python","version":"2.4.0"}}}'
function request()
  counter = counter + 1
  local parts = {}
  for i = 1, per do
    local user = math.random(200000)
    parts[i] = string.format(track, user, run .. "-" .. tid .. "-" .. counter .. "-" .. i, math.random(500))
  end
  local body = '{"batch":[' .. table.concat(parts, ",") .. '],"writeKey":"' .. write_key .. '"}'
  return wrk.format("POST", "/v1/batch", {["Content-Type"] = "application/json"}, body)
end
local ok = 0
local statuses = {}
local last = 200
function delay()
  if last == 503 then last = 200; return 2000 end
  return 0
end
function response(status, headers, body)
  last = status
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  print(string.format("p50 %.1f ms p90 %.1f ms p99 %.1f ms max %.1f ms", latency:percentile(50)/1000,
    latency:percentile(90)/1000, latency:percentile(99)/1000, latency.max/1000))
end
