"""Authorize hardening: implicit trust never into the OP's own endpoints, empty fragments on
query responses, `sub` claim requests, form_post errors, max_age parsing, access tokens as
id_token_hint, and the claims request narrowed to the granted scopes. The four services on
one origin, real Redis and the users-file backend (the fixtures of test_flow)."""

from __future__ import annotations

import json
import re
import secrets
from html import unescape
from urllib.parse import urlencode, urlsplit

import pytest

from shared.clients import ClientRegistry, dynamic_record, parse_entry
from shared.identity import Identity
from shared.tokens import TokenError
from tests.support.op import ISSUER, SECRET
from tests.test_flow import (Browser, app, authorize_url, core, query_of, sign_in,  # noqa: F401
                             state)
from tests.test_token_service import basic

AUTHORIZE = ISSUER + "/signin/v1/identifier/_/authorize"
TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}
WEB_RP = {"client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb"}


def posted(resp) -> dict:
    """The hidden fields of a form_post page (OAuth 2.0 Form Post Response Mode §2)."""
    body = resp.body.decode()
    return {unescape(k): unescape(v)
            for k, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', body)}


def form_action(resp) -> str:
    return unescape(re.search(r'<form method=post action="([^"]*)"', resp.body.decode()).group(1))


async def alice_sub(b: Browser, core) -> str:  # noqa: F811
    resp = await b.fetch(authorize_url(response_type="id_token", **TRUSTED))
    _, claims = core.keyring.verify(query_of(resp.headers["Location"])["id_token"])
    return claims["sub"]


async def consent(b: Browser, state: str, scope: str, **flow) -> None:
    body = {"state": state, "allow": True, "scope": scope, "client_id": "web-rp",
            "redirect_uri": "https://rp.example.test/cb", "ref": "xyz", "flow_nonce": "n-1"}
    body.update(flow)
    assert (await b.api("consent", body)).code == 200


# --- 1a. implicit trust never for a redirect into the OP itself -----------------------

def chained(**outer) -> str:
    """The attack: an implicit response redirected into a second authorization request that
    fails early and redirects (with the first response's fragment, RFC 9110 §10.2.2)."""
    inner = AUTHORIZE + "?" + urlencode({"client_id": "trusted-rp",
                                         "redirect_uri": "https://trusted.example.test/cb",
                                         "response_type": "bogus", "state": "x"})
    return authorize_url(client_id="anything", redirect_uri=inner,
                         response_type="id_token token", **outer)


@pytest.mark.gen_test
async def test_implicit_client_redirecting_into_the_authorize_endpoint_gets_no_tokens(
        http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(chained())
    assert resp.code == 400 and "Location" not in resp.headers
    assert b"access_token" not in resp.body


@pytest.mark.gen_test
async def test_implicit_client_on_the_issuer_origin_still_works(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(client_id="my-web-app", response_type="id_token token",
                                       redirect_uri=ISSUER + "/webapp/cb"))
    assert resp.code == 302 and resp.headers["Location"].startswith(ISSUER + "/webapp/cb#")
    assert query_of(resp.headers["Location"])["access_token"]


@pytest.mark.parametrize("path", [
    "/signin/v1/identifier/_/authorize", "/signin/v1/identifier/_/authorize?client_id=x",
    "/signin/v1/identifier", "/signin/v1/", "/signin/v1", "/signin/v1/consent",
    "/signin/v1/identifier/_/endsession", "/konnect/v1/token", "/konnect/v1/userinfo",
    "/konnect/v1/session/check-session.html", "/konnect/v1/jwks.json",
    "/.well-known/openid-configuration",
    # spellings a browser or the proxy may resolve to the same endpoint
    "/app/../signin/v1/identifier/_/authorize", "/app/%2e%2e/signin/v1/identifier/_/authorize",
    "/%73ignin/v1/identifier/_/authorize", "/%2573ignin/v1/identifier/_/authorize",
    "//signin/v1/identifier/_/authorize", "/./konnect/v1/token", "/SIGNIN/V1/identifier",
    "/signin%2Fv1/identifier", "/prefix/signin/v1/identifier/_/authorize",
])
def test_implicit_trust_is_refused_for_the_op_own_paths(path):
    registry = ClientRegistry(issuer=ISSUER)
    assert registry.lookup("anything", ISSUER + path) is None, path


@pytest.mark.parametrize("path", ["/webapp/cb", "/signin/v10/cb", "/konnect/cb", "/", "/app/signin"])
def test_implicit_trust_still_covers_the_issuer_origin_elsewhere(path):
    client = ClientRegistry(issuer=ISSUER).lookup("anything", ISSUER + path)
    assert client is not None and client.implicit and client.trusted, path


# --- 1b. query responses end with an empty fragment -----------------------------------

@pytest.mark.gen_test
async def test_query_success_and_error_redirects_end_with_an_empty_fragment(http_client, base_url):
    b = Browser(http_client, base_url)
    error = await b.fetch(authorize_url(prompt="none", **TRUSTED))
    assert error.headers["Location"].endswith("#")
    assert query_of(error.headers["Location"])["error"] == "login_required"
    bad = await b.fetch(authorize_url(scope="profile", **TRUSTED))
    assert bad.headers["Location"].endswith("#")
    assert query_of(bad.headers["Location"])["error"] == "invalid_scope"
    await sign_in(b)
    ok = await b.fetch(authorize_url(**TRUSTED))
    location = ok.headers["Location"]
    assert location.startswith("https://trusted.example.test/cb?code=") and location.endswith("#")
    assert urlsplit(location).fragment == "" and query_of(location)["state"] == "xyz"


@pytest.mark.gen_test
async def test_fragment_responses_keep_their_fragment(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(response_type="id_token", **TRUSTED))
    fragment = urlsplit(resp.headers["Location"]).fragment
    assert "id_token=" in fragment and not resp.headers["Location"].endswith("#")


# --- 1c. dynamically registered clients: no automatic redirect before sign-in ----------

async def dynamic_client(core) -> dict:  # noqa: F811
    """A client as /konnect/v1/register stores it (public: PKCE)."""
    client_id = "dyn." + secrets.token_urlsafe(24)
    client = parse_entry({"id": client_id, "redirect_uris": ["https://attacker.example.test/cb"]})
    await core.store.put_client(client_id, dynamic_record(client, issued_at=0, expires_at=0), 600)
    return {"client_id": client_id, "redirect_uri": "https://attacker.example.test/cb",
            "code_challenge": "x" * 43, "code_challenge_method": "S256"}


@pytest.mark.gen_test
@pytest.mark.parametrize("params", [{"scope": "profile"}, {"response_type": "bogus"},
                                    {"prompt": "none"}, {"max_age": "x"},
                                    {"prompt": "none", "response_mode": "form_post"}])
async def test_dynamic_client_errors_before_sign_in_are_a_page(http_client, base_url, core,
                                                               params):
    dyn = await dynamic_client(core)
    resp = await Browser(http_client, base_url).fetch(authorize_url(**dyn, **params))
    assert resp.code == 400 and "Location" not in resp.headers, params
    assert b"attacker.example.test" not in resp.body


@pytest.mark.gen_test
async def test_dynamic_client_errors_after_sign_in_are_redirected(http_client, base_url, core):
    dyn = await dynamic_client(core)
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(prompt="none", **dyn))
    assert resp.code == 302 and resp.headers["Location"].startswith(dyn["redirect_uri"] + "?")
    assert query_of(resp.headers["Location"])["error"] == "consent_required"


# --- 2. a claims request for a specific sub --------------------------------------------

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


# --- 3. form_post errors are posted -------------------------------------------------------

@pytest.mark.gen_test
async def test_form_post_login_required_is_posted_with_state_and_iss(http_client, base_url):
    resp = await Browser(http_client, base_url).fetch(
        authorize_url(prompt="none", response_mode="form_post", **WEB_RP))
    assert resp.code == 200 and "Location" not in resp.headers
    assert form_action(resp) == "https://rp.example.test/cb"
    assert posted(resp) == {"error": "login_required", "error_description": "the user is not signed in",
                            "state": "xyz", "iss": ISSUER}
    assert "'nonce-" in resp.headers["Content-Security-Policy"]


@pytest.mark.gen_test
async def test_form_post_errors_after_sign_in_are_posted(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    consent_needed = await b.fetch(authorize_url(prompt="none", response_mode="form_post", **WEB_RP))
    assert consent_needed.code == 200 and posted(consent_needed)["error"] == "consent_required"
    bad_hint = await b.fetch(authorize_url(response_mode="form_post", id_token_hint="x.y.z",
                                           **TRUSTED))
    assert bad_hint.code == 200 and posted(bad_hint)["error"] == "invalid_request"
    assert posted(bad_hint)["state"] == "xyz" and posted(bad_hint)["iss"] == ISSUER
    denied = await b.api("consent", {"state": "fp1", "allow": False, "scope": "openid",
                                     "client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb",
                                     "ref": "xyz", "flow_nonce": "n-1"})
    assert denied.code == 204
    resp = await b.fetch(authorize_url(konnect="fp1", prompt="none", response_mode="form_post",
                                       **WEB_RP))
    assert resp.code == 200 and "Location" not in resp.headers
    assert posted(resp)["error"] == "access_denied" and posted(resp)["iss"] == ISSUER


# --- 4. max_age ------------------------------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.parametrize("max_age", ["²", "٣", "9" * 5000, "1" * 11, "-1", "+3", " 3", "3.0", ""])
async def test_malformed_max_age_is_invalid_request(http_client, base_url, max_age):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(max_age=max_age, **TRUSTED))
    assert resp.code == 302, max_age
    result = query_of(resp.headers["Location"])
    assert result["error"] == "invalid_request" and "code" not in result, max_age


@pytest.mark.gen_test
async def test_ascii_max_age_up_to_ten_digits_is_accepted(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(max_age="9" * 10, **TRUSTED))
    assert query_of(resp.headers["Location"]).get("code")


# --- 5. an access token is not an id_token_hint -----------------------------------------

@pytest.mark.gen_test
async def test_access_token_as_id_token_hint_is_refused_at_authorize(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    tokens = query_of((await b.fetch(authorize_url(response_type="id_token token",
                                                   **TRUSTED))).headers["Location"])
    ok = await b.fetch(authorize_url(prompt="none", id_token_hint=tokens["id_token"], **TRUSTED))
    assert query_of(ok.headers["Location"]).get("code")
    resp = await b.fetch(authorize_url(prompt="none", id_token_hint=tokens["access_token"],
                                       **TRUSTED))
    result = query_of(resp.headers["Location"])
    assert result["error"] == "invalid_request" and "code" not in result


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
    assert "__Secure-KKT" in b.cookies


def test_open_id_token_hint_refuses_access_tokens_and_keeps_id_tokens(core):  # noqa: F811
    alice = Identity(raw_sub="alice", backend="identifier-users", username="alice")
    access = core.tokens.access_token(client_id="trusted-rp", identity=alice, scopes=["openid"],
                                      family="f").token
    with pytest.raises(TokenError, match="access token"):
        core.tokens.open_id_token_hint(access)
    id_token = core.tokens.id_token(client_id="trusted-rp", identity=alice, nonce="n")
    assert core.tokens.open_id_token_hint(id_token)["sub"] == alice.sub


# --- 6. the claims request is narrowed to the granted scopes ----------------------------

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
    # the request stays on record, but a `value` is never echoed (test_hardening_3.py)
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
    """Konnect (konnect.md §6.9): a trusted client gets requested claims without asking."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(scope="openid", response_type="id_token token",
                                       claims=json.dumps({"userinfo": {"email": None}}), **TRUSTED))
    _, at_claims = core.keyring.verify(query_of(resp.headers["Location"])["access_token"])
    assert at_claims["kc.authorizedClaims"] == {"userinfo": {"email": None}}
