"""The authentication request's parameters: PKCE, prompt, max_age, id_token_hint, malformed
input (OIDC Core §3.1.2)."""

from __future__ import annotations

import pytest

from tests.support.browser import TRUSTED, Browser, authorize_url, query_of, sign_in, signed_in
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.malformed import DEEP, JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD, MIDDLE, b64

AUTHORIZE_DEEP = {
    "claims": {"claims": DEEP},
    "claims nested 300": {"claims": '{"id_token":' + MIDDLE + "}"},
    "request object payload": {"request": b64('{"alg":"none"}') + "." + b64(DEEP) + "."},
    "request object header": {"request": b64(DEEP) + "." + b64("{}") + "."},
    "request object claims member": {"request": b64('{"alg":"none"}') + "."
                                     + b64('{"claims":{"id_token":' + MIDDLE + "}}") + "."},
    "id_token_hint header": {"id_token_hint": JWT_DEEP_HEADER},
    "id_token_hint payload": {"id_token_hint": JWT_DEEP_PAYLOAD},
}


@pytest.mark.gen_test
async def test_public_client_needs_pkce(http_client, base_url):
    resp = await Browser(http_client, base_url).fetch(authorize_url(
        client_id="public-app", redirect_uri="http://127.0.0.1:4000/cb"))
    assert query_of(resp.headers["Location"])["error"] == "invalid_request"


@pytest.mark.gen_test
async def test_max_age_and_prompt_login_force_a_new_sign_in(http_client, base_url, core):
    b = Browser(http_client, base_url)
    await sign_in(b)
    core.now = lambda: __import__("time").time() + 30
    resp = await b.fetch(authorize_url(client_id="trusted-rp", redirect_uri="https://trusted.example.test/cb",
                                       max_age="10"))
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")
    resp = await b.fetch(authorize_url(client_id="trusted-rp", redirect_uri="https://trusted.example.test/cb",
                                       prompt="login"))
    assert resp.headers["Location"].startswith("/signin/v1/identifier?")


@pytest.mark.gen_test
@pytest.mark.parametrize("max_age", ["²", "٣", "9" * 5000, "1" * 11, "-1", "+3", " 3", "3.0", ""])
async def test_malformed_max_age_is_invalid_request(http_client, base_url, max_age):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(max_age=max_age, **TRUSTED))
    assert resp.code == 302, max_age
    result = query_of(resp.headers["Location"])
    assert result["error"] == "invalid_request" and "code" not in result, max_age


@pytest.mark.gen_test
async def test_ascii_max_age_up_to_ten_digits_is_accepted(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.fetch(authorize_url(max_age="9" * 10, **TRUSTED))
    assert query_of(resp.headers["Location"]).get("code")


@pytest.mark.gen_test
async def test_access_token_as_id_token_hint_is_refused_at_authorize(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    tokens = query_of((await b.fetch(authorize_url(response_type="id_token token",
                                                   **TRUSTED))).headers["Location"])
    ok = await b.fetch(authorize_url(prompt="none", id_token_hint=tokens["id_token"], **TRUSTED))
    assert query_of(ok.headers["Location"]).get("code")
    resp = await b.fetch(authorize_url(prompt="none", id_token_hint=tokens["access_token"],
                                       **TRUSTED))
    result = query_of(resp.headers["Location"])
    assert result["error"] == "invalid_request" and "code" not in result


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("case", list(AUTHORIZE_DEEP))
async def test_authorize_deep_json_is_an_error_response(http_client, base_url, case):
    """Signed in, a verified redirect_uri: the error goes back to the client (OIDC Core
    §3.1.2.6), as for any other malformed parameter."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(response_type="code", prompt="none", **TRUSTED,
                                       **AUTHORIZE_DEEP[case]))
    assert resp.code == 302, resp.body
    error = query_of(resp.headers["Location"]).get("error")
    assert error in ("invalid_request", "invalid_request_object"), resp.headers["Location"]
