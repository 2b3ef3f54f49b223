"""The OpenID conformance suite's OP modules rebuilt as tests (docs/conformance.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from urllib.parse import urlencode

import pytest
from jose import jwt as rp_jwt

from shared.keys import SigningKey, public_jwk
from tests.support.browser import Browser, query_of, sign_in
from tests.support.clients import CLIENT_KEY
from tests.support.http import basic
from tests.support.op import REGISTRY, pkce_pair

conformance = pytest.mark.conformance


CB = "https://conf.example.test/cb"


EXTRA = f"""
  - id: conf-client
    name: Conformance client
    trusted: yes
    secret: "conf-secret-._~"
    redirect_uris: [{CB}]
    post_logout_redirect_uris: [https://conf.example.test/logged-out]
  - id: conf-client2
    trusted: yes
    secret: "conf-secret-2"
    redirect_uris: [https://conf2.example.test/cb]
  - id: conf-post
    trusted: yes
    secret: "post-secret"
    token_endpoint_auth_method: client_secret_post
    redirect_uris: [https://post.example.test/cb]
  - id: conf-rs256
    trusted: yes
    secret: "rs-secret"
    id_token_signed_response_alg: RS256
    userinfo_signed_response_alg: RS256
    redirect_uris: [https://rs.example.test/cb]
  - id: conf-two
    trusted: yes
    secret: "two-secret"
    redirect_uris: [https://two.example.test/a, "https://two.example.test/q?foo=bar"]
"""


EXTRA += f"""
  - id: conf-ro
    trusted: yes
    secret: "ro-secret"
    request_object_signing_alg: RS256
    redirect_uris: [https://ro.example.test/cb]
  - id: conf-jwt
    token_endpoint_auth_method: private_key_jwt
    redirect_uris: [https://jwt.example.test/cb]
    jwks: {json.dumps({"keys": [dict(public_jwk(CLIENT_KEY), kid="c1")]})}
"""


RESPONSE_TYPES = ["code", "id_token", "id_token token", "code id_token", "code token",
                  "code id_token token"]


class RP:
    """A relying party as the suite plays it."""

    SECRETS = {"conf-client": "conf-secret-._~", "conf-client2": "conf-secret-2",
               "conf-post": "post-secret", "conf-rs256": "rs-secret", "conf-two": "two-secret",
               "conf-ro": "ro-secret"}

    def __init__(self, http_client, base_url, client_id: str = "conf-client",
                 redirect_uri: str = CB) -> None:
        self.http, self.base = http_client, base_url
        self.client_id, self.redirect_uri = client_id, redirect_uri
        self.browser = Browser(http_client, base_url)
        self.issuer = "https://idp.example.test"
        self.id_token_alg = "RS256"  # what every client of the battery registered or defaults to

    async def jwks(self) -> dict:
        resp = await self.http.fetch(self.base + "/konnect/v1/jwks.json")
        return json.loads(resp.body)

    def url(self, **params) -> str:
        base = {"client_id": self.client_id, "redirect_uri": self.redirect_uri,
                "response_type": "code", "scope": "openid", "state": secrets.token_hex(8),
                "nonce": secrets.token_hex(8)}
        base.update(params)
        return "/signin/v1/identifier/_/authorize?" + urlencode(
            {k: v for k, v in base.items() if v is not None})

    async def authorize(self, **params) -> dict:
        """One authorization request with the browser as it is; the redirect's parameters."""
        resp = await self.browser.fetch(self.url(**params))
        assert resp.code == 302, resp.body[:300]
        location = resp.headers["Location"]
        assert not location.startswith("/"), f"not signed in: {location}"
        result = query_of(location)
        result["_location"] = location
        return result

    async def token(self, auth: str = "basic", **form) -> tuple[int, dict]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if auth == "basic":
            headers["Authorization"] = basic(self.client_id, self.SECRETS[self.client_id])
        elif auth == "post":
            form.update(client_id=self.client_id, client_secret=self.SECRETS[self.client_id])
        resp = await self.http.fetch(self.base + "/konnect/v1/token", method="POST",
                                     raise_error=False, headers=headers, body=urlencode(form))
        return resp.code, json.loads(resp.body or b"{}")

    async def redeem(self, code: str, auth: str = "basic", **extra) -> dict:
        status, body = await self.token(auth, grant_type="authorization_code", code=code,
                                        redirect_uri=self.redirect_uri, **extra)
        assert status == 200, body
        return body

    async def userinfo(self, access_token: str, how: str = "get"):
        if how == "get":
            kw = {"headers": {"Authorization": "Bearer " + access_token}}
        elif how == "post-header":
            kw = {"method": "POST", "body": "", "headers": {"Authorization": "Bearer " + access_token}}
        else:
            kw = {"method": "POST", "body": urlencode({"access_token": access_token}),
                  "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
        return await self.http.fetch(self.base + "/konnect/v1/userinfo", raise_error=False, **kw)

    async def check_id_token(self, token: str, *, nonce=None, access_token=None, code=None) -> dict:
        """OIDC Core §3.1.3.7 / §3.2.2.11 / §3.3.2.12, against the JWKS like any RP."""
        header = rp_jwt.get_unverified_header(token)
        assert header.get("kid"), "kid missing"
        keys = [k for k in (await self.jwks())["keys"] if k["kid"] == header["kid"]]
        assert len(keys) == 1, "kid not in the JWKS"
        # An RSA key in the JWKS names no alg (it signs the whole RSA family): the RP
        # expects the ID token alg it registered, RS256 by default (OIDC Registration §2).
        expected = keys[0].get("alg") or self.id_token_alg
        assert header["alg"] == expected, (header["alg"], expected)
        claims = rp_jwt.decode(token, keys[0], algorithms=[expected], audience=self.client_id,
                               issuer=self.issuer, access_token=access_token,
                               options={"verify_at_hash": access_token is not None})
        now = time.time()
        assert claims["sub"] and claims["iat"] <= now + 5 and claims["exp"] > now
        if nonce is not None:
            assert claims.get("nonce") == nonce
        if code is not None:
            assert claims["c_hash"] == _left_hash(code, header["alg"])
        return claims


def _left_hash(value: str, alg: str) -> str:
    digest = hashlib.new("sha" + alg[2:], value.encode()).digest()
    return base64.urlsafe_b64encode(digest[:len(digest) // 2]).rstrip(b"=").decode()


@pytest.fixture
def rp(http_client, base_url, app):  # noqa: F811
    return RP(http_client, base_url)


async def signed_in(rp_: RP) -> RP:
    await sign_in(rp_.browser)
    return rp_


def _unsigned(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'none'})}.{enc(claims)}."


END = "/signin/v1/identifier/_/endsession"


LOGGED_OUT = "https://conf.example.test/logged-out"


async def _logout(rp_: RP, **params):
    return await rp_.browser.fetch(END + "?" + urlencode({k: v for k, v in params.items()
                                                          if v is not None}))


pytestmark = pytest.mark.op(registry=REGISTRY + EXTRA)


@conformance("oidcc-server")
@pytest.mark.gen_test
@pytest.mark.parametrize("mode", ["", "form_post"])
@pytest.mark.parametrize("response_type", RESPONSE_TYPES)
async def test_oidcc_server(rp, response_type, mode):
    await signed_in(rp)
    nonce, st = secrets.token_hex(8), secrets.token_hex(8)
    verifier, challenge = pkce_pair()
    resp = await rp.browser.fetch(rp.url(response_type=response_type, nonce=nonce, state=st,
                                         response_mode=mode or None, code_challenge=challenge,
                                         code_challenge_method="S256"))
    if mode == "form_post":
        assert resp.code == 200 and b'method=post' in resp.body
        import re
        result = {k.decode(): v.decode() for k, v in re.findall(
            rb'name="([^"]+)" value="([^"]*)"', resp.body)}
    else:
        location = resp.headers["Location"]
        result = query_of(location)
        if response_type != "code":
            assert "?" not in location.split("#")[0], "tokens or code in the query"
    assert result["state"] == st and result["iss"] == rp.issuer and "error" not in result
    if "id_token" in response_type:
        await rp.check_id_token(result["id_token"], nonce=nonce,
                                access_token=result.get("access_token"), code=result.get("code"))
    if "code" in response_type:
        tokens = await rp.redeem(result["code"], code_verifier=verifier)
        claims = await rp.check_id_token(tokens["id_token"], nonce=nonce,
                                         access_token=tokens["access_token"])
        assert claims["auth_time"]
        assert (await rp.userinfo(tokens["access_token"])).code == 200


@conformance("oidcc-server-client-secret-post")
@pytest.mark.gen_test
@pytest.mark.parametrize("response_type", ["code", "code id_token", "code token",
                                           "code id_token token"])
async def test_oidcc_server_client_secret_post(http_client, base_url, app, response_type):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url, "conf-post", "https://post.example.test/cb"))
    result = await rp_.authorize(response_type=response_type)
    tokens = await rp_.redeem(result["code"], auth="post")
    await rp_.check_id_token(tokens["id_token"], access_token=tokens["access_token"])


@conformance("oidcc-response-type-missing")
@pytest.mark.gen_test
async def test_oidcc_response_type_missing(rp):
    await signed_in(rp)
    result = await rp.authorize(response_type=None)
    assert result["error"] in ("unsupported_response_type", "invalid_request") and "code" not in result


@conformance("oidcc-idtoken-signature")
@pytest.mark.gen_test
async def test_oidcc_idtoken_signature(rp):
    await signed_in(rp)
    tokens = await rp.redeem((await rp.authorize())["code"])
    header = rp_jwt.get_unverified_header(tokens["id_token"])
    assert header["alg"] == "RS256" and header["kid"]
    await rp.check_id_token(tokens["id_token"])


@conformance("oidcc-idtoken-rs256")
@pytest.mark.gen_test
async def test_oidcc_idtoken_rs256(http_client, base_url, app):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url, "conf-rs256", "https://rs.example.test/cb"))
    tokens = await rp_.redeem((await rp_.authorize())["code"])
    assert rp_jwt.get_unverified_header(tokens["id_token"])["alg"] == "RS256"


@conformance("oidcc-userinfo-get")
@conformance("oidcc-userinfo-post-header")
@conformance("oidcc-userinfo-post-body")
@pytest.mark.gen_test
@pytest.mark.parametrize("how", ["get", "post-header", "post-body"])
async def test_oidcc_userinfo(rp, how):
    await signed_in(rp)
    tokens = await rp.redeem((await rp.authorize(scope="openid profile"))["code"])
    resp = await rp.userinfo(tokens["access_token"], how)
    body = json.loads(resp.body)
    claims = await rp.check_id_token(tokens["id_token"])
    assert resp.code == 200 and body["sub"] == claims["sub"] and body["name"] == "Alice Example"


@conformance("oidcc-userinfo-rs256")
@pytest.mark.gen_test
async def test_oidcc_userinfo_rs256(http_client, base_url, app):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url, "conf-rs256", "https://rs.example.test/cb"))
    tokens = await rp_.redeem((await rp_.authorize(scope="openid email"))["code"])
    resp = await rp_.userinfo(tokens["access_token"])
    assert resp.headers["Content-Type"].startswith("application/jwt")
    keys = {k["kid"]: k for k in (await rp_.jwks())["keys"]}
    token = resp.body.decode()
    key = keys[rp_jwt.get_unverified_header(token)["kid"]]
    claims = rp_jwt.decode(token, key, algorithms=["RS256"], audience="conf-rs256",
                           issuer=rp_.issuer)
    assert claims["email"] == "alice@example.test"


@conformance("oidcc-ensure-request-without-nonce-succeeds-for-code-flow")
@pytest.mark.gen_test
async def test_oidcc_code_flow_without_nonce(rp):
    await signed_in(rp)
    tokens = await rp.redeem((await rp.authorize(nonce=None))["code"])
    assert "nonce" not in await rp.check_id_token(tokens["id_token"])


@conformance("oidcc-ensure-request-without-nonce-fails")
@pytest.mark.gen_test
@pytest.mark.parametrize("response_type", ["id_token", "id_token token", "code id_token",
                                           "code id_token token"])
async def test_oidcc_without_nonce_fails(rp, response_type):
    await signed_in(rp)
    result = await rp.authorize(response_type=response_type, nonce=None)
    assert result["error"] == "invalid_request" and "id_token" not in result


@conformance("oidcc-scope-profile")
@conformance("oidcc-scope-email")
@conformance("oidcc-scope-all")
@pytest.mark.gen_test
@pytest.mark.parametrize("scope,claims", [
    ("openid profile", {"name", "preferred_username"}),  # alice has no given/family name
    ("openid email", {"email", "email_verified"}),
    ("openid profile email", {"name", "email", "email_verified", "preferred_username"}),
])
@pytest.mark.parametrize("response_type", ["code", "id_token"])
async def test_oidcc_scope_claims(rp, scope, claims, response_type):
    await signed_in(rp)
    result = await rp.authorize(scope=scope, response_type=response_type)
    if response_type == "id_token":  # no access token: the claims go into the ID token
        assert claims <= (await rp.check_id_token(result["id_token"])).keys()
        return
    tokens = await rp.redeem(result["code"])
    info = json.loads((await rp.userinfo(tokens["access_token"])).body)
    assert claims <= info.keys()


@conformance("oidcc-alternate-happy-flow")
@pytest.mark.gen_test
async def test_oidcc_alternate_happy_flow(http_client, base_url, app):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url))
    query = urlencode([("nonce", "n-alt"), ("state", "s-alt"), ("scope", "email profile openid"),
                       ("redirect_uri", CB), ("response_type", "code"), ("client_id", "conf-client")])
    resp = await rp_.browser.fetch("/signin/v1/identifier/_/authorize?" + query)
    result = query_of(resp.headers["Location"])
    assert result["state"] == "s-alt"
    await rp_.check_id_token((await rp_.redeem(result["code"]))["id_token"], nonce="n-alt")


@conformance("oidcc-display-page")
@conformance("oidcc-display-popup")
@conformance("oidcc-login-hint")
@conformance("oidcc-ui-locales")
@conformance("oidcc-claims-locales")
@conformance("oidcc-ensure-request-with-acr-values-succeeds")
@conformance("oidcc-ensure-request-with-unknown-parameter-succeeds")
@pytest.mark.gen_test
@pytest.mark.parametrize("extra", [{"display": "page"}, {"display": "popup"},
                                   {"login_hint": "alice"}, {"ui_locales": "de-DE en"},
                                   {"claims_locales": "de"}, {"acr_values": "1 2"},
                                   {"extra": "foobar"}])
async def test_oidcc_harmless_parameters(rp, extra):
    await signed_in(rp)
    result = await rp.authorize(**extra)
    assert "error" not in result and result["code"]


@conformance("oidcc-prompt-login")
@pytest.mark.gen_test
async def test_oidcc_prompt_login(rp, core):  # noqa: F811
    await signed_in(rp)
    first = await rp.check_id_token((await rp.redeem((await rp.authorize())["code"]))["id_token"])
    resp = await rp.browser.fetch(rp.url(prompt="login"))
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")
    later = core.now
    core.now = lambda: later() + 2
    try:
        await sign_in(rp.browser)
        second = await rp.check_id_token(
            (await rp.redeem((await rp.authorize())["code"]))["id_token"])
    finally:
        core.now = later
    assert second["auth_time"] > first["auth_time"] and second["sub"] == first["sub"]


@conformance("oidcc-prompt-none-not-logged-in")
@pytest.mark.gen_test
async def test_oidcc_prompt_none_not_logged_in(rp):
    long_state = secrets.token_urlsafe(96)[:128]
    result = await rp.authorize(prompt="none", state=long_state)
    assert result["error"] == "login_required" and result["state"] == long_state


@conformance("oidcc-prompt-none-logged-in")
@pytest.mark.gen_test
async def test_oidcc_prompt_none_logged_in(rp):
    await signed_in(rp)
    first = await rp.check_id_token((await rp.redeem((await rp.authorize())["code"]))["id_token"])
    silent = await rp.authorize(prompt="none")
    second = await rp.check_id_token((await rp.redeem(silent["code"]))["id_token"])
    assert second["sub"] == first["sub"] and second["auth_time"] == first["auth_time"]


@conformance("oidcc-max-age-1")
@pytest.mark.gen_test
async def test_oidcc_max_age_1(rp, core):  # noqa: F811
    await signed_in(rp)
    later = core.now
    core.now = lambda: later() + 2  # "wait 1 s"
    try:
        resp = await rp.browser.fetch(rp.url(max_age="1"))
        assert resp.headers["Location"].startswith("/signin/v1/identifier?")
        await sign_in(rp.browser)
        claims = await rp.check_id_token(
            (await rp.redeem((await rp.authorize(max_age="1"))["code"]))["id_token"])
    finally:
        core.now = later
    assert claims["auth_time"] >= int(later()) + 1


@conformance("oidcc-max-age-10000")
@pytest.mark.gen_test
async def test_oidcc_max_age_10000(rp):
    await signed_in(rp)
    first = await rp.check_id_token((await rp.redeem((await rp.authorize())["code"]))["id_token"])
    again = await rp.check_id_token(
        (await rp.redeem((await rp.authorize(max_age="10000"))["code"]))["id_token"])
    assert again["auth_time"] == first["auth_time"] and again["sub"] == first["sub"]


@conformance("oidcc-id-token-hint")
@pytest.mark.gen_test
async def test_oidcc_id_token_hint(rp):
    await signed_in(rp)
    first = await rp.redeem((await rp.authorize())["code"])
    silent = await rp.authorize(prompt="none", id_token_hint=first["id_token"])
    second = await rp.check_id_token((await rp.redeem(silent["code"]))["id_token"])
    assert second["sub"] == (await rp.check_id_token(first["id_token"]))["sub"]


@conformance("oidcc-codereuse")
@conformance("oidcc-codereuse-30seconds")
@pytest.mark.gen_test
async def test_oidcc_codereuse(rp):
    await signed_in(rp)
    code = (await rp.authorize())["code"]
    tokens = await rp.redeem(code)
    status, body = await rp.token(grant_type="authorization_code", code=code,
                                  redirect_uri=CB)
    assert status == 400 and body["error"] == "invalid_grant" and body.get("error_description")
    assert (await rp.userinfo(tokens["access_token"])).code == 401  # revoked with the replay


@conformance("oidcc-ensure-registered-redirect-uri")
@pytest.mark.gen_test
async def test_oidcc_ensure_registered_redirect_uri(rp):
    await signed_in(rp)
    resp = await rp.browser.fetch(rp.url(redirect_uri=CB + "/" + secrets.token_hex(4)))
    assert resp.code == 400 and "Location" not in resp.headers


@conformance("oidcc-ensure-post-request-succeeds")
@pytest.mark.gen_test
async def test_oidcc_post_request(rp):
    await signed_in(rp)
    body = urlencode({"client_id": "conf-client", "redirect_uri": CB, "response_type": "code",
                      "scope": "openid", "state": "post-s", "nonce": "post-n"})
    resp = await rp.browser.fetch("/signin/v1/identifier/_/authorize", method="POST", body=body,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    result = query_of(resp.headers["Location"])
    assert result["state"] == "post-s" and result["code"]


@conformance("oidcc-request-uri-unsigned-supported-correctly-or-rejected-as-unsupported")
@pytest.mark.gen_test
async def test_oidcc_request_uri_rejected_as_unsupported(rp):
    await signed_in(rp)
    result = await rp.authorize(request_uri="https://conf.example.test/request.jwt")
    assert result["error"] == "request_uri_not_supported"


@conformance("oidcc-unsigned-request-object-supported-correctly-or-rejected-as-unsupported")
@pytest.mark.gen_test
async def test_oidcc_unsigned_request_object_processed(rp):
    await signed_in(rp)
    obj = _unsigned({"client_id": "conf-client", "response_type": "code", "state": "from-object",
                     "nonce": "obj-n", "scope": "openid", "redirect_uri": CB})
    result = await rp.authorize(request=obj, state=None, nonce=None)
    assert result["state"] == "from-object"
    await rp.check_id_token((await rp.redeem(result["code"]))["id_token"], nonce="obj-n")


@conformance("oidcc-ensure-request-object-with-redirect-uri")
@pytest.mark.gen_test
async def test_oidcc_request_object_with_redirect_uri(http_client, base_url, app):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url, "conf-two", "https://two.example.test/a"))
    inner = "https://two.example.test/q?foo=bar"
    resp = await rp_.browser.fetch(rp_.url(request=_unsigned({"redirect_uri": inner})))
    assert resp.headers["Location"].startswith(inner + "&")


@conformance("oidcc-claims-essential")
@pytest.mark.gen_test
async def test_oidcc_claims_essential(rp):
    await signed_in(rp)
    claims = json.dumps({"userinfo": {"name": {"essential": True}}})
    tokens = await rp.redeem((await rp.authorize(claims=claims))["code"])
    assert json.loads((await rp.userinfo(tokens["access_token"])).body)["name"] == "Alice Example"


@conformance("oidcc-refresh-token")
@pytest.mark.gen_test
async def test_oidcc_refresh_token(http_client, base_url, rp):
    await signed_in(rp)
    tokens = await rp.redeem((await rp.authorize(scope="openid offline_access"))["code"])
    refresh = tokens["refresh_token"]
    assert len(refresh) >= 32 and all(c.isalnum() or c in "-_" for c in refresh)
    other = RP(http_client, base_url, "conf-client2", "https://conf2.example.test/cb")
    status, body = await other.token(grant_type="refresh_token", refresh_token=refresh)
    assert status == 400 and body["error"] == "invalid_grant"
    status, new = await rp.token(grant_type="refresh_token", refresh_token=refresh)
    assert status == 200, new
    old_claims = await rp.check_id_token(tokens["id_token"])
    new_claims = await rp.check_id_token(new["id_token"])
    assert new_claims["sub"] == old_claims["sub"] and new_claims["iss"] == old_claims["iss"]  # Core §12.2
    assert new_claims["aud"] == old_claims["aud"]


@conformance("oidcc-ensure-request-with-valid-pkce-succeeds")
@pytest.mark.gen_test
async def test_oidcc_valid_pkce(rp):
    await signed_in(rp)
    verifier, challenge = pkce_pair()
    result = await rp.authorize(code_challenge=challenge, code_challenge_method="S256")
    assert (await rp.redeem(result["code"], code_verifier=verifier))["access_token"]


@conformance("oidcc-discovery-endpoint-verification")
@pytest.mark.gen_test
async def test_oidcc_discovery_endpoint_verification(http_client, base_url, app):  # noqa: F811
    doc = json.loads((await http_client.fetch(base_url + "/.well-known/openid-configuration")).body)
    assert doc["issuer"] == "https://idp.example.test"
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                 "end_session_endpoint", "check_session_iframe"):
        assert doc[name].startswith(doc["issuer"] + "/"), name
    assert "openid" in doc["scopes_supported"] and "public" in doc["subject_types_supported"]
    assert {"code", "id_token", "code id_token"} <= set(doc["response_types_supported"])
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert doc["claims_parameter_supported"] is True
    jwks = json.loads((await http_client.fetch(base_url + "/konnect/v1/jwks.json")).body)
    # every key public, with a kid and for signatures; an RSA key names no alg (it signs the
    # RSA family), a key pinned to one alg names it (RFC 7517 §4.4: alg is optional)
    assert jwks["keys"] and all("d" not in k and k.get("kid") and k.get("use", "sig") == "sig"
                                for k in jwks["keys"])


@conformance("oidcc-ensure-redirect-uri-in-authorization-request")
@pytest.mark.gen_test
async def test_oidcc_redirect_uri_required(http_client, base_url, app):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url, "conf-two", "https://two.example.test/a"))
    resp = await rp_.browser.fetch(rp_.url(redirect_uri=None))
    assert resp.code == 400 and "Location" not in resp.headers


@conformance("oidcc-redirect-uri-query-OK")
@conformance("oidcc-redirect-uri-query-mismatch")
@conformance("oidcc-redirect-uri-query-added")
@pytest.mark.gen_test
@pytest.mark.parametrize("uri,ok", [("https://two.example.test/q?foo=bar", True),
                                    ("https://two.example.test/q?foo=baz", False),
                                    ("https://two.example.test/a?foo=bar", False)])
async def test_oidcc_redirect_uri_query(http_client, base_url, app, uri, ok):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url, "conf-two", uri))
    resp = await rp_.browser.fetch(rp_.url())
    if ok:
        assert resp.code == 302 and resp.headers["Location"].startswith(uri + "&code=")
    else:
        assert resp.code == 400 and "Location" not in resp.headers


@conformance("oidcc-redirect-uri-regfrag")
def test_oidcc_redirect_uri_regfrag():
    """Registration validates entries as the YAML registry does (shared.clients.parse_entry);
    the HTTP path of /konnect/v1/register is tests/token/test_registration.py."""
    from shared.clients import RegistryError, parse_entry
    with pytest.raises(RegistryError, match="fragment"):
        parse_entry({"id": "x", "redirect_uris": ["https://rp.example.test/cb#frag"]})


@conformance("oidcc-ensure-client-assertion-with-iss-aud-succeeds")
@conformance("fapi2-ensure-client-assertion-with-wrong-aud-fails")
@pytest.mark.gen_test
@pytest.mark.parametrize("aud,ok", [("https://idp.example.test", True),
                                    ("https://idp.example.test/konnect/v1/token", True),
                                    ("https://other.example", False)])
async def test_client_assertion_audience(http_client, base_url, app, aud, ok):  # noqa: F811
    from shared import jose
    signer = SigningKey(kid="c1", public=CLIENT_KEY.public_key(), algs=frozenset({"ES256"}),
                        alg="ES256", private=CLIENT_KEY)
    now = int(time.time())
    assertion = jose.sign({"iss": "conf-jwt", "sub": "conf-jwt", "aud": aud, "exp": now + 60,
                           "jti": secrets.token_hex(8)}, signer)
    resp = await http_client.fetch(base_url + "/konnect/v1/token", method="POST", raise_error=False,
                                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                                   body=urlencode({
                                       "grant_type": "refresh_token", "refresh_token": "x",
                                       "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                       "client_assertion": assertion}))
    body = json.loads(resp.body)
    # authenticated: the grant itself is what fails; not authenticated: invalid_client
    assert body["error"] == ("invalid_grant" if ok else "invalid_client")


@conformance("oidcc-rp-initiated-logout")
@conformance("oidcc-rp-initiated-logout-no-state")
@pytest.mark.gen_test
@pytest.mark.parametrize("logout_state", ["bye", None])
async def test_oidcc_rp_initiated_logout(rp, logout_state):
    await signed_in(rp)
    tokens = await rp.redeem((await rp.authorize())["code"])
    resp = await _logout(rp, id_token_hint=tokens["id_token"], post_logout_redirect_uri=LOGGED_OUT,
                         state=logout_state)
    assert resp.code == 302
    assert resp.headers["Location"] == LOGGED_OUT + (f"?state={logout_state}" if logout_state else "")
    assert (await rp.authorize(prompt="none"))["error"] == "login_required"


@conformance("oidcc-rp-initiated-logout-only-state")
@conformance("oidcc-rp-initiated-logout-no-params")
@conformance("oidcc-rp-initiated-logout-no-post-logout-redirect-uri")
@conformance("oidcc-rp-initiated-logout-no-id-token-hint")
@pytest.mark.gen_test
@pytest.mark.parametrize("params", [{"state": "only"}, {}, {"hint": True},
                                    {"client_id": "conf-client",
                                     "post_logout_redirect_uri": LOGGED_OUT}])
async def test_oidcc_rp_initiated_logout_asks_the_user(rp, params):
    await signed_in(rp)
    tokens = await rp.redeem((await rp.authorize())["code"])
    if params.pop("hint", False):
        params["id_token_hint"] = tokens["id_token"]
    resp = await _logout(rp, **params)
    # no redirect without asking: a confirmation page (the user is still signed in)
    assert resp.code == 200 and b'id="endsession"' in resp.body and "Location" not in resp.headers
    assert "error" not in await rp.authorize(prompt="none")


@conformance("oidcc-rp-initiated-logout-bad-id-token-hint")
@conformance("oidcc-rp-initiated-logout-modified-id-token-hint")
@conformance("oidcc-rp-initiated-logout-bad-post-logout-redirect-uri")
@conformance("oidcc-rp-initiated-logout-query-added-to-post-logout-redirect-uri")
@pytest.mark.gen_test
@pytest.mark.parametrize("case", ["bad-hint", "alg-none-hint", "bad-uri", "query-added"])
async def test_oidcc_rp_initiated_logout_refuses(rp, case):
    await signed_in(rp)
    hint = (await rp.redeem((await rp.authorize())["code"]))["id_token"]
    uri = LOGGED_OUT
    if case == "bad-hint":
        hint = hint[:-10] + "A" * 10
    elif case == "alg-none-hint":
        claims = rp_jwt.get_unverified_claims(hint)
        hint = _unsigned(claims)
    elif case == "bad-uri":
        uri = "https://evil.example/logged-out"
    else:
        uri = LOGGED_OUT + "?extra=1"
    resp = await _logout(rp, id_token_hint=hint, post_logout_redirect_uri=uri, state="s")
    assert "Location" not in resp.headers and resp.code in (200, 400)


@conformance("fapi2-ensure-authorization-code-is-bound-to-client")
@pytest.mark.gen_test
async def test_code_is_bound_to_client(http_client, base_url, rp):
    await signed_in(rp)
    code = (await rp.authorize())["code"]
    other = RP(http_client, base_url, "conf-client2", "https://conf2.example.test/cb")
    status, body = await other.token(grant_type="authorization_code", code=code, redirect_uri=CB)
    assert status == 400 and body["error"] == "invalid_grant"


@conformance("fapi2-ensure-token-endpoint-fails-with-expired-auth-code")
@pytest.mark.gen_test(timeout=20)
async def test_expired_code(rp, core):  # noqa: F811
    import asyncio

    from shared.grants import Grant
    from tests.support.op import ALICE
    grant = Grant(client_id="conf-client", identity=ALICE, scopes=["openid"], redirect_uri=CB,
                  auth_time=int(time.time()), sid="sid", created=int(time.time()))
    code = await core.store.put_code(grant.to_record(), 1)  # a one-second code lifetime
    await asyncio.sleep(1.5)
    status, body = await rp.token(grant_type="authorization_code", code=code, redirect_uri=CB)
    assert status == 400 and body["error"] == "invalid_grant"


@conformance("fapi2-incorrect-pkce-code-verifier-rejected")
@conformance("fapi2-ensure-pkce-code-verifier-required")
@pytest.mark.gen_test
@pytest.mark.parametrize("verifier", ["wrong" * 10, None])
async def test_pkce_verifier(rp, verifier):
    await signed_in(rp)
    _, challenge = pkce_pair()
    code = (await rp.authorize(code_challenge=challenge, code_challenge_method="S256"))["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CB}
    if verifier:
        form["code_verifier"] = verifier
    status, body = await rp.token(**form)
    assert status == 400 and body["error"] == "invalid_grant"


@conformance("fapi2-ensure-authorization-request-with-long-state")
@pytest.mark.gen_test
async def test_long_state(rp):
    await signed_in(rp)
    state = "s" * 1500
    result = await rp.authorize(state=state)
    assert result.get("state") == state or result.get("error") == "invalid_request"


@conformance("fapi2-refresh-token-requires-client-authentication")
@pytest.mark.gen_test
async def test_refresh_requires_client_authentication(rp):
    await signed_in(rp)
    tokens = await rp.redeem((await rp.authorize(scope="openid offline_access"))["code"])
    status, body = await rp.token(auth="none", grant_type="refresh_token",
                                  refresh_token=tokens["refresh_token"])
    assert status in (400, 401) and body["error"] in ("invalid_client", "invalid_request")


@conformance("fapi2-ensure-request-object-signature-algorithm-is-not-none")
@pytest.mark.gen_test
async def test_request_object_alg_none_refused_when_alg_registered(http_client, base_url, app):  # noqa: F811
    rp_ = await signed_in(RP(http_client, base_url, "conf-ro", "https://ro.example.test/cb"))
    result = await rp_.authorize(request=_unsigned({"state": "unsigned"}))
    assert result["error"] == "invalid_request_object" and "code" not in result


@conformance("fapi2-ensure-response-type-token-fails")
@pytest.mark.gen_test
async def test_response_type_token_fails(rp):
    await signed_in(rp)
    result = await rp.authorize(response_type="token")
    assert result["error"] == "unsupported_response_type" and "access_token" not in result
