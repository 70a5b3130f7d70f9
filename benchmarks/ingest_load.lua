-- wrk script: POST /v1/batch with 100 Segment-style messages per request, every messageId unique.
-- Mix: 90% track "Product Viewed" / 10% identify with email, over a pool of 200,000 customers.
local thread_counter = 0
function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
end

local write_key = os.getenv("WRITE_KEY") or "wk_bench"
local run = os.getenv("RUN_ID") or tostring(os.time())
local counter = 0
local auth = "Basic " .. (os.getenv("BASIC_AUTH") or "")
local track = '{"type":"track","event":"Product Viewed","userId":"user-%d","anonymousId":"anon-%d",' ..
  '"messageId":"%s","timestamp":"2026-11-20T10:00:00.000Z","properties":{"product_id":"p-%d",' ..
  '"category":"Shoes","price":49.99,"currency":"USD","name":"Running shoe"},"context":{"library":' ..
  '{"name":"analytics-python","version":"2.4.0"},"page":{"path":"/products/p","url":"https://shop.example.com/p"}}}'
local identify = '{"type":"identify","userId":"user-%d","anonymousId":"anon-%d","messageId":"%s",' ..
  '"timestamp":"2026-11-20T10:00:00.000Z","traits":{"email":"user%d@example.com","first_name":"Ann",' ..
  '"plan":"pro"},"context":{"library":{"name":"analytics-python","version":"2.4.0"}}}'

function request()
  counter = counter + 1
  local parts = {}
  for i = 1, 100 do
    local user = math.random(200000)
    local id = run .. "-" .. tid .. "-" .. counter .. "-" .. i
    if i % 10 == 0 then
      parts[i] = string.format(identify, user, user, id, user)
    else
      parts[i] = string.format(track, user, user, id, math.random(500))
    end
  end
  local body = '{"batch":[' .. table.concat(parts, ",") .. '],"sentAt":"2026-11-20T10:00:00.100Z","writeKey":"' ..
    write_key .. '"}'
  return wrk.format("POST", "/v1/batch", {["Content-Type"] = "application/json"}, body)
end
