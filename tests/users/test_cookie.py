"""The cookie identity manager: a web application's own session, asked at authorize
(shared/users/cookie.py), against a web-app stand-in."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import tornado.httpserver

from shared.config import ConfigError, load_settings
from shared.deps import Core
from shared.identity import public_subject
from tests.support.http import basic
from tests.support.fixtures import serve_on_one_origin
from tests.support.op import ISSUER, make_state, settings_for

SESSIONS = {"s-alice": {"sub": "alice", "name": "Alice Web", "email": "alice@web.test", "id": 7}}


SEEN: list = []


class WebAppMe(tornado.web.RequestHandler):
    """The web application's "who is signed in" endpoint, as Konnect's cookie backend expects."""

    def post(self) -> None:
        SEEN.append(dict(self.request.headers))
        if self.get_cookie("webapp") == "broken":
            self.set_status(500)
            return self.finish("oops")
        user = SESSIONS.get(self.get_cookie("webapp") or "")
        if user is None:
            self.set_status(401)
            return self.finish()
        self.set_status(202)
        self.finish(json.dumps(user))


@pytest.fixture
def webapp(io_loop):
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/me", WebAppMe)]))
    server.add_sockets([sock])
    SEEN.clear()
    yield f"http://127.0.0.1:{port}/me"
    server.stop()


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("cookie-state"))


@pytest.fixture
def core(state, redis_url, webapp, io_loop):
    settings = settings_for("authorize", state, redis_url, [
        "--sign-in-uri", "https://webapp.example.test/login", "cookie", webapp, "webapp lang"])
    core = Core.with_users(settings)
    yield core
    io_loop.run_sync(core.close)


@pytest.fixture
def app(core):
    return serve_on_one_origin(core, ("authorize", "token", "userinfo"))


def authorize_url(**params) -> str:
    base = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb",
            "response_type": "code", "scope": "openid profile email konnect/id", "state": "st",
            "nonce": "n"}
    base.update(params)
    return "/konnect/v1/authorize?" + urlencode(base)  # the cookie manager's, as Konnect


async def get(http_client, base_url, path, cookie=""):
    headers = {"Cookie": cookie} if cookie else {}
    return await http_client.fetch(base_url + path, follow_redirects=False, raise_error=False,
                                   headers={**headers, "Accept-Language": "de", "User-Agent": "UA/1"})


def params_of(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.mark.gen_test
async def test_signed_in_web_app_user_gets_a_code_and_userinfo_replays(http_client, base_url, webapp):
    resp = await get(http_client, base_url, authorize_url(),
                     "webapp=s-alice; lang=en; secret-other=do-not-forward")
    assert resp.code == 302, resp.body
    result = params_of(resp.headers["Location"])
    assert result["state"] == "st" and result["code"]
    forwarded = SEEN[-1]
    assert forwarded["Cookie"] == "webapp=s-alice; lang=en"  # only the configured names
    assert forwarded["X-Konnect-Request"].startswith("1/") and forwarded["Accept-Language"] == "de"
    tok = await http_client.fetch(base_url + "/konnect/v1/token", method="POST", raise_error=False,
                                  headers={"Authorization": basic("trusted-rp", "other-secret")},
                                  body=urlencode({"grant_type": "authorization_code",
                                                  "code": result["code"],
                                                  "redirect_uri": "https://trusted.example.test/cb"}))
    assert tok.code == 200, tok.body
    access = json.loads(tok.body)["access_token"]
    claims = json.loads(__import__("base64").urlsafe_b64decode(access.split(".")[1] + "=="))
    assert claims["sub"] == public_subject("alice", "cookie")
    assert "s-alice" not in access  # the forwarded cookies are sealed, never in clear
    assert claims["kc.identity"]["cookie.v"]
    SESSIONS["s-alice"]["name"] = "Alice Renamed"
    info = await http_client.fetch(base_url + "/konnect/v1/userinfo",
                                   headers={"Authorization": "Bearer " + access})
    body = json.loads(info.body)
    assert body["name"] == "Alice Renamed" and body["email"] == "alice@web.test" and body["id"] == 7
    assert SEEN[-1]["Cookie"] == "webapp=s-alice; lang=en"  # replayed
    # the web session ends: the token no longer gets claims
    session = SESSIONS.pop("s-alice")
    try:
        gone = await http_client.fetch(base_url + "/konnect/v1/userinfo", raise_error=False,
                                       headers={"Authorization": "Bearer " + access})
        assert gone.code == 401
    finally:
        SESSIONS["s-alice"] = session


@pytest.mark.gen_test
async def test_not_signed_in_goes_to_the_web_apps_sign_in(http_client, base_url):
    resp = await get(http_client, base_url, authorize_url(), "webapp=unknown")
    assert resp.code == 302
    location = resp.headers["Location"]
    assert location.startswith("https://webapp.example.test/login?")
    back = params_of(location)
    assert back["oauth"] == "1" and back["continue"].startswith(
        ISSUER + "/konnect/v1/authorize?")
    assert params_of(back["continue"])["client_id"] == "trusted-rp"
    SEEN.clear()
    none = await get(http_client, base_url, authorize_url(prompt="none"))
    assert params_of(none.headers["Location"])["error"] == "login_required"
    assert not SEEN  # no cookie with an allowed name: the web app is not even asked


@pytest.mark.gen_test
async def test_web_app_failure_is_503_not_a_sign_in(http_client, base_url):
    resp = await get(http_client, base_url, authorize_url(), "webapp=broken")
    assert resp.code == 503 and b"Traceback" not in resp.body


def test_cookie_manager_needs_its_arguments_and_a_sign_in_uri(state, redis_url):
    for extra, needle in ((["cookie", "http://x/me", "a"], "sign-in-uri"),
                          (["--sign-in-uri", "https://x/login", "cookie"], "two arguments"),
                          (["--sign-in-uri", "https://x/login", "cookie", "ftp://x", "a"], "http")):
        with pytest.raises(ConfigError, match=needle):
            load_settings(["--iss", ISSUER, "--redis-url", redis_url, *extra], {},
                          service="authorize")


def test_cookie_manager_can_publish_the_web_apps_own_endpoints():
    from shared.discovery import document
    from shared.keys import Keyring  # noqa: F401
    settings = load_settings([
        "--iss", "https://idp.example.test", "--sign-in-uri", "https://app.example/login",
        "--authorization-endpoint-uri", "https://app.example/authorize",
        "--endsession-endpoint-uri", "https://app.example/logout",
        "cookie", "https://app.example/me", "sid"], {}, service="token")

    class Keys:
        signing_algs = ["RS256"]
    doc = document(settings, Keys())
    assert doc["authorization_endpoint"] == "https://app.example/authorize"
    assert doc["end_session_endpoint"] == "https://app.example/logout"
