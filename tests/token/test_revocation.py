"""Revocation (RFC 7009) and what every service refuses at once after it: revoked tokens,
families, replayed codes, sign-outs, within the clock skew."""

from __future__ import annotations

import json
from http.cookies import SimpleCookie

import pytest

from shared import jose
from shared.session import LOGON_COOKIE
from shared.store import tag_of
from tests.support.clients import EXTRA_CLIENTS, JWT_CLIENT
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic, code_form, introspect, post, redeem, token
from tests.support.op import (
    ISSUER,
    REGISTRY,
    SECRET,
    mint_code,
    pkce_pair,
)
from tests.support.services import OP
from tests.support.users import TOKEN_ALICE


async def _logon_cookie(op: OP, username: str, password: str) -> str:
    resp, body = await op.fetch("identifier", "/signin/v1/identifier/_/logon", method="POST",
                                body=json.dumps({"state": "s1", "params": [username, password, "1"]}),
                                headers={"Content-Type": "application/json", "Origin": ISSUER,
                                         "Kopano-Konnect-XSRF": "1"})
    assert resp.code == 200, body
    jar = SimpleCookie()
    for header in resp.headers.get_list("Set-Cookie"):
        jar.load(header)
    return f"{LOGON_COOKIE}={jar[LOGON_COOKIE].value}"


def _remaining(redis_server, op: OP, kind: str, ident: str, sub: str) -> float:
    """How long a revocation entry of `sub`'s bucket is kept (`j:`/`f:` fields hold the
    time until which they revoke)."""
    client = redis_server.client()
    try:
        until = client.hget(op.token_core.store.bucket(tag_of(sub)), f"{kind[0]}:{ident}")
        return int(until) - op.clock()
    finally:
        client.close()


pytestmark = pytest.mark.op(registry=REGISTRY + JWT_CLIENT, users=(TOKEN_ALICE,), service="token", apps=("token",))


@pytest.mark.gen_test
async def test_revoking_a_refresh_token_revokes_the_family(http_client, base_url, core):
    code = await mint_code(core)
    _, body = await token(http_client, base_url, code_form(code))
    resp, _ = await post(http_client, base_url, "/konnect/v1/revoke",
                         {"token": body["refresh_token"], "token_type_hint": "refresh_token"},
                         {"Authorization": basic("web-rp", SECRET)})
    assert resp.code == 200
    assert (await introspect(http_client, base_url, body["access_token"])) == {"active": False}
    again, err = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                     "refresh_token": body["refresh_token"]})
    assert again.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_revoking_an_access_token_and_unknown_tokens(http_client, base_url, core):
    code = await mint_code(core, scopes=("openid",))
    _, body = await token(http_client, base_url, code_form(code))
    other, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": body["access_token"]},
                          {"Authorization": basic("trusted-rp", "other-secret")})
    assert other.code == 200
    assert (await introspect(http_client, base_url, body["access_token"]))["active"] is True
    mine, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": body["access_token"]},
                         {"Authorization": basic("web-rp", SECRET)})
    assert mine.code == 200
    assert (await introspect(http_client, base_url, body["access_token"])) == {"active": False}
    unknown, _ = await post(http_client, base_url, "/konnect/v1/revoke", {"token": "nonsense"},
                            {"Authorization": basic("web-rp", SECRET)})
    assert unknown.code == 200
    noauth, err = await post(http_client, base_url, "/konnect/v1/revoke", {"token": "x"})
    assert noauth.code == 401 and err["error"] == "invalid_client"


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
async def test_revocation_still_works_for_a_public_client_on_its_own_tokens(
        http_client, base_url, core):
    """RFC 7009 §2.1: a public client identifies itself with its client_id only."""
    verifier, challenge = pkce_pair()
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1/cb",
                           challenge=challenge)
    resp, issued = await post(http_client, base_url, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1/cb",
        "client_id": "public-app", "code_verifier": verifier})
    assert resp.code == 200 and issued["refresh_token"], issued
    resp, _ = await post(http_client, base_url, "/konnect/v1/revoke",
                         {"token": issued["refresh_token"], "client_id": "public-app"})
    assert resp.code == 200
    assert await core.store.peek_refresh(issued["refresh_token"]) is None
    again, err = await post(http_client, base_url, "/konnect/v1/token", {
        "grant_type": "refresh_token", "refresh_token": issued["refresh_token"],
        "client_id": "public-app"})
    assert again.code == 400 and err["error"] == "invalid_grant"


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
async def test_revoking_a_spent_refresh_token_ends_its_family(http_client, base_url, core):
    """RFC 7009 §2.2: after the 200 nothing of the grant works, also when the token shown
    was already rotated (or is held by a grant that may still put it back)."""
    uri = "https://rp.example.test/cb"
    auth = {"Authorization": basic("web-rp", SECRET)}
    resp, issued = await redeem(http_client, base_url, core, "web-rp", SECRET, uri)
    assert resp.code == 200
    resp, rotated = await post(http_client, base_url, "/konnect/v1/token",
                               {"grant_type": "refresh_token",
                                "refresh_token": issued["refresh_token"]}, auth)
    assert resp.code == 200
    resp, _ = await post(http_client, base_url, "/konnect/v1/revoke",
                         {"token": issued["refresh_token"]}, auth)
    assert resp.code == 200
    resp, err = await post(http_client, base_url, "/konnect/v1/token",
                           {"grant_type": "refresh_token",
                            "refresh_token": rotated["refresh_token"]}, auth)
    assert resp.code == 400 and err["error"] == "invalid_grant", err


@pytest.mark.gen_test
async def test_replayed_code_is_invalid_grant_and_userinfo_refuses_its_tokens(op_user):
    op, username, password = op_user
    code = await op.code(await op.identity(username, password))
    status, first = await op.redeem(code)
    assert status == 200, first
    assert await op.userinfo_status(first["access_token"]) == 200
    status, body = await op.redeem(code)
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(first["access_token"]) == 401
    status, body = await op.refresh(first["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_revoked_access_token_is_refused_by_userinfo_at_once(op_user):
    op, username, password = op_user
    identity = await op.identity(username, password)
    tokens, other = await op.tokens(identity), await op.tokens(identity)
    assert await op.userinfo_status(tokens["access_token"]) == 200
    await op.revoke(tokens["access_token"], "access_token")
    assert await op.userinfo_status(tokens["access_token"]) == 401
    assert await op.userinfo_status(other["access_token"]) == 200


@pytest.mark.gen_test
async def test_revoking_a_refresh_token_revokes_its_family_access_tokens(op_user):
    op, username, password = op_user
    identity = await op.identity(username, password)
    first = await op.tokens(identity)
    status, second = await op.refresh(first["refresh_token"])
    assert status == 200, second
    other = await op.tokens(identity)
    await op.revoke(second["refresh_token"])  # RFC 7009 §2.1: the grant's access tokens too
    assert await op.userinfo_status(first["access_token"]) == 401
    assert await op.userinfo_status(second["access_token"]) == 401
    status, body = await op.refresh(second["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    assert await op.userinfo_status(other["access_token"]) == 200


@pytest.mark.gen_test
async def test_logoff_makes_userinfo_refuse_access_tokens_issued_before(op_user):
    op, username, password = op_user
    cookie = await _logon_cookie(op, username, password)
    identity = await op.identity(username, password)
    before = await op.tokens(identity)
    assert await op.userinfo_status(before["access_token"]) == 200
    resp, body = await op.fetch("identifier", "/signin/v1/identifier/_/logoff", method="POST",
                                body=json.dumps({"state": "o1"}),
                                headers={"Content-Type": "application/json", "Cookie": cookie,
                                         "Origin": ISSUER,
                                         "Kopano-Konnect-XSRF": "1"})
    assert resp.code == 200 and body["success"] is True
    assert await op.userinfo_status(before["access_token"]) == 401
    # a later sign-in works again; the offline_access grant survives a browser sign-out
    op.clock.offset = 2
    after = await op.tokens(identity, auth_time=int(op.token_core.now()))  # signed in again
    assert await op.userinfo_status(after["access_token"]) == 200
    status, refreshed = await op.refresh(before["refresh_token"])
    assert status == 200, refreshed
    assert await op.userinfo_status(refreshed["access_token"]) == 200
    assert await op.userinfo_status(before["access_token"]) == 401


@pytest.mark.gen_test
async def test_revoked_access_token_stays_refused_within_the_clock_skew(users_op):
    op = users_op
    tokens = await op.tokens(await op.identity("alice", "wonderland"))
    settings = op.token_core.settings
    # past exp, but inside the tolerated skew: userinfo still accepts the token ...
    op.clock.offset = settings.access_token_expiration + settings.clock_skew // 2
    assert await op.userinfo_status(tokens["access_token"]) == 200
    # ... so revoking it must take effect too
    await op.revoke(tokens["access_token"])
    assert await op.userinfo_status(tokens["access_token"]) == 401


@pytest.mark.gen_test
async def test_replayed_code_revocation_outlives_the_access_token_and_skew(users_op, redis_server):
    op = users_op
    code = await op.code(await op.identity("alice", "wonderland"), ("openid", "profile"))
    status, first = await op.redeem(code)
    assert status == 200 and "refresh_token" not in first
    assert (await op.redeem(code))[0] == 400
    claims = jose.unverified_claims(first["access_token"])
    accepted_until = claims["exp"] + op.token_core.settings.clock_skew
    for kind, ident in (("jti", claims["jti"]), ("family", claims["kc.family"])):
        assert _remaining(redis_server, op, kind, ident, claims["sub"]) >= \
            accepted_until - op.clock() - 1


@pytest.mark.gen_test
async def test_refresh_token_revoked_late_in_its_life_still_covers_its_access_tokens(
        users_op, redis_server):
    op = users_op
    first = await op.tokens(await op.identity("alice", "wonderland"))
    # ten seconds before the grant's refresh lifetime ends
    op.clock.offset = op.token_core.settings.refresh_token_expiration - 10
    status, second = await op.refresh(first["refresh_token"])
    assert status == 200, second
    await op.revoke(second["refresh_token"], "refresh_token")
    assert await op.userinfo_status(second["access_token"]) == 401
    claims = jose.unverified_claims(second["access_token"])
    accepted_until = claims["exp"] + op.token_core.settings.clock_skew
    assert _remaining(redis_server, op, "family", claims["kc.family"], claims["sub"]) >= \
        accepted_until - op.clock() - 1
