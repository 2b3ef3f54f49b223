"""The identifier JSON API as Konnect's (its docs/konnect-identifier-api-v1.yaml,
identifier/api.go `writeHelloResponse`, identifier/handlers.go `handleLogon`), described by
docs/identifier-api.yaml. Every response here, as everywhere in the suite, is also checked
against that description (tests/support/apicheck.py, the autouse fixture of
tests/conftest.py). The four services on one origin, real Redis, the users-file backend."""

from __future__ import annotations

import json

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from shared.session import LOGON_COOKIE
from tests.support import apicheck
from tests.support.browser import Browser, sign_in
from tests.support.op import ISSUER

WEB_RP = {"client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb"}
TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}
AUTHORIZE = ISSUER + "/signin/v1/identifier/_/authorize"


async def signed_in(http_client, base_url) -> Browser:
    b = Browser(http_client, base_url)
    assert (await sign_in(b)).code == 200
    return b


def body(resp) -> dict:
    return json.loads(resp.body)


# --- hello ----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_hello_for_an_untrusted_client_has_what_the_consent_screen_shows(http_client, base_url):
    b = await signed_in(http_client, base_url)
    resp = await b.api("hello", {"state": "h1", "flow": "oidc", **WEB_RP,
                                 "scope": "openid profile email offline_access kopano/kwm"})
    assert resp.code == 200
    hello = body(resp)
    assert hello["flow"] == "oidc" and hello["next"] == "consent"
    assert hello["continue_uri"] == AUTHORIZE
    assert hello["client"] == {"id": "web-rp", "display_name": "Web RP",
                               "redirect_uri": WEB_RP["redirect_uri"], "trusted": False}
    assert hello["scopes"] == dict.fromkeys(
        ["openid", "profile", "email", "offline_access", "kopano/kwm"], True)
    assert hello["meta"] == {"scopes": {
        "mapping": {"openid": "basic", "profile": "basic", "email": "basic"},
        "definitions": {"basic": {"priority": 20, "id": "scope_alias_basic"},
                        "offline_access": {"priority": 10, "id": "scope_offline_access"}}}}


@pytest.mark.gen_test
@pytest.mark.parametrize("flow", ["oauth", "consent", "oidc"])
async def test_hello_of_every_konnect_flow_continues_at_the_authorization_endpoint(
        http_client, base_url, flow):
    b = await signed_in(http_client, base_url)
    resp = await b.api("hello", {"state": "h", "flow": flow, "scope": "openid", **WEB_RP})
    assert resp.code == 200
    assert body(resp)["flow"] == flow and body(resp)["continue_uri"] == AUTHORIZE
    assert body(resp)["client"]["id"] == "web-rp"


@pytest.mark.gen_test
async def test_hello_for_a_trusted_client_skips_consent_unless_asked(http_client, base_url):
    b = await signed_in(http_client, base_url)
    plain = body(await b.api("hello", {"state": "h", "flow": "oidc", "scope": "openid", **TRUSTED}))
    assert plain["continue_uri"] == AUTHORIZE
    assert not {"next", "client", "scopes", "meta"} & plain.keys()
    asked = body(await b.api("hello", {"state": "h", "flow": "oidc", "scope": "openid",
                                       "prompt": "consent", **TRUSTED}))
    assert asked["next"] == "consent" and asked["client"]["trusted"] is True


@pytest.mark.gen_test
@pytest.mark.parametrize("request_", [
    {"client_id": "nobody", "redirect_uri": "https://rp.example.test/cb"},
    {"client_id": "web-rp", "redirect_uri": "https://evil.example/cb"},
    {"client_id": "web-rp"},
    {},
])
async def test_hello_of_a_flow_for_an_unknown_client_or_redirect_is_400(http_client, base_url,
                                                                         request_):
    b = await signed_in(http_client, base_url)
    resp = await b.api("hello", {"state": "h", "flow": "oidc", "scope": "openid", **request_})
    assert resp.code == 400 and body(resp)["error"] == "invalid_request"


@pytest.mark.gen_test
async def test_hello_of_another_flow_names_no_flow_and_no_client(http_client, base_url):
    b = await signed_in(http_client, base_url)
    for flow in ("", "something", "OIDC"):
        hello = body(await b.api("hello", {"state": "h", "flow": flow, **WEB_RP}))
        assert hello == {"state": "h", "flow": "", "success": True, "username": "alice",
                         "displayName": "Alice Example"}


@pytest.mark.gen_test
async def test_hello_with_prompt_none_is_400_signed_in_or_not(http_client, base_url):
    for b in (await signed_in(http_client, base_url), Browser(http_client, base_url)):
        resp = await b.api("hello", {"state": "h", "prompt": "none"})
        assert resp.code == 400


@pytest.mark.gen_test
async def test_hello_honours_max_age_and_refuses_one_that_is_no_number(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    assert (await b.api("hello", {"state": "h", "max_age": "soon"})).code == 400
    assert (await b.api("hello", {"state": "h", "max_age": "60"})).code == 200
    now = core.now
    core.now = lambda: now() + 120
    try:
        old = await b.api("hello", {"state": "h", "max_age": "60"})
        assert old.code == 204 and old.headers["Kopano-Konnect-State"] == "h"
        for no_limit in ("0", "-5", ""):
            assert (await b.api("hello", {"state": "h", "max_age": no_limit})).code == 200
    finally:
        core.now = now


# --- logon ----------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("params, status", [
    ([], 400), (None, 400), ("alice", 400), ([1, 2, 3], 400), (["alice", "wonderland", 1], 400),
    (["alice"], 204), (["alice", "wonderland"], 204), (["alice", "wonderland", "2"], 204),
    (["alice", "", "1"], 204), (["", "wonderland", "1"], 204),
])
async def test_logon_params_as_konnect(http_client, base_url, params, status):
    b = Browser(http_client, base_url)
    request = {"state": "l"} if params is None else {"state": "l", "params": params}
    resp = await b.api("logon", request)
    assert resp.code == status
    assert LOGON_COOKIE not in b.cookies
    if status == 204:
        assert resp.headers["Kopano-Konnect-State"] == "l"


@pytest.mark.gen_test
async def test_logon_mode_0_continues_the_signed_in_user_without_a_password(http_client, base_url):
    b = await signed_in(http_client, base_url)
    cookie = b.cookies[LOGON_COOKIE]
    resp = await b.api("logon", {"state": "m0", "params": ["alice", "", "0"],
                                 "hello": {"flow": "oidc", "scope": "openid", **WEB_RP}})
    assert resp.code == 200
    answer = body(resp)
    assert answer["success"] is True and answer["state"] == "m0"
    assert answer["hello"]["username"] == "alice" and answer["hello"]["next"] == "consent"
    # the logon is the one the password made: not renewed
    assert not resp.headers.get_list("Set-Cookie") and b.cookies[LOGON_COOKIE] == cookie
    without_hello = await b.api("logon", {"state": "m1", "params": ["alice", "", "0"]})
    assert without_hello.code == 200 and body(without_hello)["hello"] is None


@pytest.mark.gen_test
async def test_logon_mode_0_is_a_no_for_anyone_else(http_client, base_url, core):
    b = await signed_in(http_client, base_url)
    for params in (["bob", "", "0"], ["Alice", "", "0"], ["alice", "x", "0"], ["alice", ""]):
        resp = await b.api("logon", {"state": "n", "params": params})
        assert resp.code == 204, params
    stranger = Browser(http_client, base_url)
    assert (await stranger.api("logon", {"state": "n", "params": ["alice", "", "0"]})).code == 204
    # a forced re-authentication is not satisfied by the cookie (OIDC Core 3.1.2.1)
    for hello in ({"prompt": "login"}, {"prompt": "login consent"}):
        resp = await b.api("logon", {"state": "n", "params": ["alice", "", "0"], "hello": hello})
        assert resp.code == 204, hello
    now = core.now
    core.now = lambda: now() + 120
    try:
        resp = await b.api("logon", {"state": "n", "params": ["alice", "", "0"],
                                     "hello": {"max_age": "60"}})
        assert resp.code == 204
    finally:
        core.now = now


@pytest.mark.gen_test
@pytest.mark.parametrize("hello", [
    {"prompt": "none"}, {"max_age": "1.5"},
    {"flow": "oidc", "client_id": "nobody", "redirect_uri": "https://rp.example.test/cb"},
])
async def test_logon_with_a_bad_hello_is_400_and_signs_nobody_in(http_client, base_url, hello):
    b = Browser(http_client, base_url)
    resp = await b.api("logon", {"state": "l", "params": ["alice", "wonderland", "1"],
                                 "hello": hello})
    assert resp.code == 400
    assert LOGON_COOKIE not in b.cookies and not resp.headers.get_list("Set-Cookie")


@pytest.mark.gen_test
async def test_logon_with_hello_answers_the_hello_of_the_new_user(http_client, base_url):
    b = Browser(http_client, base_url)
    resp = await b.api("logon", {"state": "l", "params": ["alice", "wonderland", "1"],
                                 "hello": {"flow": "oidc", "scope": "openid", **TRUSTED}})
    assert resp.code == 200 and LOGON_COOKIE in b.cookies
    assert body(resp)["hello"]["continue_uri"] == AUTHORIZE
    assert body(resp)["hello"]["displayName"] == "Alice Example"


# --- the check against docs/identifier-api.yaml ---------------------------------------------


HELLO_URL = "https://op.example.test/signin/v1/identifier/_/hello"
JSON = [("Content-Type", "application/json; charset=utf-8")]


def hello_problems(status, answer, headers=JSON, method="POST", sent=b'{"state":"s"}'):
    data = json.dumps(answer).encode() if answer is not None else b""
    return apicheck.problems(method, HELLO_URL, sent, status, headers, data)


def test_the_description_accepts_konnects_answers():
    assert hello_problems(200, {"state": "s", "flow": "", "success": True, "username": "a"}) == []
    assert hello_problems(204, None, [("Kopano-Konnect-State", "s")]) == []
    assert hello_problems(400, {"error": "invalid_request", "error_description": "x"}) == []
    assert hello_problems(405, {"error": "method_not_allowed"}, JSON + [("Allow", "POST")],
                          method="GET") == []


@pytest.mark.parametrize("status, answer, headers, why", [
    (200, {"state": "s", "flow": "", "success": True, "secret": "x"}, JSON, "additional"),
    (200, {"state": "s", "flow": "oidc", "success": True}, JSON, "continue_uri"),
    (200, {"state": "s", "flow": "", "success": "yes"}, JSON, "success"),
    (200, {"state": "other", "flow": "", "success": True}, JSON, "came back as"),
    (204, None, [], "Kopano-Konnect-State"),
    (204, None, [("Kopano-Konnect-State", "other")], "came back as"),
    (500, {"error": "server_error"}, JSON, "status"),
    (400, {"error": "x", "trace": "File ..."}, JSON, "additional"),
])
def test_the_check_flags_answers_the_description_does_not_allow(status, answer, headers, why):
    found = hello_problems(status, answer, headers)
    assert found and why.lower() in " ".join(found).lower(), found


def test_the_check_flags_another_method_answered_as_if_allowed():
    assert hello_problems(200, {"state": "s", "flow": "", "success": True}, method="GET")


class _WrongHello(tornado.web.RequestHandler):
    def post(self) -> None:
        self.finish({"state": "s", "flow": "", "success": True, "leak": "internal"})


@pytest.fixture
def wrong_app():
    return tornado.web.Application([(r"/signin/v1/identifier/_/hello", _WrongHello)])


@pytest.mark.gen_test
async def test_a_mismatching_response_reaches_the_suites_check(http_client, base_url,
                                                               io_loop, wrong_app):
    """The hook on Tornado's client records what the autouse fixture fails a test for."""
    server = tornado.httpserver.HTTPServer(wrong_app)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        url = "http://127.0.0.1:%d/signin/v1/identifier/_/hello" % sockets[0].getsockname()[1]
        resp = await http_client.fetch(url, method="POST", body='{"state":"s"}')
        assert resp.code == 200
    finally:
        server.stop()
    found = apicheck.take()  # taken here, so this test itself passes
    assert len(found) == 1 and "leak" in found[0]
