"""Review 4c: the identifier's pages (language choice), metrics label bounds, the health
check's arguments. The identifier service runs in-process with real Redis and the
users-file backend (fixtures of test_flow), through `service.application`, so the access
log hook and the metrics it feeds are the real ones."""

from __future__ import annotations

import re

import pytest

from services.identifier.app import make_app as identifier_app
from shared import healthcheck, metrics
from tests.test_flow import core, state  # noqa: F401


@pytest.fixture
def app(core):  # noqa: F811
    return identifier_app(core.settings, core)


def _lang(resp) -> str:
    return re.search(rb'<html lang="([a-z]+)"', resp.body).group(1).decode()


# --- metrics: a client cannot grow the label sets


@pytest.mark.gen_test
async def test_made_up_methods_add_no_metric_series(http_client, base_url):
    for i in range(5):
        resp = await http_client.fetch(base_url + "/signin/v1/identifier", method=f"ZZ4C{i}",
                                       allow_nonstandard_methods=True, raise_error=False)
        assert resp.code == 405
    body = metrics.render()[0].decode()
    assert "ZZ4C" not in body
    assert re.search(r'konnect_http_requests_total\{[^}]*method="other"[^}]*status="405"', body)
    # the methods the services answer keep their own label
    await http_client.fetch(base_url + "/signin/v1/identifier", raise_error=False)
    assert re.search(r'handler="SigninPage",method="GET"', metrics.render()[0].decode())


# --- the page's language


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


@pytest.mark.gen_test
async def test_a_huge_accept_language_is_answered(http_client, base_url):
    accept = ",".join(f"x{i};q=0.5" for i in range(5000)) + ",de"
    resp = await http_client.fetch(base_url + "/signin/v1/identifier",
                                   headers={"Accept-Language": accept})
    assert resp.code == 200 and _lang(resp) in ("en", "de")


# --- the health check's arguments


@pytest.mark.parametrize("args", [
    ["--timeout", "-1", "--listen", "127.0.0.1:1"],
    ["--timeout", "nan", "--listen", "127.0.0.1:1"],
    ["--timeout", "0", "--listen", "127.0.0.1:1"],
    ["--listen", "127.0.0.1:99999"],   # would be checked as port 34463 (99999 mod 65536)
    ["--listen", "127.0.0.1:0"],
])
def test_healthcheck_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(args, environ={})
    assert exc.value.code == 2


# --- the consent page names only clients the OP knows


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_consent_page_does_not_name_an_unknown_client(http_client, base_url, method):
    """RFC 6749 §10.2: the user is told which client asks; a made-up client_id is no client."""
    url = base_url + "/signin/v1/consent?client_id=Your+Bank+Security&redirect_uri=x&scope=openid"
    resp = await http_client.fetch(url, method=method, raise_error=False)
    assert resp.code == 400 and b"Your Bank" not in resp.body
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["X-Frame-Options"] == "DENY"
    known = await http_client.fetch(base_url + "/signin/v1/consent?client_id=web-rp&scope=openid",
                                    method=method)
    assert known.code == 200


# --- the access log's batching


@pytest.mark.asyncio
async def test_flushing_at_shutdown_leaves_no_empty_line():
    """A stop flushes the access lines of the current turn (service.serve ends with
    flush_access_log); the end-of-turn write scheduled for them must not add a blank line."""
    import asyncio
    import io
    import logging
    from types import SimpleNamespace

    from shared import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("t", "info", "text")
        buf = io.StringIO()
        logs._direct[0].stream = buf
        handler = SimpleNamespace(
            get_status=lambda: 200, request_id="rid-4c-0001", client_ip="192.0.2.1",
            request=SimpleNamespace(method="GET", path="/x", remote_ip="192.0.2.1",
                                    request_time=lambda: 0.001))
        logs.log_request(handler)
        logs.log_request(handler)
        logs.flush_access_log()
        await asyncio.sleep(0)  # the turn ends: the scheduled write runs
        await asyncio.sleep(0)
        lines = buf.getvalue().split("\n")
        assert lines[-1] == "" and all(lines[:-1]) and len(lines) == 3
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logs._direct[:] = []
