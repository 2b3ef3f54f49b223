"""`/health-check` and the health-check command, as Konnect's: the endpoint answers any
method (Konnect's server/server.go routes it without a method) and the command POSTs
(Konnect's cmd/konnectd/healthcheck.go, which its Docker HEALTHCHECK runs), with
Konnect's flags `--hostname`, `--path`, `--scheme`, `--insecure`."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import ssl
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.netutil

from services.authorize.app import make_app as authorize_app
from services.identifier.app import make_app as identifier_app
from services.token.app import make_app as token_app
from services.userinfo.app import make_app as userinfo_app
from shared import healthcheck
from shared.service import application
from shared.web import BaseHandler
from tests.support.op import make_core, make_state

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class PostOnly(BaseHandler):
    """Answers 200 to POST only: shows which method the command sends."""

    def post(self) -> None:
        self.finish("posted\n")


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(tmp_path_factory.mktemp("health-state"))


@pytest.fixture
def app():
    return application([(r"/post-only", PostOnly, {"deps": None})], None)


def run_command(*args: str) -> asyncio.Future:
    """`python -m shared.healthcheck ARGS` in a thread, while the test's loop serves."""
    return asyncio.get_running_loop().run_in_executor(
        None, functools.partial(healthcheck.main, list(args), environ={}))


@pytest.mark.gen_test
@pytest.mark.parametrize("make_app", [identifier_app, authorize_app, token_app, userinfo_app])
async def test_every_service_answers_the_health_check_with_any_method(
        make_app, state, redis_url, http_client, http_port, io_loop):
    core = make_core("token", state, redis_url)
    server = tornado.httpserver.HTTPServer(make_app(core.settings, core))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    url = "http://127.0.0.1:%d/health-check" % sockets[0].getsockname()[1]
    try:
        for method in METHODS:
            body = b"" if method in ("POST", "PUT", "PATCH") else None
            resp = await http_client.fetch(url, method=method, body=body, raise_error=False,
                                           allow_nonstandard_methods=True)
            assert resp.code == 200, method
            assert resp.body == (b"" if method == "HEAD" else b"ok\n"), method
    finally:
        server.stop()
        await core.close()


@pytest.mark.gen_test
async def test_the_command_posts_with_konnects_flags(http_server, http_port):
    assert await run_command("--hostname", f"127.0.0.1:{http_port}") == 0
    # the command's request is a POST: a path that answers only POST passes
    assert await run_command(f"--hostname=0.0.0.0:{http_port}", "--path", "/post-only") == 0
    assert await run_command("--listen", f"127.0.0.1:{http_port}", "--path", "/nowhere") == 1


def test_the_command_refuses_a_path_that_is_no_path(capsys):
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(["--hostname", "127.0.0.1:1", "--path", "health check"], environ={})
    assert exc.value.code == 2


def _dev_certificate(directory: Path) -> None:
    """deploy/run.py's self-signed development certificate (the one `make run` makes)."""
    spec = importlib.util.spec_from_file_location("konnect_deploy_run", ROOT / "deploy" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.dev_certificate(directory, "localhost")


@pytest.mark.gen_test
async def test_the_command_checks_https_and_insecure_skips_the_certificate_check(app, tmp_path):
    _dev_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = tornado.httpserver.HTTPServer(app, ssl_options=context)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    hostname = "127.0.0.1:%d" % sockets[0].getsockname()[1]
    try:
        # a self-signed certificate: refused unless --insecure (as Konnect's flag)
        assert await run_command("--hostname", hostname, "--scheme", "https") == 1
        assert await run_command("--hostname", hostname, "--scheme", "https", "--insecure") == 0
    finally:
        server.stop()
