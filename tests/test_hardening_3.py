"""The third review's fixes, over HTTP with the four services on one origin, real Redis and
the users-file backend (the fixtures of test_flow, as test_hardening_2):

1. userinfo releases only what the OP knows about the user and the grant allows, never a
   claims request's `value` (OIDC Core §5.3.2, §5.5.1): a signed userinfo JWT cannot carry
   `kc.isAccessToken`, `kc.identity`, `nonce`...; it is neither an access token nor an
   `id_token_hint` to us (RFC 8725 §2.8, §3.12);
2. `konnect/raw_sub`: one `sub` from the authorization endpoint, the token endpoint and
   userinfo (OIDC Core §3.3.3.6, §5.3.2; konnect.md §6.1, §6.8);
3. end session does not redirect to a dynamic client's post-logout URI with nobody signed
   in and no `id_token_hint` of that client (RFC 9700 §4.11.2);
4. `session_state` hashes the redirect URI's origin as the browser serialises it
   (RFC 6454 §6.1; OIDC Session Management 1.0 §3);
5. the end-session confirmation acts only for the logon it was shown to;
6. a refresh with a narrower scope narrows the claims request, and userinfo releases a
   requested standard claim only with its scope (RFC 6749 §6; konnect.md §6.9), except for
   a trusted client's claims request, which is authorized as asked (konnect.md §6.9).
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlencode

import pytest
import yaml

from shared.clients import serialized_origin
from services.userinfo.handlers import userinfo_claims
from shared import scopes as scopelib
from shared.identity import Identity
from shared.session import BROWSER_STATE_COOKIE, LOGON_COOKIE
from shared.tokens import TokenError
from shared.users.userfile import UsersFileBackend
from tests.support.op import ISSUER, REGISTRY, make_core, make_state
from tests.test_flow import Browser, app, authorize_url, query_of, sign_in  # noqa: F401
from tests.test_identifier_hardening import cheap_hash
from tests.test_token_service import basic

END = "/signin/v1/identifier/_/endsession"
TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}
TRUSTED_AUTH = basic("trusted-rp", "other-secret")
WEB_RP = {"client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb"}
ODD_CB = "https://RP.Odd.Example.test:443/cb"
REGISTRY_3 = REGISTRY + f"""
  - id: odd-origin-rp
    trusted: yes
    secret: odd-secret
    redirect_uris: ["{ODD_CB}"]
"""
ALICE_ENTRY = {"username": "alice", "password": cheap_hash("wonderland"), "name": "Alice Example",
               "email": "alice@example.test", "email_verified": True, "id": 1001,
               "uuid": "u-alice"}
BOB_ENTRY = {"username": "bob", "password": cheap_hash("builder"), "name": "Bob",
             "email": "bob@example.test", "id": 1002, "uuid": "u-bob"}
# What review r3 sent (reproduction 01): a claims request whose values would make a userinfo
# JWT signed by the OP look like a Kopano access token of another user.
FORGE = {"userinfo": {
    "kc.isAccessToken": {"value": True},
    "kc.identity": {"value": {"kc.i.id": "VICTIM", "kc.i.un": "victim"}},
    "kc.authorizedScopes": {"value": ["openid", "kopano/gc"]},
    "kc.provider": {"value": "identifier-kc"}, "nonce": {"value": "n-forged"},
    "auth_time": {"value": 1}, "acr": {"value": "2"}, "azp": {"value": "x"},
    "custom": {"value": "chosen by the client"}, "email": {"value": "forged@example.test"}}}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("hardening3-state"), registry=REGISTRY_3)


@pytest.fixture
def core(state, redis_url, tmp_path, io_loop):  # noqa: F811 (test_flow's app uses it)
    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump({"users": [ALICE_ENTRY, BOB_ENTRY]}))
    core = make_core("identifier", state, redis_url, ["--allow-dynamic-client-registration"])
    core.users = UsersFileBackend(str(users))
    yield core
    io_loop.run_sync(core.close)


async def signed_in(http_client, base_url, username="alice", password="wonderland") -> Browser:
    b = Browser(http_client, base_url)
    assert (await sign_in(b, username, password)).code == 200
    return b


async def post_form(b: Browser, path: str, form: dict, auth: str = TRUSTED_AUTH):
    return await b.http.fetch(b.base + path, method="POST", raise_error=False,
                              headers={"Authorization": auth,
                                       "Content-Type": "application/x-www-form-urlencoded"},
                              body=urlencode(form))


async def userinfo(b: Browser, access_token: str):
    return await b.http.fetch(b.base + "/konnect/v1/userinfo", raise_error=False,
                              headers={"Authorization": "Bearer " + access_token})


async def register(b: Browser, **metadata) -> dict:
    body = {"redirect_uris": ["https://dyn.example.test/cb"], **metadata}
    resp = await b.http.fetch(b.base + "/konnect/v1/register", method="POST", raise_error=False,
                              body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert resp.code == 201, resp.body
    return json.loads(resp.body)


async def consented_code(b: Browser, client: dict, scope: str, claims: dict) -> str:
    """A code for a client that needs consent: authorize, consent, authorize again."""
    target = {"client_id": client["client_id"], "redirect_uri": client["redirect_uris"][0]}
    start = authorize_url(scope=scope, claims=json.dumps(claims), **target)
    assert (await b.fetch(start)).headers["Location"].startswith("/signin/v1/consent?")
    ok = await b.api("consent", {"state": "c1", "allow": True, "scope": scope, "ref": "xyz",
                                 "flow_nonce": "n-1", **target})
    assert ok.code == 200, ok.body
    resp = await b.fetch(start + "&" + urlencode({"konnect": "c1", "prompt": "none"}))
    assert resp.code == 302 and resp.headers["Location"].startswith(target["redirect_uri"])
    return query_of(resp.headers["Location"])["code"]


async def signed_userinfo(http_client, base_url) -> tuple[Browser, dict, str]:
    """Reproduction 01 end to end: a dynamic client registered for signed userinfo asks for
    the forging claims; the user consents to `openid` only. (browser, client, userinfo JWT)"""
    b = await signed_in(http_client, base_url)
    client = await register(b, userinfo_signed_response_alg="PS256")
    code = await consented_code(b, client, "openid", FORGE)
    tokens = await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": client["redirect_uris"][0]},
        auth=basic(client["client_id"], client["client_secret"]))
    assert tokens.code == 200, tokens.body
    resp = await userinfo(b, json.loads(tokens.body)["access_token"])
    assert resp.code == 200 and resp.headers["Content-Type"] == "application/jwt"
    return b, client, resp.body.decode()


# --- 1. userinfo releases no client-chosen values (OIDC Core §5.3.2, §5.5.1) ---------------

@pytest.mark.gen_test(timeout=30)
async def test_signed_userinfo_carries_no_claim_the_client_chose(http_client, base_url, core):
    _, client, jwt = await signed_userinfo(http_client, base_url)
    header, claims = core.keyring.verify(jwt)
    alice = await core.users.lookup("u-alice")
    # sub, and iss/aud of the signed variant (OIDC Core §5.3.2): nothing else was granted
    assert claims == {"sub": alice.sub, "iss": ISSUER, "aud": client["client_id"]}
    assert header["alg"] == "PS256" and header["typ"] == "JWT"


@pytest.mark.gen_test(timeout=30)
async def test_signed_userinfo_is_neither_an_access_token_nor_an_id_token_hint(
        http_client, base_url, core):
    """RFC 8725 §2.8 / §3.12: signed by the same keys, refused wherever another kind of
    JWT is expected here: Bearer at userinfo, introspection, id_token_hint at authorize and
    at end session."""
    b, client, jwt = await signed_userinfo(http_client, base_url)
    assert (await userinfo(b, jwt)).code == 401
    info = await post_form(b, "/konnect/v1/introspect", {"token": jwt})
    assert info.code == 200 and json.loads(info.body) == {"active": False}
    with pytest.raises(TokenError):
        core.tokens.validate_access_token(jwt)
    with pytest.raises(TokenError, match="not an ID token"):
        core.tokens.open_id_token_hint(jwt)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none", id_token_hint=jwt,
                                       **TRUSTED))
    assert resp.code == 302
    assert query_of(resp.headers["Location"])["error"] == "invalid_request"
    end = await b.fetch(END + "?" + urlencode({"id_token_hint": jwt}))
    assert end.code == 400 and b"id_token_hint is invalid" in end.body
    assert LOGON_COOKIE in b.cookies  # nobody was signed out by it


def test_our_validation_refuses_the_forged_payload_of_the_old_code(core):
    """Even the payload reproduction 01 got from the old code (kc.isAccessToken, kc.identity,
    no exp) is refused by our own validation: an access token has an `exp`."""
    forged = core.tokens.sign({"sub": "x", "iss": ISSUER, "aud": "web-rp", "jti": "j",
                               "kc.isAccessToken": True, "kc.identity": {"kc.i.id": "VICTIM"},
                               "kc.authorizedScopes": ["openid"]})
    with pytest.raises(TokenError, match="exp missing"):
        core.tokens.validate_access_token(forged)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("client_id", ["web-rp", "trusted-rp"])
async def test_userinfo_never_echoes_a_requested_value(http_client, base_url, core, client_id):
    b = Browser(http_client, base_url)
    alice = await core.users.lookup("u-alice")
    access = core.tokens.access_token(client_id=client_id, identity=alice, family="f",
                                      scopes=["openid", "email"], claims=FORGE).token
    body = json.loads((await userinfo(b, access)).body)
    # the backend's email, not the requested value; no other member
    assert body == {"sub": alice.sub, "email": "alice@example.test", "email_verified": True}


def test_userinfo_claims_take_only_known_claims_of_the_user():
    alice = Identity(raw_sub="u-alice", backend="identifier-users", username="alice",
                     name="Alice Example", email="alice@example.test")
    token = {"kc.authorizedScopes": ["openid"], "kc.authorizedClaims": FORGE}
    assert userinfo_claims(alice, token) == {"sub": alice.sub}
    assert userinfo_claims(alice, token, as_asked=True) == {"sub": alice.sub,
                                                            "email": "alice@example.test"}


# --- 2. konnect/raw_sub: one sub (OIDC Core §3.3.3.6, §5.3.2) -------------------------------

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


def test_subject_is_one_rule():
    alice = Identity(raw_sub="u-alice", backend="identifier-users", username="alice")
    assert scopelib.subject(alice, ["openid", "konnect/raw_sub"]) == "u-alice"
    assert scopelib.subject(alice, ["openid"]) == alice.sub != "u-alice"


@pytest.mark.gen_test(timeout=30)
async def test_end_session_takes_a_raw_sub_id_token_of_the_signed_in_user(http_client, base_url,
                                                                          core):
    """The token endpoint's ID token (raw `sub` before this review too) as hint."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none",
                                       scope="openid konnect/raw_sub", **TRUSTED))
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": query_of(resp.headers["Location"])["code"],
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    hint = tokens["id_token"]
    assert core.keyring.verify(hint)[1]["sub"] == "u-alice"
    end = await b.fetch(END + "?" + urlencode({
        "id_token_hint": hint, "state": "s", "post_logout_redirect_uri": TRUSTED["redirect_uri"]}))
    assert end.code == 302 and end.headers["Location"] == TRUSTED["redirect_uri"] + "?state=s"
    assert LOGON_COOKIE not in b.cookies


# --- 3. end session: no open redirector through a dynamic client (RFC 9700 §4.11.2) ----------

@pytest.mark.gen_test(timeout=30)
async def test_end_session_does_not_redirect_to_a_dynamic_client_without_its_hint(
        http_client, base_url, core):
    b = Browser(http_client, base_url)  # nobody signed in
    client = await register(b, post_logout_redirect_uris=["https://evil.example.test/phish"])
    params = {"client_id": client["client_id"], "state": "x",
              "post_logout_redirect_uri": "https://evil.example.test/phish"}
    resp = await b.fetch(END + "?" + urlencode(params))
    assert resp.code == 302 and resp.headers["Location"] == "/signin/v1/goodbye?done=1"
    # an ID token of another client does not vouch for this one
    other = core.tokens.id_token(client_id="web-rp", identity=await core.users.lookup("u-alice"))
    resp = await b.fetch(END + "?" + urlencode({**params, "id_token_hint": other}))
    assert resp.code == 400 and b"does not match" in resp.body
    # with an ID token of that client: back to its registered URI
    own = core.tokens.id_token(client_id=client["client_id"],
                               identity=await core.users.lookup("u-alice"))
    resp = await b.fetch(END + "?" + urlencode({**params, "id_token_hint": own}))
    assert resp.code == 302
    assert resp.headers["Location"] == "https://evil.example.test/phish?state=x"


@pytest.mark.gen_test(timeout=30)
async def test_end_session_still_redirects_for_a_static_client_with_nobody_signed_in(
        http_client, base_url):
    b = Browser(http_client, base_url)
    resp = await b.fetch(END + "?" + urlencode({
        "client_id": "web-rp", "state": "y", "post_logout_redirect_uri": WEB_RP["redirect_uri"]}))
    assert resp.code == 302 and resp.headers["Location"] == WEB_RP["redirect_uri"] + "?state=y"


# --- 4. session_state: the browser's origin (RFC 6454 §6.1) ---------------------------------

@pytest.mark.parametrize("uri,origin", [
    ("https://RP.Example.test:443/cb", "https://rp.example.test"),
    ("HTTPS://rp.example.test/cb?x=1", "https://rp.example.test"),
    ("https://rp.example.test:8443/cb", "https://rp.example.test:8443"),
    ("http://rp.example.test:80/cb", "http://rp.example.test"),
    ("http://rp.example.test:443/cb", "http://rp.example.test:443"),
    ("http://LOCALHOST:8080/cb", "http://localhost:8080"),
    ("http://127.0.0.1/cb", "http://127.0.0.1"),          # loopback names are not folded
    ("http://[::1]:8080/cb", "http://[::1]:8080"),
    ("https://[2001:DB8::1]:443/cb", "https://[2001:db8::1]"),
    ("https://Bücher.example/cb", "https://xn--bcher-kva.example"),
    ("com.example.app:/cb", "com.example.app:"),
])
def test_serialized_origin(uri, origin):
    assert serialized_origin(uri) == origin


@pytest.mark.gen_test(timeout=30)
async def test_session_state_hashes_the_browsers_origin(http_client, base_url):
    """OIDC Session Management 1.0 §3: the iframe recomputes the hash with the RP frame's
    `event.origin`, which the browser serialises lowercased and without the default port."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none", scope="openid",
                                       client_id="odd-origin-rp", redirect_uri=ODD_CB))
    assert resp.code == 302 and resp.headers["Location"].startswith(ODD_CB)
    digest, salt = query_of(resp.headers["Location"])["session_state"].split(".")
    text = f"odd-origin-rp https://rp.odd.example.test {b.cookies[BROWSER_STATE_COOKIE]} {salt}"
    assert hashlib.sha256(text.encode()).hexdigest() == digest


# --- 5. the end-session confirmation acts for its own logon only ------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_a_confirmation_token_does_not_sign_out_another_user(http_client, base_url):
    alice = await signed_in(http_client, base_url)
    page = await alice.fetch(END + "?" + urlencode({
        "client_id": "web-rp", "state": "a", "post_logout_redirect_uri": WEB_RP["redirect_uri"]}))
    assert page.code == 200
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": base_url}
    bob = await signed_in(http_client, base_url, "bob", "builder")
    resp = await bob.fetch(END, method="POST", body=urlencode({"confirm": confirm}), headers=form)
    assert resp.code == 400 and b"another sign-in" in resp.body
    assert LOGON_COOKIE in bob.cookies and (await bob.api("hello", {"state": "h"})).code == 200
    # the user it was shown to: signed out and sent back
    resp = await alice.fetch(END, method="POST", body=urlencode({"confirm": confirm}), headers=form)
    assert resp.code == 302 and resp.headers["Location"] == WEB_RP["redirect_uri"] + "?state=a"
    assert LOGON_COOKIE not in alice.cookies


# --- 6. narrowing: refresh and userinfo (RFC 6749 §6; konnect.md §6.9) ------------------------

@pytest.mark.gen_test(timeout=30)
async def test_a_narrowed_refresh_narrows_the_claims(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    claims = {"userinfo": {"email": None, "name": None}, "id_token": {"email": None}}
    resp = await b.fetch(authorize_url(response_type="code", prompt="none",
                                       scope="openid email profile offline_access",
                                       claims=json.dumps(claims), **TRUSTED))
    code = query_of(resp.headers["Location"])["code"]
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    assert core.keyring.verify(tokens["id_token"])[1]["email"] == "alice@example.test"
    assert json.loads((await userinfo(b, tokens["access_token"])).body)["email"]
    resp = await post_form(b, "/konnect/v1/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "scope": "openid profile offline_access"})
    assert resp.code == 200, resp.body
    narrowed = json.loads(resp.body)
    assert narrowed["scope"] == "openid profile offline_access"
    _, access = core.keyring.verify(narrowed["access_token"])
    assert access["kc.authorizedClaims"] == {"userinfo": {"name": None}, "id_token": {}}
    assert "email" not in core.keyring.verify(narrowed["id_token"])[1]
    info = json.loads((await userinfo(b, narrowed["access_token"])).body)
    assert "email" not in info and "email_verified" not in info and info["name"]
    # the grant keeps what was authorized: a refresh without `scope` has it all again
    resp = await post_form(b, "/konnect/v1/token", {
        "grant_type": "refresh_token", "refresh_token": narrowed["refresh_token"]})
    again = json.loads(resp.body)
    assert json.loads((await userinfo(b, again["access_token"])).body)["email"]


@pytest.mark.gen_test(timeout=30)
async def test_userinfo_releases_a_requested_standard_claim_only_with_its_scope(
        http_client, base_url, core):
    b = Browser(http_client, base_url)
    alice = await core.users.lookup("u-alice")
    claims = {"userinfo": {"email": None}}
    access = core.tokens.access_token(client_id="web-rp", identity=alice, scopes=["openid"],
                                      family="f", claims=claims).token
    assert json.loads((await userinfo(b, access)).body) == {"sub": alice.sub}
    # a trusted client's claims request is authorized as asked (konnect.md §6.9)
    trusted = core.tokens.access_token(client_id="trusted-rp", identity=alice, scopes=["openid"],
                                       family="f", claims=claims).token
    assert json.loads((await userinfo(b, trusted)).body)["email"] == "alice@example.test"


@pytest.mark.gen_test(timeout=30)
async def test_a_trusted_clients_claims_request_survives_a_refresh(http_client, base_url, core):
    """The Konnect behaviour kept: a trusted client asking `email` through `claims` without
    the `email` scope gets it at userinfo, after a refresh too (nothing was narrowed)."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none",
                                       scope="openid offline_access",
                                       claims=json.dumps({"userinfo": {"email": None}}), **TRUSTED))
    code = query_of(resp.headers["Location"])["code"]
    tokens = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": TRUSTED["redirect_uri"]})).body)
    assert json.loads((await userinfo(b, tokens["access_token"])).body)["email"]
    refreshed = json.loads((await post_form(b, "/konnect/v1/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "scope": "openid offline_access"})).body)
    assert json.loads((await userinfo(b, refreshed["access_token"])).body)["email"]


@pytest.mark.parametrize("scopes,within,expected", [
    (["openid"], None, {"userinfo": {"custom": None, "sub": None}}),
    (["openid", "email"], None, {"userinfo": {"email": None, "custom": None, "sub": None}}),
    # a refresh narrowing `profile email` to `profile`: email goes
    (["openid", "profile"], ["openid", "profile", "email"],
     {"userinfo": {"custom": None, "sub": None}}),
    # claims asked without their scope (a trusted client's) stay through the narrowing
    (["openid"], ["openid", "profile"], {"userinfo": {"email": None, "custom": None,
                                                      "sub": None}}),
])
def test_narrow_claims(scopes, within, expected):
    claims = {"userinfo": {"email": None, "custom": None, "sub": None}}
    assert scopelib.narrow_claims(claims, scopes, within=within) == expected
    assert scopelib.narrow_claims(None, scopes) is None

