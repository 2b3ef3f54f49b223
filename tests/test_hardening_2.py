"""The second review's fixes, over HTTP with the four services on one origin, real Redis and
the users-file backend (the fixtures of test_flow):

1. untrusted JSON nested too deeply is a 400/401/redirected error, never a 500
   (security.md CR-05; RFC 8259 §9 lets a parser limit nesting);
2. a logon whose user the backend no longer returns is no session at authorize and hello,
   and the tokens carry the user's current claims (OIDC Core §3.1.2.3);
3. dynamic registration compares normalised origins for "no redirect URIs into the OP",
   also for post-logout redirect URIs (RFC 6454 §4, RFC 9700 §4.11);
4. a code issued before a sign-out is refused (RFC 6749 §5.2 invalid_grant), and a
   refresh in the sign-out's second returns an access token that works, both read in the
   grant's one Redis round trip;
5. `Allow` on every 405 (RFC 9110 §15.5.6) and HEAD on GET pages (§9.3.2).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import time
from urllib.parse import urlencode

import pytest
import yaml

from services.token.register import parse_registration
from shared import jose
from shared.clients import normal_origin
from shared.errors import OAuth2Error
from shared.session import LOGON_COOKIE
from shared.users.userfile import UsersFileBackend
from tests.support.op import ISSUER, make_core, make_state, pkce_pair
from tests.test_flow import Browser, app, authorize_url, query_of, sign_in  # noqa: F401
from tests.test_identifier_hardening import cheap_hash
from tests.test_token_service import basic

TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}
TRUSTED_AUTH = basic("trusted-rp", "other-secret")
ALICE_ENTRY = {"username": "alice", "password": cheap_hash("wonderland"), "name": "Alice Example",
               "email": "alice@example.test", "email_verified": True, "id": 1001,
               "uuid": "u-alice"}
DEEP = "[" * 3000 + "]" * 3000          # past every parser's limit (json: RecursionError)
MIDDLE = '{"a":' * 300 + "1" + "}" * 300  # parses in orjson and json, re-encodes in neither


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


HEAD_OK = b64(json.dumps({"alg": "RS256", "typ": "JWT"}))
JWT_DEEP_HEADER = b64(DEEP) + "." + b64("{}") + ".AAAA"
JWT_DEEP_PAYLOAD = HEAD_OK + "." + b64(DEEP) + ".AAAA"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("hardening2-state"))


@pytest.fixture
def users_path(tmp_path):
    path = tmp_path / "users.yaml"
    write_users(path, [ALICE_ENTRY])
    return path


def write_users(path, entries) -> None:
    """Replace the users file as an operator's tool would (new inode: the backend reloads)."""
    tmp = str(path) + ".new"
    with open(tmp, "w") as stream:
        stream.write(yaml.safe_dump({"users": entries}))
    os.replace(tmp, path)


@pytest.fixture
def core(state, redis_url, users_path, io_loop):  # noqa: F811 (test_flow's app uses it)
    core = make_core("identifier", state, redis_url, ["--allow-dynamic-client-registration"])
    core.users = UsersFileBackend(str(users_path))
    yield core
    io_loop.run_sync(core.close)


async def signed_in(http_client, base_url) -> Browser:
    b = Browser(http_client, base_url)
    assert (await sign_in(b)).code == 200
    return b


async def token_request(b: Browser, form: dict, auth: str = TRUSTED_AUTH):
    return await b.http.fetch(b.base + "/konnect/v1/token", method="POST", raise_error=False,
                              headers={"Authorization": auth,
                                       "Content-Type": "application/x-www-form-urlencoded"},
                              body=urlencode(form))


async def userinfo(b: Browser, access_token: str) -> int:
    resp = await b.http.fetch(b.base + "/konnect/v1/userinfo", raise_error=False,
                              headers={"Authorization": "Bearer " + access_token})
    return resp.code


async def code_for(b: Browser, scope: str = "openid profile") -> str:
    resp = await b.fetch(authorize_url(response_type="code", scope=scope, prompt="none", **TRUSTED))
    assert resp.code == 302, resp.body
    return query_of(resp.headers["Location"])["code"]


# --- 1. deeply nested JSON (security.md CR-05) -------------------------------------------

@pytest.mark.parametrize("text", [DEEP, "[" * 65 + "]" * 65, MIDDLE, '{"a": NaN}', "\"\\ud800\""])
def test_parse_json_refuses_nesting_and_malformed_input_with_a_value_error(text):
    with pytest.raises(ValueError):
        jose.parse_json(text.encode())
    with pytest.raises(ValueError):
        jose.parse_json(text)


def test_parse_json_takes_ordinary_documents():
    doc = {"id_token": {"sub": {"values": ["a", "b"]}}, "n": [[[1]]]}
    assert jose.parse_json(json.dumps(doc).encode()) == doc
    nested = "[" * jose.MAX_JSON_DEPTH + "]" * jose.MAX_JSON_DEPTH
    assert jose.parse_json(nested) is not None
    flat = json.dumps([[i] for i in range(500)])  # many brackets, shallow: parsed
    assert len(jose.parse_json(flat)) == 500


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("name", ["hello", "logon", "consent"])
async def test_identifier_api_deep_json_is_400(http_client, base_url, name):
    b = Browser(http_client, base_url)
    resp = await b.fetch(f"/signin/v1/identifier/_/{name}", method="POST", body=DEEP,
                         headers={"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                                  "Origin": base_url})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"


@pytest.mark.gen_test(timeout=30)
async def test_registration_deep_json_is_400(http_client, base_url):
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST", body=DEEP,
                                   headers={"Content-Type": "application/json"}, raise_error=False)
    assert resp.code == 400, resp.body
    assert json.loads(resp.body)["error"] == "invalid_request"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("token", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
async def test_userinfo_bearer_with_deep_json_is_401(http_client, base_url, token):
    b = Browser(http_client, base_url)
    assert await userinfo(b, token) == 401


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("assertion", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
@pytest.mark.parametrize("endpoint", ["token", "revoke", "introspect"])
async def test_client_assertion_with_deep_json_is_401(http_client, base_url, assertion, endpoint):
    form = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion, "grant_type": "authorization_code", "code": "x",
            "token": "x"}
    resp = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method="POST",
                                   raise_error=False, body=urlencode(form),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.code == 401 and json.loads(resp.body)["error"] == "invalid_client"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("token", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
async def test_introspecting_or_revoking_a_deep_token_is_no_500(http_client, base_url, token):
    for endpoint in ("introspect", "revoke"):
        resp = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method="POST",
                                       raise_error=False, body=urlencode({"token": token}),
                                       headers={"Authorization": TRUSTED_AUTH,
                                                "Content-Type": "application/x-www-form-urlencoded"})
        assert resp.code == 200, (endpoint, resp.body)


AUTHORIZE_DEEP = {
    "claims": {"claims": DEEP},
    "claims nested 300": {"claims": '{"id_token":' + MIDDLE + "}"},
    "request object payload": {"request": b64('{"alg":"none"}') + "." + b64(DEEP) + "."},
    "request object header": {"request": b64(DEEP) + "." + b64("{}") + "."},
    "request object claims member": {"request": b64('{"alg":"none"}') + "."
                                     + b64('{"claims":{"id_token":' + MIDDLE + "}}") + "."},
    "id_token_hint header": {"id_token_hint": JWT_DEEP_HEADER},
    "id_token_hint payload": {"id_token_hint": JWT_DEEP_PAYLOAD},
}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("case", list(AUTHORIZE_DEEP))
async def test_authorize_deep_json_is_an_error_response(http_client, base_url, case):
    """Signed in, a verified redirect_uri: the error goes back to the client (OIDC Core
    §3.1.2.6), as for any other malformed parameter."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none", **TRUSTED,
                                       **AUTHORIZE_DEEP[case]))
    assert resp.code == 302, resp.body
    error = query_of(resp.headers["Location"]).get("error")
    assert error in ("invalid_request", "invalid_request_object"), resp.headers["Location"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("hint", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
async def test_end_session_with_a_deep_hint_is_400(http_client, base_url, hint):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch("/signin/v1/identifier/_/endsession?" + urlencode({"id_token_hint": hint}))
    assert resp.code == 400 and b"id_token_hint is invalid" in resp.body


# --- 2. a user the backend no longer returns has no session --------------------------------

@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("change", ["disabled", "removed"])
async def test_a_logon_of_a_disabled_or_removed_user_is_no_session(http_client, base_url,
                                                                   users_path, change):
    b = await signed_in(http_client, base_url)
    silent = authorize_url(response_type="id_token token", prompt="none", **TRUSTED)
    before = query_of((await b.fetch(silent)).headers["Location"])
    assert before.get("access_token") and (await b.api("hello", {"state": "h"})).code == 200
    write_users(users_path, [dict(ALICE_ENTRY, disabled=True)] if change == "disabled" else [])
    assert LOGON_COOKIE in b.cookies  # the sealed cookie is still there and still valid
    after = await b.fetch(silent)
    assert after.code == 302 and query_of(after.headers["Location"]) == {
        "error": "login_required", "error_description": "the user is not signed in",
        "state": "xyz", "iss": ISSUER}
    for response_type in ("code", "id_token token"):
        page = await b.fetch(authorize_url(response_type=response_type, **TRUSTED))
        assert page.code == 302 and page.headers["Location"].startswith("/signin/v1/identifier?")
    select = await b.fetch(authorize_url(prompt="select_account", **TRUSTED))
    assert select.headers["Location"].startswith("/signin/v1/identifier?")
    hello = await b.api("hello", {"state": "h2", "flow": "oidc", **TRUSTED})
    assert hello.code == 204 and hello.headers["Kopano-Konnect-State"] == "h2"
    # enabled again: the same logon is a session again (nothing was written)
    write_users(users_path, [ALICE_ENTRY])
    assert (await b.api("hello", {"state": "h3"})).code == 200
    assert query_of((await b.fetch(silent)).headers["Location"]).get("access_token")


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


# --- 3. registration: normalised origins (RFC 6454 §4) -------------------------------------

LOCAL = "https://localhost:34753"
INTO_LOCAL = ["https://localhost:034753/signin/v1/identifier/_/authorize",
              "https://%6cocalhost:34753/signin/v1/identifier/_/authorize",
              "https://LOCALHOST.:34753/konnect/v1/token",
              "https://127.0.0.1:34753/signin/v1/identifier/_/authorize",
              "https://127.1:34753/signin/v1/identifier/_/authorize",
              "https://[::1]:34753/signin/v1/identifier/_/authorize",
              "https://app.localhost:34753/signin/v1/identifier/_/endsession",
              "https://2130706433:34753/signin/v1/identifier/_/authorize"]


def _register(issuer: str, **metadata):
    body = {"redirect_uris": ["https://rp.example.test/cb"], **metadata}
    return parse_registration(body, client_id="dyn.x", signing_algs=["PS256"], issuer=issuer)


@pytest.mark.parametrize("uri", INTO_LOCAL)
def test_redirect_and_post_logout_uris_into_a_loopback_op_are_refused(uri):
    with pytest.raises(OAuth2Error) as caught:
        _register(LOCAL, redirect_uris=[uri])
    assert caught.value.error == "invalid_redirect_uri"
    with pytest.raises(OAuth2Error) as caught:
        _register(LOCAL, post_logout_redirect_uris=[uri])
    assert caught.value.error == "invalid_client_metadata"
    assert "own endpoints" in caught.value.description


@pytest.mark.parametrize("uri", ["https://localhost:34754/signin/v1/identifier/_/authorize",
                                 "https://rp.example.test/signin/v1/identifier/_/authorize",
                                 "https://localhost:34753/app/callback"])
def test_other_origins_or_paths_stay_registrable(uri):
    client = _register(LOCAL, redirect_uris=[uri], post_logout_redirect_uris=[uri])
    assert client.redirect_uris == (uri,) and client.post_logout_redirect_uris == (uri,)


@pytest.mark.parametrize("uri,expected", [
    ("https://IDP.example.test:443/x", "https://idp.example.test:443"),
    ("https://idp.example.test/x", "https://idp.example.test:443"),
    ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example:443"),
    ("https://b%C3%BCcher.example/", "https://xn--bcher-kva.example:443"),
    ("https://0x7f.0.0.1:8/", "https://localhost:8"),
    ("https://[0:0::1]:8/", "https://localhost:8"),
    ("https://[2001:DB8::1]/", "https://[2001:db8::1]:443"),
    ("com.example.app:/cb", "com.example.app:"),
    ("https://a%2fb.example/", None), ("https://host:99999/", None), ("https://1.2.3.256/", None),
])
def test_normal_origin(uri, expected):
    assert normal_origin(uri) == expected


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("member,error", [("redirect_uris", "invalid_redirect_uri"),
                                          ("post_logout_redirect_uris", "invalid_client_metadata")])
@pytest.mark.parametrize("uri", ["https://IDP.EXAMPLE.TEST:443/signin/v1/identifier/_/authorize",
                                 "https://%69dp.example.test/signin/v1/identifier/_/endsession",
                                 "https://idp.example.test:0443/konnect/v1/token"])
async def test_registration_endpoint_refuses_uris_into_the_op(http_client, base_url, member,
                                                              error, uri):
    body = {"redirect_uris": ["https://rp.example.test/cb"], member: [uri]}
    resp = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                   body=json.dumps(body), raise_error=False,
                                   headers={"Content-Type": "application/json"})
    assert resp.code == 400 and json.loads(resp.body)["error"] == error, resp.body


# --- 4. sign-out and the token endpoint -----------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_a_code_issued_before_a_sign_out_is_refused_after_it(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    code = await code_for(b, "openid profile offline_access")
    assert (await b.api("logoff", {"state": "o"})).code == 200
    resp = await token_request(b, {"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": TRUSTED["redirect_uri"]})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_grant"
    assert await core.store.code_redemption(code) is None  # what the script wrote is undone
    # a new sign-in (the next second, api.py) gives codes that work
    assert (await sign_in(b)).code == 200
    code = await code_for(b)
    resp = await token_request(b, {"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": TRUSTED["redirect_uri"]})
    assert resp.code == 200 and await userinfo(b, json.loads(resp.body)["access_token"]) == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_refresh_in_the_sign_outs_second_gives_a_working_access_token(
        http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    code = await code_for(b, "openid offline_access")
    tokens = json.loads((await token_request(b, {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    await asyncio.sleep(1.02 - time.time() % 1)  # early in a second: sign out and refresh in it
    assert (await b.api("logoff", {"state": "o"})).code == 200
    signed_out = math.floor(time.time())
    started = time.monotonic()
    resp = await token_request(b, {"grant_type": "refresh_token",
                                   "refresh_token": tokens["refresh_token"]})
    assert resp.code == 200  # offline_access outlives the browser sign-out (architecture.md)
    refreshed = json.loads(resp.body)
    _, claims = core.keyring.verify(refreshed["access_token"])
    assert claims["iat"] > signed_out and time.monotonic() - started < 2.5
    assert await userinfo(b, refreshed["access_token"]) == 200
    assert await userinfo(b, tokens["access_token"]) == 401  # the one from before: revoked


class Calls:
    """The Store operations a request makes (each `_call` is one Redis round trip)."""

    def __init__(self, store):
        self.ops: list = []
        original = store._call

        async def counted(op, fn):
            self.ops.append(op)
            return await original(op, fn)
        store._call = counted


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


# --- 5. Allow on 405, HEAD on GET pages (RFC 9110 §15.5.6, §9.3.2) -------------------------

@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", ["/signin/v1/static/app.js", "/signin/v1/static/app.css"])
async def test_static_files_405_carries_allow(http_client, base_url, path):
    resp = await http_client.fetch(base_url + path, method="POST", body=b"x", raise_error=False)
    assert resp.code == 405 and resp.headers["Allow"] == "GET, HEAD"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("endpoint", ["token", "revoke", "introspect"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_form_endpoints_405_lists_options_too(http_client, base_url, endpoint, method):
    resp = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method=method,
                                   raise_error=False, body=b"" if method == "PUT" else None,
                                   allow_nonstandard_methods=True)
    assert resp.code == 405 and resp.headers["Allow"] == "POST, OPTIONS"
    preflight = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method="OPTIONS",
                                        raise_error=False)
    assert preflight.code == 204


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", ["/konnect/v1/session/check-session.html",
                                  "/signin/v1/identifier", "/signin/v1/chooseaccount",
                                  "/signin/v1/consent?client_id=web-rp&scope=openid",
                                  "/signin/v1/welcome", "/signin/v1/goodbye"])
async def test_head_on_get_pages_answers_like_get_without_a_body(http_client, base_url, path):
    get = await http_client.fetch(base_url + path, raise_error=False)
    head = await http_client.fetch(base_url + path, method="HEAD", raise_error=False)
    assert get.code == head.code == 200 and head.body == b""
    for name in ("Content-Type", "Cache-Control", "X-Frame-Options", "Content-Language"):
        assert head.headers.get(name) == get.headers.get(name), name
    assert "Content-Security-Policy" in head.headers  # a fresh nonce, so not the same value
    assert int(head.headers["Content-Length"]) > 0


@pytest.mark.gen_test(timeout=30)
async def test_head_on_end_session_is_405_and_signs_nobody_out(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch("/signin/v1/identifier/_/endsession", method="HEAD")
    assert resp.code == 405 and resp.headers["Allow"] == "GET, POST"
    assert LOGON_COOKIE in b.cookies and (await b.api("hello", {"state": "h"})).code == 200
