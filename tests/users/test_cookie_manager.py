"""The cookie identity manager as Konnect's (identity/managers/cookie.go,
bootstrap/cookie.go): the authorization endpoint at /konnect/v1/authorize, no end session
endpoint unless one is configured, every client's scopes approved without consent
(`prompt=consent`: interaction_required), no `preferred_username`, `email_verified`
false, and `kc.identity` with `kc.i.id` and the sealed cookies only. Against a web
application stand-in (tests/support/webapp.py) and a real Redis."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest

from services.authorize.app import make_app as authorize_app
from shared import discovery
from shared.deps import Core
from shared.identity import public_subject
from tests.support.fixtures import serve_on_one_origin
from tests.support.op import ISSUER, SECRET, make_state, settings_for
from tests.support.webapp import WebApp

ALICE = {"sub": "alice", "name": "Alice Web", "email": "alice@web.test", "id": 7}
SIGN_IN = "https://webapp.example.test/login"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("cookie-manager"))


@pytest.fixture
def webapp(io_loop):
    app = WebApp()
    app.sessions["s-alice"] = ALICE
    yield app
    app.stop()


def cookie_settings(state, redis_url, webapp, *extra):
    return settings_for("authorize", state, redis_url, [
        "--sign-in-uri", SIGN_IN, "--allow-dynamic-client-registration=yes", *extra,
        "cookie", webapp.url, "webapp"])


@pytest.fixture
def core(state, redis_url, webapp, io_loop):
    core = Core.with_users(cookie_settings(state, redis_url, webapp))
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(core):
    return serve_on_one_origin(core, ("authorize", "token", "userinfo"))


def authorize_path(**params) -> str:
    base = {"client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb",
            "response_type": "code", "scope": "openid profile email konnect/id", "state": "st",
            "nonce": "n"}
    base.update(params)
    return "/konnect/v1/authorize?" + urlencode(base)


async def get(http_client, base_url, path, cookie="webapp=s-alice"):
    return await http_client.fetch(base_url + path, follow_redirects=False, raise_error=False,
                                   headers={"Cookie": cookie, "User-Agent": "UA/1"})


def result(resp) -> dict:
    parts = urlsplit(resp.headers["Location"])
    return {k: v[0] for k, v in parse_qs(parts.fragment or parts.query).items()}


def claims_of(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def test_authorization_endpoint_is_konnects_and_no_end_session_is_published(state, redis_url,
                                                                            webapp, core):
    settings = core.settings
    doc = discovery.document(settings, core.keyring)
    assert doc["authorization_endpoint"] == ISSUER + "/konnect/v1/authorize"
    assert "end_session_endpoint" not in doc
    assert {"name", "email", "email_verified"} <= set(doc["claims_supported"])
    assert not {"preferred_username", "given_name", "family_name"} & set(doc["claims_supported"])
    assert doc["scopes_supported"] == ["openid", "profile", "email", "konnect/id"]
    given = cookie_settings(state, redis_url, webapp, "--endsession-endpoint-uri",
                            "https://webapp.example.test/logout")
    assert discovery.document(given, core.keyring)["end_session_endpoint"] == \
        "https://webapp.example.test/logout"
    paths = {r.matcher.regex.pattern for r in authorize_app(settings, core).wildcard_router.rules}
    assert "/konnect/v1/authorize$" in paths
    assert "/signin/v1/identifier/_/authorize$" not in paths
    identifier = settings_for("authorize", state, redis_url)   # the identifier managers'
    paths = {r.matcher.regex.pattern
             for r in authorize_app(identifier, core).wildcard_router.rules}
    assert "/signin/v1/identifier/_/authorize$" in paths and "/konnect/v1/authorize$" not in paths


@pytest.mark.gen_test
async def test_every_client_is_approved_without_consent(http_client, base_url):
    resp = await get(http_client, base_url, authorize_path())     # web-rp is not trusted
    assert resp.code == 302 and resp.headers["Location"].startswith("https://rp.example.test/cb")
    answer = result(resp)
    assert answer["code"] and answer["scope"] == "openid profile email konnect/id"


@pytest.mark.gen_test
async def test_prompt_consent_is_interaction_required(http_client, base_url):
    for client in ("web-rp", "trusted-rp"):
        uri = {"web-rp": "https://rp.example.test/cb",
               "trusted-rp": "https://trusted.example.test/cb"}[client]
        resp = await get(http_client, base_url, authorize_path(client_id=client, redirect_uri=uri,
                                                               prompt="consent"))
        assert result(resp)["error"] == "interaction_required"


@pytest.mark.gen_test
async def test_a_dynamically_registered_client_gets_no_user_without_consent(http_client, base_url):
    reg = await http_client.fetch(base_url + "/konnect/v1/register", method="POST",
                                  body=json.dumps({"redirect_uris": ["https://dyn.example.test/cb"],
                                                   "client_name": "Anyone"}),
                                  headers={"Content-Type": "application/json"})
    client_id = json.loads(reg.body)["client_id"]
    resp = await get(http_client, base_url, authorize_path(
        client_id=client_id, redirect_uri="https://dyn.example.test/cb", prompt="none"))
    assert result(resp)["error"] == "consent_required" and "code" not in result(resp)


@pytest.mark.gen_test
async def test_claims_are_konnects_for_a_cookie_user(http_client, base_url):
    code = result(await get(http_client, base_url, authorize_path()))["code"]
    pair = f"web-rp:{quote(SECRET, safe='')}".encode()        # RFC 6749 §2.3.1 encoding
    tok = await http_client.fetch(
        base_url + "/konnect/v1/token", method="POST", raise_error=False,
        headers={"Authorization": "Basic " + base64.b64encode(pair).decode()},
        body=urlencode({"grant_type": "authorization_code", "code": code,
                        "redirect_uri": "https://rp.example.test/cb"}))
    assert tok.code == 200, tok.body
    access = json.loads(tok.body)["access_token"]
    identity = claims_of(access)["kc.identity"]
    assert set(identity) == {"kc.i.id", "cookie.v", "cookie.al", "cookie.ua"}
    assert identity["kc.i.id"] == "alice" and identity["cookie.ua"] == "UA/1"
    info = await http_client.fetch(base_url + "/konnect/v1/userinfo",
                                   headers={"Authorization": "Bearer " + access})
    sub = public_subject("alice", "cookie")
    assert json.loads(info.body) == {"sub": sub, "name": "Alice Web", "email": "alice@web.test",
                                     "email_verified": False, "id": 7, "username": sub}


@pytest.mark.gen_test
async def test_prompt_login_goes_to_the_web_apps_sign_in_and_continues_without_it(
        http_client, base_url, webapp):
    resp = await get(http_client, base_url, authorize_path(prompt="login"))
    assert resp.headers["Location"].startswith(SIGN_IN + "?")
    back = result(resp)["continue"]
    assert back.startswith(ISSUER + "/konnect/v1/authorize?") and result(resp)["oauth"] == "1"
    assert "prompt" not in parse_qs(urlsplit(back).query)
    seen = len(webapp.seen)
    chosen = await get(http_client, base_url, authorize_path(prompt="select_account"))
    assert "code" in result(chosen) and len(webapp.seen) == seen + 1  # ignored, as Konnect


@pytest.mark.gen_test
@pytest.mark.parametrize("cookie", ["webapp=s-alice; webapp=s-mallory",
                                    "webapp=s-mallory; lang=en; webapp=s-alice",
                                    "webapp=s-alice;webapp =s-alice"])
async def test_the_web_applications_cookie_sent_twice_is_refused(http_client, base_url,
                                                                 webapp, cookie):
    """A second session cookie of the web application (a sibling subdomain's or another
    path's) beside the user's: which session is the user's cannot be told, so neither is
    asked about nor picked by order (login CSRF otherwise): a page, no code."""
    webapp.sessions["s-mallory"] = dict(ALICE, sub="mallory", name="Mallory")
    resp = await get(http_client, base_url, authorize_path(prompt="none"), cookie=cookie)
    assert resp.code == 400 and b"more than once" in resp.body
    assert "Location" not in resp.headers
    assert webapp.seen == []
    alone = await get(http_client, base_url, authorize_path(prompt="none"))
    assert "code" in result(alone) and len(webapp.seen) == 1
