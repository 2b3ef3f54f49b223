"""The authorization code grant (RFC 6749 §4.1.3): single use, bound to client and redirect
URI, PKCE, replay revokes what was issued, one Redis round trip."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import pytest

from shared import jose
from shared.grants import Grant
from shared.identity import Identity
from tests.support.browser import (
    TRUSTED,
    authorize_url,
    code_for,
    query_of,
    sign_in,
    signed_in,
    token_request,
    userinfo_status,
)
from tests.support.clients import EXTRA_CLIENTS, JWT_CLIENT
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic, code_form, introspect, post, token
from tests.support.op import (
    ALICE,
    ISSUER,
    REGISTRY,
    SECRET,
    mint_code,
    pkce_pair,
)
from tests.support.store import flush, leftovers, redemption_marker
from tests.support.users import TOKEN_ALICE


class Calls:
    """The Store operations a request makes (each `_call` is one Redis round trip)."""

    def __init__(self, store):
        self.ops: list = []
        original = store._call

        async def counted(op, fn):
            self.ops.append(op)
            return await original(op, fn)
        store._call = counted


pytestmark = pytest.mark.op(registry=REGISTRY + JWT_CLIENT, users=(TOKEN_ALICE,), service="token", apps=("token",))


@pytest.mark.gen_test
async def test_code_grant_with_basic_auth_returns_verifiable_tokens(http_client, base_url, core):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 200, body
    assert resp.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert set(body["scope"].split()) == {"openid", "profile", "email", "offline_access"}
    jwks = json.loads((await http_client.fetch(base_url + "/konnect/v1/jwks.json")).body)
    from shared.keys import client_key
    keys = {k["kid"]: client_key(k) for k in jwks["keys"]}
    header, claims = jose.verify_with_keys(body["id_token"], keys)
    assert header["alg"] == "RS256"  # default for clients that registered no alg
    assert claims["aud"] == "web-rp" and claims["iss"] == ISSUER and claims["sub"] == ALICE.sub
    assert claims["nonce"] == "n-0S6" and claims["at_hash"] == jose.left_hash(body["access_token"], "RS256")
    _, access = jose.verify_with_keys(body["access_token"], keys)
    assert access["kc.isAccessToken"] and access["kc.identity"]["kc.i.un"] == "alice"
    assert body["refresh_token"] and "." not in body["refresh_token"]


@pytest.mark.gen_test
async def test_registered_alg_is_used_for_the_id_token(http_client, base_url, core):
    code = await mint_code(core, client_id="rs256-rp", redirect_uri="https://rs.example.test/cb")
    resp, body = await token(http_client, base_url,
                             code_form(code, redirect_uri="https://rs.example.test/cb"),
                             auth=("rs256-rp", "rs"))
    assert resp.code == 200, body
    assert jose.unverified_header(body["id_token"])["alg"] == "PS256"


@pytest.mark.gen_test
async def test_reused_code_is_invalid_grant_and_revokes_tokens(http_client, base_url, core):
    code = await mint_code(core)
    first, body = await token(http_client, base_url, code_form(code))
    assert first.code == 200
    assert (await introspect(http_client, base_url, body["access_token"]))["active"] is True
    second, err = await token(http_client, base_url, code_form(code))
    assert second.code == 400 and err["error"] == "invalid_grant"
    assert (await introspect(http_client, base_url, body["access_token"])) == {"active": False}
    refreshed, rerr = await token(http_client, base_url, {"grant_type": "refresh_token",
                                                          "refresh_token": body["refresh_token"]})
    assert refreshed.code == 400 and rerr["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_concurrent_redemptions_of_one_code_succeed_once(http_client, base_url, core):
    code = await mint_code(core)
    results = await asyncio.gather(*[token(http_client, base_url, code_form(code)) for _ in range(6)])
    assert sorted(r.code for r, _ in results) == [200] + [400] * 5


@pytest.mark.gen_test
@pytest.mark.parametrize("form,why", [
    ({"redirect_uri": "https://rp.example.test/cb/"}, "redirect"),
    ({"redirect_uri": None}, "redirect"),
    ({"code": "not-a-code"}, "unknown"),
])
async def test_code_grant_refusals(http_client, base_url, core, form, why):
    code = await mint_code(core)
    fields = {k: v for k, v in {**code_form(code), **form}.items() if v is not None}
    resp, body = await token(http_client, base_url, fields)
    assert resp.code == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_code_of_another_client_is_refused(http_client, base_url, core):
    code = await mint_code(core, client_id="trusted-rp", redirect_uri="https://rp.example.test/cb")
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_pkce_rules(http_client, base_url, core):
    verifier, challenge = pkce_pair()
    public = {"client_id": "public-app", "redirect_uri": "http://127.0.0.1:5555/cb"}
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb",
                           challenge=challenge)
    wrong, body = await token(http_client, base_url, dict(code_form(code, **public),
                                                          code_verifier=pkce_pair()[0]), auth=None)
    assert wrong.code == 400 and body["error"] == "invalid_grant"
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb",
                           challenge=challenge)
    ok, body = await token(http_client, base_url, dict(code_form(code, **public),
                                                       code_verifier=verifier), auth=None)
    assert ok.code == 200, body
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb")
    nopkce, body = await token(http_client, base_url, code_form(code, **public), auth=None)
    assert nopkce.code == 400 and body["error"] == "invalid_grant"
    code = await mint_code(core)
    stray, body = await token(http_client, base_url, code_form(code, code_verifier=verifier))
    assert stray.code == 400 and body["error"] == "invalid_grant"
    code = await mint_code(core, challenge=challenge)
    missing, body = await token(http_client, base_url, code_form(code))
    assert missing.code == 400 and body["error"] == "invalid_grant"


@pytest.mark.gen_test
async def test_redemption_refused_after_the_one_round_trip_leaves_no_tokens(http_client,
                                                                            base_url, core):
    """A public client's code without PKCE matches in Redis (one round trip writes the
    marker and the refresh record) but is refused by the PKCE rule: both are removed."""
    await flush(core.store)
    code = await mint_code(core, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb")
    resp, body = await token(http_client, base_url, code_form(
        code, client_id="public-app", redirect_uri="http://127.0.0.1:5555/cb"), auth=None)
    assert resp.code == 400 and body["error"] == "invalid_grant"
    assert await leftovers(core, code) == (None, [])


@pytest.mark.gen_test
async def test_user_gone_at_redemption_is_invalid_grant_and_leaves_no_tokens(http_client,
                                                                            base_url, core):
    await flush(core.store)
    ghost = Identity(raw_sub="ghost-uuid", backend=ALICE.backend, username="ghost")
    code = await mint_code(core, identity=ghost)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 400 and body["error"] == "invalid_grant"
    assert await leftovers(core, code) == (None, [])


@pytest.mark.gen_test
async def test_code_record_without_created_time_is_no_grant(http_client, base_url, core):
    """Every code carries the time its grant began (`created`, the refresh family's start);
    a record without one (none is written since the token service exists) is refused like
    an unknown code, and spent."""
    record = Grant(client_id="web-rp", identity=ALICE, scopes=["openid", "offline_access"],
                   redirect_uri="https://rp.example.test/cb").to_record()
    code = await core.store.put_code(record, 60)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 400 and body["error"] == "invalid_grant"
    assert await leftovers(core, code) == (None, [])
    again, _ = await token(http_client, base_url, code_form(code))
    assert again.code == 400


@pytest.mark.gen_test
async def test_one_round_trip_redemption_records_what_it_issued(http_client, base_url, core):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url, code_form(code))
    assert resp.code == 200
    marker, _ = await leftovers(core, code)
    claims = jose.unverified_claims(body["access_token"])
    assert marker == {"family": claims["kc.family"], "jti": claims["jti"],
                      "exp": marker["exp"], "sub": claims["sub"]}
    assert marker["exp"] >= claims["iat"] + core.settings.refresh_token_expiration
    assert (await core.store.peek_refresh(body["refresh_token"]))["family"] == claims["kc.family"]


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_a_code_issued_before_a_sign_out_is_refused_after_it(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    code = await code_for(b, "openid profile offline_access")
    assert (await b.api("logoff", {"state": "o"})).code == 200
    resp = await token_request(b, {"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": TRUSTED["redirect_uri"]})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_grant"
    assert await redemption_marker(core.store, code) is None  # what the script wrote is undone
    # a new sign-in (the next second, api.py) gives codes that work
    assert (await sign_in(b)).code == 200
    code = await code_for(b)
    resp = await token_request(b, {"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": TRUSTED["redirect_uri"]})
    assert resp.code == 200 and await userinfo_status(b, json.loads(resp.body)["access_token"]) == 200


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_the_grants_stay_one_round_trip_with_the_sign_out_check(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    verifier, challenge = pkce_pair()
    resp = await b.fetch(authorize_url(response_type="code", scope="openid offline_access",
                                       prompt="none", code_challenge=challenge,
                                       code_challenge_method="S256", **TRUSTED))
    code = query_of(resp.headers["Location"])["code"]
    calls = Calls(core.store)
    resp = await token_request(b, {"grant_type": "authorization_code", "code": code,
                                   "code_verifier": verifier,
                                   "redirect_uri": TRUSTED["redirect_uri"]})
    assert resp.code == 200 and calls.ops == ["redeem_code"]
    calls.ops.clear()
    resp = await token_request(b, {"grant_type": "refresh_token",
                                   "refresh_token": json.loads(resp.body)["refresh_token"]})
    assert resp.code == 200 and calls.ops == ["rotate_refresh"]


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
@pytest.mark.parametrize("in_query", ["client_secret", "client_id", "grant_type", "code",
                                      "redirect_uri", "code_verifier"])
async def test_token_parameters_in_the_query_are_invalid_request_and_spend_nothing(
        http_client, base_url, core, in_query):
    code = await mint_code(core)
    form = {"grant_type": "authorization_code", "code": code, "client_id": "web-rp",
            "client_secret": SECRET, "redirect_uri": "https://rp.example.test/cb",
            "code_verifier": "v" * 43}
    query = {in_query: form.pop(in_query)}
    if in_query != "code_verifier":
        del form["code_verifier"]  # no PKCE in this grant; only its presence in the URI matters
    resp, body = await post(http_client, base_url, "/konnect/v1/token?" + urlencode(query), form)
    assert resp.code == 400 and body["error"] == "invalid_request", body
    assert in_query in body["error_description"] and "body" in body["error_description"]
    # nothing was spent: the same code redeems from a well-formed request
    form = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": "https://rp.example.test/cb"}
    ok, issued = await post(http_client, base_url, "/konnect/v1/token", form,
                            {"Authorization": basic("web-rp", SECRET)})
    assert ok.code == 200, issued
