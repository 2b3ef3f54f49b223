"""`--allow-public-clients-without-pkce`: Konnect's behaviour for migrating relying parties
(clients without a secret and implicitly trusted ones use the code flow without PKCE).
Off by default (RFC 9700 §2.1.1); on, it warns at start-up and turns off only the rule
"a public client needs PKCE": a challenge that was sent is still checked."""

from __future__ import annotations

import logging

import pytest

from tests.support.browser import authorize_url, query_of, signed_in
from tests.support.http import code_form, token
from tests.support.op import ISSUER, mint_code, pkce_pair
from tests.support.users import TOKEN_ALICE

FLAG = ("--allow-public-clients-without-pkce",)
PUBLIC = {"client_id": "public-app", "redirect_uri": "http://127.0.0.1:5555/cb"}
# an unregistered id redirecting to the issuer's origin: an implicitly trusted client
IMPLICIT = {"client_id": "intranet-app", "redirect_uri": ISSUER + "/apps/cb"}


async def code_for(http_client, base_url, client: dict, **extra) -> tuple[int, dict]:
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(authorize_url(prompt="none", **client, **extra))
    return resp.code, query_of(resp.headers.get("Location", ""))


async def redeem(http_client, base_url, client: dict, code: str, **extra):
    return await token(http_client, base_url, code_form(code, **client, **extra), auth=None)


@pytest.mark.op(args=FLAG)
@pytest.mark.gen_test(timeout=30)
async def test_with_the_setting_an_implicitly_trusted_client_signs_in_without_pkce(http_client,
                                                                                    base_url):
    status, answer = await code_for(http_client, base_url, IMPLICIT)
    assert status == 302 and "code" in answer, answer
    resp, body = await redeem(http_client, base_url, IMPLICIT, answer["code"])
    assert resp.code == 200 and body["id_token"] and body["access_token"], body


@pytest.mark.op(args=FLAG, users=(TOKEN_ALICE,))
@pytest.mark.gen_test(timeout=30)
async def test_with_the_setting_a_public_client_signs_in_without_pkce(http_client, base_url,
                                                                      core):
    b = await signed_in(http_client, base_url, "alice", "alice-password")
    resp = await b.fetch(authorize_url(**PUBLIC))   # not trusted: on to the consent page
    assert resp.code == 302 and resp.headers["Location"].startswith("/signin/v1/consent?")
    code = await mint_code(core, **PUBLIC)          # what authorize stores after consent
    resp, body = await redeem(http_client, base_url, PUBLIC, code)
    assert resp.code == 200 and body["access_token"], body


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("client", [PUBLIC, IMPLICIT], ids=["public", "implicitly-trusted"])
async def test_without_the_setting_pkce_is_required(http_client, base_url, client):
    status, answer = await code_for(http_client, base_url, client)
    assert answer["error"] == "invalid_request" and "PKCE" in answer["error_description"]


@pytest.mark.op(args=FLAG)
@pytest.mark.gen_test(timeout=30)
async def test_with_the_setting_a_challenge_that_was_sent_is_still_checked(http_client, base_url):
    verifier, challenge = pkce_pair()
    _, answer = await code_for(http_client, base_url, IMPLICIT, code_challenge=challenge,
                               code_challenge_method="S256")
    resp, body = await redeem(http_client, base_url, IMPLICIT, answer["code"])  # no verifier
    assert resp.code == 400 and body["error"] == "invalid_grant"
    _, answer = await code_for(http_client, base_url, IMPLICIT, code_challenge=challenge,
                               code_challenge_method="S256")
    resp, body = await redeem(http_client, base_url, IMPLICIT, answer["code"],
                              code_verifier=pkce_pair()[0])
    assert resp.code == 400 and body["error"] == "invalid_grant"
    _, answer = await code_for(http_client, base_url, IMPLICIT, code_challenge=challenge,
                               code_challenge_method="S256")
    resp, body = await redeem(http_client, base_url, IMPLICIT, answer["code"],
                              code_verifier=verifier)
    assert resp.code == 200, body


@pytest.mark.op(args=FLAG)
def test_the_setting_is_announced_at_start_up(core, caplog):
    messages = [r.getMessage() for r in caplog.get_records("setup")
                if r.levelno == logging.WARNING and r.name == "konnect.deps"]
    assert any("--allow-public-clients-without-pkce" in m and "RFC 9700" in m for m in messages)
