"""Request objects (OIDC Core §6.1): signed with the client's keys, alg pinned, or unsigned;
they supersede the query and survive the sign-in hand-off."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import jose
from shared.keys import SigningKey
from tests.support.browser import Browser, authorize_url, query_of, sign_in
from tests.support.clients import EC_KEY, REQUEST_OBJECT_CLIENTS, RSA_KEY
from tests.support.op import ISSUER, REGISTRY

OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed(claims: dict, key=RSA_KEY, kid: str = "ro-1", alg: str = "RS256") -> str:
    signer = SigningKey(kid=kid, public=key.public_key(), algs=frozenset({alg}), alg=alg,
                        private=key)
    return jose.sign(claims, signer, typ="oauth-authz-req+jwt")


def unsigned(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'none'})}.{enc(claims)}."


def ro_url(request: str, **params) -> str:
    base = {"client_id": "ro-rp", "redirect_uri": "https://ro.example.test/cb",
            "response_type": "code", "scope": "openid", "state": "q-state", "nonce": None}
    base.update(params)
    return authorize_url(request=request, **base)


def _b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


pytestmark = pytest.mark.op(registry=REGISTRY + REQUEST_OBJECT_CLIENTS)


@pytest.mark.gen_test
async def test_signed_request_object_supersedes_the_query(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    obj = signed({"iss": "ro-rp", "aud": ISSUER, "client_id": "ro-rp", "response_type": "code",
                  "redirect_uri": "https://ro.example.test/other", "state": "obj-state",
                  "scope": "openid profile", "nonce": "obj-nonce",
                  "exp": int(time.time()) + 300})
    resp = await b.fetch(ro_url(obj))
    assert resp.code == 302, resp.body
    location = resp.headers["Location"]
    assert location.startswith("https://ro.example.test/other?")
    result = query_of(location)
    assert result["state"] == "obj-state" and result["scope"] == "openid profile"


@pytest.mark.gen_test
async def test_unsigned_request_object_is_accepted_for_a_client_without_a_pinned_alg(
        http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(unsigned({"state": "u-state"})))
    assert resp.code == 302 and query_of(resp.headers["Location"])["state"] == "u-state"


@pytest.mark.gen_test
@pytest.mark.parametrize("make,why", [
    (lambda: signed({"state": "x"}, key=OTHER_KEY), "signed by a key that is not the client's"),
    (lambda: signed({"state": "x"})[:-4] + "AAAA", "tampered signature"),
    (lambda: signed({"state": "x", "exp": int(time.time()) - 3600}), "expired"),
    (lambda: signed({"state": "x", "nbf": int(time.time()) + 3600}), "not yet valid"),
    (lambda: signed({"state": "x", "iss": "someone-else"}), "iss is not the client"),
    (lambda: signed({"state": "x", "aud": "https://other.example"}), "audience"),
    (lambda: signed({"client_id": "web-rp"}), "client_id differs"),
    (lambda: signed({"response_type": "token"}), "response_type differs"),
    (lambda: signed({"max_age": "ten"}), "max_age has the wrong type"),
    (lambda: signed({"claims": "not-an-object"}), "claims type"),
    (lambda: "not.a.jwt", "garbage"),
    (lambda: "x" * 20000, "too large"),
])
async def test_bad_request_objects_are_refused(http_client, base_url, make, why):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(make()))
    assert resp.code == 302, why
    result = query_of(resp.headers["Location"])
    assert resp.headers["Location"].startswith("https://ro.example.test/cb?"), why
    assert result["error"] == "invalid_request_object" and result["state"] == "q-state", why
    assert result["iss"] == ISSUER


@pytest.mark.gen_test
@pytest.mark.parametrize("params,where", [
    ({"response_mode": "fragment"}, "fragment"),
    ({"response_type": "code id_token", "nonce": "n"}, "fragment"),
    ({"response_type": "code id_token", "nonce": "n", "response_mode": "query"}, "fragment"),
    ({"response_mode": "form_post"}, "form_post"),
    ({"response_mode": "query"}, "query"),
])
async def test_bad_request_object_error_travels_as_the_response_would(http_client, base_url,
                                                                       params, where):
    """The error goes where the response would have gone (OAuth 2.0 Multiple Response
    Types §2.1, §5; Form Post Response Mode §2), as every other authorization error."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(signed({"state": "x"}, key=OTHER_KEY), **params))
    if where == "form_post":
        assert resp.code == 200 and b'name="error" value="invalid_request_object"' in resp.body
        return
    assert resp.code == 302, resp.body
    location = urlsplit(resp.headers["Location"])
    part = location.fragment if where == "fragment" else location.query
    assert dict(parse_qsl(part))["error"] == "invalid_request_object", location


@pytest.mark.gen_test
async def test_pinned_alg_refuses_unsigned_and_other_algs(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    url = lambda obj: ro_url(obj, client_id="ro-pinned", redirect_uri="https://pinned.example.test/cb")  # noqa: E731
    ok = await b.fetch(url(signed({"state": "p"}, key=EC_KEY, kid="ec-1", alg="ES256")))
    assert query_of(ok.headers["Location"]).get("code")
    for bad in (unsigned({"state": "p"}), signed({"state": "p"})):
        resp = await b.fetch(url(bad))
        assert query_of(resp.headers["Location"])["error"] == "invalid_request_object"


@pytest.mark.gen_test
async def test_request_object_of_an_unverified_redirect_is_an_error_page(http_client, base_url):
    resp = await Browser(http_client, base_url).fetch(
        ro_url(signed({"state": "x"}, key=OTHER_KEY), redirect_uri="https://evil.example/cb"))
    assert resp.code == 400 and "Location" not in resp.headers


@pytest.mark.gen_test
async def test_request_object_cannot_redirect_to_an_unregistered_uri(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(signed({"redirect_uri": "https://evil.example/cb"})))
    assert resp.code == 400 and "Location" not in resp.headers


@pytest.mark.gen_test
async def test_request_object_survives_the_sign_in_hand_off(http_client, base_url):
    b = Browser(http_client, base_url)
    resp = await b.fetch(ro_url(signed({"state": "h-state", "scope": "openid email"})))
    hand_off = query_of(resp.headers["Location"])
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")
    assert hand_off["state"] == "h-state" and hand_off["scope"] == "openid email"
    assert "request" not in hand_off


@pytest.mark.gen_test
@pytest.mark.parametrize("header", [
    {"alg": "none", "crit": ["x-custom"], "x-custom": True},
    {"alg": "none", "jku": "https://evil.example/jwks.json"},
    {"alg": "none", "x5u": "https://evil.example/cert.pem"},
])
async def test_unsigned_request_object_with_crit_or_key_headers_is_refused(
        http_client, base_url, header):
    """RFC 7515 §4.1.11: a JWS whose `crit` lists an extension the recipient does not
    understand is invalid; an Unsecured JWT is a JWS with alg none (RFC 7519 §6). The
    signed path already refused it (jose.check_header); the unsigned one did not."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(f"{_b64(header)}.{_b64({'state': 'crit-state'})}."))
    assert resp.code == 302, resp.body
    result = query_of(resp.headers["Location"])
    assert result.get("error") == "invalid_request_object", result
    assert result["state"] == "q-state"  # the query's, not the object's


@pytest.mark.gen_test
async def test_plain_unsigned_request_object_still_works(http_client, base_url):
    """OIDC Registration §2: without a registered alg, `none` may be used (as Konnect's
    oidc/provider/handlers.go)."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(ro_url(f"{_b64({'alg': 'none'})}.{_b64({'state': 'fine'})}."))
    assert resp.code == 302 and query_of(resp.headers["Location"])["state"] == "fine"
