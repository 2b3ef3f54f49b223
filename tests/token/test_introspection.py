"""Introspection (RFC 7662): real client authentication, a client sees its own tokens unless it
is a registered trusted client."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.support.clients import EC_KEY, EXTRA_CLIENTS, JWT_CLIENT
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import (
    ASSERTION_TYPE,
    TRUSTED_AUTH,
    assertion,
    basic,
    code_form,
    introspect,
    introspect_as,
    redeem,
    redeem_with_assertion,
    token,
)
from tests.support.malformed import JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD
from tests.support.op import (
    ALICE,
    ISSUER,
    REGISTRY,
    SECRET,
    mint_code,
)
from tests.support.users import TOKEN_ALICE

pytestmark = pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))


@pytest.mark.op(registry=REGISTRY + JWT_CLIENT, users=(TOKEN_ALICE,), service="token", apps=("token",))
@pytest.mark.gen_test
async def test_introspection_shows_own_tokens_only_unless_trusted(http_client, base_url, core):
    code = await mint_code(core)
    _, body = await token(http_client, base_url, code_form(code))
    info = await introspect(http_client, base_url, body["access_token"])
    assert info["active"] and info["client_id"] == "web-rp" and info["sub"] == ALICE.sub
    assert info["username"] == "alice" and info["token_type"] == "Bearer"
    rt = await introspect(http_client, base_url, body["refresh_token"])
    assert rt["active"] and rt["token_type"] == "refresh_token"
    untrusted_other = await introspect(http_client, base_url, body["access_token"],
                                       auth=("rs256-rp", "rs"))
    assert untrusted_other == {"active": False}
    trusted = await introspect(http_client, base_url, body["access_token"],
                               auth=("trusted-rp", "other-secret"))
    assert trusted["active"]


@pytest.mark.gen_test
@pytest.mark.parametrize("form,headers", [
    # an unregistered id with a redirect_uri on the issuer's origin (Konnect's implicit trust)
    ({"client_id": "anyone", "redirect_uri": ISSUER + "/cb"}, None),
    ({"client_id": "anyone", "client_secret": "guess", "redirect_uri": ISSUER + "/cb"}, None),
    ({"redirect_uri": ISSUER + "/cb"}, {"Authorization": basic("anyone", "guess")}),
    # a registered public client (no secret): method `none`
    ({"client_id": "public-app"}, None),
    ({}, {"Authorization": basic("public-app", "anything")}),
    # no credentials at all
    ({}, None),
], ids=["implicit-id", "implicit-post", "implicit-basic", "public-id", "public-basic", "none"])
async def test_introspection_refuses_public_implicit_and_anonymous_callers(
        http_client, base_url, core, form, headers):
    _, issued = await redeem(http_client, base_url, core)
    resp, body = await introspect_as(http_client, base_url, dict(form, token=issued["access_token"]),
                                  headers)
    assert resp.code == 401 and body["error"] == "invalid_client", body
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert "active" not in body


@pytest.mark.gen_test
async def test_only_an_authenticated_registered_trusted_client_sees_other_clients_tokens(
        http_client, base_url, core):
    _, issued = await redeem(http_client, base_url, core)
    token = issued["access_token"]
    # the owner, with either secret method
    for form, headers in (({}, {"Authorization": basic("web-rp", SECRET)}),
                          ({"client_id": "web-rp", "client_secret": SECRET}, None)):
        resp, body = await introspect_as(http_client, base_url, dict(form, token=token), headers)
        assert resp.code == 200 and body["active"] and body["client_id"] == "web-rp"
    # another, untrusted client: inactive, whatever the token is
    _, other = await introspect_as(http_client, base_url, {"token": token},
                                {"Authorization": basic("rs256-rp", "rs")})
    assert other == {"active": False}
    # a registered trusted client with its secret
    resp, trusted = await introspect_as(http_client, base_url, {"token": token},
                                     {"Authorization": basic("trusted-rp", "other-secret")})
    assert resp.code == 200 and trusted["active"] and trusted["client_id"] == "web-rp"
    # ... but not with a wrong one
    resp, _ = await introspect_as(http_client, base_url, {"token": token},
                               {"Authorization": basic("trusted-rp", "wrong")})
    assert resp.code == 401


@pytest.mark.gen_test
async def test_private_key_jwt_works_at_introspection_for_the_clients_own_token(
        http_client, base_url, core):
    resp, issued = await redeem_with_assertion(
        http_client, base_url, core, "jwt-ec", "https://jwt.example.test/cb",
        assertion(EC_KEY, "ES256", "c1", "jwt-ec"))
    assert resp.code == 200, issued
    resp, body = await introspect_as(http_client, base_url, {
        "token": issued["access_token"], "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(EC_KEY, "ES256", "c1", "jwt-ec")})
    assert resp.code == 200 and body["active"] and body["client_id"] == "jwt-ec"


@pytest.mark.gen_test
async def test_discovery_does_not_offer_none_for_introspection(http_client, base_url):
    doc = json.loads((await http_client.fetch(base_url + "/.well-known/openid-configuration")).body)
    assert doc["introspection_endpoint_auth_methods_supported"] == [
        "client_secret_basic", "client_secret_post", "private_key_jwt"]
    assert "none" in doc["revocation_endpoint_auth_methods_supported"]
    assert "none" in doc["token_endpoint_auth_methods_supported"]
    # unsigned request objects are accepted (OIDC Core §6.1): `none` listed there only
    assert doc["request_object_signing_alg_values_supported"][0] == "none"
    # RFC 8414 §2: private_key_jwt is offered there, so its algorithms are listed, never none
    for endpoint in ("token", "revocation", "introspection"):
        algs = doc[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert "RS256" in algs and "none" not in algs


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("token", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
async def test_introspecting_or_revoking_a_deep_token_is_no_500(http_client, base_url, token):
    for endpoint in ("introspect", "revoke"):
        resp = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method="POST",
                                       raise_error=False, body=urlencode({"token": token}),
                                       headers={"Authorization": TRUSTED_AUTH,
                                                "Content-Type": "application/x-www-form-urlencoded"})
        assert resp.code == 200, (endpoint, resp.body)
