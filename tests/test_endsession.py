"""End session (RP-Initiated Logout 1.0) and the choose-account hand-off, with the four
services on one origin, real Redis and the users-file backend (fixtures of test_flow)."""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import urlencode

import pytest

from shared.identity import Identity
from tests.test_flow import (Browser, app, authorize_url, core, query_of, sign_in,  # noqa: F401
                             state)

END = "/signin/v1/identifier/_/endsession"
TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}


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
    assert cleared(resp, "__Secure-KKT") and cleared(resp, "__Secure-KKBS")
    assert "__Secure-KKT" not in b.cookies
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
    assert "__Secure-KKT" in b.cookies and not cleared(page, "__Secure-KKT")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    assert b'href="https://rp.example.test/cb"' in page.body  # "stay signed in"
    resp = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                         headers={"Origin": base_url,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.code == 302 and resp.headers["Location"] == "https://rp.example.test/cb?state=s2"
    assert "__Secure-KKT" not in b.cookies
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
    assert foreign.code == 400 and "__Secure-KKT" in b.cookies
    forged = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm[:-3] + "AAA"}),
                           headers={**form, "Origin": base_url})
    assert forged.code == 400 and "__Secure-KKT" in b.cookies
    done = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                         headers={**form, "Origin": base_url})
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
    assert "__Secure-KKT" in b.cookies, why


@pytest.mark.gen_test
async def test_hint_for_another_user_is_refused(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    bob = Identity(raw_sub="bob", backend="identifier-users", username="bob")
    hint = core.tokens.id_token(client_id="trusted-rp", identity=bob, nonce="n")
    resp = await b.fetch(end_url(id_token_hint=hint,
                                 post_logout_redirect_uri="https://trusted.example.test/cb"))
    assert resp.code == 400 and "__Secure-KKT" in b.cookies


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


def _alice(core):
    from tests.support.op import ALICE
    return dataclasses.replace(ALICE, raw_sub="u-alice", uuid="u-alice")


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
                             headers={"Origin": base_url,
                                      "Content-Type": "application/x-www-form-urlencoded"})
    finally:
        core.settings = original
    assert done.code == 302 and done.headers["Location"] == "https://intranet.example/bye"
