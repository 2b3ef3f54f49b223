-- One wrk script for every benchmark scenario (bench/run.py sets the environment).
--
--   BENCH_METHOD   GET or POST
--   BENCH_HEADERS  header lines, separated by "\n" ("Name: value")
--   BENCH_BODY     the request body (may be empty)
--   BENCH_FEED     optional: a file with one item per line; every request takes the next
--                  item and puts it in place of "{}" in BENCH_BODY and BENCH_HEADERS
--                  (single-use authorization codes, refresh tokens). Past the end of the
--                  feed the item "feed-exhausted" is sent, which the server refuses: that
--                  shows up as non-2xx responses, never as a silently easier benchmark
--                  (and, unlike a replayed code, revokes nothing).
--   BENCH_STOP_AT_END  "1": stop sending once the feed is used up (minting runs).
--   BENCH_EXPECT_LOCATION  optional: every answer must be a redirect whose Location header
--                  contains this text; other answers below 400 are counted
--                  ("bench_unexpected=N" at the end) and reported as errors (wrk itself
--                  counts the statuses >= 400).
--   BENCH_RECORD   optional: append to this file the first capture of BENCH_PATTERN in
--                  each response body (or in header BENCH_RECORD_HEADER): used to mint
--                  refresh tokens and peer codes, never during a measured run.
-- Use with -t1 (one thread: the feed is read once, items are used in order).

local method = os.getenv("BENCH_METHOD") or "GET"
local body_template = os.getenv("BENCH_BODY") or ""
local header_lines = os.getenv("BENCH_HEADERS") or ""
local feed_file = os.getenv("BENCH_FEED")
local record_file = os.getenv("BENCH_RECORD")
local pattern = os.getenv("BENCH_PATTERN")
local record_header = os.getenv("BENCH_RECORD_HEADER")
local stop_at_end = os.getenv("BENCH_STOP_AT_END") == "1"
local expect_location = os.getenv("BENCH_EXPECT_LOCATION") or ""

local header_templates = {}
for line in string.gmatch(header_lines, "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then header_templates[name] = value end
end

local feed = {}
if feed_file and feed_file ~= "" then
  for line in io.lines(feed_file) do
    if line ~= "" then feed[#feed + 1] = line end
  end
end
used = 0   -- global: read by done() through thread:get
size = #feed

local function fill(template, item)
  -- plain replacement of "{}" (items are base64url/urlencoded: no pattern characters)
  local i, j = string.find(template, "{}", 1, true)
  if not i then return template end
  return string.sub(template, 1, i - 1) .. item .. string.sub(template, j + 1)
end

local fixed = nil   -- built on first use: wrk sets the Host header after loading the script

request = function()
  if #feed == 0 then
    if not fixed then
      fixed = wrk.format(method, nil, header_templates,
                         body_template ~= "" and body_template or nil)
    end
    used = used + 1
    return fixed
  end
  used = used + 1
  local item = feed[used]
  if not item then
    item = "feed-exhausted"
    if stop_at_end then wrk.thread:stop() end
  end
  local headers = {}
  for name, value in pairs(header_templates) do headers[name] = fill(value, item) end
  local body = fill(body_template, item)
  return wrk.format(method, nil, headers, body ~= "" and body or nil)
end

unexpected = 0   -- global: read by done() through thread:get
if record_file and record_file ~= "" and pattern then
  local out = assert(io.open(record_file, "a"))
  response = function(status, headers, body)
    local source = body
    if record_header then source = headers[record_header] or "" end
    local value = string.match(source, pattern)
    if value then out:write(value, "\n"); out:flush() end
  end
elseif expect_location ~= "" then
  response = function(status, headers, body)
    local location = headers["Location"] or headers["location"] or ""
    -- statuses >= 400 are wrk's own "Non-2xx or 3xx" count already
    if status < 400 and (status < 300 or not string.find(location, expect_location, 1, true)) then
      unexpected = unexpected + 1
    end
  end
end

local threads = {}
setup = function(thread)
  threads[#threads + 1] = thread
end

done = function(summary, latency, requests)
  local total_used, total_size, total_unexpected = 0, 0, 0
  for _, t in ipairs(threads) do
    total_used = total_used + (t:get("used") or 0)
    total_size = total_size + (t:get("size") or 0)
    total_unexpected = total_unexpected + (t:get("unexpected") or 0)
  end
  io.write(string.format("bench_feed_used=%d bench_feed_size=%d\n", total_used, total_size))
  io.write(string.format("bench_unexpected=%d\n", total_unexpected))
end
