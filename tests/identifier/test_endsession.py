"""End session (RP-Initiated Logout 1.0) and the choose-account hand-off."""

from __future__ import annotations

import dataclasses
import json
import re
from urllib.parse import urlencode

import pytest

from shared.identity import Identity
from shared.session import LOGON_COOKIE
from tests.support.browser import (
    TRUSTED,
    WEB_RP,
    Browser,
    authorize_url,
    post_form,
    query_of,
    register,
    sign_in,
    signed_in,
)
from tests.support.clients import ODD_ORIGIN_REGISTRY
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.malformed import JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD
from tests.support.op import ISSUER
from tests.support.users import ALICE_ENTRY, BOB_ENTRY

END = "/signin/v1/identifier/_/endsession"


async def implicit_tokens(b: Browser, **params) -> dict:
    resp = await b.fetch(authorize_url(response_type="id_token token", **{**TRUSTED, **params}))
    assert resp.code == 302, resp.body
    return query_of(resp.headers["Location"])


def end_url(**params) -> str:
    return END + "?" + urlencode({k: v for k, v in params.items() if v is not None})


def cleared(resp, name: str) -> bool:
    return any(h.startswith(name + "=") and ("Max-Age=0" in h or "expires=" in h.lower())
               for h in resp.headers.get_list("Set-Cookie"))


async def userinfo(http_client, base_url, access_token: str) -> int:
    resp = await http_client.fetch(base_url + "/konnect/v1/userinfo", raise_error=False,
                                   headers={"Authorization": "Bearer " + access_token})
    return resp.code


def _alice(core):
    from tests.support.op import ALICE
    return dataclasses.replace(ALICE, raw_sub="u-alice", uuid="u-alice")


@pytest.mark.gen_test
async def test_trusted_client_with_hint_signs_out_at_once_and_returns(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    tokens = await implicit_tokens(b)
    assert await userinfo(http_client, base_url, tokens["access_token"]) == 200
    resp = await b.fetch(end_url(id_token_hint=tokens["id_token"], state="bye-1",
                                 post_logout_redirect_uri="https://trusted.example.test/cb"))
    assert resp.code == 302
    assert resp.headers["Location"] == "https://trusted.example.test/cb?state=bye-1"
    assert cleared(resp, "__Host-KKT") and cleared(resp, "__Host-KKBS")
    assert "__Host-KKT" not in b.cookies
    assert await userinfo(http_client, base_url, tokens["access_token"]) == 401
    again = await b.fetch(authorize_url(prompt="none", **TRUSTED))
    assert query_of(again.headers["Location"])["error"] == "login_required"


@pytest.mark.gen_test
async def test_other_clients_get_a_confirmation_page_then_go_back(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    tokens = await implicit_tokens(b)
    hint = core.tokens.id_token(client_id="web-rp", identity=_alice(core), nonce="n")
    page = await b.fetch(end_url(id_token_hint=hint, state="s2",
                                 post_logout_redirect_uri="https://rp.example.test/cb"))
    assert page.code == 200 and b'id="endsession"' in page.body and b"Web RP" in page.body
    assert "__Host-KKT" in b.cookies and not cleared(page, "__Host-KKT")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    assert b'href="https://rp.example.test/cb"' in page.body  # "stay signed in"
    resp = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                         headers={"Origin": ISSUER,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.code == 302 and resp.headers["Location"] == "https://rp.example.test/cb?state=s2"
    assert "__Host-KKT" not in b.cookies
    assert await userinfo(http_client, base_url, tokens["access_token"]) == 401


@pytest.mark.gen_test
async def test_confirmation_needs_our_origin_and_a_valid_token(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    page = await b.fetch(END)
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    foreign = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                            headers={**form, "Origin": "https://evil.example"})
    assert foreign.code == 400 and "__Host-KKT" in b.cookies
    forged = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm[:-3] + "AAA"}),
                           headers={**form, "Origin": ISSUER})
    assert forged.code == 400 and "__Host-KKT" in b.cookies
    done = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                         headers={**form, "Origin": ISSUER})
    assert done.code == 302 and done.headers["Location"] == "/signin/v1/goodbye?done=1"
    goodbye = await b.fetch(done.headers["Location"])
    assert b'role="status"' in goodbye.body


@pytest.mark.gen_test
@pytest.mark.parametrize("params,why", [
    ({"client_id": "web-rp"}, "client_id differs from the hint"),
    ({"tamper": True}, "tampered hint"),
])
async def test_bad_requests_get_an_error_page_never_a_redirect(http_client, base_url, params, why):
    b = Browser(http_client, base_url)
    await sign_in(b)
    tokens = await implicit_tokens(b)
    hint = tokens["id_token"]
    if params.pop("tamper", False):
        hint = hint[:-6] + ("AAAAAA" if not hint.endswith("AAAAAA") else "BBBBBB")
    resp = await b.fetch(end_url(id_token_hint=hint, **params))
    assert resp.code == 400 and "Location" not in resp.headers, why
    assert "__Host-KKT" in b.cookies, why


@pytest.mark.gen_test
async def test_hint_for_another_user_is_refused(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    bob = Identity(raw_sub="bob", backend="identifier-users", username="bob")
    hint = core.tokens.id_token(client_id="trusted-rp", identity=bob, nonce="n")
    resp = await b.fetch(end_url(id_token_hint=hint,
                                 post_logout_redirect_uri="https://trusted.example.test/cb"))
    assert resp.code == 400 and "__Host-KKT" in b.cookies


@pytest.mark.gen_test
async def test_expired_hint_is_still_accepted(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    old_now = core.now
    core.now = lambda: old_now() - 10 * 3600
    try:
        hint = core.tokens.id_token(client_id="trusted-rp", identity=_alice(core), nonce="n")
    finally:
        core.now = old_now
    resp = await b.fetch(end_url(id_token_hint=hint, client_id="trusted-rp",
                                 post_logout_redirect_uri="https://trusted.example.test/cb"))
    assert resp.code == 302 and resp.headers["Location"] == "https://trusted.example.test/cb"


@pytest.mark.gen_test
async def test_nobody_signed_in_returns_to_a_verified_uri(http_client, base_url, core):
    hint = core.tokens.id_token(client_id="web-rp", identity=_alice(core), nonce="n")
    resp = await Browser(http_client, base_url).fetch(end_url(
        id_token_hint=hint, post_logout_redirect_uri="https://rp.example.test/cb", state="z"))
    assert resp.code == 302 and resp.headers["Location"] == "https://rp.example.test/cb?state=z"


@pytest.mark.gen_test
async def test_confirmation_page_is_translated(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    page = await b.fetch(END, headers={"Accept-Language": "de"})
    assert page.code == 200 and "Abmelden".encode() in page.body and b'lang="de"' in page.body


@pytest.mark.gen_test
async def test_select_account_shows_the_chooser_when_signed_in(http_client, base_url):
    b = Browser(http_client, base_url)
    fresh = await b.fetch(authorize_url(prompt="select_account", **TRUSTED))
    assert fresh.headers["Location"].startswith("/signin/v1/identifier?")
    await sign_in(b)
    resp = await b.fetch(authorize_url(prompt="select_account", **TRUSTED))
    assert resp.code == 302 and resp.headers["Location"].startswith("/signin/v1/chooseaccount?")
    page = await b.fetch(resp.headers["Location"])
    assert page.code == 200 and b'id="continue"' in page.body and b'id="another"' in page.body
    # "Continue as": the page's script goes back without select_account; that signs in
    back = await b.fetch(authorize_url(**TRUSTED))
    assert query_of(back.headers["Location"]).get("code")
    forced = await b.fetch(authorize_url(prompt="select_account login", **TRUSTED))
    assert forced.headers["Location"].startswith("/signin/v1/identifier?")


@pytest.mark.gen_test
async def test_signed_out_uri_is_where_a_plain_sign_out_ends(http_client, base_url, core):
    import dataclasses
    b = Browser(http_client, base_url)
    await sign_in(b)
    page = await b.fetch(END)
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    original = core.settings
    core.settings = dataclasses.replace(original, signed_out_uri="https://intranet.example/bye")
    try:
        done = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                             headers={"Origin": ISSUER,
                                      "Content-Type": "application/x-www-form-urlencoded"})
    finally:
        core.settings = original
    assert done.code == 302 and done.headers["Location"] == "https://intranet.example/bye"


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("hint", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
async def test_end_session_with_a_deep_hint_is_400(http_client, base_url, hint):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch("/signin/v1/identifier/_/endsession?" + urlencode({"id_token_hint": hint}))
    assert resp.code == 400 and b"id_token_hint is invalid" in resp.body


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_head_on_end_session_is_405_and_signs_nobody_out(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch("/signin/v1/identifier/_/endsession", method="HEAD")
    assert resp.code == 405 and resp.headers["Allow"] == "GET, POST"
    assert LOGON_COOKIE in b.cookies and (await b.api("hello", {"state": "h"})).code == 200


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_end_session_takes_a_raw_sub_id_token_of_the_signed_in_user(http_client, base_url,
                                                                          core):
    """The token endpoint's ID token (raw `sub` before this review too) as hint."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none",
                                       scope="openid konnect/raw_sub", **TRUSTED))
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": query_of(resp.headers["Location"])["code"],
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    hint = tokens["id_token"]
    assert core.keyring.verify(hint)[1]["sub"] == "u-alice"
    end = await b.fetch(END + "?" + urlencode({
        "id_token_hint": hint, "state": "s", "post_logout_redirect_uri": TRUSTED["redirect_uri"]}))
    assert end.code == 302 and end.headers["Location"] == TRUSTED["redirect_uri"] + "?state=s"
    assert LOGON_COOKIE not in b.cookies


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_end_session_does_not_redirect_to_a_dynamic_client_without_its_hint(
        http_client, base_url, core):
    b = Browser(http_client, base_url)  # nobody signed in
    client = await register(b, post_logout_redirect_uris=["https://evil.example.test/phish"])
    params = {"client_id": client["client_id"], "state": "x",
              "post_logout_redirect_uri": "https://evil.example.test/phish"}
    resp = await b.fetch(END + "?" + urlencode(params))
    assert resp.code == 302 and resp.headers["Location"] == "/signin/v1/goodbye?done=1"
    # an ID token of another client does not vouch for this one
    other = core.tokens.id_token(client_id="web-rp", identity=await core.users.lookup("u-alice"))
    resp = await b.fetch(END + "?" + urlencode({**params, "id_token_hint": other}))
    assert resp.code == 400 and b"does not match" in resp.body
    # with an ID token of that client: back to its registered URI
    own = core.tokens.id_token(client_id=client["client_id"],
                               identity=await core.users.lookup("u-alice"))
    resp = await b.fetch(END + "?" + urlencode({**params, "id_token_hint": own}))
    assert resp.code == 302
    assert resp.headers["Location"] == "https://evil.example.test/phish?state=x"


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_end_session_still_redirects_for_a_static_client_with_nobody_signed_in(
        http_client, base_url):
    b = Browser(http_client, base_url)
    resp = await b.fetch(END + "?" + urlencode({
        "client_id": "web-rp", "state": "y", "post_logout_redirect_uri": WEB_RP["redirect_uri"]}))
    assert resp.code == 302 and resp.headers["Location"] == WEB_RP["redirect_uri"] + "?state=y"


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_a_confirmation_token_does_not_sign_out_another_user(http_client, base_url):
    alice = await signed_in(http_client, base_url)
    page = await alice.fetch(END + "?" + urlencode({
        "client_id": "web-rp", "state": "a", "post_logout_redirect_uri": WEB_RP["redirect_uri"]}))
    assert page.code == 200
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": ISSUER}
    bob = await signed_in(http_client, base_url, "bob", "builder")
    resp = await bob.fetch(END, method="POST", body=urlencode({"confirm": confirm}), headers=form)
    assert resp.code == 400 and b"another sign-in" in resp.body
    assert LOGON_COOKIE in bob.cookies and (await bob.api("hello", {"state": "h"})).code == 200
    # the user it was shown to: signed out and sent back
    resp = await alice.fetch(END, method="POST", body=urlencode({"confirm": confirm}), headers=form)
    assert resp.code == 302 and resp.headers["Location"] == WEB_RP["redirect_uri"] + "?state=a"
    assert LOGON_COOKIE not in alice.cookies


@pytest.mark.gen_test
async def test_access_token_as_id_token_hint_is_refused_at_end_session(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    tokens = query_of((await b.fetch(authorize_url(response_type="id_token token",
                                                   **TRUSTED))).headers["Location"])
    resp = await b.fetch("/signin/v1/identifier/_/endsession?" + urlencode({
        "id_token_hint": tokens["access_token"],
        "post_logout_redirect_uri": "https://trusted.example.test/cb"}))
    assert resp.code == 400 and "Location" not in resp.headers
    assert "__Host-KKT" in b.cookies


# An unregistered post_logout_redirect_uri: as Konnect (its identity/managers/identifier.go
# `EndSession` treats the request as from an unknown client and sends the browser to the
# goodbye page), never an error page and never a redirect to that URI.

UNREGISTERED = ("https://evil.example/", "https://trusted.example.test/cb/x",
                "https://trusted.example.test/cb?x=1")


async def id_token_of_trusted_client(b: Browser) -> str:
    resp = await b.fetch(authorize_url(response_type="id_token", **TRUSTED))
    return query_of(resp.headers["Location"])["id_token"]


@pytest.mark.gen_test
@pytest.mark.parametrize("uri", UNREGISTERED)
async def test_signed_in_user_with_an_unregistered_uri_gets_the_sign_out_confirmation(
        http_client, base_url, uri):
    """Even a trusted client with a valid hint, which is otherwise signed out at once and
    sent back: the URI is not its own, so the user confirms and stays on the OP."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    hint = await id_token_of_trusted_client(b)
    page = await b.fetch(end_url(id_token_hint=hint, state="s", post_logout_redirect_uri=uri))
    assert page.code == 200 and "Location" not in page.headers
    assert b'id="endsession"' in page.body
    assert uri.encode() not in page.body and b"Trusted RP" not in page.body
    assert "__Host-KKT" in b.cookies  # nothing happened yet
    assert uri.split("/")[2] not in page.headers["Content-Security-Policy"]
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    done = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                         headers={"Origin": ISSUER,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert done.code == 302 and done.headers["Location"] == "/signin/v1/goodbye?done=1"
    assert "__Host-KKT" not in b.cookies


@pytest.mark.gen_test
@pytest.mark.parametrize("params", [
    {"post_logout_redirect_uri": "https://trusted.example.test/cb"},            # no client
    {"post_logout_redirect_uri": "https://evil.example/", "client_id": "web-rp"},
    {"post_logout_redirect_uri": "https://evil.example/", "client_id": "nobody"},
])
async def test_nobody_signed_in_with_an_unregistered_uri_gets_the_signed_out_page(
        http_client, base_url, params):
    b = Browser(http_client, base_url)
    resp = await b.fetch(end_url(state="s", **params))
    assert resp.code == 302 and resp.headers["Location"] == "/signin/v1/goodbye?done=1"
    page = await b.fetch(resp.headers["Location"])
    assert page.code == 200 and b'role="status"' in page.body


@pytest.mark.gen_test
async def test_a_registered_uri_still_returns(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    hint = await id_token_of_trusted_client(b)
    resp = await b.fetch(end_url(id_token_hint=hint, state="s",
                                 post_logout_redirect_uri="https://trusted.example.test/cb"))
    assert resp.code == 302 and resp.headers["Location"] == "https://trusted.example.test/cb?state=s"
