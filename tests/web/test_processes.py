"""The services as processes: health check, SIGTERM, SO_REUSEPORT, start-up problems, metrics,
the health-check command, the access log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shared import healthcheck, metrics
from shared.options import SERVICES

ROOT = Path(__file__).resolve().parents[2]


LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")


@pytest.fixture
def dev_state(tmp_path):
    """A generated signing key and secret, as `python -m shared.keytool generate` makes them."""
    subprocess.run([sys.executable, "-m", "shared.keytool", "generate", "--type", "ec",
                    "--out-dir", str(tmp_path)], cwd=ROOT, check=True, capture_output=True,
                   timeout=60)
    (tmp_path / "users.yaml").write_text("users: []\n")
    return tmp_path


def clean_env(users_file=None, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KONNECTD_", "LDAP_", "KOPANO_", "OIDC_"))}
    if users_file:
        env["KONNECTD_USERS_FILE"] = str(users_file)
    env.update(extra)
    return env


def start(service, dev_state, *args, listen="127.0.0.1:0"):
    cmd = [sys.executable, "-m", f"services.{service}", "--iss", "https://idp.example.test",
           "--listen", listen, "--signing-method", "ES256",
           "--signing-private-key", str(dev_state / "konnectd-signing-private-key.pem"),
           "--encryption-secret", str(dev_state / "konnectd-encryption-secret.key"),
           "--redis-url", "redis://127.0.0.1:1/0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(dev_state / "users.yaml"),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if m := LISTENING.search(line):
            return proc, f"http://{m.group(1)}:{m.group(2)}"
    proc.kill()
    raise AssertionError("service did not start:\n" + "".join(seen))


pytestmark = pytest.mark.op(apps=("identifier",))


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_starts_an_empty_redis_generation_before_any_request(service, dev_state,
                                                                         private_redis):
    """At start-up, not at its first request, a process checks Redis's continuity: on an
    empty database the generation begins then (shared/service.py, check_store), so that a
    request's first connection never starts it a moment after the request read the clock."""
    client = private_redis.client()
    proc, _ = start(service, dev_state, "--redis-url", private_redis.url)
    try:
        deadline = time.monotonic() + 15
        while not client.exists("konnect:server") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.exists("konnect:server")
        assert int(client.hget("konnect:revoked:{000}", "g")) <= time.time()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        client.close()
    proc.stderr.close()


@pytest.mark.parametrize("service", SERVICES)
def test_service_serves_health_check_and_stops_on_sigterm(service, dev_state):
    proc, url = start(service, dev_state)
    try:
        with urllib.request.urlopen(url + "/health-check", timeout=10) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    rest = proc.stderr.read()
    proc.stderr.close()
    assert "Traceback" not in rest


def test_token_processes_share_one_address_with_reuseport(dev_state):
    first, url = start("token", dev_state)
    try:
        second, url2 = start("token", dev_state, listen=url.removeprefix("http://"))
        try:
            assert url2 == url
            for _ in range(4):
                with urllib.request.urlopen(url + "/health-check", timeout=10) as resp:
                    assert resp.status == 200
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=20) == 0
            second.stderr.close()
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
        first.stderr.close()


def test_identifier_does_not_share_its_address(dev_state):
    first, url = start("identifier", dev_state)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "services.identifier", "--iss", "https://idp.example.test",
             "--listen", url.removeprefix("http://"), "--signing-method", "ES256",
             "--signing-private-key", str(dev_state / "konnectd-signing-private-key.pem")],
            cwd=ROOT, env=clean_env(dev_state / "users.yaml"), capture_output=True, text=True,
            timeout=60)
        assert second.returncode == 1
        assert "cannot listen" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
        first.stderr.close()


@pytest.mark.parametrize("problem", ["corrupt_key", "short_secret", "bad_registry"])
def test_startup_problem_exits_2_with_clear_message(problem, dev_state, tmp_path):
    key = dev_state / "konnectd-signing-private-key.pem"
    secret = dev_state / "konnectd-encryption-secret.key"
    registry = tmp_path / "registry.yaml"
    registry.write_text("clients:\n  - id: ok\n    redirect_uris: [https://rp.example/cb]\n")
    if problem == "corrupt_key":
        key = tmp_path / "corrupt.pem"
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    elif problem == "short_secret":
        secret = tmp_path / "short.key"
        secret.write_bytes(b"x" * 16)
    else:  # (an entry with a problem is skipped with a warning, as Konnect; this hides all)
        registry.write_text("client:\n  - id: bad\n    redirect_uris: [https://rp.example/cb]\n")
    result = subprocess.run(
        [sys.executable, "-m", "services.token", "--iss", "https://idp.example.test",
         "--signing-method", "ES256", "--signing-private-key", str(key),
         "--encryption-secret", str(secret), "--identifier-registration-conf", str(registry)],
        cwd=ROOT, env=clean_env(dev_state / "users.yaml"), capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    expected = {"corrupt_key": "corrupt.pem", "short_secret": "16", "bad_registry": "top-level"}
    assert expected[problem] in result.stderr


@pytest.mark.gen_test
async def test_made_up_methods_add_no_metric_series(http_client, base_url):
    for i in range(5):
        resp = await http_client.fetch(base_url + "/signin/v1/identifier", method=f"ZZ4C{i}",
                                       allow_nonstandard_methods=True, raise_error=False)
        assert resp.code == 405
    body = metrics.render()[0].decode()
    assert "ZZ4C" not in body
    assert re.search(r'konnect_http_requests_total\{[^}]*method="other"[^}]*status="405"', body)
    # the methods the services answer keep their own label
    await http_client.fetch(base_url + "/signin/v1/identifier", raise_error=False)
    assert re.search(r'handler="SigninPage",method="GET"', metrics.render()[0].decode())


@pytest.mark.parametrize("args", [
    ["--timeout", "-1", "--listen", "127.0.0.1:1"],
    ["--timeout", "nan", "--listen", "127.0.0.1:1"],
    ["--timeout", "0", "--listen", "127.0.0.1:1"],
    ["--listen", "127.0.0.1:99999"],   # would be checked as port 34463 (99999 mod 65536)
    ["--listen", "127.0.0.1:0"],
])
def test_healthcheck_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(args, environ={})
    assert exc.value.code == 2


@pytest.mark.gen_test
async def test_flushing_at_shutdown_leaves_no_empty_line():
    """A stop flushes the access lines of the current turn (service.serve ends with
    flush_access_log); the end-of-turn write scheduled for them must not add a blank line."""
    import asyncio
    import io
    import logging
    from types import SimpleNamespace

    from shared import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("t", "info", "text")
        buf = io.StringIO()
        logs._direct[0].stream = buf
        handler = SimpleNamespace(
            get_status=lambda: 200, request_id="rid-4c-0001", client_ip="192.0.2.1",
            request=SimpleNamespace(method="GET", path="/x", remote_ip="192.0.2.1",
                                    request_time=lambda: 0.001))
        logs.log_request(handler)
        logs.log_request(handler)
        logs.flush_access_log()
        await asyncio.sleep(0)  # the turn ends: the scheduled write runs
        await asyncio.sleep(0)
        lines = buf.getvalue().split("\n")
        assert lines[-1] == "" and all(lines[:-1]) and len(lines) == 3
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logs._direct[:] = []
