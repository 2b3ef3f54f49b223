"""The browser flow across identifier, authorize, token and userinfo, served on one origin as
the proxy does, with cookies carried like a browser."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.support.browser import Browser, authorize_url, query_of, sign_in
from tests.support.http import basic
from tests.support.op import ISSUER, SECRET, pkce_pair


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
    assert logon.code == 200 and "__Host-KKT" in b.cookies
    cookie_header = [h for h in logon.headers.get_list("Set-Cookie") if h.startswith("__Host-KKT=")][0]
    assert "HttpOnly" in cookie_header and "Secure" in cookie_header and "Path=/;" in cookie_header
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
    assert out.code == 200 and "__Host-KKT" not in b.cookies
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
