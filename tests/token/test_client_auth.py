"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523): Basic, form
credentials, none, private_key_jwt with replay protection and the registered alg."""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest

from shared import jose
from shared.keys import SigningKey
from tests.support.clients import CLIENT_KEY, EC_KEY, EXTRA_CLIENTS, JWT_CLIENT, RSA_KEY
from tests.support.fixtures import DYNAMIC_REGISTRATION
from tests.support.http import (
    assertion,
    code_form,
    post,
    redeem_with_assertion,
    token,
)
from tests.support.malformed import JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD
from tests.support.op import (
    ISSUER,
    REGISTRY,
    SECRET,
    mint_code,
)
from tests.support.users import TOKEN_ALICE

pytestmark = pytest.mark.op(registry=REGISTRY + JWT_CLIENT, users=(TOKEN_ALICE,), service="token", apps=("token",))


@pytest.mark.gen_test
async def test_client_secret_post_works(http_client, base_url, core):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url,
                             code_form(code, client_id="web-rp", client_secret=SECRET), auth=None)
    assert resp.code == 200, body


@pytest.mark.gen_test
@pytest.mark.parametrize("auth,form,status,error", [
    (("web-rp", "wrong"), {}, 401, "invalid_client"),
    (("nobody", "x"), {}, 401, "invalid_client"),
    (None, {"client_id": "web-rp"}, 401, "invalid_client"),
    (None, {}, 401, "invalid_client"),
    (("web-rp", SECRET), {"client_secret": SECRET}, 400, "invalid_request"),
    (("web-rp", SECRET), {"client_id": "trusted-rp"}, 401, "invalid_client"),
])
async def test_client_authentication_failures(http_client, base_url, core, auth, form, status, error):
    code = await mint_code(core)
    resp, body = await token(http_client, base_url, code_form(code, **form), auth=auth)
    assert resp.code == status and body["error"] == error
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    # a failed authentication must not consume the code
    ok, _ = await token(http_client, base_url, code_form(code))
    assert ok.code == 200


@pytest.mark.gen_test
async def test_malformed_basic_header_is_invalid_client(http_client, base_url, core):
    resp, body = await post(http_client, base_url, "/konnect/v1/token", code_form("x"),
                            {"Authorization": "Basic !!!notbase64"})
    assert resp.code == 401 and body["error"] == "invalid_client"


@pytest.mark.gen_test
async def test_private_key_jwt_with_replay_protection(http_client, base_url, core):
    signer = SigningKey(kid="c1", public=CLIENT_KEY.public_key(), algs=frozenset({"ES256"}),
                        alg="ES256", private=CLIENT_KEY)
    now = int(time.time())

    def assertion(aud=ISSUER + "/konnect/v1/token", jti="j1", exp=now + 60):
        return jose.sign({"iss": "jwt-rp", "sub": "jwt-rp", "aud": aud, "jti": jti, "exp": exp}, signer)

    async def redeem(value):
        code = await mint_code(core, client_id="jwt-rp", redirect_uri="https://jwt.example.test/cb")
        form = code_form(code, redirect_uri="https://jwt.example.test/cb",
                         client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                         client_assertion=value)
        return await token(http_client, base_url, form, auth=None)

    ok, body = await redeem(assertion())
    assert ok.code == 200, body
    replay, err = await redeem(assertion())
    assert replay.code == 401 and err["error"] == "invalid_client"
    for bad in (assertion(aud="https://elsewhere", jti="j2"), assertion(jti="j3", exp=now - 120),
                assertion(jti="j4", exp=now + 3600)):
        resp, err = await redeem(bad)
        assert resp.code == 401 and err["error"] == "invalid_client"
    secret_instead, err = await token(http_client, base_url, code_form("x", client_id="jwt-rp"), auth=None)
    assert secret_instead.code == 401


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
async def test_private_key_jwt_must_use_the_registered_signing_alg(http_client, base_url, core):
    uri = "https://jwt-ps.example.test/cb"
    for alg in ("RS256", "PS384"):  # the key's family allows them, the registration does not
        resp, body = await redeem_with_assertion(http_client, base_url, core, "jwt-ps", uri,
                                                 assertion(RSA_KEY, alg, "r1", "jwt-ps"))
        assert resp.code == 401 and body["error"] == "invalid_client", (alg, body)
    ok, body = await redeem_with_assertion(http_client, base_url, core, "jwt-ps", uri,
                                           assertion(RSA_KEY, "PS256", "r1", "jwt-ps"))
    assert ok.code == 200, body


@pytest.mark.op(registry=REGISTRY + EXTRA_CLIENTS, users=(TOKEN_ALICE,), args=DYNAMIC_REGISTRATION, service="token", apps=("token",))
@pytest.mark.gen_test
@pytest.mark.parametrize("claims,accepted", [
    ({"nbf": "+120"}, False),            # not yet valid (RFC 7523 §3 item 5)
    ({"iat": "+120"}, False),            # issued in the future, beyond the clock skew
    ({"nbf": "soon"}, False),            # not a NumericDate
    ({"iat": "now"}, False),
    ({"nbf": "+10", "iat": "+10"}, True),  # within the tolerated skew
    ({"nbf": "-30", "iat": "-30"}, True),
])
async def test_client_assertion_nbf_and_iat_are_checked(http_client, base_url, core, claims,
                                                        accepted):
    now = int(time.time())
    values = {k: (now + int(v) if v[0] in "+-" else v) for k, v in claims.items()}
    resp, body = await redeem_with_assertion(http_client, base_url, core, "jwt-ec",
                                             "https://jwt.example.test/cb",
                                             assertion(EC_KEY, "ES256", "c1", "jwt-ec", **values))
    if accepted:
        assert resp.code == 200, body
    else:
        assert resp.code == 401 and body["error"] == "invalid_client", body


@pytest.mark.op(args=DYNAMIC_REGISTRATION)
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("assertion", [JWT_DEEP_HEADER, JWT_DEEP_PAYLOAD])
@pytest.mark.parametrize("endpoint", ["token", "revoke", "introspect"])
async def test_client_assertion_with_deep_json_is_401(http_client, base_url, assertion, endpoint):
    form = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion, "grant_type": "authorization_code", "code": "x",
            "token": "x"}
    resp = await http_client.fetch(f"{base_url}/konnect/v1/{endpoint}", method="POST",
                                   raise_error=False, body=urlencode(form),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.code == 401 and json.loads(resp.body)["error"] == "invalid_client"
