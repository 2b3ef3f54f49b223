"""The whole group as `make run` starts it, through Caddy and Apache, with faults."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from urllib.parse import urlencode

import pytest
import requests

from tests.support.agent import Agent
from tests.support.group import ROOT, Group
from tests.support.http import basic


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    with Group(tmp_path_factory.mktemp("group-caddy"), proxy="caddy", token_procs=2) as g:
        yield g


def _metric(text: str, handler: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("konnect_http_requests_total{") and f'handler="{handler}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def apache_group(tmp_path_factory):
    with Group(tmp_path_factory.mktemp("group-apache"), proxy="apache", token_procs=2,
               extra_env={"KONNECT_HSTS_MAX_AGE": "600"}) as g:
        yield g


def _alive(pid: int) -> bool:
    import os
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (gone) parent counts as stopped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


pytestmark = pytest.mark.group


def test_demo_app_signs_in_through_the_proxy_and_shows_tokens(group):
    agent = Agent(group.issuer, group.ca)
    demo = group.demo
    outcome = agent.run(group.demo_url + "/login", demo["username"], demo["password"])
    assert outcome.status == 200 and outcome.url == group.demo_url + "/"
    assert 'id="who">Demo User<' in outcome.body
    assert "id-token-claims" in outcome.body and "&quot;nonce&quot;" in outcome.body
    assert "HTTP 200" in outcome.body and "demo@example.test" in outcome.body


def test_full_flow_sign_in_code_token_userinfo_refresh_revoke(group):
    agent = Agent(group.issuer, group.ca)
    s, demo = agent.session, group.demo
    auth = {"Authorization": basic(demo["client_id"], demo["client_secret"])}
    tokens = group.code_flow(agent)
    assert {"access_token", "id_token", "refresh_token"} <= tokens.keys()
    info = s.get(group.issuer + "/konnect/v1/userinfo", timeout=10,
                 headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert info.status_code == 200 and info.json()["preferred_username"] == "demo"
    refreshed = s.post(group.issuer + "/konnect/v1/token", headers=auth, timeout=10,
                       data={"grant_type": "refresh_token",
                             "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    revoked = s.post(group.issuer + "/konnect/v1/revoke", headers=auth, timeout=10,
                     data={"token": new["access_token"], "token_type_hint": "access_token"})
    assert revoked.status_code == 200
    after = s.get(group.issuer + "/konnect/v1/userinfo", timeout=10,
                  headers={"Authorization": "Bearer " + new["access_token"]})
    assert after.status_code == 401 and 'error="invalid_token"' in after.headers["WWW-Authenticate"]
    # the rotated-away refresh token is now a reuse: refused, and the family is revoked
    reuse = s.post(group.issuer + "/konnect/v1/token", headers=auth, timeout=10,
                   data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    family = s.post(group.issuer + "/konnect/v1/token", headers=auth, timeout=10,
                    data={"grant_type": "refresh_token", "refresh_token": new["refresh_token"]})
    assert family.status_code == 400


def test_proxy_routes_exactly_the_table(group):
    s = group.session()
    assert s.get(group.issuer + "/konnect/v1/jwks.json", timeout=5).json()["keys"]
    assert s.get(group.issuer + "/signin/v1/identifier", timeout=5).status_code == 200
    for path in ("/health-check", "/metrics", "/konnect/v1/tokenx", "/etc/passwd", "/konnect/"):
        resp = s.get(group.issuer + path, timeout=5)
        assert resp.status_code == 404, path
    home = s.get(group.issuer + "/", timeout=5, allow_redirects=False)
    assert home.status_code == 302 and home.headers["Location"].endswith("/signin/v1/welcome")


def test_through_the_proxy_a_second_logon_cookie_and_a_foreign_origin_are_refused(group):
    """The rows of the hardening issue, through Caddy: a logon cookie planted beside the
    user's (the other one of two sign-ins) gets no code, and an http Origin of the
    issuer's host signs nobody in."""
    demo, s = group.demo, group.session()
    host = group.issuer.split("://", 1)[1]

    def logon(origin: str):
        return s.post(group.issuer + "/signin/v1/identifier/_/logon", timeout=10,
                      json={"state": "s", "params": [demo["username"], demo["password"], "1"]},
                      headers={"Kopano-Konnect-XSRF": "1", "Origin": origin})

    foreign = logon("http://" + host)
    assert foreign.status_code == 400 and "Set-Cookie" not in foreign.headers
    values = []
    for _ in range(2):
        answer = logon(group.issuer)
        assert answer.status_code == 200
        assert "__Host-KKT=" in answer.headers["Set-Cookie"]
        assert "Path=/;" in answer.headers["Set-Cookie"]
        values.append(answer.cookies["__Host-KKT"])
    s.cookies.clear()
    query = urlencode({"client_id": demo["client_id"], "response_type": "code",
                       "redirect_uri": group.demo_url + "/callback", "scope": "openid",
                       "prompt": "none"})
    url = group.issuer + "/signin/v1/identifier/_/authorize?" + query
    for cookie in (f"__Host-KKT={values[0]}; __Host-KKT={values[1]}",
                   f"__Host-KKT={values[1]}; __Host-KKT={values[0]}"):
        refused = s.get(url, headers={"Cookie": cookie}, allow_redirects=False, timeout=10)
        assert refused.status_code == 400 and "Location" not in refused.headers
    alone = s.get(url, headers={"Cookie": f"__Host-KKT={values[0]}"}, allow_redirects=False,
                  timeout=10)
    # one cookie: a session (the demo client asks for consent: not login_required)
    assert alone.status_code == 302 and "error=consent_required" in alone.headers["Location"]


def test_request_id_from_the_proxy_reaches_the_service(group):
    resp = group.session().get(group.issuer + "/.well-known/openid-configuration", timeout=5)
    rid = resp.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", rid)  # Caddy's uuid, not one the service made up
    time.sleep(0.3)
    assert f"rid={rid}" in group.output()


def test_no_hsts_by_default_for_a_localhost_issuer(group):
    """HSTS pins a host, whatever the port: on localhost it would break every local http
    app of the developer's browser, so it is off there unless asked for."""
    resp = group.session().get(group.issuer + "/.well-known/openid-configuration", timeout=5)
    assert resp.status_code == 200 and "Strict-Transport-Security" not in resp.headers


def test_header_blocks_the_proxy_passes_are_answered_not_dropped(group):
    """Caddy lets ~20 KB of headers through: the service answers them (no 502); above
    its own limit the proxy answers 431."""
    s = group.session()
    url = group.issuer + "/konnect/v1/userinfo"
    resp = s.get(url, timeout=10, headers={"Authorization": "Bearer " + "a" * 19_000})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_token"
    resp = s.get(url, timeout=10, headers={"Authorization": "Bearer " + "a" * 70_000})
    assert resp.status_code == 431


def test_oversized_body_is_refused_by_the_proxy(group):
    resp = group.session().post(group.issuer + "/konnect/v1/token", timeout=10,
                                data={"grant_type": "x" * 100_000})
    assert resp.status_code == 413


def test_metrics_add_up_across_token_processes(group):
    s = group.session()
    base = _metric(s.get(group.listen("token") + "/metrics", timeout=5).text, "JWKSHandler")
    for _ in range(40):
        assert s.get(group.issuer + "/konnect/v1/jwks.json", timeout=5).status_code == 200
    seen = set()
    for _ in range(10):  # whichever process answers the scrape, the sum is the same
        seen.add(_metric(s.get(group.listen("token") + "/metrics", timeout=5).text,
                         "JWKSHandler"))
    assert seen == {base + 40}


def test_token_process_killed_under_load_is_restarted_and_routed_around(group):
    s = group.session()
    before = group.wait_running("token", 2)
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        local = group.session()
        while not stop.is_set():
            try:
                results.append(local.get(group.issuer + "/konnect/v1/jwks.json",
                                         timeout=5).status_code)
            except requests.RequestException:
                results.append(0)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    victim = sorted(before.values())[0]
    import os
    import signal as sig
    os.kill(victim, sig.SIGKILL)
    time.sleep(1.0)
    after = group.wait_running("token", 2, exclude=(victim,))
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert victim not in after.values() and len(after) == 2
    failures = [r for r in results if r != 200]
    # only requests in flight in the killed process may be lost (one per load thread at most)
    assert len(results) > 50 and len(failures) <= len(threads), (len(results), failures)
    assert s.get(group.issuer + "/konnect/v1/jwks.json", timeout=5).status_code == 200


def test_redis_restart_gives_503_then_recovers_without_restarting_services(group):
    """While Redis is down: 503. Once it is back the services serve again by themselves,
    and what was issued before still works: the group's Redis restarts from its
    append-only file, which keeps every acknowledged write (shared/store.py)."""
    agent = Agent(group.issuer, group.ca)
    tokens = group.code_flow(agent)
    pids = {p: group.pids(p) for p in ("userinfo", "token")}
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    assert "stopped" in group.ctl("stop", "konnect:redis")
    try:
        down = agent.session.get(group.issuer + "/konnect/v1/userinfo", headers=bearer,
                                 timeout=10)
        assert down.status_code == 503  # fail closed: no answer without the revocation check
        tok = agent.session.post(group.issuer + "/konnect/v1/token", timeout=10, data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            headers={"Authorization": basic(group.demo["client_id"], group.demo["client_secret"])})
        assert tok.status_code == 503 and tok.json()["error"] == "temporarily_unavailable"
    finally:
        assert "started" in group.ctl("start", "konnect:redis")
    deadline = time.monotonic() + 10
    while True:
        up = agent.session.get(group.issuer + "/konnect/v1/userinfo", headers=bearer, timeout=10)
        if up.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert up.status_code == 200
    assert {p: group.pids(p) for p in ("userinfo", "token")} == pids


def test_a_redis_crash_brings_back_no_spent_token_and_no_revoked_one(group):
    """Single-use material stays used and revocations stay across a
    kill -9 of Redis (the append-only file; a 60 s snapshot would bring them back)."""
    agent = Agent(group.issuer, group.ca)
    auth = {"Authorization": basic(group.demo["client_id"], group.demo["client_secret"])}
    tokens = group.code_flow(agent)
    s = agent.session
    rotated = s.post(group.issuer + "/konnect/v1/token", headers=auth, timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200
    revoked = s.post(group.issuer + "/konnect/v1/revoke", headers=auth, timeout=10,
                     data={"token": rotated.json()["access_token"]})
    assert revoked.status_code == 200
    (pid,) = group.wait_running("redis").values()
    os.kill(pid, signal.SIGKILL)
    group.wait_running("redis", exclude=(pid,))
    deadline = time.monotonic() + 15
    while True:  # until Redis answers again (it reloads its file first)
        info = s.get(group.issuer + "/konnect/v1/userinfo", timeout=10, headers={
            "Authorization": "Bearer " + rotated.json()["access_token"]})
        if info.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info.status_code == 401  # still revoked
    replay = s.post(group.issuer + "/konnect/v1/token", headers=auth, timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_service_started_without_redis_waits_instead_of_crashing(group):
    group.ctl("stop", "konnect:redis")
    try:
        old = group.pids("userinfo")
        assert "started" in group.ctl("restart", "konnect:userinfo")
        time.sleep(3)  # longer than startsecs: a crash loop would show here
        now = group.pids("userinfo")
        assert now and now != old
        s = group.session()
        assert s.get(group.listen("userinfo") + "/health-check", timeout=5).status_code == 200
        resp = s.get(group.issuer + "/konnect/v1/userinfo", timeout=5,
                     headers={"Authorization": "Bearer x.y.z"})
        assert resp.status_code in (401, 503)
        time.sleep(1)
        assert group.pids("userinfo") == now
    finally:
        group.ctl("start", "konnect:redis")


def test_sigterm_drains_a_request_in_flight(group):
    host, port = group.env["KONNECT_USERINFO_LISTEN"].split(":")
    body = b"access_token=not-a-token"
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /konnect/v1/userinfo HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
        time.sleep(0.3)
        (pid,) = group.wait_running("userinfo").values()
        import os
        import signal as sig
        os.kill(pid, sig.SIGTERM)
        time.sleep(0.5)
        conn.sendall(body[5:])
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    group.wait_running("userinfo", 1, exclude=(pid,))


def test_full_flow_through_apache(apache_group):
    g = apache_group
    agent = Agent(g.issuer, g.ca)
    tokens = g.code_flow(agent)
    s, demo = agent.session, g.demo
    auth = {"Authorization": basic(demo["client_id"], demo["client_secret"])}
    info = s.get(g.issuer + "/konnect/v1/userinfo", timeout=10,
                 headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert info.status_code == 200 and info.json()["email"] == "demo@example.test"
    assert info.headers["Strict-Transport-Security"] == "max-age=600"  # as asked (RFC 6797)
    new = s.post(g.issuer + "/konnect/v1/token", headers=auth, timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert new.status_code == 200, new.text
    revoke = s.post(g.issuer + "/konnect/v1/revoke", headers=auth, timeout=10,
                    data={"token": new.json()["refresh_token"]})
    assert revoke.status_code == 200
    again = s.post(g.issuer + "/konnect/v1/token", headers=auth, timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": new.json()["refresh_token"]})
    assert again.status_code == 400
    assert s.get(g.issuer + "/konnect/v1/tokenx", timeout=5).status_code == 404
    assert s.get(g.issuer + "/health-check", timeout=5).status_code == 404
    assert agent.run(g.demo_url + "/login", demo["username"], demo["password"]).status == 200


def test_make_run_passes_the_environment_and_stops_everything_on_sigterm(tmp_path):
    # Konnect's variables given to `make run` reach the services unchanged.
    g = Group(tmp_path / "state", token_procs=1, extra_env={
        "KONNECTD_ALLOW_DYNAMIC_CLIENT_REGISTRATION": "yes",
        "KONNECTD_ACCESS_TOKEN_EXPIRATION": "123",
        "KONNECTD_LOG_FORMAT": "json", "KONNECT_HSTS_MAX_AGE": "600"})
    g.start()
    resp = g.session().get(g.issuer + "/.well-known/openid-configuration", timeout=5)
    assert resp.headers["Strict-Transport-Security"] == "max-age=600"  # through Caddy
    missing = g.session().get(g.issuer + "/nothing-here", timeout=5)
    assert missing.status_code == 404 and "Strict-Transport-Security" in missing.headers
    doc = resp.json()
    assert doc["registration_endpoint"] == g.issuer + "/konnect/v1/register"
    tokens = g.code_flow(Agent(g.issuer, g.ca))
    assert tokens["expires_in"] == 123
    assert '"service": "token"' in g.output()  # JSON log lines
    pids = [pid for p in ("identifier", "authorize", "token", "userinfo", "caddy", "redis",
                          "demo") for pid in g.wait_running(p).values()]
    assert len(pids) == 7
    assert g.stop() == 0
    time.sleep(0.5)
    import os
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert alive == []


def test_make_run_killed_leaves_no_process(tmp_path):
    """Even when `make run` itself is killed outright (SIGKILL: no chance to pass a signal
    on), supervisord follows its parent (PR_SET_PDEATHSIG) and stops the whole group."""
    import os
    import signal as sig
    g = Group(tmp_path / "state", token_procs=1)
    g.command = ["make", "--no-print-directory", "-C", str(ROOT), "run"]
    g.start()
    pids = [pid for p in ("identifier", "authorize", "token", "userinfo", "caddy", "redis",
                          "demo") for pid in g.wait_running(p).values()]
    os.kill(g.process.pid, sig.SIGKILL)  # make only
    g.process.wait(30)
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.3)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:  # do not leave a failed test's group behind
        os.kill(pid, sig.SIGKILL)
    assert alive == []


BANNER = "sign-in page  "  # a line of make run's banner (deploy/run.py)


def test_right_after_the_banner_a_post_to_every_service_is_answered(tmp_path):
    """`make run` prints its addresses only once the group answers, and the proxy starts
    only once the services do: a POST the moment the banner appears reaches every service
    (no connection refused, no 502 from a proxy whose upstream is still starting)."""
    g = Group(tmp_path / "state", token_procs=1)
    g.launch()
    try:
        deadline = time.monotonic() + 120
        while BANNER not in g.output():
            assert g.process.poll() is None and time.monotonic() < deadline, g.output()[-3000:]
            time.sleep(0.02)
        s, demo = g.session(), g.demo
        answers = {
            "identifier": s.post(g.issuer + "/signin/v1/identifier/_/logon", timeout=10,
                                 json={"state": "s", "params": [demo["username"],
                                                                demo["password"], "1"]},
                                 headers={"Kopano-Konnect-XSRF": "1", "Origin": g.issuer}),
            "token": s.post(g.issuer + "/konnect/v1/token", timeout=10,
                            data={"grant_type": "authorization_code", "code": "nope",
                                  "redirect_uri": g.demo_url + "/callback"},
                            headers={"Authorization": basic(demo["client_id"],
                                                            demo["client_secret"])}),
            "authorize": s.post(g.issuer + "/signin/v1/identifier/_/authorize", timeout=10,
                                allow_redirects=False,
                                data={"client_id": demo["client_id"], "response_type": "code",
                                      "redirect_uri": g.demo_url + "/callback", "scope": "openid"}),
            "userinfo": s.post(g.issuer + "/konnect/v1/userinfo", timeout=10),
        }
        assert {name: r.status_code for name, r in answers.items()} == {
            "identifier": 200, "token": 400, "authorize": 302, "userinfo": 401}
        assert answers["token"].json()["error"] == "invalid_grant"
    finally:
        assert g.stop() == 0
