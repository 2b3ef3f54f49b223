"""Cookies nobody else can shadow: every cookie the services set is a `__Host-` cookie (a
browser takes it only from this host, Secure, Path=/, no Domain), and a request that
carries one of our cookie names more than once is refused, whichever comes first: the
logon at every identifier endpoint that reads it, the consent decision, the hop of a
sign-in through an external authority. Never resolved by order, never cleared (clearing
ours would leave the planted one), nothing revoked."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.keys import public_jwk
from shared.session import CONSENT_PREFIX, LOGON_COOKIE
from tests.support.browser import (
    SHAPES,
    WEB_RP,
    Browser,
    authorize_url,
    cookie_headers,
    query_of,
    send_cookies,
    signed_in,
)
from tests.support.op import ISSUER, REGISTRY
from tests.support.users import cheap_hash

FLOW_PREFIX = "__Host-KKAF-"
UPSTREAM = "https://upstream.example.test"
AUTHORITY_KEY = public_jwk(ec.generate_private_key(ec.SECP256R1()))
REGISTRY_WITH_AUTHORITY = REGISTRY + f"""
authorities:
  - id: upstream
    name: Upstream
    authority_type: oidc
    iss: {UPSTREAM}
    client_id: konnect
    response_type: id_token
    discover: no
    authorization_endpoint: {UPSTREAM}/authorize
    jwks: {json.dumps({"keys": [{**AUTHORITY_KEY, "kid": "up-1"}]})}
"""
USERS = (
    {"username": "alice", "password": cheap_hash("wonderland"), "name": "Alice Example",
     "id": 1001, "uuid": "u-alice"},
    {"username": "mallory", "password": cheap_hash("mallory-pw"), "name": "Mallory",
     "id": 1002, "uuid": "u-mallory"},
)
pytestmark = pytest.mark.op(users=USERS, registry=REGISTRY_WITH_AUTHORITY)

API = "/signin/v1/identifier/_/"
END = "/signin/v1/identifier/_/endsession"
CONSENT = {"state": "c1", "allow": True, "scope": "openid", "ref": "xyz", "flow_nonce": "n-1",
           **WEB_RP}
def api(body: dict) -> dict:
    return {"method": "POST", "body": json.dumps(body),
            "headers": {"Content-Type": "application/json", "Kopano-Konnect-XSRF": "1",
                        "Origin": ISSUER}}


def refused(resp) -> None:
    """400 invalid_request, as JSON or a page, that sets and clears no cookie."""
    assert resp.code == 400, (resp.code, resp.body[:300])
    assert b"more than once" in resp.body
    assert resp.headers.get_list("Set-Cookie") == []
    assert "Location" not in resp.headers


async def two_logons(http_client, base_url) -> tuple:
    alice = await signed_in(http_client, base_url)
    mallory = await signed_in(http_client, base_url, "mallory", "mallory-pw")
    return alice, mallory


ENDPOINTS = {
    "hello": ("hello", {"state": "h1"}),
    "logon mode 0": ("logon", {"state": "s1", "params": ["alice", "", "0"]}),
    "logoff": ("logoff", {"state": "o1"}),
    "consent": ("consent", CONSENT),
}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_two_logon_cookies_are_refused_by_the_identifier_api(http_client, base_url,
                                                                    endpoint, shape):
    alice, mallory = await two_logons(http_client, base_url)
    name, body = ENDPOINTS[endpoint]
    headers = cookie_headers(LOGON_COOKIE, alice.cookies[LOGON_COOKIE],
                             mallory.cookies[LOGON_COOKIE], shape)
    resp = await send_cookies(http_client, base_url, API + name, headers, **api(body))
    refused(resp)
    assert json.loads(resp.body)["error"] == "invalid_request"
    # nothing happened to either logon: no sign-out, no consent stored
    for b, user in ((alice, "alice"), (mallory, "mallory")):
        hello = await b.api("hello", {"state": "h2"})
        assert hello.code == 200 and json.loads(hello.body)["username"] == user


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
async def test_two_logon_cookies_are_refused_at_end_session(http_client, base_url, shape):
    alice, mallory = await two_logons(http_client, base_url)
    headers = cookie_headers(LOGON_COOKIE, alice.cookies[LOGON_COOKIE],
                             mallory.cookies[LOGON_COOKIE], shape)
    refused(await send_cookies(http_client, base_url, END, headers))
    # the confirmation form's POST (its token is for alice's logon)
    page = await alice.fetch(END)
    assert page.code == 200
    token = page.body.decode().split('name="confirm" value="')[1].split('"')[0]
    resp = await send_cookies(http_client, base_url, END, headers, method="POST",
                      body=urlencode({"confirm": token}),
                      headers={"Content-Type": "application/x-www-form-urlencoded",
                               "Origin": ISSUER})
    refused(resp)
    assert (await alice.api("hello", {"state": "h2"})).code == 200


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
async def test_a_second_consent_cookie_is_refused_at_authorize(http_client, base_url, shape):
    """Alice denied; a planted decision of the same name (any value) beside hers is no
    decision at all, neither hers nor the planted one."""
    alice = await signed_in(http_client, base_url)
    denied = await alice.api("consent", {**CONSENT, "allow": False})
    assert denied.code == 204
    name = next(k for k in alice.cookies if k.startswith(CONSENT_PREFIX))
    mallory = await signed_in(http_client, base_url, "mallory", "mallory-pw")
    assert (await mallory.api("consent", CONSENT)).code == 200
    headers = cookie_headers(name, alice.cookies[name], mallory.cookies[name], shape,
                             extra=f"; {LOGON_COOKIE}={alice.cookies[LOGON_COOKIE]}")
    resp = await send_cookies(http_client, base_url, authorize_url(konnect="c1", prompt="none"),
                      headers)
    refused(resp)
    # hers alone is still her decision
    resp = await alice.fetch(authorize_url(konnect="c1", prompt="none"))
    assert query_of(resp.headers["Location"])["error"] == "access_denied"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("shape", SHAPES)
async def test_a_second_authority_flow_cookie_is_refused_at_the_callback(http_client, base_url,
                                                                         shape):
    """The hop of a sign-in through an authority: two flow cookies of one state (one a
    sibling planted with an attacker's own flow) are refused before anything is checked,
    and the state is not used up."""
    b = Browser(http_client, base_url)
    start = await b.fetch("/signin/v1/identifier/oauth2/start?authority_id=upstream&"
                          + urlencode({"flow": "oidc", **WEB_RP}))
    assert start.code == 302 and start.headers["Location"].startswith(UPSTREAM)
    state = query_of(start.headers["Location"])["state"]
    (name, ours), = [(k, v) for k, v in b.cookies.items() if k.startswith(FLOW_PREFIX)]
    headers = cookie_headers(name, ours, "planted-flow", shape)
    resp = await send_cookies(http_client, base_url, "/signin/v1/identifier/oauth2/cb", headers,
                      method="POST", body=urlencode({"state": state, "id_token": "x.y.z"}),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    refused(resp)
    # with its own cookie alone the answer is checked (and this one refused as a bad token)
    alone = await b.fetch("/signin/v1/identifier/oauth2/cb", method="POST",
                          body=urlencode({"state": state, "id_token": "x.y.z"}),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert alone.code == 403 and b"did not succeed" in alone.body


def host_cookie(header: str) -> bool:
    """A Set-Cookie a browser takes only as a `__Host-` cookie of this host (RFC 6265bis
    §4.1.3.2): the prefix, Secure, Path=/ and no Domain."""
    name = header.split("=", 1)[0]
    attributes = [a.strip().lower() for a in header.split(";")[1:]]
    return name.startswith("__Host-") and "secure" in attributes and "path=/" in attributes \
        and not any(a.startswith("domain") for a in attributes) \
        and all(not a.startswith("path=") or a == "path=/" for a in attributes)


@pytest.mark.gen_test(timeout=30)
async def test_every_cookie_the_services_set_or_clear_is_a_host_cookie(http_client, base_url):
    """Sign in, consent, authorize (browser state), sign out through the API and through
    end session, start a sign-in through an authority: every Set-Cookie of every answer."""
    seen = []

    class Recording(Browser):
        async def fetch(self, url, **kw):
            resp = await super().fetch(url, **kw)
            seen.extend(resp.headers.get_list("Set-Cookie"))
            return resp

    b = Recording(http_client, base_url)
    assert (await b.api("logon", {"state": "s1", "params": ["alice", "wonderland", "1"]})).code == 200
    assert (await b.api("consent", CONSENT)).code == 200
    resp = await b.fetch(authorize_url(konnect="c1", prompt="none"))
    assert "code" in query_of(resp.headers["Location"])
    assert (await b.api("logoff", {"state": "o1"})).code == 200
    assert (await b.api("logon", {"state": "s2", "params": ["alice", "wonderland", "1"]})).code == 200
    page = await b.fetch(END)
    token = page.body.decode().split('name="confirm" value="')[1].split('"')[0]
    await b.fetch(END, method="POST", body=urlencode({"confirm": token}),
                  headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": ISSUER})
    await b.fetch("/signin/v1/identifier/oauth2/start?authority_id=upstream")
    names = {h.split("=", 1)[0] for h in seen}
    assert {LOGON_COOKIE, "__Host-KKBS"} <= names
    assert any(n.startswith(CONSENT_PREFIX) for n in names)
    assert any(n.startswith(FLOW_PREFIX) for n in names)
    assert [h for h in seen if not host_cookie(h)] == []


@pytest.mark.gen_test(timeout=30)
async def test_abandoned_authority_sign_ins_are_cleared_past_four(http_client, base_url):
    """Each hop's cookie goes with every request to the host (Path=/): a browser that
    started many sign-ins through an authority and finished none keeps at most four, so
    its requests stay within the proxies' header limits. The newest one always works."""
    b = Browser(http_client, base_url)
    states = []
    for _ in range(6):
        start = await b.fetch("/signin/v1/identifier/oauth2/start?authority_id=upstream")
        states.append(query_of(start.headers["Location"])["state"])
        flows = [k for k in b.cookies if k.startswith(FLOW_PREFIX)]
        assert 1 <= len(flows) <= 4
    resp = await b.fetch("/signin/v1/identifier/oauth2/cb", method="POST",
                         body=urlencode({"state": states[-1], "id_token": "x.y.z"}),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.code == 403  # its flow was there: the (bad) answer was checked
