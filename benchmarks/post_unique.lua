-- wrk script: POST one event per request, each with its own message_id, so that the relay
-- stores every one (identical bodies would be acknowledged as duplicates without being stored).
-- wrk -s post_unique.lua URL -- TEMPLATE_FILE RUN_TAG
-- TEMPLATE_FILE holds the event with MESSAGE_ID where the message_id goes.

local threads = {}
local counter = 0
local head, tail, run -- "tid" is a global set by setup()

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local template = f:read("*a")
  f:close()
  local at = string.find(template, "MESSAGE_ID", 1, true)
  head = string.sub(template, 1, at - 1)
  tail = string.sub(template, at + 10)
  run = args[2]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local id = string.format("%s-%04x-4000-8000-%012x", run, tid, counter)
  return wrk.format(nil, nil, nil, head .. id .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
