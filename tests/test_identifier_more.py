"""The identifier's sign-in defences and the dummy backend."""

from __future__ import annotations

import time

import pytest

from shared.config import StartupError, load_settings
from shared.deps import Core
from shared.users import BackendConfigError, make_backend
from tests.support.op import settings_for
from tests.test_flow import Browser, app, core, sign_in, state  # noqa: F401


@pytest.mark.gen_test
async def test_unknown_user_and_wrong_password_get_the_same_answer_after_the_same_floor(
        http_client, base_url):
    from services.identifier.api import LogonHandler
    b = Browser(http_client, base_url)
    answers = []
    for user, password in (("alice", "not-her-password"), ("nobody-here", "whatever")):
        started = time.monotonic()
        resp = await sign_in(b, username=user, password=password)
        answers.append((resp.code, resp.body, time.monotonic() - started))
    assert answers[0][:2] == answers[1][:2] == (204, b"")
    assert all(took >= LogonHandler.failed_floor for _, _, took in answers)


@pytest.mark.gen_test(timeout=30)
async def test_too_many_attempts_is_429_with_retry_after_and_words(http_client, base_url):
    b = Browser(http_client, base_url)
    for i in range(10):
        assert (await sign_in(b, username="nobody", password=f"x{i}")).code == 204
    blocked = await sign_in(b, username="nobody", password="again")
    assert blocked.code == 429 and 0 < int(blocked.headers["Retry-After"]) <= 300
    assert b"too many" in blocked.body.lower()
    # the same answer for a user that exists: the limit reveals nothing
    for i in range(10):
        await sign_in(b, username="alice", password=f"x{i}")
    assert (await sign_in(b, username="alice", password="wonderland")).code == 429


def test_dummy_backend_must_be_allowed_explicitly(tmp_path, redis_url, state):  # noqa: F811
    settings = settings_for("identifier", state, redis_url, ["--identity-manager", "dummy"])
    with pytest.raises(BackendConfigError, match="allow-dummy-backend"):
        make_backend(settings)
    with pytest.raises(StartupError):
        Core.with_users(settings)


@pytest.mark.asyncio
async def test_dummy_backend_signs_in_the_fixed_user(redis_url, state):  # noqa: F811
    settings = settings_for("identifier", state, redis_url,
                            ["--identity-manager", "dummy", "--allow-dummy-backend"])
    backend = make_backend(settings)
    user = await backend.authenticate("Dummy", "anything")
    assert user.raw_sub == "dummy" and user.email == "dummy@dummy.local" and user.name == "Foo Dummy"
    assert await backend.authenticate("dummy", "") is None
    assert await backend.authenticate("someone", "x") is None
    assert await backend.lookup("dummy") == user and await backend.lookup("x") is None
    assert load_settings(["--iss", "https://x.example", "--identity-manager", "dummy"], {},
                         service="token").allow_dummy_backend is False


# --- branding, CSP nonce, Konnect's page flags ------------------------------------------

def _identifier(state, redis_url, extra):  # noqa: F811
    import tornado.web  # noqa: F401
    from services.identifier.app import make_app
    from shared.users.userfile import UsersFileBackend
    settings = settings_for("identifier", state, redis_url, extra)
    core = Core.from_settings(settings)
    core.users = UsersFileBackend.__new__(UsersFileBackend)  # not asked by these pages
    return make_app(settings, core), core


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


@pytest.mark.parametrize("extra,needle", [
    (["--uri-base-path", "/idp"], "not supported"),
    (["--sign-in-uri", "https://app.example/login"], "only used by the cookie"),
])
def test_konnect_flags_we_do_not_honour_are_refused_not_ignored(extra, needle):
    from shared.config import ConfigError
    with pytest.raises(ConfigError, match=needle):
        load_settings(["--iss", "https://idp.example.test", *extra], {}, service="identifier")


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
