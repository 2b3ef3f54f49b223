"""The two load generators of the benchmarks, driven by one `Spec`.

- `run_wrk`: wrk -t1 -cN -dS --latency with bench/lua/request.lua (the measurement).
- `run_python`: the same requests from an asyncio loop (bench/client.py): used by the
  smoke test (tests/bench/test_smoke.py) so that the scenarios cannot rot on a machine
  without wrk, and as a fallback.

A `Spec` is one request shape: method, URL, header and body templates, and optionally a
feed file whose lines are single-use items (codes, refresh tokens) put in place of "{}".
Both generators count every answer that is not 2xx as an error; a Spec with
`expect_location` expects redirects instead, and counts every answer whose Location does
not contain that text as an error (authorize: a redirect carrying a code, never one to the
sign-in page or with an error).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .client import Connection, HTTPError

HERE = Path(__file__).resolve().parent
LUA = HERE / "lua" / "request.lua"


@dataclass
class Spec:
    name: str
    url: str
    method: str = "GET"
    headers: dict = field(default_factory=dict)
    body: str = ""
    feed: Optional[str] = None          # file: one single-use item per line
    ca: Optional[str] = None            # TLS trust for the Python loop (wrk does not verify)
    expect_location: Optional[str] = None   # a redirect whose Location contains this

    def env(self) -> dict:
        return {"BENCH_METHOD": self.method,
                "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in self.headers.items()),
                "BENCH_BODY": self.body, "BENCH_FEED": self.feed or "",
                "BENCH_EXPECT_LOCATION": self.expect_location or ""}

    def answered_as_expected(self, status: int, location: str) -> bool:
        if self.expect_location is not None:
            return 300 <= status < 400 and self.expect_location in location
        return 200 <= status < 300

    def feed_items(self) -> list:
        if not self.feed:
            return []
        return [line for line in Path(self.feed).read_text().split("\n") if line]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(f"latency {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return {"us": value / 1000, "ms": value, "s": value * 1000, "m": value * 60000}[unit]


def parse_wrk(out: str) -> dict:
    """The numbers of one wrk --latency run."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if not m:
        raise ValueError(f"unexpected wrk output:\n{out}")
    requests = int(m.group(1))
    duration = _ms(m.group(2) + m.group(3)) / 1000
    result = {"requests": requests, "duration_s": round(duration, 3),
              "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        result[f"p{p}_ms"] = round(_ms(m.group(1)), 3) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"bench_feed_used=(\d+) bench_feed_size=(\d+)", out)
    if m and int(m.group(2)):
        used, size = int(m.group(1)), int(m.group(2))
        result["feed_used"], result["feed_size"] = used, size
        # items past the end were replays: already counted as non-2xx by the server's answer
    m = re.search(r"bench_unexpected=(\d+)", out)
    result["unexpected"] = int(m.group(1)) if m else 0   # 2xx/3xx without the Location wanted
    result["errors"] = result["non2xx"] + result["socket_errors"] + result["unexpected"]
    return result


def run_wrk(spec: Spec, *, duration: float, connections: int = 32, timeout: float = 10.0,
            extra_env: Optional[dict] = None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(duration)))}s", "--latency",
           "--timeout", f"{int(timeout)}s", "-s", str(LUA), spec.url]
    env = dict(os.environ, **spec.env(), **(extra_env or {}))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    result = parse_wrk(proc.stdout)
    result["tool"] = "wrk"
    return result


def percentile(sorted_values: list, p: float) -> Optional[float]:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def _python_load(spec: Spec, duration: float, connections: int,
                       max_requests: Optional[int], record: Optional[tuple] = None) -> dict:
    parts = urlsplit(spec.url)
    origin = f"{parts.scheme}://{parts.netloc}"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    items = spec.feed_items()
    state = {"next": 0, "sent": 0}
    latencies: list = []
    counts = {"non2xx": 0, "socket_errors": 0}
    deadline = time.monotonic() + duration
    recorder = open(record[0], "a") if record else None
    pattern = re.compile(record[1]) if record else None

    def next_request() -> tuple:
        state["sent"] += 1
        item = ""
        if items:
            i = state["next"]
            state["next"] += 1
            item = items[i] if i < len(items) else "feed-exhausted"
        headers = {k: v.replace("{}", item, 1) for k, v in spec.headers.items()}
        return headers, spec.body.replace("{}", item, 1).encode()

    async def worker() -> None:
        conn = Connection(origin, ca=spec.ca)
        try:
            while time.monotonic() < deadline:
                if max_requests is not None and state["sent"] >= max_requests:
                    return
                headers, body = next_request()
                start = time.monotonic()
                try:
                    resp = await conn.request(spec.method, target, headers, body)
                except (HTTPError, OSError, asyncio.TimeoutError):
                    counts["socket_errors"] += 1
                    conn.close()
                    continue
                latencies.append((time.monotonic() - start) * 1000)
                if not spec.answered_as_expected(resp.status, resp.header("location") or ""):
                    counts["non2xx"] += 1
                elif recorder is not None:
                    m = pattern.search(resp.body.decode("utf-8", "replace"))
                    if m:
                        recorder.write(m.group(1) + "\n")
        finally:
            await conn.aclose()

    start = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
    finally:
        if recorder is not None:
            recorder.close()
    elapsed = time.monotonic() - start
    latencies.sort()
    result = {"requests": len(latencies), "duration_s": round(elapsed, 3),
              "rps": round(len(latencies) / elapsed, 2) if elapsed else 0.0,
              **{f"p{p}_ms": (round(percentile(latencies, p), 3) if latencies else None)
                 for p in (50, 75, 90, 99)},
              **counts, "tool": "python"}
    if items:
        result["feed_used"], result["feed_size"] = state["next"], len(items)
    result["errors"] = result["non2xx"] + result["socket_errors"]
    return result


def run_python(spec: Spec, *, duration: float, connections: int = 8,
               max_requests: Optional[int] = None, record: Optional[tuple] = None) -> dict:
    """The Spec's requests from `connections` keep-alive connections for `duration`
    seconds (or until `max_requests`); `record=(file, regex)` appends the first group of
    the regex in each 2xx body to the file (minting, never a measured run)."""
    return asyncio.run(_python_load(spec, duration, connections, max_requests, record))


def median_of(runs: list, key: str) -> Optional[float]:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def record_with_wrk(spec: Spec, *, record: str, pattern: str, wanted: int,
                    header: Optional[str] = None, connections: int = 16,
                    max_duration: float = 600.0) -> int:
    """Minting with wrk: run the Spec until `record` holds `wanted` captures of `pattern`
    (from the body, or from response header `header`), then stop wrk (SIGINT; wrk itself
    always runs for its whole -d). Returns the number of captures. Never a measured run."""
    import signal

    env = dict(os.environ, **spec.env(), BENCH_RECORD=record, BENCH_PATTERN=pattern,
               BENCH_STOP_AT_END="1", **({"BENCH_RECORD_HEADER": header} if header else {}))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(max_duration)}s", "--timeout", "10s",
           "-s", str(LUA), spec.url]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def count() -> int:
        with open(record, "rb") as f:
            return f.read().count(b"\n")

    try:
        deadline = time.monotonic() + max_duration + 5
        last, still = -1, 0
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            n = count()
            if n >= wanted:
                break
            still = still + 1 if n == last else 0   # the feed ran out: nothing more comes
            last = n
            if still >= 10:
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return count()
