"""Where the authorization endpoint may send the browser: the client and redirect URI verified
first (errors before that are a page), exact matching with the native loopback rule,
implicit trust never into the OP, response modes and fragments."""

from __future__ import annotations

import re
import secrets
from html import unescape
from urllib.parse import urlencode, urlsplit

import pytest

from shared.clients import dynamic_record, parse_entry
from tests.support.browser import TRUSTED, WEB_RP, Browser, authorize_url, query_of, sign_in
from tests.support.clients import REQUEST_OBJECT_CLIENTS
from tests.support.op import ISSUER, REGISTRY

LOOK_ALIKES = [
    "https://rp.example.test/cb/", "https://rp.example.test/cb?x=1", "https://rp.example.test/cb#f",
    "https://rp.example.test/CB", "https://RP.example.test/cb", "http://rp.example.test/cb",
    "https://rp.example.test:443/cb", "https://rp.example.test:8443/cb",
    "https://rp.example.test.evil.example/cb", "https://evil.example/rp.example.test/cb",
    "https://rp.example.test@evil.example/cb", "https://evil.example@rp.example.test/cb",
    "https://rp.example.test/cb/../cb", "https://rp.example.test/./cb", "https://rp.example.test//cb",
    "https://rp.example.test/cb%2F..", "https://rp.example.test/c%62", "https://rp.example.test/cb%00",
    "https://rp.example.test/cb\x00", "https://rp.example.test/cb ", " https://rp.example.test/cb",
    "https://rp.example.test\\@evil.example/cb", "https://rp.example.test%2F@evil.example/cb",
    "https://xn--rp-example-test/cb", "https://rp.example.test./cb", "//rp.example.test/cb",
    "/cb", "rp.example.test/cb", "javascript:alert(1)//https://rp.example.test/cb",
    "data:text/html,https://rp.example.test/cb", "https://rp.example.test/cb\r\nLocation: x",
    "https:/rp.example.test/cb", "https:rp.example.test/cb", "HTTPS://rp.example.test/cb",
]


AUTHORIZE = ISSUER + "/signin/v1/identifier/_/authorize"


def posted(resp) -> dict:
    """The hidden fields of a form_post page (OAuth 2.0 Form Post Response Mode §2)."""
    body = resp.body.decode()
    return {unescape(k): unescape(v)
            for k, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', body)}


def form_action(resp) -> str:
    return unescape(re.search(r'<form method=post action="([^"]*)"', resp.body.decode()).group(1))


def chained(**outer) -> str:
    """The attack: an implicit response redirected into a second authorization request that
    fails early and redirects (with the first response's fragment, RFC 9110 §10.2.2)."""
    inner = AUTHORIZE + "?" + urlencode({"client_id": "trusted-rp",
                                         "redirect_uri": "https://trusted.example.test/cb",
                                         "response_type": "bogus", "state": "x"})
    return authorize_url(client_id="anything", redirect_uri=inner,
                         response_type="id_token token", **outer)


async def dynamic_client(core) -> dict:  # noqa: F811
    """A client as /konnect/v1/register stores it (public: PKCE)."""
    client_id = "dyn." + secrets.token_urlsafe(24)
    client = parse_entry({"id": client_id, "redirect_uris": ["https://attacker.example.test/cb"]})
    await core.store.put_client(client_id, dynamic_record(client, issued_at=0, expires_at=0), 600)
    return {"client_id": client_id, "redirect_uri": "https://attacker.example.test/cb",
            "code_challenge": "x" * 43, "code_challenge_method": "S256"}


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
async def test_form_post_is_an_auto_submitting_page_with_a_nonce(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(client_id="trusted-rp", redirect_uri="https://trusted.example.test/cb",
                                       response_type="code id_token", response_mode="form_post"))
    assert resp.code == 200 and b'action="https://trusted.example.test/cb"' in resp.body
    csp = resp.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"'.encode() in resp.body and b'name="code"' in resp.body


@pytest.mark.op(registry=REGISTRY + REQUEST_OBJECT_CLIENTS)
@pytest.mark.gen_test
@pytest.mark.parametrize("uri", LOOK_ALIKES)
async def test_look_alike_redirect_uris_get_a_page_not_a_redirect(http_client, base_url, uri):
    b = Browser(http_client, base_url)
    resp = await b.fetch(authorize_url(redirect_uri=uri))
    assert resp.code == 400 and "Location" not in resp.headers, uri


@pytest.mark.op(registry=REGISTRY + REQUEST_OBJECT_CLIENTS)
@pytest.mark.gen_test
@pytest.mark.parametrize("uri", ["http://127.0.0.1:51000/cb", "http://[::1]:4000/cb",
                                 "http://localhost:4000/cb"])
async def test_native_loopback_any_port_is_accepted(http_client, base_url, uri):
    resp = await Browser(http_client, base_url).fetch(authorize_url(
        client_id="public-app", redirect_uri=uri, prompt="none",
        code_challenge="x" * 43, code_challenge_method="S256"))
    assert resp.code == 302 and resp.headers["Location"].startswith(uri)


@pytest.mark.op(registry=REGISTRY + REQUEST_OBJECT_CLIENTS)
@pytest.mark.gen_test
@pytest.mark.parametrize("uri", ["http://127.0.0.1:51000/other", "https://127.0.0.1/cb",
                                 "http://evil.example/cb",
                                 "http://127.0.0.1.evil.example/cb"])
async def test_native_loopback_rule_is_narrow(http_client, base_url, uri):
    resp = await Browser(http_client, base_url).fetch(authorize_url(
        client_id="public-app", redirect_uri=uri, code_challenge="x" * 43,
        code_challenge_method="S256"))
    assert resp.code == 400 and "Location" not in resp.headers


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
