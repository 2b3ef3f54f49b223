"""Signing out ends the logon everywhere: a copy of the logon cookie is no session, the
not-before lives as long as the cookie, Redis down is no session."""

from __future__ import annotations

import math
import time

import pytest

from shared.session import LOGON_COOKIE, LOGON_TTL_MAX, Logon
from shared.store import Store
from tests.support.browser import (
    TRUSTED,
    Browser,
    authorize_url,
    query_of,
    sign_in,
    userinfo_status,
)
from tests.support.users import SIGN_IN_USERS


async def hello(b: Browser) -> int:
    return (await b.api("hello", {"state": "h1"})).code


async def silent_authorize(b: Browser) -> dict:
    """authorize with prompt=none at the trusted client: tokens, or an error."""
    resp = await b.fetch(authorize_url(response_type="id_token token", prompt="none", **TRUSTED))
    assert resp.code == 302, resp.body
    return query_of(resp.headers["Location"])


pytestmark = pytest.mark.op(users=SIGN_IN_USERS, clock="offset")


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


LIFETIMES = [pytest.param(None, marks=pytest.mark.op(users=SIGN_IN_USERS, clock="offset"),
                          id="default"),
             pytest.param(7200, id="logon-cookie-expiration", marks=pytest.mark.op(
                 users=SIGN_IN_USERS, clock="offset",
                 args=("--logon-cookie-expiration", "7200")))]


@pytest.mark.gen_test
@pytest.mark.parametrize("maximum", LIFETIMES)
async def test_the_not_before_lives_as_long_as_the_logon_cookie(http_client, base_url, core,
                                                                redis_server, maximum):
    b = Browser(http_client, base_url)
    await sign_in(b)
    await b.api("logoff", {"state": "o1"})
    client = redis_server.client()
    try:  # the sign-out is "<not-before> <until>" in the user's bucket (shared/store.py)
        sign_outs = [value for key in client.keys("konnect:revoked:{*}")
                     for field, value in client.hgetall(key).items()
                     if field.startswith(b"s:")]
    finally:
        client.close()
    assert len(sign_outs) == 1
    not_before, until = (int(v) for v in sign_outs[0].split())
    ttl = until - core.now()
    assert ttl > (maximum or LOGON_TTL_MAX) - 5 and ttl > core.tokens.access_ttl


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("maximum", LIFETIMES)
async def test_a_sign_in_lasts_the_browser_session_unless_a_maximum_is_set(
        http_client, base_url, clock, maximum):
    """Konnect's logon cookie is a browser session cookie whose contents never expire (its
    identifier/cookie.go, identifier.go): so is ours (bounded by LOGON_TTL_MAX), unless
    `--logon-cookie-expiration` sets a maximum. Never a persistent cookie."""
    b = Browser(http_client, base_url)
    logon = await sign_in(b)
    header = [h for h in logon.headers.get_list("Set-Cookie") if h.startswith(LOGON_COOKIE)][0]
    assert "expires" not in header.lower() and "max-age" not in header.lower()
    clock.offset += 30 * 86400 if maximum is None else maximum - 60
    assert await hello(b) == 200
    if maximum is None:
        clock.offset += LOGON_TTL_MAX - 30 * 86400 + 60
    else:
        clock.offset += 120
    assert await hello(b) == 204


@pytest.mark.gen_test(timeout=30)
async def test_signing_in_again_right_after_signing_out_is_a_session(http_client, base_url, core,
                                                                     clock):
    """A sign-out ends what was issued in its second (the not-before is whole seconds). A
    sign-in in that same second waits for the next one, so the new logon and its tokens
    are not caught by the sign-out."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    now = clock()
    clock.offset += math.floor(now) + 1.02 - now  # the clock at the start of a second
    second = int(clock())
    await b.api("logoff", {"state": "o1"})
    started = time.monotonic()
    assert (await sign_in(b)).code == 200
    assert time.monotonic() - started < 1.2  # it waited for the next second, no longer
    assert Logon.open(core.sealer, b.cookies[LOGON_COOKIE]).auth_time == second + 1
    assert await hello(b) == 200
    tokens = await silent_authorize(b)
    assert tokens.get("access_token"), tokens
    assert await userinfo_status(b, tokens["access_token"]) == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_logon_is_refused_when_redis_cannot_say_whether_it_ended(
        http_client, base_url, core, private_redis):
    """Fails closed (a sign-out that cannot be checked may have happened): 503, never a session."""
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
