-- wrk script for benchmarks/ingest.py: POST /v1/batch, each request a batch of realistic
-- Segment "Product Viewed" track events whose messageIds never repeat (run nonce, wrk
-- thread, per-thread request counter, position in the batch), so dedupe keeps every one.
--
-- usage: wrk -s batch.lua URL -- "<Authorization header>" <run nonce> [events per batch]
--        [new device every N events] [device seed]
-- By default the events come from 20,000 devices per thread, met again and again; with N,
-- every Nth event of a request comes from a device never seen before (its anonymousId is
-- its messageId), as a shop's new visitors do. Runs given the same device seed draw the
-- same devices (a warm-up then meets the devices the measured run sends); without one,
-- each run draws its own.
-- done() prints one line: WRK_JSON {...} (counts, errors, latency percentiles in µs).

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

-- Per-thread counters (globals so that done() can read them with thread:get).
sent = 0
ok = 0
bad = 0
accepted = 0
duplicates = 0
body_bytes = 0

local nonce, per_batch, new_every
local templates = {}
local TEMPLATES = 128

-- An event is HEAD .. messageId .. tail: tails (everything after the id) are made once per
-- thread in init(), so a request costs only string joins, not 100 string.format calls,
-- and wrk takes as little CPU from the server as it can.
local HEAD = '{"type":"track","event":"Product Viewed","messageId":"'
local ANONYMOUS = '","anonymousId":"'
local TAIL = '","timestamp":"%s","properties":{"product_id":"%s",'
  .. '"category":"%s","name":"%s","price":%s,"currency":"EUR"},'
  .. '"context":{"ip":"%s","userAgent":"%s","library":{"name":"analytics.js",'
  .. '"version":"5.2.0"}}}'

local CATEGORIES = {"shoes", "shirts", "jackets", "bags", "hats", "socks"}
local NAMES = {"Trail Runner", "Oxford Shirt", "Rain Shell", "Tote", "Beanie", "Wool Sock"}
local AGENTS = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Mobile Safari/604.1",
  "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Firefox/127.0",
}

local function uuid4()
  return string.format("%08x-%04x-4%03x-a%03x-%06x%06x",
    math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff),
    math.random(0, 0xfff), math.random(0, 0xffffff), math.random(0, 0xffffff))
end

function init(args)
  nonce = args[2] or "run"
  per_batch = tonumber(args[3] or "100")
  new_every = tonumber(args[4] or "0")
  math.randomseed(id * 7919 + tonumber(args[5] or tostring(os.time())))
  local visitors, products = {}, {}
  for i = 1, 20000 do
    visitors[i] = uuid4()
  end
  for i = 1, 200 do
    local c = math.random(#CATEGORIES)
    products[i] = {
      sku = string.format("sku-%04d", i),
      category = CATEGORIES[c],
      name = NAMES[c] .. " " .. tostring(math.random(1, 9)),
      price = string.format("%.2f", math.random(500, 25000) / 100),
    }
  end
  local ts = os.date("!%Y-%m-%dT%H:%M:%S.000Z", os.time() - 2)
  for t = 1, TEMPLATES do
    local tails, devices = {}, {}
    for i = 1, per_batch do
      local p = products[math.random(#products)]
      local ip = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255),
        math.random(0, 255), math.random(1, 254))
      devices[i] = visitors[math.random(#visitors)]
      tails[i] = string.format(TAIL, ts, p.sku, p.category, p.name, p.price, ip,
        AGENTS[math.random(#AGENTS)])
    end
    templates[t] = {devices = devices, tails = tails}
  end
  wrk.method = "POST"
  wrk.path = "/v1/batch"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = args[1]
end

function request()
  sent = sent + 1
  local template = templates[sent % TEMPLATES + 1]
  local devices, tails = template.devices, template.tails
  local prefix = nonce .. "-" .. id .. "-" .. sent .. "-"
  local parts = {'{"batch":['}
  local n = 1
  for i = 1, per_batch do
    local message_id = prefix .. i
    parts[n + 1] = (i == 1) and HEAD or ("," .. HEAD)
    parts[n + 2] = message_id
    parts[n + 3] = ANONYMOUS
    parts[n + 4] = (new_every > 0 and i % new_every == 0) and message_id or devices[i]
    parts[n + 5] = tails[i]
    n = n + 5
  end
  parts[n + 1] = '],"sentAt":"' .. os.date("!%Y-%m-%dT%H:%M:%S.000Z") .. '"}'
  local body = table.concat(parts)
  body_bytes = #body
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    accepted = accepted + tonumber(body:match('"accepted":(%d+)') or "0")
    duplicates = duplicates + tonumber(body:match('"duplicates":(%d+)') or "0")
  else
    bad = bad + 1
    if bad <= 3 then
      io.stderr:write(string.format("HTTP %d: %s\n", status, body:sub(1, 300)))
    end
  end
end

function done(summary, latency, requests)
  local t = {sent = 0, ok = 0, bad = 0, accepted = 0, duplicates = 0, body_bytes = 0}
  for _, thread in ipairs(threads) do
    for k, v in pairs(t) do
      t[k] = v + (thread:get(k) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"sent":%d,"ok":%d,"non_2xx":%d,'
      .. '"accepted":%d,"duplicates":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"latency_mean_us":%.0f,'
      .. '"latency_max_us":%.0f,"latency_p50_us":%.0f,"latency_p90_us":%.0f,'
      .. '"latency_p99_us":%.0f,"latency_p999_us":%.0f,"body_bytes":%d}\n',
    summary.requests, summary.duration, summary.bytes, t.sent, t.ok, t.bad, t.accepted,
    t.duplicates, e.connect, e.read, e.write, e.status, e.timeout, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), t.body_bytes / #threads))
end
