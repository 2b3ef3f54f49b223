"""The identifier's pages: languages, script nonces, branding, static files, HEAD and 405s."""

from __future__ import annotations

import re

import pytest

from shared.deps import Core
from tests.support.browser import Browser
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.op import settings_for
from tests.support.users import SIGN_IN_USERS


def _identifier(state, redis_url, extra):  # noqa: F811
    import tornado.web  # noqa: F401

    from services.identifier.app import make_app
    from shared.users.userfile import UsersFileBackend
    settings = settings_for("identifier", state, redis_url, extra)
    core = Core.from_settings(settings)
    core.users = UsersFileBackend.__new__(UsersFileBackend)  # not asked by these pages
    return make_app(settings, core), core


def _lang(resp) -> str:
    return re.search(rb'<html lang="([a-z]+)"', resp.body).group(1).decode()


@pytest.mark.gen_test
async def test_pages_are_translated(http_client, base_url):
    b = Browser(http_client, base_url)
    de = await b.fetch("/signin/v1/identifier", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert b"Anmelden" in de.body and b'lang="de"' in de.body
    en = await b.fetch("/signin/v1/identifier?lang=en", headers={"Accept-Language": "de"})
    assert b"Sign in" in en.body and b'lang="en"' in en.body


@pytest.mark.gen_test
async def test_pages_carry_a_script_nonce_and_a_deployments_branding(http_client, base_url, app):
    page = await http_client.fetch(base_url + "/signin/v1/identifier")
    csp = page.headers["Content-Security-Policy"]
    nonce = csp.split("script-src 'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}" src='.encode() in page.body and "'self'" not in csp.split(";")[1]
    again = await http_client.fetch(base_url + "/signin/v1/identifier")
    assert again.headers["Content-Security-Policy"] != csp  # a new nonce per response


def test_branding_directory_replaces_logo_and_adds_css(tmp_path, state, redis_url):  # noqa: F811
    import asyncio

    import tornado.httpclient
    import tornado.httpserver
    import tornado.testing
    (tmp_path / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "brand.css").write_text(":root { --brand: #770000; }")

    async def run():
        application, core = _identifier(state, redis_url,
                                        ["--identifier-client-path", str(tmp_path)])
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(application)
        server.add_sockets([sock])
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            base = f"http://127.0.0.1:{port}"
            page = (await client.fetch(base + "/signin/v1/identifier")).body
            assert b'src="/signin/v1/branding/logo.svg"' in page
            assert b'href="/signin/v1/branding/brand.css"' in page
            css = await client.fetch(base + "/signin/v1/branding/brand.css")
            assert b"#770000" in css.body
            other = await client.fetch(base + "/signin/v1/branding/../users.yaml",
                                       raise_error=False)
            assert other.code == 404
        finally:
            client.close()
            server.stop()
            await core.store.close()

    asyncio.run(run())


def test_disabled_identifier_client_serves_the_api_but_no_pages(state, redis_url):  # noqa: F811
    application, _ = _identifier(state, redis_url, ["--disable-identifier-client"])
    patterns = [r.matcher.regex.pattern for r in application.wildcard_router.rules]
    assert not any("/signin/v1/identifier$" == p for p in patterns)
    assert any(p.endswith("_/logon$") for p in patterns)


@pytest.mark.op(apps=("identifier",))
@pytest.mark.gen_test
@pytest.mark.parametrize("accept, expected", [
    ("de, en", "de"),                    # equal weights: the client's order
    ("en;q=0.1, de ; q=0.9", "de"),      # whitespace around ';' (RFC 9110 §12.4.2)
    ("en;Q=0.2, de;Q=0.8", "de"),        # parameter names are case-insensitive
    ("de;q=0", "en"),                    # q=0: not acceptable
    ("de;q=2, en;q=0.5", "en"),          # not a qvalue: that element is ignored
])
async def test_accept_language_weights_and_order(http_client, base_url, accept, expected):
    resp = await http_client.fetch(base_url + "/signin/v1/identifier",
                                   headers={"Accept-Language": accept})
    assert resp.code == 200 and _lang(resp) == expected
    assert resp.headers["Content-Language"] == expected


@pytest.mark.op(apps=("identifier",))
@pytest.mark.gen_test
async def test_ui_locales_of_the_request_choose_the_language(http_client, base_url):
    """authorize hands `ui_locales` on to the sign-in page; discovery lists the supported
    ones, so a request asking for German gets German whatever the browser says."""
    url = base_url + "/signin/v1/identifier?ui_locales=zz-CA+de-CH+en&client_id=x"
    resp = await http_client.fetch(url, headers={"Accept-Language": "en"})
    assert _lang(resp) == "de" and b"Anmelden" in resp.body
    # the switch still wins, and keeps the other parameters
    switched = await http_client.fetch(url + "&lang=en", headers={"Accept-Language": "de"})
    assert _lang(switched) == "en" and "ui_locales=zz-CA+de-CH+en" in switched.body.decode()
    # unsupported ones fall through to Accept-Language
    other = await http_client.fetch(base_url + "/signin/v1/identifier?ui_locales=zz",
                                    headers={"Accept-Language": "de"})
    assert _lang(other) == "de"


@pytest.mark.op(apps=("identifier",))
@pytest.mark.gen_test
async def test_a_huge_accept_language_is_answered(http_client, base_url):
    accept = ",".join(f"x{i};q=0.5" for i in range(5000)) + ",de"
    resp = await http_client.fetch(base_url + "/signin/v1/identifier",
                                   headers={"Accept-Language": accept})
    assert resp.code == 200 and _lang(resp) in ("en", "de")


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", ["/signin/v1/static/app.js", "/signin/v1/static/app.css"])
async def test_static_files_405_carries_allow(http_client, base_url, path):
    resp = await http_client.fetch(base_url + path, method="POST", body=b"x", raise_error=False)
    assert resp.code == 405 and resp.headers["Allow"] == "GET, HEAD"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
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


@pytest.mark.op(users=SIGN_IN_USERS, clock="offset")
@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["app.js", "app.css", "logo.svg"])
async def test_static_files_are_nosniff(http_client, base_url, path):
    resp = await Browser(http_client, base_url).fetch("/signin/v1/static/" + path)
    assert resp.code == 200 and resp.headers["X-Content-Type-Options"] == "nosniff"
