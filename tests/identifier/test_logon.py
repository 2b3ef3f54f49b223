"""Signing in through the identifier API (`_/logon`, `_/hello`): CSRF defences, typed input,
the same answer for unknown users and wrong passwords, rate limits."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.identifier.api import LOGON_IP_LIMIT, LOGON_WINDOW, LogonHandler
from shared.session import LOGON_COOKIE
from tests.support.browser import Browser, sign_in
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.malformed import DEEP
from tests.support.users import SIGN_IN_NAMES, SIGN_IN_USERS
from tests.support.op import ISSUER

TRUSTED_HELLO = {"flow": "oidc", "client_id": "trusted-rp",
                 "redirect_uri": "https://trusted.example.test/cb", "scope": "openid"}


BAD_HELLOS = [{"prompt": 5}, {"prompt": ["login"]}, {"scope": 5}, {"scope": ["openid"]},
              {"client_id": 7}, {"redirect_uri": {"x": 1}}, {"flow": True},
              {"ref": 1, "state": "s"}, {"nonce": 1.5}, {"anything": []}]


BAD_STATES = ["a\r\nX-Evil: 1", "中", "tab\there", "\x00", 5, ["s"], {"s": 1}, "x" * 257]


def _raw(b: Browser, name: str, raw: str):
    return b.fetch(f"/signin/v1/identifier/_/{name}", method="POST", body=raw.encode(),
                   headers={"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                            "Origin": b.origin})


pytestmark = pytest.mark.op(users=SIGN_IN_USERS, clock="offset")


@pytest.mark.op()
@pytest.mark.gen_test
async def test_api_csrf_defences_and_bad_credentials(http_client, base_url):
    b = Browser(http_client, base_url)
    body = {"state": "s", "params": ["alice", "wonderland", "1"]}
    no_header = await b.fetch("/signin/v1/identifier/_/logon", method="POST", body=json.dumps(body),
                              headers={"Content-Type": "application/json", "Origin": ISSUER})
    assert no_header.code == 400 and "__Host-KKT" not in b.cookies
    foreign = await b.api("logon", body, Origin="https://evil.example")
    assert foreign.code == 400 and "__Host-KKT" not in b.cookies
    wrong = await sign_in(b, password="nope")
    assert wrong.code == 204 and "__Host-KKT" not in b.cookies
    hello = await b.api("hello", {"state": "h"})
    assert hello.code == 204


@pytest.mark.op()
@pytest.mark.gen_test(timeout=30)
async def test_repeated_failed_sign_ins_are_rate_limited(http_client, base_url):
    b = Browser(http_client, base_url)
    codes = [(await sign_in(b, password=f"bad{i}")).code for i in range(12)]
    assert codes[:10] == [204] * 10 and codes[-1] == 429


@pytest.mark.op()
@pytest.mark.gen_test
async def test_unknown_user_and_wrong_password_get_the_same_answer_after_the_same_floor(
        http_client, base_url):
    from services.identifier.api import LogonHandler
    b = Browser(http_client, base_url)
    answers = []
    for user, password in (("alice", "not-her-password"), ("nobody-here", "whatever")):
        started = time.monotonic()
        resp = await sign_in(b, username=user, password=password)
        answers.append((resp.code, resp.body, time.monotonic() - started))
    assert answers[0][:2] == answers[1][:2] == (204, b"")
    assert all(took >= LogonHandler.failed_floor for _, _, took in answers)


@pytest.mark.op()
@pytest.mark.gen_test(timeout=30)
async def test_too_many_attempts_is_429_with_retry_after_and_words(http_client, base_url):
    b = Browser(http_client, base_url)
    for i in range(10):
        assert (await sign_in(b, username="nobody", password=f"x{i}")).code == 204
    blocked = await sign_in(b, username="nobody", password="again")
    assert blocked.code == 429 and 0 < int(blocked.headers["Retry-After"]) <= 300
    assert b"too many" in blocked.body.lower()
    # the same answer for a user that exists: the limit reveals nothing
    for i in range(10):
        await sign_in(b, username="alice", password=f"x{i}")
    assert (await sign_in(b, username="alice", password="wonderland")).code == 429


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("bad", BAD_HELLOS, ids=[json.dumps(h) for h in BAD_HELLOS])
async def test_hello_of_the_wrong_type_is_400(http_client, base_url, bad):
    b = Browser(http_client, base_url)
    body = {**TRUSTED_HELLO, **bad}
    # signed out and signed in: the answer does not depend on the session
    assert (await b.api("hello", {"state": "h", **body})).code == 400
    assert (await b.api("logon", {"state": "s", "params": ["alice", "wonderland", "1"],
                                  "hello": body})).code == 400
    assert LOGON_COOKIE not in b.cookies  # refused before signing in, no cookie set
    assert (await sign_in(b)).code == 200
    resp = await b.api("hello", {"state": "h", **body})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"
    name = next(iter(bad))
    assert name in json.loads(resp.body)["error_description"]


@pytest.mark.gen_test
async def test_hello_and_logon_with_good_members_still_work(http_client, base_url):
    b = Browser(http_client, base_url)
    body = {**TRUSTED_HELLO, "prompt": "consent", "scope": "openid profile", "extra": None}
    resp = await b.api("logon", {"state": "s", "params": ["alice", "wonderland", "1"],
                                 "hello": body})
    answer = json.loads(resp.body)["hello"]
    assert resp.code == 200 and answer["next"] == "consent"
    assert answer["scopes"] == {"openid": True, "profile": True}
    assert (await b.api("logon", {"params": ["alice", "wonderland", "1"], "hello": None})).code == 200
    assert (await b.api("hello", {"state": None, **TRUSTED_HELLO})).code == 200


@pytest.mark.gen_test
async def test_a_hello_that_is_not_an_object_is_400(http_client, base_url):
    b = Browser(http_client, base_url)
    for hello_value in ("x", 5, ["oidc"], True):
        resp = await b.api("logon", {"params": ["alice", "wonderland", "1"], "hello": hello_value})
        assert resp.code == 400 and LOGON_COOKIE not in b.cookies


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("bad", BAD_STATES, ids=[repr(s)[:20] for s in BAD_STATES])
async def test_a_state_that_cannot_be_a_header_is_400(http_client, base_url, bad):
    b = Browser(http_client, base_url)
    # every API call, including the 204 answers that echo the state in a header
    calls = [("hello", {}), ("logon", {"params": ["alice", "wrong", "1"]}), ("logoff", {}),
             ("consent", {"allow": False, "client_id": "web-rp",
                          "redirect_uri": "https://rp.example.test/cb"})]
    await sign_in(b)
    for name, body in calls:
        resp = await b.api(name, {**body, "state": bad})
        assert resp.code == 400, (name, resp.code)
        assert json.loads(resp.body)["error"] == "invalid_request"
    assert LOGON_COOKIE in b.cookies  # the logoff was refused too


@pytest.mark.gen_test
async def test_lone_surrogates_are_400(http_client, base_url):
    b = Browser(http_client, base_url)
    assert (await _raw(b, "hello", '{"state": "\\ud800"}')).code == 400
    assert (await _raw(b, "hello", '{"flow": "oidc", "client_id": "\\udfff"}')).code == 400
    assert (await _raw(b, "logon", '{"params": ["alice", "\\ud800", "1"]}')).code == 400
    await sign_in(b)
    assert (await _raw(b, "consent", '{"state": "c", "client_id": "web-rp", "redirect_uri": '
                                     '"https://rp.example.test/cb", "ref": "\\ud800"}')).code == 400


@pytest.mark.gen_test(timeout=120)
async def test_more_successful_sign_ins_than_the_ip_limit_all_succeed(http_client, base_url):
    b = Browser(http_client, base_url)
    names = ["alice", *SIGN_IN_NAMES]
    passwords = {"alice": "wonderland", **{u: "pw-" + u for u in SIGN_IN_NAMES}}
    codes = []
    for i in range(LOGON_IP_LIMIT + 10):
        user = names[i % len(names)]
        codes.append((await sign_in(b, username=user, password=passwords[user])).code)
    assert codes == [200] * (LOGON_IP_LIMIT + 10)
    # failures still count: unknown users (no per-user limit in the way), all from one IP
    failed = await asyncio.gather(*(sign_in(Browser(http_client, base_url), username=f"nobody{i}",
                                            password="x") for i in range(LOGON_IP_LIMIT)))
    assert [r.code for r in failed] == [204] * LOGON_IP_LIMIT
    blocked = await sign_in(b, username="alice", password="wonderland")
    assert blocked.code == 429 and 0 < int(blocked.headers["Retry-After"]) <= LOGON_WINDOW


@pytest.mark.gen_test(timeout=30)
async def test_successes_between_failures_do_not_lift_the_ip_limit(http_client, base_url,
                                                                   monkeypatch):
    """Giving the hit back only undoes the success's own hit: failures still add up."""
    monkeypatch.setattr(LogonHandler, "failed_floor", 0.0)  # speed only
    b = Browser(http_client, base_url)
    for i in range(LOGON_IP_LIMIT):
        assert (await sign_in(b)).code == 200
        assert (await sign_in(b, username=f"nobody{i}", password="x")).code == 204
    assert (await sign_in(b)).code == 429


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("name", ["hello", "logon", "consent"])
async def test_identifier_api_deep_json_is_400(http_client, base_url, name):
    b = Browser(http_client, base_url)
    resp = await b.fetch(f"/signin/v1/identifier/_/{name}", method="POST", body=DEEP,
                         headers={"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                                  "Origin": ISSUER})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"
