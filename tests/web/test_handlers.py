"""The base handlers every service uses (shared/web.py, shared/service.py): errors in three
renderings, security headers, limits, proxies, 405s, stopping."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from shared import errors
from shared.errors import OAuth2Error, Unavailable
from shared.service import application, make_server
from shared.web import (AmbiguousCookie, BaseHandler, CORSHandler, PageHandler, cookie_pairs,
                        parse_networks, single_cookie)

SECRET = "s3cr3t-do-not-leak"


class Boom(BaseHandler):
    def get(self):
        kind = self.get_query_argument("kind")
        if kind == "oauth":
            raise OAuth2Error(errors.INVALID_GRANT, "code is invalid", detail=SECRET)
        if kind == "client":
            raise OAuth2Error(errors.INVALID_CLIENT, "client authentication failed",
                              auth_scheme="Basic")
        if kind == "bearer":
            raise OAuth2Error(errors.INVALID_TOKEN, auth_scheme="Bearer")
        if kind == "redirect":
            raise OAuth2Error(errors.ACCESS_DENIED, "denied", state="xyz", issuer="https://op",
                              redirect_uri="https://rp.example/cb?keep=1")
        if kind == "fragment":
            raise OAuth2Error(errors.ACCESS_DENIED, "denied", state="xyz", fragment=True,
                              redirect_uri="https://rp.example/cb")
        if kind == "down":
            raise Unavailable(f"redis at {SECRET} refused")
        raise RuntimeError(f"internal detail {SECRET}")


class Page(PageHandler):
    def get(self):
        raise OAuth2Error(errors.INVALID_REQUEST, "unknown <client>", detail=SECRET)


class Echo(BaseHandler):
    def get(self):
        self.write_json({"ip": self.client_ip, "proto": self.forwarded_proto,
                         "a": self.param("a")})

    def post(self):
        self.write_json(self.json_body())


@pytest.fixture
def app():
    deps = SimpleNamespace(trusted_networks=parse_networks(["127.0.0.0/8", "10.0.0.0/8"]))
    return application([(r"/boom", Boom, {"deps": deps}), (r"/page", Page, {"deps": deps}),
                        (r"/echo", Echo, {"deps": deps}),
                        (r"/cookie", CookieEcho, {"deps": deps})], deps)


@pytest.fixture
def untrusted_app():
    deps = SimpleNamespace(trusted_networks=())
    return application([(r"/echo", Echo, {"deps": deps})], deps)


async def fetch(http_client, url, **kw):
    kw.setdefault("raise_error", False)
    kw.setdefault("follow_redirects", False)
    return await http_client.fetch(url, **kw)


def assert_no_leak(resp):
    body = resp.body.decode()
    assert SECRET not in body and "Traceback" not in body and "redis" not in body.lower()


@pytest.fixture
def untrusted_server(untrusted_app, io_loop):
    import tornado.testing
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(untrusted_app)
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def limited_server(app, io_loop):
    import tornado.testing
    sock, port = tornado.testing.bind_unused_port()
    app.body_limit = 2048
    server = make_server(app, SimpleNamespace(max_body_size=2048))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def _raw(port: int, data: bytes, *, read: bool = False) -> bytes:
    """Send raw bytes on a new connection; optionally read the answer; then close."""
    import asyncio
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5) if read else b""
    writer.close()
    return answer


class PostOnly(BaseHandler):
    """As the token endpoints: `prepare` refuses the stub methods, with its own Allow."""

    def prepare(self):
        if self.request.method != "POST":
            self.set_header("Allow", "POST")
            raise OAuth2Error(errors.METHOD_NOT_ALLOWED, "use POST", status=405)

    def get(self):
        pass

    def post(self):
        self.write_json({})


class Declared(PostOnly):
    allow = ("POST", "OPTIONS")

    def prepare(self):
        if self.request.method != "POST":
            raise OAuth2Error(errors.METHOD_NOT_ALLOWED, "use POST", status=405)


@pytest.mark.gen_test
async def test_oauth_error_is_json_with_status_and_no_detail(http_client, base_url):
    resp = await fetch(http_client, base_url + "/boom?kind=oauth")
    assert resp.code == 400
    assert resp.headers["Content-Type"].startswith("application/json")
    assert json.loads(resp.body) == {"error": "invalid_grant", "error_description": "code is invalid"}
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    assert_no_leak(resp)


@pytest.mark.gen_test
async def test_invalid_client_is_401_with_basic_challenge(http_client, base_url):
    resp = await fetch(http_client, base_url + "/boom?kind=client")
    assert resp.code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert json.loads(resp.body)["error"] == "invalid_client"


@pytest.mark.gen_test
async def test_invalid_token_is_401_with_bearer_challenge(http_client, base_url):
    resp = await fetch(http_client, base_url + "/boom?kind=bearer")
    assert resp.code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.gen_test
async def test_verified_redirect_error_goes_to_redirect_uri_with_state_and_iss(http_client,
                                                                              base_url):
    resp = await fetch(http_client, base_url + "/boom?kind=redirect")
    assert resp.code == 302
    loc = resp.headers["Location"]
    assert loc.startswith("https://rp.example/cb?keep=1&error=access_denied")
    assert "state=xyz" in loc and "iss=https%3A%2F%2Fop" in loc


@pytest.mark.gen_test
async def test_fragment_redirect_error(http_client, base_url):
    resp = await fetch(http_client, base_url + "/boom?kind=fragment")
    assert resp.headers["Location"] == \
        "https://rp.example/cb#error=access_denied&error_description=denied&state=xyz"


@pytest.mark.gen_test
async def test_unavailable_dependency_is_503_temporarily_unavailable(http_client, base_url):
    resp = await fetch(http_client, base_url + "/boom?kind=down")
    assert resp.code == 503
    assert json.loads(resp.body)["error"] == "temporarily_unavailable"
    assert resp.headers["Retry-After"] == "5"
    assert_no_leak(resp)


@pytest.mark.gen_test
async def test_unexpected_exception_is_bare_server_error_without_trace(http_client, base_url,
                                                                       caplog):
    with caplog.at_level(logging.INFO):
        resp = await fetch(http_client, base_url + "/boom?kind=crash")
    assert resp.code == 500
    assert json.loads(resp.body) == {"error": "server_error",
                                     "error_description": "internal error"}
    assert_no_leak(resp)
    assert "Traceback" not in caplog.text


@pytest.mark.gen_test
async def test_page_error_is_escaped_html_not_redirect(http_client, base_url):
    resp = await fetch(http_client, base_url + "/page")
    assert resp.code == 400
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "Location" not in resp.headers
    assert "unknown &lt;client&gt;" in resp.body.decode()
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert_no_leak(resp)


@pytest.mark.gen_test
async def test_security_headers_on_every_answer(http_client, base_url):
    for path in ("/echo", "/nowhere", "/boom?kind=oauth", "/health-check"):
        resp = await fetch(http_client, base_url + path)
        assert resp.headers["X-Frame-Options"] == "DENY", path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path
        assert resp.headers["Referrer-Policy"] == "no-referrer", path
        assert "Server" not in resp.headers, path


@pytest.mark.gen_test
async def test_unknown_path_is_json_404(http_client, base_url):
    resp = await fetch(http_client, base_url + "/nowhere")
    assert resp.code == 404 and json.loads(resp.body)["error"] == "not_found"


@pytest.mark.gen_test
async def test_wrong_method_is_405_json(http_client, base_url):
    resp = await fetch(http_client, base_url + "/boom", method="DELETE")
    assert resp.code == 405 and json.loads(resp.body)["error"] == "method_not_allowed"


@pytest.mark.gen_test
async def test_health_check(http_client, base_url):
    resp = await fetch(http_client, base_url + "/health-check")
    assert resp.code == 200 and resp.body == b"ok\n"


@pytest.mark.gen_test
async def test_duplicate_parameter_is_invalid_request(http_client, base_url):
    resp = await fetch(http_client, base_url + "/echo?a=1&a=2")
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"
    resp = await fetch(http_client, base_url + "/echo?a=1")
    assert json.loads(resp.body)["a"] == "1"


@pytest.mark.gen_test
@pytest.mark.parametrize("body,ctype", [(b"{not json", "application/json"),
                                        (b"[1,2]", "application/json"),
                                        (b"{}", "text/plain")])
async def test_bad_json_body_is_invalid_request(http_client, base_url, body, ctype):
    resp = await fetch(http_client, base_url + "/echo", method="POST", body=body,
                       headers={"Content-Type": ctype})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"


@pytest.mark.gen_test
async def test_request_id_is_kept_when_sane_and_replaced_when_not(http_client, base_url):
    resp = await fetch(http_client, base_url + "/echo", headers={"X-Request-Id": "abcdef0123"})
    assert resp.headers["X-Request-Id"] == "abcdef0123"
    resp = await fetch(http_client, base_url + "/echo", headers={"X-Request-Id": "bad id!"})
    assert resp.headers["X-Request-Id"] != "bad id!" and len(resp.headers["X-Request-Id"]) == 16


@pytest.mark.gen_test
async def test_forwarded_headers_believed_from_trusted_proxy(http_client, base_url):
    resp = await fetch(http_client, base_url + "/echo", headers={
        "X-Forwarded-For": "203.0.113.9, 10.1.2.3", "X-Forwarded-Proto": "https"})
    body = json.loads(resp.body)
    assert body == {"ip": "203.0.113.9", "proto": "https", "a": None}


@pytest.mark.gen_test
async def test_spoofed_forwarded_for_cannot_skip_past_untrusted_hop(http_client, base_url):
    resp = await fetch(http_client, base_url + "/echo", headers={
        "X-Forwarded-For": "1.1.1.1, 198.51.100.7, 10.0.0.5"})
    assert json.loads(resp.body)["ip"] == "198.51.100.7"


@pytest.mark.gen_test
async def test_forwarded_headers_ignored_from_untrusted_peer(http_client, untrusted_server):
    resp = await fetch(http_client, untrusted_server + "/echo", headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    assert json.loads(resp.body) == {"ip": "127.0.0.1", "proto": "http", "a": None}


@pytest.mark.gen_test
async def test_oversized_body_is_refused_before_reading(http_client, limited_server):
    resp = await fetch(http_client, limited_server + "/echo", method="POST",
                       body=b"{" + b" " * 4096 + b"}", headers={"Content-Type": "application/json"})
    assert resp.code == 413
    assert json.loads(resp.body)["error"] == "request_too_large"
    ok = await fetch(http_client, limited_server + "/echo", method="POST", body=b"{}",
                     headers={"Content-Type": "application/json"})
    assert ok.code == 200


def test_location_refuses_without_verified_redirect_uri():
    with pytest.raises(ValueError):
        OAuth2Error(errors.ACCESS_DENIED).location()


def test_add_params_replaces_existing_keys_instead_of_duplicating():
    """Konnect added response parameters next to the RP's own, duplicating keys."""
    uri = errors.add_params("https://rp/cb?state=old&x=1", [("state", "new")])
    assert uri == "https://rp/cb?x=1&state=new"


def test_status_table():
    assert errors.status_for(errors.INVALID_CLIENT) == 401
    assert errors.status_for(errors.INSUFFICIENT_SCOPE) == 403
    assert errors.status_for(errors.TEMPORARILY_UNAVAILABLE) == 503
    assert errors.status_for(errors.INVALID_GRANT) == 400


@pytest.mark.gen_test
async def test_requests_that_never_reach_a_handler_are_not_left_in_flight(app, http_client):
    """A client gone mid-body, a chunked body over the limit: the in-flight count (what
    SIGTERM's drain waits for) comes back to 0 instead of holding every shutdown."""
    import asyncio

    import tornado.testing
    sock, port = tornado.testing.bind_unused_port()
    app.body_limit = 2048
    server = make_server(app, SimpleNamespace(max_body_size=2048))
    server.add_sockets([sock])
    try:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        for _ in range(3):  # announced 100 bytes, sent 5, gone
            await _raw(port, head + b"Content-Length: 100\r\n\r\n{\"a\":")
        over = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
            b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
        await _raw(port, over, read=True)
        for _ in range(50):
            if app.inflight == 0:
                break
            await asyncio.sleep(0.02)
        assert app.inflight == 0
        ok = await fetch(http_client, f"http://127.0.0.1:{port}/echo", method="POST",
                         body=b"{}", headers={"Content-Type": "application/json"})
        assert ok.code == 200 and app.inflight == 0
    finally:
        server.stop()


@pytest.mark.gen_test
async def test_header_blocks_above_the_proxies_limits_are_answered(app):
    """Caddy lets about 20 KB of headers through: the service must answer those (a dropped
    connection is a 502 for the user), up to its own bounded limit."""
    import tornado.testing

    from shared.service import MAX_HEADER_SIZE
    sock, port = tornado.testing.bind_unused_port()
    server = make_server(app, SimpleNamespace(max_body_size=2048))
    server.add_sockets([sock])
    try:
        big = b"X-Big: " + b"a" * 30000 + b"\r\n"
        answer = await _raw(port, b"GET /page HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", read=True)
        # answered by the handler (this test page always answers its own 400 page)
        assert answer.startswith(b"HTTP/1.1 400") and b"text/html" in answer, answer[:100]
        huge = b"X-Big: " + b"a" * (MAX_HEADER_SIZE + 10) + b"\r\n"
        answer = await _raw(port, b"GET /page HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n", read=True)
        assert b"text/html" not in answer  # bounded: never reaches a handler
    finally:
        server.stop()


@pytest.mark.gen_test
async def test_non_ascii_digits_in_content_length_are_not_a_crash(app):
    import tornado.testing
    sock, port = tornado.testing.bind_unused_port()
    server = make_server(app, SimpleNamespace(max_body_size=2048))
    server.add_sockets([sock])
    try:
        answer = await _raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
                            read=True)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert app.inflight == 0
    finally:
        server.stop()


@pytest.mark.gen_test
async def test_every_405_carries_allow(http_client, app):
    """RFC 9110 §15.5.6: a 405 MUST list the methods the resource supports."""
    import tornado.testing
    deps = app.settings["default_handler_args"]["deps"]
    app.add_handlers(r".*", [(r"/post-only", PostOnly, {"deps": deps}),
                             (r"/declared", Declared, {"deps": deps})])
    sock, port = tornado.testing.bind_unused_port()
    server = make_server(app, SimpleNamespace(max_body_size=2048))
    server.add_sockets([sock])
    base = f"http://127.0.0.1:{port}"
    try:
        # Tornado's own 405 (a method the class does not implement): what it implements
        resp = await fetch(http_client, base + "/echo", method="DELETE")
        assert resp.code == 405 and resp.headers["Allow"] == "GET, POST"
        assert json.loads(resp.body)["error"] == "method_not_allowed"
        # a 405 raised by the handler after setting Allow itself
        resp = await fetch(http_client, base + "/post-only")
        assert resp.code == 405 and resp.headers["Allow"] == "POST"
        # a handler that declares its methods
        resp = await fetch(http_client, base + "/declared", method="PUT", body=b"")
        assert resp.code == 405 and resp.headers["Allow"] == "POST, OPTIONS"
        # other errors carry none
        resp = await fetch(http_client, base + "/boom?kind=oauth")
        assert resp.code == 400 and "Allow" not in resp.headers
    finally:
        server.stop()


class Reachable(CORSHandler):
    """An endpoint any origin may call, with a request header of its own."""

    cors_headers = ("Authorization", "Content-Type")

    def get(self):
        self.write_json({})

    def post(self):
        self.require_media_type("application/x-www-form-urlencoded")
        self.write_json({"a": self.param("a")})


@pytest.mark.gen_test
async def test_cors_endpoint_answers_any_origin_and_its_preflight_lists_its_methods(
        http_client, app, base_url):
    """The preflight names the methods the endpoint answers (those of its 405's Allow) and
    the request headers it declares; every answer allows any origin, never credentials."""
    deps = app.settings["default_handler_args"]["deps"]
    app.add_handlers(r".*", [(r"/reachable", Reachable, {"deps": deps})])
    origin = {"Origin": "https://rp.example.test"}
    preflight = await fetch(http_client, base_url + "/reachable", method="OPTIONS", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.code == 204, preflight.body
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    refused = await fetch(http_client, base_url + "/reachable", method="DELETE", headers=origin)
    assert refused.code == 405 and refused.headers["Allow"] == "GET, POST, OPTIONS"
    assert refused.headers["Access-Control-Allow-Origin"] == "*"  # errors are readable too
    answer = await fetch(http_client, base_url + "/reachable", method="POST", body="a=1",
                         headers={**origin, "Content-Type": "application/x-www-form-urlencoded; "
                                  "charset=UTF-8"})
    assert answer.code == 200 and json.loads(answer.body) == {"a": "1"}
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    wrong = await fetch(http_client, base_url + "/reachable", method="POST", body="{}",
                        headers={**origin, "Content-Type": "application/json"})
    assert wrong.code == 400 and json.loads(wrong.body) == {
        "error": "invalid_request",
        "error_description": "expected application/x-www-form-urlencoded"}


@pytest.mark.gen_test(timeout=15)
async def test_after_a_stop_signal_answers_close_their_connection(app):
    """A stopping service answers requests that still arrive on kept-alive connections
    with `Connection: close` (the proxy retires the connection instead of writing its next
    request onto one that is being closed: a lost POST), then stops."""
    import asyncio

    import tornado.testing

    from shared.service import serve
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    settings = SimpleNamespace(listen=f"127.0.0.1:{port}", max_body_size=2048,
                               iss="https://op.example", with_metrics=False)
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve("test", app, settings, SimpleNamespace(), stop))
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            await asyncio.sleep(0.02)
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
              b"Content-Length: 2\r\n\r\n{}"

    async def answer() -> bytes:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), 5)
        return head

    writer.write(request)
    first = await answer()
    assert first.startswith(b"HTTP/1.1 200") and b"Connection: close" not in first
    stop.set()
    await asyncio.sleep(0.1)  # the listener is closed now; this connection is not
    writer.write(request)
    second = await answer()
    assert second.startswith(b"HTTP/1.1 200") and b"Connection: close" in second
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and it is closed after it
    writer.close()
    await asyncio.wait_for(task, 10)
    assert app.inflight == 0


@pytest.mark.parametrize("header, pairs", [
    ("a=1; b=2", [("a", "1"), ("b", "2")]),
    ("a=1;b=x=y==", [("a", "1"), ("b", "x=y==")]),        # a value keeps its own "="
    ("  a =  1 ; ;b=", [("a", "1"), ("b", "")]),
    ("flag; =nameless; a=1", [("a", "1")]),               # no name, no cookie
    ('q="quoted"', [("q", '"quoted"')]),                  # taken as sent
    ("", []),
])
def test_cookie_pairs_split_a_cookie_header_as_rfc_6265_says(header, pairs):
    assert cookie_pairs(header) == pairs


@pytest.mark.parametrize("header", ["k=1; k=2", "k=1; k=1", "k=1;k =2", "k=; k=2",
                                    "a=0; k=1; b=0; k=2; k=3"])
def test_a_cookie_sent_more_than_once_is_refused(header):
    with pytest.raises(AmbiguousCookie) as refused:
        single_cookie(header, "k")
    assert refused.value.status_code == 400 and refused.value.error == "invalid_request"
    assert "k=" not in refused.value.description  # no value in the answer or the log
    assert single_cookie(header, "a") in (None, "0") and single_cookie(header, "kk") is None


class CookieEcho(BaseHandler):
    def get(self):
        self.write_json({"k": self.get_cookie("k", "absent")})


@pytest.mark.gen_test
async def test_get_cookie_reads_every_cookie_field_and_refuses_a_name_twice(http_client, base_url):
    """Tornado's own parser keeps one of two cookies of a name (by order); ours refuses,
    also when the two come in separate Cookie fields (HTTP/2 may split them)."""
    from tornado.httputil import HTTPHeaders

    async def ask(*fields):
        headers = HTTPHeaders()
        for field in fields:
            headers.add("Cookie", field)
        return await http_client.fetch(base_url + "/cookie", headers=headers, raise_error=False)

    assert json.loads((await ask("k=1")).body) == {"k": "1"}
    assert json.loads((await ask("x=1")).body) == {"k": "absent"}
    assert json.loads((await ask("x=1", "k=2")).body) == {"k": "2"}
    for fields in (("k=1; k=2",), ("k=1", "k=2"), ("k=1", "x=0; k=1")):
        resp = await ask(*fields)
        assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"
