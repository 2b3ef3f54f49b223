"""The browser flow across identifier, authorize, token and userinfo, over HTTP, with real
Redis and the users-file backend. The four apps are served on one origin, as the proxy
does (design.md §1); cookies are carried by hand like a browser would."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.support.onehost import (Browser, authorize_url, identifier_core,  # noqa: F401
                                   one_origin_app, query_of, sign_in)
from tests.support.op import ISSUER, SECRET, make_state, pkce_pair
from tests.test_token_service import basic


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("flow-state"))


@pytest.fixture
def core(state, redis_url, tmp_path, io_loop):
    core = identifier_core(state, redis_url, tmp_path / "users.yaml")
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(core):
    return one_origin_app(core)


@pytest.mark.gen_test
async def test_full_code_flow_with_sign_in_and_consent(http_client, base_url, core):
    b = Browser(http_client, base_url)
    verifier, challenge = pkce_pair()
    start = authorize_url(code_challenge=challenge, code_challenge_method="S256")
    resp = await b.fetch(start)
    assert resp.code == 302 and resp.headers["Location"].startswith("/signin/v1/identifier?")
    signin = query_of(resp.headers["Location"])
    assert signin["flow"] == "oidc" and signin["client_id"] == "web-rp"
    page = await b.fetch(resp.headers["Location"])
    assert page.code == 200 and b'id="logon"' in page.body
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    logon = await sign_in(b)
    assert logon.code == 200 and "__Secure-KKT" in b.cookies
    cookie_header = [h for h in logon.headers.get_list("Set-Cookie") if h.startswith("__Secure-KKT=")][0]
    assert "HttpOnly" in cookie_header and "Secure" in cookie_header and "Path=/signin/v1/identifier/_/" in cookie_header
    resp = await b.fetch(start)
    assert resp.code == 302 and resp.headers["Location"].startswith("/signin/v1/consent?")
    consent_page = await b.fetch(resp.headers["Location"])
    assert b"Web RP" in consent_page.body
    ok = await b.api("consent", {"state": "c1", "allow": True, "scope": "openid profile email",
                                 "client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb",
                                 "ref": "xyz", "flow_nonce": "n-1"})
    assert ok.code == 200
    resp = await b.fetch(start + "&" + urlencode({"konnect": "c1", "prompt": "none"}))
    assert resp.code == 302 and resp.headers["Location"].startswith("https://rp.example.test/cb?")
    result = query_of(resp.headers["Location"])
    assert result["state"] == "xyz" and result["iss"] == ISSUER and "." in result["session_state"]
    assert "access_token" not in result and "id_token" not in result
    tok = await http_client.fetch(base_url + "/konnect/v1/token", method="POST", raise_error=False,
                                  headers={"Authorization": basic("web-rp", SECRET),
                                           "Content-Type": "application/x-www-form-urlencoded"},
                                  body=urlencode({"grant_type": "authorization_code", "code": result["code"],
                                                  "redirect_uri": "https://rp.example.test/cb",
                                                  "code_verifier": verifier}))
    assert tok.code == 200, tok.body
    tokens = json.loads(tok.body)
    _, id_claims = core.keyring.verify(tokens["id_token"])
    assert id_claims["nonce"] == "n-1" and id_claims["sid"]
    info = await http_client.fetch(base_url + "/konnect/v1/userinfo",
                                   headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert json.loads(info.body)["email"] == "alice@example.test"
    # consent is single use: the same konnect state does not work twice
    again = await b.fetch(start + "&" + urlencode({"konnect": "c1", "prompt": "none"}))
    assert query_of(again.headers["Location"])["error"] == "consent_required"
    # signing out revokes the access token everywhere
    out = await b.api("logoff", {"state": "o1"})
    assert out.code == 200 and "__Secure-KKT" not in b.cookies
    revoked = await http_client.fetch(base_url + "/konnect/v1/userinfo", raise_error=False,
                                      headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert revoked.code == 401


@pytest.mark.gen_test
async def test_trusted_client_skips_consent_and_implicit_tokens_go_in_the_fragment(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(client_id="trusted-rp", redirect_uri="https://trusted.example.test/cb",
                                       response_type="id_token token"))
    location = resp.headers["Location"]
    assert resp.code == 302 and "#" in location and "?" not in location.split("#")[0]
    result = query_of(location)
    assert result["token_type"] == "Bearer" and result["id_token"] and result["state"] == "xyz"


@pytest.mark.gen_test
async def test_form_post_is_an_auto_submitting_page_with_a_nonce(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(client_id="trusted-rp", redirect_uri="https://trusted.example.test/cb",
                                       response_type="code id_token", response_mode="form_post"))
    assert resp.code == 200 and b'action="https://trusted.example.test/cb"' in resp.body
    csp = resp.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"'.encode() in resp.body and b'name="code"' in resp.body


@pytest.mark.gen_test
@pytest.mark.parametrize("params", [
    {"client_id": "nobody"},
    {"redirect_uri": "https://evil.example/cb"},
    {"redirect_uri": "https://rp.example.test/cb/extra"},
    {"client_id": None},
])
async def test_unverified_client_or_redirect_gets_a_page_never_a_redirect(http_client, base_url, params):
    resp = await Browser(http_client, base_url).fetch(authorize_url(**params))
    assert resp.code == 400 and "Location" not in resp.headers


@pytest.mark.gen_test
@pytest.mark.parametrize("params,error", [
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "profile"}, "invalid_scope"),
    ({"prompt": "none login"}, "invalid_request"),
    ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
    ({"request_uri": "https://rp.example.test/r"}, "request_uri_not_supported"),
    ({"prompt": "none"}, "login_required"),
    ({"response_type": "id_token", "nonce": None}, "invalid_request"),
])
async def test_errors_after_verification_redirect_with_state_and_iss(http_client, base_url, params, error):
    resp = await Browser(http_client, base_url).fetch(authorize_url(**params))
    assert resp.code == 302
    result = query_of(resp.headers["Location"])
    assert resp.headers["Location"].startswith("https://rp.example.test/cb")
    assert result["error"] == error and result["state"] == "xyz" and result["iss"] == ISSUER


@pytest.mark.gen_test
async def test_public_client_needs_pkce(http_client, base_url):
    resp = await Browser(http_client, base_url).fetch(authorize_url(
        client_id="public-app", redirect_uri="http://127.0.0.1:4000/cb"))
    assert query_of(resp.headers["Location"])["error"] == "invalid_request"


@pytest.mark.gen_test
async def test_denied_consent_is_access_denied(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    denied = await b.api("consent", {"state": "c2", "allow": False, "scope": "openid",
                                     "client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb",
                                     "ref": "xyz", "flow_nonce": "n-1"})
    assert denied.code == 204 and denied.headers["Kopano-Konnect-State"] == "c2"
    resp = await b.fetch(authorize_url(konnect="c2", prompt="none"))
    assert query_of(resp.headers["Location"])["error"] == "access_denied"


@pytest.mark.gen_test
async def test_max_age_and_prompt_login_force_a_new_sign_in(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    core.now = lambda: __import__("time").time() + 30
    resp = await b.fetch(authorize_url(client_id="trusted-rp", redirect_uri="https://trusted.example.test/cb",
                                       max_age="10"))
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")
    resp = await b.fetch(authorize_url(client_id="trusted-rp", redirect_uri="https://trusted.example.test/cb",
                                       prompt="login"))
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")


@pytest.mark.gen_test
async def test_api_csrf_defences_and_bad_credentials(http_client, base_url):
    b = Browser(http_client, base_url)
    body = {"state": "s", "params": ["alice", "wonderland", "1"]}
    no_header = await b.fetch("/signin/v1/identifier/_/logon", method="POST", body=json.dumps(body),
                              headers={"Content-Type": "application/json", "Origin": base_url})
    assert no_header.code == 400 and "__Secure-KKT" not in b.cookies
    foreign = await b.api("logon", body, Origin="https://evil.example")
    assert foreign.code == 400 and "__Secure-KKT" not in b.cookies
    wrong = await sign_in(b, password="nope")
    assert wrong.code == 204 and "__Secure-KKT" not in b.cookies
    hello = await b.api("hello", {"state": "h"})
    assert hello.code == 204


@pytest.mark.gen_test(timeout=30)
async def test_repeated_failed_sign_ins_are_rate_limited(http_client, base_url):
    b = Browser(http_client, base_url)
    codes = [(await sign_in(b, password=f"bad{i}")).code for i in range(12)]
    assert codes[:10] == [204] * 10 and codes[-1] == 429


@pytest.mark.gen_test
async def test_pages_are_translated(http_client, base_url):
    b = Browser(http_client, base_url)
    de = await b.fetch("/signin/v1/identifier", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert b"Anmelden" in de.body and b'lang="de"' in de.body
    en = await b.fetch("/signin/v1/identifier?lang=en", headers={"Accept-Language": "de"})
    assert b"Sign in" in en.body and b'lang="en"' in en.body
