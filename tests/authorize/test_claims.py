"""The claims the authorization endpoint grants: `claims` requests for the signed-in user only,
narrowed to the consented scopes, the user's current claims, one `sub`."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.support.browser import (
    TRUSTED,
    WEB_RP,
    Browser,
    authorize_url,
    post_form,
    query_of,
    sign_in,
    signed_in,
    userinfo,
)
from tests.support.clients import ODD_ORIGIN_REGISTRY
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import basic
from tests.support.op import SECRET
from tests.support.users import ALICE_ENTRY, BOB_ENTRY, write_users


async def alice_sub(b: Browser, core) -> str:  # noqa: F811
    resp = await b.fetch(authorize_url(response_type="id_token", **TRUSTED))
    _, claims = core.keyring.verify(query_of(resp.headers["Location"])["id_token"])
    return claims["sub"]


async def consent(b: Browser, state: str, scope: str, **flow) -> None:
    body = {"state": state, "allow": True, "scope": scope, "client_id": "web-rp",
            "redirect_uri": "https://rp.example.test/cb", "ref": "xyz", "flow_nonce": "n-1"}
    body.update(flow)
    assert (await b.api("consent", body)).code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("member", ["id_token", "userinfo"])
async def test_sub_claim_request_for_another_user_with_prompt_none_is_login_required(
        http_client, base_url, member):
    b = Browser(http_client, base_url)
    await sign_in(b)
    claims = json.dumps({member: {"sub": {"value": "someone-else"}}})
    resp = await b.fetch(authorize_url(prompt="none", claims=claims, response_type="id_token token",
                                       **TRUSTED))
    result = query_of(resp.headers["Location"])
    assert result["error"] == "login_required" and "id_token" not in result
    assert "access_token" not in result and result["state"] == "xyz"


@pytest.mark.gen_test
async def test_sub_claim_request_for_another_user_asks_to_sign_in_again(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    claims = json.dumps({"id_token": {"sub": {"values": ["someone-else", "another"]}}})
    resp = await b.fetch(authorize_url(claims=claims, **TRUSTED))
    assert resp.code == 302 and resp.headers["Location"].startswith("/signin/v1/identifier?")


@pytest.mark.gen_test
@pytest.mark.parametrize("spec", [{"value": 1001}, {"values": "not-a-list"}, {"value": None}])
async def test_malformed_sub_claim_values_match_nobody(http_client, base_url, spec):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(prompt="none", claims=json.dumps({"id_token": {"sub": spec}}),
                                       **TRUSTED))
    assert query_of(resp.headers["Location"])["error"] == "login_required"


@pytest.mark.gen_test
async def test_sub_claim_request_for_the_signed_in_user_succeeds(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    sub = await alice_sub(b, core)
    claims = json.dumps({"id_token": {"sub": {"value": sub}},
                         "userinfo": {"sub": {"values": ["x", sub]}}})
    resp = await b.fetch(authorize_url(prompt="none", claims=claims, response_type="id_token",
                                       **TRUSTED))
    _, id_claims = core.keyring.verify(query_of(resp.headers["Location"])["id_token"])
    assert id_claims["sub"] == sub


@pytest.mark.gen_test
async def test_claims_request_is_narrowed_to_the_consented_scopes(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    claims = json.dumps({"userinfo": {"email": None, "name": None, "custom": {"value": "v"}},
                         "id_token": {"email": {"essential": True}, "auth_time": None}})
    start = authorize_url(scope="openid", claims=claims, **WEB_RP)
    assert (await b.fetch(start)).headers["Location"].startswith("/signin/v1/consent?")
    await consent(b, "n1", "openid")
    resp = await b.fetch(start + "&" + urlencode({"konnect": "n1", "prompt": "none"}))
    code = query_of(resp.headers["Location"])["code"]
    tok = await http_client.fetch(
        base_url + "/konnect/v1/token", method="POST", raise_error=False,
        headers={"Authorization": basic("web-rp", SECRET),
                 "Content-Type": "application/x-www-form-urlencoded"},
        body=urlencode({"grant_type": "authorization_code", "code": code,
                        "redirect_uri": "https://rp.example.test/cb"}))
    assert tok.code == 200, tok.body
    access = json.loads(tok.body)["access_token"]
    _, at_claims = core.keyring.verify(access)
    assert at_claims["kc.authorizedClaims"] == {"userinfo": {"custom": {"value": "v"}},
                                                "id_token": {"auth_time": None}}
    info = await http_client.fetch(base_url + "/konnect/v1/userinfo",
                                   headers={"Authorization": "Bearer " + access})
    body = json.loads(info.body)
    # the request stays on record, but a `value` is never echoed (tests/userinfo/test_claims.py)
    assert "email" not in body and "name" not in body and "custom" not in body


@pytest.mark.gen_test
async def test_claims_of_consented_scopes_are_kept(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    claims = json.dumps({"userinfo": {"email": None, "name": None}})
    start = authorize_url(scope="openid email", claims=claims, response_type="id_token token",
                          **WEB_RP)
    await b.fetch(start)
    await consent(b, "n2", "openid email")
    resp = await b.fetch(start + "&" + urlencode({"konnect": "n2", "prompt": "none"}))
    access = query_of(resp.headers["Location"])["access_token"]
    _, at_claims = core.keyring.verify(access)
    assert at_claims["kc.authorizedClaims"] == {"userinfo": {"email": None}}
    info = json.loads((await http_client.fetch(base_url + "/konnect/v1/userinfo", headers={
        "Authorization": "Bearer " + access})).body)
    assert info["email"] == "alice@example.test" and "name" not in info


@pytest.mark.gen_test
async def test_trusted_client_without_consent_keeps_its_claims_request(http_client, base_url, core):
    """Konnect (identity/managers/identifier.go): a trusted client gets requested claims
    without asking."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(scope="openid", response_type="id_token token",
                                       claims=json.dumps({"userinfo": {"email": None}}), **TRUSTED))
    _, at_claims = core.keyring.verify(query_of(resp.headers["Location"])["access_token"])
    assert at_claims["kc.authorizedClaims"] == {"userinfo": {"email": None}}


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_authorize_issues_the_users_current_claims(http_client, base_url, users_path, core):
    b = await signed_in(http_client, base_url)
    write_users(users_path, [dict(ALICE_ENTRY, name="Alice Renamed", email="new@example.test")])
    resp = await b.fetch(authorize_url(response_type="id_token", scope="openid profile email",
                                       prompt="none", **TRUSTED))
    _, claims = core.keyring.verify(query_of(resp.headers["Location"])["id_token"])
    assert claims["name"] == "Alice Renamed" and claims["email"] == "new@example.test"
    hello = json.loads((await b.api("hello", {"state": "h"})).body)
    assert hello["displayName"] == "Alice Renamed"


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("response_type", ["code id_token token", "code id_token"])
async def test_raw_sub_is_the_sub_of_every_id_token_and_of_userinfo(http_client, base_url, core,
                                                                     response_type):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type=response_type, prompt="none",
                                       scope="openid konnect/raw_sub", **TRUSTED))
    front = query_of(resp.headers["Location"])
    assert front["scope"] == "openid konnect/raw_sub"
    _, front_claims = core.keyring.verify(front["id_token"])
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": front["code"],
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    _, back_claims = core.keyring.verify(tokens["id_token"])
    info = json.loads((await userinfo(b, tokens["access_token"])).body)
    assert front_claims["sub"] == back_claims["sub"] == info["sub"] == "u-alice"
    if "access_token" in front:  # the implicit access token's userinfo: the same sub
        assert json.loads((await userinfo(b, front["access_token"])).body)["sub"] == "u-alice"
    _, access_claims = core.keyring.verify(tokens["access_token"])
    assert access_claims["sub"] == (await core.users.lookup("u-alice")).sub  # stays public


@pytest.mark.op(registry=ODD_ORIGIN_REGISTRY, users=(ALICE_ENTRY, BOB_ENTRY), args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
async def test_without_raw_sub_every_sub_is_the_public_one(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code id_token", prompt="none",
                                       scope="openid", **TRUSTED))
    front = query_of(resp.headers["Location"])
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": front["code"],
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    public = (await core.users.lookup("u-alice")).sub
    assert core.keyring.verify(front["id_token"])[1]["sub"] == public
    assert core.keyring.verify(tokens["id_token"])[1]["sub"] == public
    assert json.loads((await userinfo(b, tokens["access_token"])).body)["sub"] == public
