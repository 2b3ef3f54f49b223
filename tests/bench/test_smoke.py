"""The benchmarks cannot rot: bench/run.py end to end in a few seconds per scenario.

The same code paths as a measurement (the group as `make run` starts it, code minting
into Redis, refresh tokens from redeemed codes, authorize for a signed-in user, the bare
floors, the sign-in flow, the variants: LDAP against a real slapd, the key variants and
the whole machine, the peer when Node is available, two token-process counts, the
renderer), with the Python load loop instead of wrk and a few requests per scenario. No timing is asserted: only that every
scenario answered without a single error and left a well-formed record.
"""

from __future__ import annotations

import json
import shutil

import pytest

from bench import load, run

RECORD_KEYS = {"rps", "requests", "duration_s", "p50_ms", "p99_ms", "errors", "cpu_s",
               "cpu_s_by_role", "cpu_us_per_req", "rss_peak_kb"}


def check(record: dict, what: str) -> None:
    assert RECORD_KEYS <= record.keys(), (what, sorted(record))
    assert record["errors"] == 0, (what, record)
    assert record["requests"] > 0 and record["rps"] > 0, (what, record)
    assert record["p50_ms"] is not None and record["p99_ms"] >= record["p50_ms"], (what, record)
    assert record["cpu_us_per_req"]["service"] is not None, (what, record)
    assert record["cpu_s"]["procs"] and all(v >= 0 for v in record["cpu_s"]["procs"].values())
    assert any(kb > 0 for kb in record["rss_peak_kb"].values()), (what, record)
    if "feed_size" in record:
        assert record["feed_used"] <= record["feed_size"], (what, record)


pytestmark = pytest.mark.group


def test_every_benchmark_scenario_runs_without_errors(tmp_path):
    peer = shutil.which("node") is not None and shutil.which("npm") is not None
    # two repetitions: state carried from one to the next (pools, tokens) is exercised too
    argv = ["--driver", "python", "--runs", "2", "--duration", "0.5", "--max-requests", "20",
            "--max-flows", "1", "--floor-seconds", "0.1", "--scaling", "1,2", "--no-profile",
            "--out", str(tmp_path / "results.json"), "--docs", str(tmp_path / "docs")]
    if not peer:
        argv.append("--no-peer")
    assert run.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())

    assert set(results["signatures"]) == {"access_token", "id_token"}   # k = 2 JWS per response
    for endpoint in ("token_code", "token_refresh", "userinfo", "authorize", "discovery", "jwks"):
        for via in ("direct", "proxy"):
            for record in results["ours"][endpoint][via]:
                check(record, f"{endpoint} {via}")
            assert len(results["ours"][endpoint][via]) == 2
        if peer and endpoint != "authorize":
            for record in results["peer"][endpoint]:
                check(record, f"peer {endpoint}")
            for record in results["peer_jwt"].get(endpoint, []):
                check(record, f"peer with JWT access tokens {endpoint}")
    if peer:  # the like-for-like peer: its code and refresh grants sign two tokens
        assert {"token_code", "token_refresh"} <= set(results["peer_jwt"])
    # the variants: LDAP against a real slapd, the key variants, the whole machine
    variants = results["variants"]
    assert set(variants) == {v.name for v in run.VARIANTS}
    for v in run.VARIANTS:
        assert set(variants[v.name]["runs"]) == set(v.endpoints), v.name
        for endpoint in v.endpoints:
            assert set(variants[v.name]["runs"][endpoint]) == set(v.vias), (v.name, endpoint)
            for via in v.vias:
                records = variants[v.name]["runs"][endpoint][via]
                assert len(records) == 2, (v.name, endpoint, via)
                for record in records:
                    check(record, f"{v.name} {endpoint} {via}")
                    assert "slapd" in record["cpu_s"]["procs"]   # the directory is measured
                    assert sum(1 for p in record["cpu_s"]["procs"]
                               if p.startswith("token")) == v.token_procs
    assert results["signatures"] == variants["ldap"]["signatures"] == \
        {"access_token": "ES256", "id_token": "RS256"}   # make run's production keys
    for name in ("ldap_rsa2048", "ldap_rsa4096"):
        assert variants[name]["signatures"] == {"access_token": "PS256", "id_token": "RS256"}
    for name in ("hello", "base", "userinfo"):
        for record in results["floors"]["bare"][name]:
            check(record, f"bare {name}")
    for ossl in results["floors"]["openssl"]:
        assert ossl["sign_per_s"] > 0 and ossl["verify_per_s"] > 0
    for signing in results["floors"]["python_signing"]:
        assert all(signing[k] > 0 for k in ("keyring_sign_access_per_s",
                                             "jose_sign_id_token_per_s", "raw_rs256_per_s",
                                             "raw_ps256_per_s", "raw_es256_per_s"))
    for via in ("direct", "proxy"):
        for record in results["flow"][via]:
            assert record["errors"] == 0 and record["flows"] >= 1, record["error_samples"]
            assert record["requests"] >= 8 * record["flows"]
    for n in ("1", "2"):
        for via in ("direct", "proxy"):
            for record in results["scaling"][n][via]:
                check(record, f"scaling {n} {via}")
                assert sum(1 for p in record["cpu_s"]["procs"] if p.startswith("token")) == int(n)

    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "{{" not in page and "## Targets" in page and "× floor" in page
    assert "target (issue 18)" in page and "LDAP ÷ users file" in page and "RSA-4096" in page
    assert (tmp_path / "docs" / "benchmarks-throughput.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "benchmarks-scaling.png").stat().st_size > 1000


def test_wrk_output_and_the_request_script_agree(tmp_path):
    """The parser of wrk's report (the measurement path) on a real wrk run, when wrk is here."""
    assert load.wrk_available(), "wrk is needed (deploy/install-deps.sh test installs it)"
    import socket
    import subprocess
    import sys
    import time

    from tests.support.group import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", (
        "import asyncio, tornado.web\n"
        "class H(tornado.web.RequestHandler):\n"
        "    def post(self):\n"
        "        self.set_status(200 if self.request.body.startswith(b'item=') and b'exhausted' not in self.request.body else 400)\n"
        "        self.finish(self.request.body)\n"
        "async def main():\n"
        f"    tornado.web.Application([(r'/', H)], log_function=lambda h: None).listen({port}, '127.0.0.1')\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n")])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        feed = tmp_path / "feed.txt"
        feed.write_text("".join(f"i{i}\n" for i in range(100000)))
        spec = load.Spec("echo", f"http://127.0.0.1:{port}/", "POST",
                         {"Content-Type": "application/x-www-form-urlencoded"}, "item={}",
                         str(feed))
        result = load.run_wrk(spec, duration=1, connections=4)
        assert result["errors"] == 0 and result["requests"] > 0, result
        assert result["feed_size"] == 100000 and 0 < result["feed_used"] <= 100000
        assert result["p50_ms"] is not None and result["p99_ms"] >= result["p50_ms"]
        small = tmp_path / "small.txt"
        small.write_text("a\nb\n")
        result = load.run_wrk(load.Spec("echo", spec.url, "POST", spec.headers, "item={}",
                                        str(small)), duration=1, connections=2)
        # past the feed every request is refused (wrk may take the first item for its
        # initial request without sending it)
        assert result["requests"] - 2 <= result["non2xx"] < result["requests"]
    finally:
        server.terminate()
        server.wait(10)
