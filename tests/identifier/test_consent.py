"""Consent (`_/consent` and the consent page): denied is access_denied, typed input, only known
clients named."""

from __future__ import annotations

import json

import pytest

from tests.support.browser import Browser, authorize_url, query_of, sign_in
from tests.support.users import SIGN_IN_USERS

CONSENT = {"state": "c1", "allow": True, "scope": "openid", "client_id": "web-rp",
           "redirect_uri": "https://rp.example.test/cb", "ref": "xyz", "flow_nonce": "n-1"}


BAD_CONSENTS = [{"scope": 5}, {"scope": ["openid", 5]}, {"scope": {"openid": True}},
                {"allow": "yes"}, {"allow": 1}, {"client_id": 5}, {"redirect_uri": ["x"]},
                {"ref": 5}, {"flow_nonce": {}}]


pytestmark = pytest.mark.op(users=SIGN_IN_USERS, clock="offset")


@pytest.mark.op()
@pytest.mark.gen_test
async def test_denied_consent_is_access_denied(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    denied = await b.api("consent", {"state": "c2", "allow": False, "scope": "openid",
                                     "client_id": "web-rp", "redirect_uri": "https://rp.example.test/cb",
                                     "ref": "xyz", "flow_nonce": "n-1"})
    assert denied.code == 204 and denied.headers["Kopano-Konnect-State"] == "c2"
    resp = await b.fetch(authorize_url(konnect="c2", prompt="none"))
    assert query_of(resp.headers["Location"])["error"] == "access_denied"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("bad", BAD_CONSENTS, ids=[json.dumps(c) for c in BAD_CONSENTS])
async def test_consent_of_the_wrong_type_is_400_and_sets_no_decision(http_client, base_url, bad):
    b = Browser(http_client, base_url)
    await sign_in(b)
    resp = await b.api("consent", {**CONSENT, **bad})
    assert resp.code == 400 and json.loads(resp.body)["error"] == "invalid_request"
    assert next(iter(bad)) in json.loads(resp.body)["error_description"]
    assert not any(k.startswith("__Host-KKTC-") for k in b.cookies)


@pytest.mark.gen_test
async def test_consent_still_takes_a_scope_string_or_list(http_client, base_url):
    b = Browser(http_client, base_url)
    await sign_in(b)
    assert (await b.api("consent", CONSENT)).code == 200
    assert (await b.api("consent", {**CONSENT, "scope": ["openid", "email"]})).code == 200
    denied = await b.api("consent", {**CONSENT, "allow": False, "state": "c2"})
    assert denied.code == 204 and denied.headers["Kopano-Konnect-State"] == "c2"


@pytest.mark.op(apps=("identifier",))
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
