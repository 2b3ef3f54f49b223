"""The origin check of the identifier API and of the end-session confirmation: the request's
Origin (else its Referer) must be the issuer's origin, scheme, host and port (RFC 6454),
not merely name the request's Host: a page of the issuer's host over http, on another
port or on a subdomain is another origin, whatever Host the request carries."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.support.browser import WEB_RP, signed_in
from tests.support.op import ISSUER
from tests.support.users import cheap_hash

USERS = ({"username": "alice", "password": cheap_hash("wonderland"), "id": 1001,
          "uuid": "u-alice"},)
pytestmark = pytest.mark.op(users=USERS)

HOST = "idp.example.test"  # the issuer's host (tests.support.op.ISSUER)
BODIES = {
    "hello": {"state": "h1"},
    "logon": {"state": "s1", "params": ["alice", "wonderland", "1"]},
    "logoff": {"state": "o1"},
    "consent": {"state": "c1", "allow": True, "scope": "openid", "ref": "r", "flow_nonce": "n",
                **WEB_RP},
}
# (the request's Host, its Origin and Referer): every one names the Host, none is the
# issuer's origin
FOREIGN = {
    "http on the issuer's host": (HOST, "http://" + HOST, None),
    "http on port 443": (HOST + ":443", "http://" + HOST + ":443", None),
    "another port": (HOST + ":8443", "https://" + HOST + ":8443", None),
    "a subdomain": ("a." + HOST, "https://a." + HOST, None),
    "a trailing dot": (HOST + ".", "https://" + HOST + ".", None),
    "websocket scheme": (HOST, "wss://" + HOST, None),
    "referer over http": (HOST, None, "http://" + HOST + "/signin/v1/identifier"),
    "referer on another port": (HOST + ":444", None, "https://" + HOST + ":444/signin/v1/"),
    "opaque origin, good referer": (HOST, "null", ISSUER + "/signin/v1/identifier"),
    "neither": (HOST, None, None),
}
OURS = {
    "origin": ("https://" + HOST, None),
    "origin in capitals": ("https://IDP.Example.TEST", None),
    "origin with the default port": ("https://" + HOST + ":443", None),
    "referer of the sign-in page": (None, ISSUER + "/signin/v1/identifier?flow=oidc"),
}


def headers(host, origin, referer) -> dict:
    found = {"Host": host, "Content-Type": "application/json", "Kopano-Konnect-XSRF": "1"}
    if origin is not None:
        found["Origin"] = origin
    if referer is not None:
        found["Referer"] = referer
    return found


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("case", FOREIGN)
@pytest.mark.parametrize("endpoint", BODIES)
async def test_the_api_refuses_every_origin_but_the_issuers(http_client, base_url, endpoint,
                                                             case):
    b = await signed_in(http_client, base_url)
    resp = await b.fetch(f"/signin/v1/identifier/_/{endpoint}", method="POST",
                         body=json.dumps(BODIES[endpoint]), headers=headers(*FOREIGN[case]))
    assert resp.code == 400, resp.body
    assert json.loads(resp.body) == {"error": "invalid_request",
                                     "error_description": "origin check failed"}
    assert resp.headers.get_list("Set-Cookie") == []
    assert (await b.api("hello", {"state": "h2"})).code == 200  # not signed out either


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("case", OURS)
async def test_the_api_takes_the_issuers_origin_whatever_the_host(http_client, base_url, case):
    """The Host a proxy passes on does not matter: the issuer's origin does."""
    b = await signed_in(http_client, base_url)
    resp = await b.fetch("/signin/v1/identifier/_/logon", method="POST",
                         body=json.dumps(BODIES["logon"]),
                         headers=headers("internal.example:8777", *OURS[case]))
    assert resp.code == 200 and json.loads(resp.body)["success"] is True


async def confirmation(b) -> str:
    page = await b.fetch("/signin/v1/identifier/_/endsession")
    assert page.code == 200
    return page.body.decode().split('name="confirm" value="')[1].split('"')[0]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("case", FOREIGN)
async def test_the_sign_out_confirmation_refuses_every_origin_but_the_issuers(http_client,
                                                                              base_url, case):
    b = await signed_in(http_client, base_url)
    form = {**headers(*FOREIGN[case]), "Content-Type": "application/x-www-form-urlencoded"}
    resp = await b.fetch("/signin/v1/identifier/_/endsession", method="POST",
                         body=urlencode({"confirm": await confirmation(b)}), headers=form)
    assert resp.code == 400 and b"origin check failed" in resp.body
    assert (await b.api("hello", {"state": "h2"})).code == 200
    ours = {**headers(HOST, ISSUER, None), "Content-Type": "application/x-www-form-urlencoded"}
    done = await b.fetch("/signin/v1/identifier/_/endsession", method="POST",
                         body=urlencode({"confirm": await confirmation(b)}), headers=ours)
    assert done.code == 302 and (await b.api("hello", {"state": "h3"})).code == 204
