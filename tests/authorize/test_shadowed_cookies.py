"""Login CSRF through a shadowing cookie: mallory's logon cookie planted beside alice's (a
sibling subdomain with `Domain=`, or a page at another path, as `__Secure-` cookies
allowed) never makes the authorization endpoint answer for mallory, nor for alice: a
request carrying the logon cookie twice is refused, in whatever order and shape, for
every response type and prompt, before any code or token is issued."""

from __future__ import annotations

import pytest

from shared.session import BROWSER_STATE_COOKIE, LOGON_COOKIE
from tests.support.browser import (
    SHAPES,
    TRUSTED,
    WEB_RP,
    authorize_url,
    cookie_headers,
    query_of,
    send_cookies,
    signed_in,
)
from tests.support.users import cheap_hash

USERS = (
    {"username": "alice", "password": cheap_hash("wonderland"), "id": 1001, "uuid": "u-alice"},
    {"username": "mallory", "password": cheap_hash("mallory-pw"), "id": 1002, "uuid": "u-mallory"},
)
pytestmark = pytest.mark.op(users=USERS)

REQUESTS = {
    "code, trusted client": dict(**TRUSTED),
    "prompt=none": dict(prompt="none", **TRUSTED),
    "implicit": dict(response_type="id_token token", **TRUSTED),
    "consent needed": dict(**WEB_RP),
    "select_account": dict(prompt="select_account", **TRUSTED),
}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("request_name", REQUESTS)
async def test_a_planted_logon_cookie_beside_the_users_is_refused(http_client, base_url, shape,
                                                                   request_name):
    alice = await signed_in(http_client, base_url)
    mallory = await signed_in(http_client, base_url, "mallory", "mallory-pw")
    url = authorize_url(**REQUESTS[request_name])
    headers = cookie_headers(LOGON_COOKIE, alice.cookies[LOGON_COOKIE],
                             mallory.cookies[LOGON_COOKIE], shape)
    resp = await send_cookies(http_client, base_url, url, headers)
    assert resp.code == 400 and b"more than once" in resp.body, (resp.code, resp.headers)
    assert "Location" not in resp.headers  # no code, no token, no error for the RP to act on
    assert resp.headers.get_list("Set-Cookie") == []  # no browser state of either user
    # her own cookie alone: her code (the refusal revoked nothing)
    own = await alice.fetch(authorize_url(**TRUSTED))
    assert "code" in query_of(own.headers["Location"])
    assert BROWSER_STATE_COOKIE in alice.cookies


@pytest.mark.gen_test(timeout=30)
async def test_a_logon_cookie_under_another_name_is_no_logon(http_client, base_url):
    """Konnect's name and look-alikes (another prefix, another case) are other cookies: not
    read, and so no way around the `__Host-` prefix."""
    mallory = await signed_in(http_client, base_url, "mallory", "mallory-pw")
    value = mallory.cookies[LOGON_COOKIE]
    for name in ("__Secure-KKT", "__host-KKT", "__Host-kkt", "KKT", "__Host-KKTx"):
        resp = await send_cookies(http_client, base_url, authorize_url(prompt="none", **TRUSTED),
                                  [f"{name}={value}"])
        assert query_of(resp.headers["Location"])["error"] == "login_required", name
