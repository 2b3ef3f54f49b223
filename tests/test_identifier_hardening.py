"""The identifier and session fixes of the adversarial review (security.md WB-07, WB-14,
WB-18): sign-out ends the logon itself, bad JSON is a 400, successes do not count against
the IP limit, an unpredictable browser state, nosniff on static files. Over HTTP, with the
four services on one origin, real Redis and the users-file backend (fixtures of test_flow)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import secrets
import time

import pytest
import yaml

from services.identifier.api import LOGON_IP_LIMIT, LOGON_WINDOW, LogonHandler
from shared.session import LOGON_COOKIE, LOGON_TTL, Logon
from shared.store import Store
from shared.users.userfile import UsersFileBackend
from tests.support.op import make_core
from tests.test_flow import Browser, app, authorize_url, query_of, sign_in, state  # noqa: F401

TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}
USERS = [f"user{i}" for i in range(3)]


def cheap_hash(password: str) -> str:
    """A users-file scrypt hash at the backend's lowest accepted cost (n=2^10), so that
    tests making dozens of sign-ins stay fast; verification is the real code path."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 10, r=8, p=1, dklen=32)
    return f"scrypt$10$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class Clock:
    """The real time plus an offset a test may move forward (every part of the core reads it)."""
    offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


CLOCK = Clock()


@pytest.fixture
def core(state, redis_url, tmp_path, io_loop):  # noqa: F811 (the app fixture of test_flow uses it)
    CLOCK.offset = 0.0
    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump({"users": [
        {"username": "alice", "password": cheap_hash("wonderland"), "name": "Alice Example",
         "email": "alice@example.test", "email_verified": True, "id": 1001, "uuid": "u-alice"},
        *({"username": u, "password": cheap_hash("pw-" + u), "id": 2000 + i, "uuid": f"u-{u}"}
          for i, u in enumerate(USERS))]}))
    core = make_core("identifier", state, redis_url, now=CLOCK)
    core.users = UsersFileBackend(str(users))
    yield core
    io_loop.run_sync(core.close)


async def hello(b: Browser) -> int:
    return (await b.api("hello", {"state": "h1"})).code


async def silent_authorize(b: Browser) -> dict:
    """authorize with prompt=none at the trusted client: tokens, or an error."""
    resp = await b.fetch(authorize_url(response_type="id_token token", prompt="none", **TRUSTED))
    assert resp.code == 302, resp.body
    return query_of(resp.headers["Location"])


async def userinfo(b: Browser, access_token: str) -> int:
    resp = await b.fetch("/konnect/v1/userinfo", headers={"Authorization": "Bearer " + access_token})
    return resp.code


# --- 1. signing out ends the session (WB-07) ---------------------------------------------

@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("how", ["logoff", "endsession"])
async def test_a_copy_of_the_logon_cookie_is_no_session_after_sign_out(http_client, base_url, how):
    b = Browser(http_client, base_url)
    assert (await sign_in(b)).code == 200
    kept = b.cookies[LOGON_COOKIE]
    before = await silent_authorize(b)
    assert before.get("access_token") and await hello(b) == 200
    if how == "logoff":
        assert (await b.api("logoff", {"state": "o1"})).code == 200
    else:
        out = await b.fetch("/signin/v1/identifier/_/endsession?" + "&".join(
            [f"id_token_hint={before['id_token']}",
             "post_logout_redirect_uri=https://trusted.example.test/cb"]))
        assert out.code == 302
    assert LOGON_COOKIE not in b.cookies
    b.cookies[LOGON_COOKIE] = kept  # replayed: a copy, another tab, a stolen cookie
    assert await hello(b) == 204
    assert (await silent_authorize(b))["error"] == "login_required"
    # with select_account the sign-in page, not "continue as alice"
    chooser = await b.fetch(authorize_url(prompt="select_account", **TRUSTED))
    assert chooser.headers["Location"].startswith("/signin/v1/identifier?")
    # consent needs a signed-in user
    consent = await b.api("consent", {"state": "c1", "allow": True, "scope": "openid",
                                      "client_id": "web-rp",
                                      "redirect_uri": "https://rp.example.test/cb"})
    assert consent.code == 400
    # end session: no confirmation page for a user who is not signed in any more
    end = await b.fetch("/signin/v1/identifier/_/endsession")
    assert end.code == 302 and end.headers["Location"] == "/signin/v1/goodbye?done=1"


@pytest.mark.gen_test
async def test_the_not_before_lives_as_long_as_the_logon_cookie(http_client, base_url, core,
                                                                redis_server):
    b = Browser(http_client, base_url)
    await sign_in(b)
    await b.api("logoff", {"state": "o1"})
    client = redis_server.client()
    try:
        keys = client.keys("konnect:revoked:sub:*")
        assert len(keys) == 1
        ttl = client.pttl(keys[0]) / 1000
    finally:
        client.close()
    assert ttl > LOGON_TTL - 5 and ttl > core.tokens.access_ttl


@pytest.mark.gen_test(timeout=30)
async def test_signing_in_again_right_after_signing_out_is_a_session(http_client, base_url, core):
    """A sign-out ends what was issued in its second (the not-before is whole seconds). A
    sign-in in that same second waits for the next one, so the new logon and its tokens
    are not caught by the sign-out."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    now = CLOCK()
    CLOCK.offset += math.floor(now) + 1.02 - now  # the clock at the start of a second
    second = int(CLOCK())
    await b.api("logoff", {"state": "o1"})
    started = time.monotonic()
    assert (await sign_in(b)).code == 200
    assert time.monotonic() - started < 1.2  # it waited for the next second, no longer
    assert Logon.open(core.sealer, b.cookies[LOGON_COOKIE]).auth_time == second + 1
    assert await hello(b) == 200
    tokens = await silent_authorize(b)
    assert tokens.get("access_token"), tokens
    assert await userinfo(b, tokens["access_token"]) == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_logon_is_refused_when_redis_cannot_say_whether_it_ended(
        http_client, base_url, core, private_redis):
    """Fails closed (security.md: the revocation check): 503, never a session."""
    shared_store, core.store = core.store, Store.from_url(private_redis.url)
    b = Browser(http_client, base_url)
    try:
        assert (await sign_in(b)).code == 200
        assert await hello(b) == 200
        private_redis.stop()
        assert await hello(b) == 503
        resp = await b.fetch(authorize_url(prompt="none", **TRUSTED))
        assert resp.code == 503 and "Location" not in resp.headers
        assert (await b.fetch("/signin/v1/identifier/_/endsession")).code == 503
    finally:
        await core.store.close()
        core.store = shared_store


# --- 2. wrong JSON types and unsafe state: 400, never 500 (WB-18) ------------------------

TRUSTED_HELLO = {"flow": "oidc", "client_id": "trusted-rp",
                 "redirect_uri": "https://trusted.example.test/cb", "scope": "openid"}
BAD_HELLOS = [{"prompt": 5}, {"prompt": ["login"]}, {"scope": 5}, {"scope": ["openid"]},
              {"client_id": 7}, {"redirect_uri": {"x": 1}}, {"flow": True},
              {"ref": 1, "state": "s"}, {"nonce": 1.5}, {"anything": []}]
BAD_STATES = ["a\r\nX-Evil: 1", "中", "tab\there", "\x00", 5, ["s"], {"s": 1}, "x" * 257]


def _raw(b: Browser, name: str, raw: str):
    return b.fetch(f"/signin/v1/identifier/_/{name}", method="POST", body=raw.encode(),
                   headers={"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                            "Origin": b.base})


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


CONSENT = {"state": "c1", "allow": True, "scope": "openid", "client_id": "web-rp",
           "redirect_uri": "https://rp.example.test/cb", "ref": "xyz", "flow_nonce": "n-1"}
BAD_CONSENTS = [{"scope": 5}, {"scope": ["openid", 5]}, {"scope": {"openid": True}},
                {"allow": "yes"}, {"allow": 1}, {"client_id": 5}, {"redirect_uri": ["x"]},
                {"ref": 5}, {"flow_nonce": {}}]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("bad", BAD_CONSENTS, ids=[json.dumps(c) for c in BAD_CONSENTS])
async def test_consent_of_the_wrong_type_is_400_and_sets_no_decision(http_client, base_url, bad):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.api("consent", {**CONSENT, **bad})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"
    assert next(iter(bad)) in json.loads(resp.body)["error_description"]
    assert not any(k.startswith("__Secure-KKTC-") for k in b.cookies)


@pytest.mark.gen_test
async def test_consent_still_takes_a_scope_string_or_list(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    assert (await b.api("consent", CONSENT)).code == 200
    assert (await b.api("consent", {**CONSENT, "scope": ["openid", "email"]})).code == 200
    denied = await b.api("consent", {**CONSENT, "allow": False, "state": "c2"})
    assert denied.code == 204 and denied.headers["Kopano-Konnect-State"] == "c2"


# --- 3. successes do not count against the IP limit (WB-14(a)) ---------------------------

@pytest.mark.gen_test(timeout=120)
async def test_more_successful_sign_ins_than_the_ip_limit_all_succeed(http_client, base_url):
    b = Browser(http_client, base_url)
    names = ["alice", *USERS]
    passwords = {"alice": "wonderland", **{u: "pw-" + u for u in USERS}}
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


@pytest.mark.asyncio
async def test_store_give_back_undoes_one_hit_and_keeps_the_window(store, redis_server):
    assert await store.give_back("logon-ip", "10.0.0.1") == 0  # nothing to give back
    client = redis_server.client()
    try:
        assert client.keys("konnect:ratelimit:*") == []  # and nothing created
        for _ in range(3):
            await store.hit("logon-ip", "10.0.0.1", window=300)
        assert await store.give_back("logon-ip", "10.0.0.1") == 2
        (key,) = client.keys("konnect:ratelimit:*")
        assert 290 < client.ttl(key) <= 300
        assert await store.give_back("logon-ip", "10.0.0.1") == 1
        assert await store.give_back("logon-ip", "10.0.0.1") == 0
        assert await store.give_back("logon-ip", "10.0.0.1") == 0  # never below 0
        assert int(client.get(key)) == 0 and client.ttl(key) > 0
        assert await store.hit("logon-ip", "10.0.0.1", window=300) == 1
    finally:
        client.close()


# --- 4. the browser state is unpredictable (OIDC Session Management 1.0 §3, §4.1) -----------

async def _session(b: Browser) -> tuple[str, str]:
    resp = await b.fetch(authorize_url(**TRUSTED))
    result = query_of(resp.headers["Location"])
    return b.cookies["__Secure-KKBS"], result["session_state"]


def _konnect_state(sub: str, issuer: str) -> str:
    data = f"{sub} {issuer} kopano-konnect-1".encode()
    return base64.urlsafe_b64encode(hashlib.blake2b(data, digest_size=32).digest()).rstrip(b"=").decode()


@pytest.mark.gen_test(timeout=30)
async def test_browser_state_is_keyed_per_logon_and_matches_session_state(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    state1, session1 = await _session(b)
    again, session2 = await _session(b)
    assert again == state1  # the same logon: the iframe answers "unchanged"
    # session_state = sha256(client_id origin browser_state salt).salt (§3) over the cookie
    for session in (session1, session2):
        digest, salt = session.split(".")
        expected = f"trusted-rp https://trusted.example.test {state1} {salt}"
        assert digest == hashlib.sha256(expected.encode()).hexdigest()
    # a third party knowing the user cannot compute it (Konnect's formula had no secret)
    sub = Logon.open(core.sealer, b.cookies[LOGON_COOKIE]).identity.sub
    assert state1 != _konnect_state(sub, core.settings.iss)
    # another sign-in of the same user in another browser: another state
    other = Browser(http_client, base_url)
    await sign_in(other)
    assert (await _session(other))[0] != state1


# --- 5. static files: nosniff --------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["app.js", "app.css", "logo.svg"])
async def test_static_files_are_nosniff(http_client, base_url, path):
    resp = await Browser(http_client, base_url).fetch("/signin/v1/static/" + path)
    assert resp.code == 200 and resp.headers["X-Content-Type-Options"] == "nosniff"
