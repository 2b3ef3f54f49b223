"""End session with a `post_logout_redirect_uri` that is not registered: as Konnect (its
identity/managers/identifier.go `EndSession` treats the request as from an unknown client
and sends the browser to the goodbye page), never an error page and never a redirect to
that URI. The four services on one origin, real Redis, the users-file backend."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest

from tests.support.onehost import Browser, authorize_url, query_of, sign_in

END = "/signin/v1/identifier/_/endsession"
TRUSTED = {"client_id": "trusted-rp", "redirect_uri": "https://trusted.example.test/cb"}
UNREGISTERED = ("https://evil.example/", "https://trusted.example.test/cb/x",
                "https://trusted.example.test/cb?x=1")


def end_url(**params) -> str:
    return END + "?" + urlencode(params)


async def id_token_of_trusted_client(b: Browser) -> str:
    resp = await b.fetch(authorize_url(response_type="id_token", **TRUSTED))
    return query_of(resp.headers["Location"])["id_token"]


@pytest.mark.gen_test
@pytest.mark.parametrize("uri", UNREGISTERED)
async def test_signed_in_user_with_an_unregistered_uri_gets_the_sign_out_confirmation(
        http_client, base_url, uri):
    """Even a trusted client with a valid hint, which is otherwise signed out at once and
    sent back: the URI is not its own, so the user confirms and stays on the OP."""
    b = Browser(http_client, base_url)
    await sign_in(b)
    hint = await id_token_of_trusted_client(b)
    page = await b.fetch(end_url(id_token_hint=hint, state="s", post_logout_redirect_uri=uri))
    assert page.code == 200 and "Location" not in page.headers
    assert b'id="endsession"' in page.body
    assert uri.encode() not in page.body and b"Trusted RP" not in page.body
    assert "__Secure-KKT" in b.cookies  # nothing happened yet
    assert uri.split("/")[2] not in page.headers["Content-Security-Policy"]
    confirm = re.search(rb'name="confirm" value="([^"]+)"', page.body).group(1).decode()
    done = await b.fetch(END, method="POST", body=urlencode({"confirm": confirm}),
                         headers={"Origin": base_url,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert done.code == 302 and done.headers["Location"] == "/signin/v1/goodbye?done=1"
    assert "__Secure-KKT" not in b.cookies


@pytest.mark.gen_test
@pytest.mark.parametrize("params", [
    {"post_logout_redirect_uri": "https://trusted.example.test/cb"},            # no client
    {"post_logout_redirect_uri": "https://evil.example/", "client_id": "web-rp"},
    {"post_logout_redirect_uri": "https://evil.example/", "client_id": "nobody"},
])
async def test_nobody_signed_in_with_an_unregistered_uri_gets_the_signed_out_page(
        http_client, base_url, params):
    b = Browser(http_client, base_url)
    resp = await b.fetch(end_url(state="s", **params))
    assert resp.code == 302 and resp.headers["Location"] == "/signin/v1/goodbye?done=1"
    page = await b.fetch(resp.headers["Location"])
    assert page.code == 200 and b'role="status"' in page.body


@pytest.mark.gen_test
async def test_a_registered_uri_still_returns(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    hint = await id_token_of_trusted_client(b)
    resp = await b.fetch(end_url(id_token_hint=hint, state="s",
                                 post_logout_redirect_uri="https://trusted.example.test/cb"))
    assert resp.code == 302 and resp.headers["Location"] == "https://trusted.example.test/cb?state=s"
