"""Hardening of the token service (and userinfo) after the adversarial review, over HTTP
against real Redis: introspection needs real client credentials (RFC 7662 §2.1), parameters
only in the body (RFC 6749 §2.3.1, §3.2), the registered assertion alg, `nbf` and `iat` of
client assertions (RFC 7523 §3), HEAD on the public documents (RFC 9110 §9.3.2), no form
token on a userinfo GET (RFC 6750 §2.2) and registered `grant_types` (RFC 6749 §5.2)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.token.app import make_app
from services.userinfo.app import make_app as userinfo_app
from shared import jose
from shared.deps import Core
from shared.grants import Grant
from shared.keys import SigningKey, public_jwk
from shared.users.passwords import hash_password
from tests.support.op import (ALICE, ISSUER, REGISTRY, SECRET, make_state, mint_code, pkce_pair,
                              settings_for)
from tests.test_registration import serving
from tests.test_token_service import basic, post

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EXTRA_CLIENTS = f"""
  - id: jwt-ec
    token_endpoint_auth_method: private_key_jwt
    redirect_uris: [https://jwt.example.test/cb]
    jwks:
      keys:
        - {json.dumps(dict(public_jwk(EC_KEY), kid="c1"))}
  - id: jwt-ps
    token_endpoint_auth_method: private_key_jwt
    token_endpoint_auth_signing_alg: PS256
    redirect_uris: [https://jwt-ps.example.test/cb]
    jwks:
      keys:
        - {json.dumps(dict(public_jwk(RSA_KEY), kid="r1"))}
  - id: code-only-rp
    secret: code-only
    grant_types: [authorization_code]
    redirect_uris: [https://code-only.example.test/cb]
"""
DYN_WEB = {"redirect_uris": ["https://dyn.example.test/cb"], "client_name": "Dyn RP"}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    directory = tmp_path_factory.mktemp("token-hardening-state")
    state = make_state(directory, REGISTRY + EXTRA_CLIENTS)
    state["users"] = str(directory / "users.yaml")
    Path(state["users"]).write_text(yaml.safe_dump({"users": [{
        "username": ALICE.username, "password": hash_password("alice-password"),
        "name": ALICE.name, "email": ALICE.email, "email_verified": True,
        "id": ALICE.numeric_id, "uuid": ALICE.uuid}]}))
    return state


@pytest.fixture
def core(state, redis_url, io_loop):
    core = Core.with_users(settings_for("token", state, redis_url,
                                        ["--users-file", state["users"],
                                         "--allow-dynamic-client-registration"]))
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(core):
    return make_app(core.settings, core)


# -- helpers --------------------------------------------------------------------------------


async def redeem(http_client, base_url, core, client_id="web-rp", secret=SECRET,
                 redirect_uri="https://rp.example.test/cb", **extra):
    code = await mint_code(core, client_id=client_id, redirect_uri=redirect_uri)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return await post(http_client, base_url, "/konnect/v1/token", dict(form, **extra),
                      {"Authorization": basic(client_id, secret)})


async def introspect(http_client, base_url, form, headers=None):
    return await post(http_client, base_url, "/konnect/v1/introspect", form, headers)


def assertion(key, alg, kid, client_id, **claims):
    signer = SigningKey(kid=kid, public=key.public_key(), algs=frozenset({alg}), alg=alg,
                        private=key)
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": ISSUER + "/konnect/v1/token",
            "jti": f"jti-{time.monotonic_ns()}", "exp": now + 60, **claims}
    return jose.sign({k: v for k, v in body.items() if v is not None}, signer)


async def redeem_with_assertion(http_client, base_url, core, client_id, redirect_uri, value):
    code = await mint_code(core, client_id=client_id, redirect_uri=redirect_uri)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": value}
    return await post(http_client, base_url, "/konnect/v1/token", form)


async def register(http_client, base_url, metadata):
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                   body=json.dumps(metadata), raise_error=False,
                                   headers={"Content-Type": "application/json"})
    assert resp.code == 201, resp.body
    body = json.loads(resp.body)
    return body["client_id"], body["client_secret"]


def refresh_keys(redis_server) -> list:
    raw = redis_server.client()
    try:
        return raw.keys("konnect:rt:*")
    finally:
        raw.close()


# -- 1. introspection needs real client authentication (RFC 7662 §2.1, §4) -----------------


@pytest.mark.gen_test
@pytest.mark.parametrize("form,headers", [
    # an unregistered id with a redirect_uri on the issuer's origin (implicit trust, §5.4)
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
    resp, body = await introspect(http_client, base_url, dict(form, token=issued["access_token"]),
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
        resp, body = await introspect(http_client, base_url, dict(form, token=token), headers)
        assert resp.code == 200 and body["active"] and body["client_id"] == "web-rp"
    # another, untrusted client: inactive, whatever the token is
    _, other = await introspect(http_client, base_url, {"token": token},
                                {"Authorization": basic("rs256-rp", "rs")})
    assert other == {"active": False}
    # a registered trusted client with its secret
    resp, trusted = await introspect(http_client, base_url, {"token": token},
                                     {"Authorization": basic("trusted-rp", "other-secret")})
    assert resp.code == 200 and trusted["active"] and trusted["client_id"] == "web-rp"
    # ... but not with a wrong one
    resp, _ = await introspect(http_client, base_url, {"token": token},
                               {"Authorization": basic("trusted-rp", "wrong")})
    assert resp.code == 401


@pytest.mark.gen_test
async def test_private_key_jwt_works_at_introspection_for_the_clients_own_token(
        http_client, base_url, core):
    resp, issued = await redeem_with_assertion(
        http_client, base_url, core, "jwt-ec", "https://jwt.example.test/cb",
        assertion(EC_KEY, "ES256", "c1", "jwt-ec"))
    assert resp.code == 200, issued
    resp, body = await introspect(http_client, base_url, {
        "token": issued["access_token"], "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(EC_KEY, "ES256", "c1", "jwt-ec")})
    assert resp.code == 200 and body["active"] and body["client_id"] == "jwt-ec"


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


# -- 2. parameters in the body only (RFC 6749 §2.3.1, §3.2; RFC 7009 §2.1; RFC 7662 §2.1) --


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
@pytest.mark.parametrize("path,query", [
    ("/konnect/v1/revoke", "token"), ("/konnect/v1/revoke", "client_secret"),
    ("/konnect/v1/revoke", "token_type_hint"), ("/konnect/v1/introspect", "token"),
    ("/konnect/v1/introspect", "client_secret"), ("/konnect/v1/introspect", "client_id"),
])
async def test_revocation_and_introspection_parameters_in_the_query_are_refused(
        http_client, base_url, core, path, query):
    _, issued = await redeem(http_client, base_url, core)
    form = {"token": issued["access_token"], "token_type_hint": "access_token",
            "client_id": "web-rp", "client_secret": SECRET}
    moved = {query: form.pop(query)}
    resp, body = await post(http_client, base_url, f"{path}?{urlencode(moved)}", form)
    assert resp.code == 400 and body["error"] == "invalid_request", body
    assert query in body["error_description"]
    # the token was neither revoked nor looked at
    resp, info = await introspect(http_client, base_url, {"token": issued["access_token"]},
                                  {"Authorization": basic("web-rp", SECRET)})
    assert info["active"] is True


@pytest.mark.gen_test
async def test_query_parameters_the_endpoint_does_not_read_are_ignored(http_client, base_url, core):
    _, issued = await redeem(http_client, base_url, core)
    resp, info = await post(http_client, base_url, "/konnect/v1/introspect?utm_source=x",
                            {"token": issued["access_token"]},
                            {"Authorization": basic("web-rp", SECRET)})
    assert resp.code == 200 and info["active"] is True


# -- 3., 4. private_key_jwt: registered alg, nbf and iat (OIDC Registration §2, RFC 7523 §3) --


@pytest.mark.gen_test
async def test_private_key_jwt_must_use_the_registered_signing_alg(http_client, base_url, core):
    uri = "https://jwt-ps.example.test/cb"
    for alg in ("RS256", "PS384"):  # the key's family allows them, the registration does not
        resp, body = await redeem_with_assertion(http_client, base_url, core, "jwt-ps", uri,
                                                 assertion(RSA_KEY, alg, "r1", "jwt-ps"))
        assert resp.code == 401 and body["error"] == "invalid_client", (alg, body)
    ok, body = await redeem_with_assertion(http_client, base_url, core, "jwt-ps", uri,
                                           assertion(RSA_KEY, "PS256", "r1", "jwt-ps"))
    assert ok.code == 200, body


@pytest.mark.gen_test
@pytest.mark.parametrize("claims,accepted", [
    ({"nbf": "+120"}, False),            # not yet valid (RFC 7523 §3 item 5)
    ({"iat": "+120"}, False),            # issued in the future, beyond the clock skew
    ({"nbf": "soon"}, False),            # not a NumericDate
    ({"iat": "now"}, False),
    ({"nbf": "+10", "iat": "+10"}, True),  # within the tolerated skew
    ({"nbf": "-30", "iat": "-30"}, True),
])
async def test_client_assertion_nbf_and_iat_are_checked(http_client, base_url, core, claims,
                                                        accepted):
    now = int(time.time())
    values = {k: (now + int(v) if v[0] in "+-" else v) for k, v in claims.items()}
    resp, body = await redeem_with_assertion(http_client, base_url, core, "jwt-ec",
                                             "https://jwt.example.test/cb",
                                             assertion(EC_KEY, "ES256", "c1", "jwt-ec", **values))
    if accepted:
        assert resp.code == 200, body
    else:
        assert resp.code == 401 and body["error"] == "invalid_client", body


# -- 5. HEAD mirrors GET on discovery and JWKS (RFC 9110 §8.6, §9.3.2) ------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/konnect/v1/jwks.json"])
async def test_head_on_public_documents_has_gets_headers_without_the_body(http_client, base_url,
                                                                          path):
    get = await http_client.fetch(base_url + path)
    head = await http_client.fetch(base_url + path, method="HEAD")
    assert head.code == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == len(get.body) > 0
    for name in ("Etag", "Content-Type", "Cache-Control", "Access-Control-Allow-Origin"):
        assert head.headers[name] == get.headers[name], name
    cached = await http_client.fetch(base_url + path, method="HEAD", raise_error=False,
                                     headers={"If-None-Match": get.headers["Etag"]})
    assert cached.code == 304 and cached.body == b""


# -- 6. userinfo: a form-body token only with POST (RFC 6750 §2.2) -----------------------------


@pytest.mark.gen_test
async def test_userinfo_refuses_a_form_body_token_on_get(http_client, core, state, redis_url):
    ucore = Core.with_users(settings_for("userinfo", state, redis_url,
                                         ["--users-file", state["users"]]))
    try:
        access = ucore.tokens.access_token(client_id="web-rp", identity=ALICE,
                                           scopes=["openid", "profile"], family="fam")
        body = urlencode({"access_token": access.token})
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with serving(userinfo_app(ucore.settings, ucore)) as url:
            get = await http_client.fetch(url + "/konnect/v1/userinfo", method="GET", body=body,
                                          headers=form, allow_nonstandard_methods=True,
                                          raise_error=False)
            assert get.code == 400 and json.loads(get.body)["error"] == "invalid_request"
            assert b"alice" not in get.body
            posted = await http_client.fetch(url + "/konnect/v1/userinfo", method="POST",
                                             body=body, headers=form, raise_error=False)
            assert posted.code == 200 and json.loads(posted.body)["sub"] == ALICE.sub
            bearer = await http_client.fetch(url + "/konnect/v1/userinfo", raise_error=False,
                                             headers={"Authorization": "Bearer " + access.token})
            assert bearer.code == 200
    finally:
        await ucore.close()


# -- 7. registered grant_types are enforced (RFC 6749 §5.2, RFC 7591 §2) ----------------------


async def planted_refresh_token(core, client_id, redirect_uri) -> str:
    """A refresh token of `client_id` as the store would hold it (issued before the client's
    registration restricted its grant types, or by a bug)."""
    token = "planted-" + "r" * 40
    grant = Grant(client_id=client_id, identity=ALICE, scopes=["openid", "offline_access"],
                  redirect_uri=redirect_uri, created=int(core.now()))
    await core.store.put_refresh(token, grant.to_record(), 3600)
    return token


@pytest.mark.gen_test
async def test_client_without_the_refresh_grant_gets_no_refresh_token_and_cannot_refresh(
        http_client, base_url, core, redis_server):
    # registered without grant_types: ["authorization_code"] (RFC 7591 §2)
    client_id, secret = await register(http_client, base_url, DYN_WEB)
    uri = DYN_WEB["redirect_uris"][0]
    resp, issued = await redeem(http_client, base_url, core, client_id, secret, uri)
    assert resp.code == 200 and issued["access_token"], issued
    assert "offline_access" in issued["scope"]
    assert "refresh_token" not in issued
    assert refresh_keys(redis_server) == []  # none stored either
    planted = await planted_refresh_token(core, client_id, uri)
    resp, err = await post(http_client, base_url, "/konnect/v1/token",
                           {"grant_type": "refresh_token", "refresh_token": planted},
                           {"Authorization": basic(client_id, secret)})
    assert resp.code == 400 and err["error"] == "unauthorized_client", err
    assert await core.store.peek_refresh(planted) is not None  # refused before it was taken


@pytest.mark.gen_test
async def test_client_without_the_refresh_grant_gets_none_from_a_two_step_redemption(
        http_client, base_url, core, redis_server):
    """The path of a code stored without `created` (grants.py `_redeem_in_two_steps`)."""
    client_id, secret = await register(http_client, base_url, DYN_WEB)
    uri = DYN_WEB["redirect_uris"][0]
    code = "legacy-" + "y" * 40
    record = Grant(client_id=client_id, identity=ALICE, scopes=["openid", "offline_access"],
                   redirect_uri=uri).to_record()
    await core.store.put_code(code, record, 60)
    resp, issued = await post(http_client, base_url, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": uri},
        {"Authorization": basic(client_id, secret)})
    assert resp.code == 200 and "refresh_token" not in issued, issued
    assert refresh_keys(redis_server) == []


@pytest.mark.gen_test
async def test_grant_types_of_the_static_registry_stay_informational(http_client, base_url, core):
    """As in Konnect (konnect.md §5.1): a YAML entry listing only authorization_code keeps
    getting and using refresh tokens, so a migrated registry does not break its apps."""
    uri = "https://code-only.example.test/cb"
    resp, issued = await redeem(http_client, base_url, core, "code-only-rp", "code-only", uri)
    assert resp.code == 200 and issued["refresh_token"], issued
    again, rotated = await post(http_client, base_url, "/konnect/v1/token",
                                {"grant_type": "refresh_token",
                                 "refresh_token": issued["refresh_token"]},
                                {"Authorization": basic("code-only-rp", "code-only")})
    assert again.code == 200 and rotated["refresh_token"], rotated


@pytest.mark.gen_test
async def test_clients_registered_for_refresh_or_without_grant_types_refresh_as_before(
        http_client, base_url, core):
    client_id, secret = await register(http_client, base_url, dict(
        DYN_WEB, grant_types=["authorization_code", "refresh_token"]))
    for client_id, secret, uri in ((client_id, secret, DYN_WEB["redirect_uris"][0]),
                                   ("web-rp", SECRET, "https://rp.example.test/cb")):
        resp, issued = await redeem(http_client, base_url, core, client_id, secret, uri)
        assert resp.code == 200 and issued["refresh_token"], issued
        again, rotated = await post(http_client, base_url, "/konnect/v1/token",
                                    {"grant_type": "refresh_token",
                                     "refresh_token": issued["refresh_token"]},
                                    {"Authorization": basic(client_id, secret)})
        assert again.code == 200 and rotated["refresh_token"] != issued["refresh_token"], rotated


@pytest.mark.gen_test
@pytest.mark.parametrize("uri", [
    ISSUER + "/signin/v1/identifier/_/authorize?client_id=x",
    ISSUER + "/konnect/v1/token",
    ISSUER + "/app/%2e%2e/signin/v1/identifier/_/authorize",
])
async def test_dynamic_registration_refuses_redirect_uris_into_the_op(http_client, base_url, uri):
    """A response sent to the OP's own authorization endpoint would be carried on, fragment
    and all, to wherever that second request points (RFC 9700 §4.11, §4.1)."""
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                   body=json.dumps({"redirect_uris": [uri]}), raise_error=False,
                                   headers={"Content-Type": "application/json"})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_redirect_uri"
    ok = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                 body=json.dumps({"redirect_uris": [ISSUER + "/webapp/cb"]}),
                                 headers={"Content-Type": "application/json"}, raise_error=False)
    assert ok.code == 201, ok.body


@pytest.mark.gen_test
@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/konnect/v1/token", "POST, OPTIONS"),  # the CORS preflight is answered too
    ("PUT", "/konnect/v1/revoke", "POST, OPTIONS"),
    ("GET", "/konnect/v1/register", "POST"),
    ("POST", "/konnect/v1/jwks.json", "GET, HEAD, OPTIONS"),
    ("DELETE", "/.well-known/openid-configuration", "GET, HEAD, OPTIONS"),
])
async def test_every_405_names_the_allowed_methods(http_client, base_url, method, path, allow):
    """RFC 9110 §15.5.6: a 405 MUST carry `Allow`."""
    resp = await http_client.fetch(base_url + path, method=method, raise_error=False,
                                   body=b"" if method in ("POST", "PUT") else None,
                                   allow_nonstandard_methods=True)
    assert resp.code == 405 and resp.headers["Allow"] == allow
    assert json.loads(resp.body)["error"] == "method_not_allowed"



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
