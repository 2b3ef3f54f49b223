"""Refresh tokens (RFC 6749 §6): rotated on every use, reuse revokes the family (RFC 9700
§4.14.2), bound to the client, scope may narrow, never widen; races with concurrent
refreshes and revocations."""

from __future__ import annotations

import asyncio
import json
import math
import time
from urllib.parse import urlencode

import pytest

from tests.support.browser import (
    TRUSTED,
    authorize_url,
    code_for,
    post_form,
    query_of,
    signed_in,
    token_request,
    userinfo,
    userinfo_status,
)
from tests.support.clients import (
    EXTRA_CLIENTS,
    JWT_CLIENT,
    ODD_ORIGIN_REGISTRY,
)
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic, code_form, introspect, post, redeem, token
from tests.support.op import (
    REGISTRY,
    SECRET,
    mint_code,
)
from tests.support.store import flush, leftovers
from tests.support.users import ALICE_ENTRY, BOB_ENTRY, TOKEN_ALICE

OTHER = ("trusted-rp", "other-secret")


def in_the_window(core, action):
    """Run `action` right after the first `rotate_refresh` round trip returns, before the
    grant goes on (where a put-back would come): the interleaving of two requests."""
    store = core.store
    real = store.rotate_refresh
    done, started = [], []

    async def rotate(*args, **kwargs):
        result = await real(*args, **kwargs)
        if not started:  # the first request only (the action may rotate too)
            started.append(True)
            done.append(await action())
        return result

    store.rotate_refresh = rotate
    return done


def refresh_form(rt, **extra):
    return {"grant_type": "refresh_token", "refresh_token": rt, **extra}


pytestmark = pytest.mark.op(registry=REGISTRY + JWT_CLIENT, users=(TOKEN_ALICE,), service="token", apps=("token",))


@pytest.mark.gen_test
async def test_refresh_rotates_and_reuse_revokes_the_family(http_client, base_url, core):
    code = await mint_code(core)
    _, first = await token(http_client, base_url, code_form(code))
    resp, second = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                       "refresh_token": first["refresh_token"]})
    assert resp.code == 200, second
    assert second["refresh_token"] != first["refresh_token"] and second["id_token"]
    assert (await introspect(http_client, base_url, second["access_token"]))["active"]
    reuse, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                     "refresh_token": first["refresh_token"]})
    assert reuse.code == 400 and err["error"] == "invalid_grant"
    for tok in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert (await introspect(http_client, base_url, tok)) == {"active": False}
    after, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                     "refresh_token": second["refresh_token"]})
    assert after.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_refresh_scope_may_narrow_but_not_widen(http_client, base_url, core):
    code = await mint_code(core, scopes=("openid", "profile", "offline_access"))
    _, first = await token(http_client, base_url, code_form(code))
    wide, err = await token(http_client, base_url, {"grant_type": "refresh_token", "scope": "openid email",
                                                    "refresh_token": first["refresh_token"]})
    assert wide.code == 400 and err["error"] == "invalid_scope"
    code = await mint_code(core, scopes=("openid", "profile", "offline_access"))
    _, first = await token(http_client, base_url, code_form(code))
    narrow, body = await token(http_client, base_url, {"grant_type": "refresh_token", "scope": "openid",
                                                       "refresh_token": first["refresh_token"]})
    assert narrow.code == 200 and body["scope"] == "openid"
    again, body2 = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                       "refresh_token": body["refresh_token"]})
    assert again.code == 200 and set(body2["scope"].split()) == {"openid", "profile", "offline_access"}


@pytest.mark.gen_test
async def test_refused_refresh_leaves_only_the_presented_token(http_client, base_url, core):
    """The one-round-trip rotation stores the successor before the scope check: a refusal
    removes it and puts the presented token back, so exactly that one stays usable."""
    await flush(core.store)
    code = await mint_code(core, scopes=("openid", "profile", "offline_access"))
    _, first = await token(http_client, base_url, code_form(code))
    _, before = await leftovers(core, code)
    wide, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                    "scope": "openid email",
                                                    "refresh_token": first["refresh_token"]})
    assert wide.code == 400 and err["error"] == "invalid_scope"
    _, after = await leftovers(core, code)
    assert after == before and len(after) == 1
    assert await core.store.peek_refresh(first["refresh_token"]) is not None


@pytest.mark.gen_test
async def test_no_refresh_token_without_offline_access(http_client, base_url, core):
    code = await mint_code(core, scopes=("openid",))
    _, body = await token(http_client, base_url, code_form(code))
    assert "refresh_token" not in body


@pytest.mark.gen_test
async def test_refresh_token_of_another_client_is_refused(http_client, base_url, core):
    code = await mint_code(core)
    _, body = await token(http_client, base_url, code_form(code))
    resp, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                    "refresh_token": body["refresh_token"]},
                            auth=("trusted-rp", "other-secret"))
    assert resp.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.gen_test
@pytest.mark.parametrize("refused", ["another client", "wider scope"])
async def test_refused_refresh_does_not_make_a_concurrent_rightful_refresh_look_like_reuse(
        http_client, base_url, core, refused):
    """RFC 6819 §5.2.2.3: only a real reuse revokes the family. The rightful client's refresh
    running while a refused request holds the token must succeed, and its tokens live."""
    _, first = await token(http_client, base_url, code_form(await mint_code(core)))
    rt = first["refresh_token"]
    done = in_the_window(core, lambda: token(http_client, base_url, refresh_form(rt)))
    if refused == "another client":
        resp, err = await token(http_client, base_url, refresh_form(rt), auth=OTHER)
        assert resp.code == 400 and err["error"] == "invalid_grant"
    else:
        resp, err = await token(http_client, base_url, refresh_form(rt, scope="openid phone"))
        assert resp.code == 400 and err["error"] == "invalid_scope"
    (rightful, body), = done
    assert rightful.code == 200, body
    assert (await introspect(http_client, base_url, body["access_token"]))["active"]
    again, _ = await token(http_client, base_url, refresh_form(body["refresh_token"]))
    assert again.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("refused", ["another client", "wider scope"])
async def test_revocation_during_a_refused_refresh_is_not_undone_by_the_put_back(
        http_client, base_url, core, refused):
    """RFC 7009 §2.1: once revoke answered 200, no token of that grant may work; a refused
    refresh in flight at that moment must not bring the refresh token back."""
    _, first = await token(http_client, base_url, code_form(await mint_code(core)))
    rt = first["refresh_token"]
    done = in_the_window(core, lambda: post(
        http_client, base_url, "/konnect/v1/revoke", {"token": rt},
        {"Authorization": basic("web-rp", SECRET)}))
    if refused == "another client":
        await token(http_client, base_url, refresh_form(rt), auth=OTHER)
    else:
        await token(http_client, base_url, refresh_form(rt, scope="openid phone"))
    (revoked, _), = done
    assert revoked.code == 200
    after, err = await token(http_client, base_url, refresh_form(rt))
    assert after.code == 400 and err["error"] == "invalid_grant"
    assert (await introspect(http_client, base_url, first["access_token"])) == {"active": False}


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_a_refresh_in_the_sign_outs_second_gives_a_working_access_token(
        http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    code = await code_for(b, "openid offline_access")
    tokens = json.loads((await token_request(b, {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    await asyncio.sleep(1.02 - time.time() % 1)  # early in a second: sign out and refresh in it
    assert (await b.api("logoff", {"state": "o"})).code == 200
    signed_out = math.floor(time.time())
    started = time.monotonic()
    resp = await token_request(b, {"grant_type": "refresh_token",
                                   "refresh_token": tokens["refresh_token"]})
    assert resp.code == 200  # offline_access outlives the browser sign-out (docs/operations.md)
    refreshed = json.loads(resp.body)
    _, claims = core.keyring.verify(refreshed["access_token"])
    assert claims["iat"] > signed_out and time.monotonic() - started < 2.5
    assert await userinfo_status(b, refreshed["access_token"]) == 200
    assert await userinfo_status(b, tokens["access_token"]) == 401  # the one from before: revoked


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_a_narrowed_refresh_narrows_the_claims(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    claims = {"userinfo": {"email": None, "name": None}, "id_token": {"email": None}}
    resp = await b.fetch(authorize_url(response_type="code", prompt="none",
                                       scope="openid email profile offline_access",
                                       claims=json.dumps(claims), **TRUSTED))
    code = query_of(resp.headers["Location"])["code"]
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    assert core.keyring.verify(tokens["id_token"])[1]["email"] == "alice@example.test"
    assert json.loads((await userinfo(b, tokens["access_token"])).body)["email"]
    resp = await post_form(b, "/konnect/v1/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "scope": "openid profile offline_access"})
    assert resp.code == 200, resp.body
    narrowed = json.loads(resp.body)
    assert narrowed["scope"] == "openid profile offline_access"
    _, access = core.keyring.verify(narrowed["access_token"])
    assert access["kc.authorizedClaims"] == {"userinfo": {"name": None}, "id_token": {}}
    assert "email" not in core.keyring.verify(narrowed["id_token"])[1]
    info = json.loads((await userinfo(b, narrowed["access_token"])).body)
    assert "email" not in info and "email_verified" not in info and info["name"]
    # the grant keeps what was authorized: a refresh without `scope` has it all again
    resp = await post_form(b, "/konnect/v1/token", {
        "grant_type": "refresh_token", "refresh_token": narrowed["refresh_token"]})
    again = json.loads(resp.body)
    assert json.loads((await userinfo(b, again["access_token"])).body)["email"]


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_a_trusted_clients_claims_request_survives_a_refresh(http_client, base_url, core):
    """The Konnect behaviour kept: a trusted client asking `email` through `claims` without
    the `email` scope gets it at userinfo, after a refresh too (nothing was narrowed)."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none",
                                       scope="openid offline_access",
                                       claims=json.dumps({"userinfo": {"email": None}}), **TRUSTED))
    code = query_of(resp.headers["Location"])["code"]
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    assert json.loads((await userinfo(b, tokens["access_token"])).body)["email"]
    refreshed = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "scope": "openid offline_access"})).body)
    assert json.loads((await userinfo(b, refreshed["access_token"])).body)["email"]


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
async def test_refresh_token_in_the_query_is_refused_and_stays_usable(http_client, base_url, core):
    _, issued = await redeem(http_client, base_url, core)
    auth = {"Authorization": basic("web-rp", SECRET)}
    rotate = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    for query, form in ((f"refresh_token={issued['refresh_token']}",
                         {"grant_type": "refresh_token"}),
                        ("scope=openid", rotate)):
        resp, body = await post(http_client, base_url, "/konnect/v1/token?" + query, form, auth)
        assert resp.code == 400 and body["error"] == "invalid_request", body
    ok, rotated = await post(http_client, base_url, "/konnect/v1/token", rotate, auth)
    assert ok.code == 200, rotated


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
async def test_malformed_refresh_request_does_not_spend_the_refresh_token(http_client, base_url,
                                                                          core):
    """A refused request is not a use: `scope` given twice (RFC 6749 §3.2) is refused before
    the token is taken, so the client's next request is not mistaken for reuse."""
    _, issued = await redeem(http_client, base_url, core)
    auth = {"Authorization": basic("web-rp", SECRET)}
    body = urlencode({"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]})
    resp, err = await post(http_client, base_url, "/konnect/v1/token",
                           body + "&scope=openid&scope=openid", auth)
    assert resp.code == 400 and err["error"] == "invalid_request"
    ok, rotated = await post(http_client, base_url, "/konnect/v1/token",
                             {"grant_type": "refresh_token",
                              "refresh_token": issued["refresh_token"]}, auth)
    assert ok.code == 200, rotated


@pytest.mark.gen_test
async def test_refresh_token_reuse_revokes_every_access_token_of_the_family(op_user):
    op, username, password = op_user
    identity = await op.identity(username, password)
    first = await op.tokens(identity)
    status, second = await op.refresh(first["refresh_token"])
    assert status == 200, second
    other = await op.tokens(identity)  # another grant of the same user and client
    for access in (first["access_token"], second["access_token"], other["access_token"]):
        assert await op.userinfo_status(access) == 200
    status, body = await op.refresh(first["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(first["access_token"]) == 401
    assert await op.userinfo_status(second["access_token"]) == 401
    status, body = await op.refresh(second["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(other["access_token"]) == 200  # only that family
