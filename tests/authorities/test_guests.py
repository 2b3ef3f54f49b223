"""Konnect's client-controlled guests (`--allow-client-guests`, shared/users/guest.py): a
client with registered keys vouches for a user no backend knows, in a signed request
object with the scope `konnect/guestok`. Against the group started as `make run` starts
it, with and without the flag."""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlencode

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import jose
from shared.identity import public_subject
from shared.keys import SigningKey, public_jwk
from tests.support.group import Group
from tests.support.upstream import Browser, apart, query_of, write_state

pytestmark = pytest.mark.group
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SECRET = secrets.token_urlsafe(24)
RP = "https://rp.example.test/cb"


def clients():
    jwks = {"keys": [{**public_jwk(KEY.public_key()), "kid": "g1", "use": "sig", "alg": "RS256"}]}
    return [{"id": "guest-rp", "secret": SECRET, "redirect_uris": [RP], "jwks": jwks,
             "trusted_scopes": ["konnect/guestok"]},
            {"id": "no-guests", "secret": SECRET, "redirect_uris": [RP], "jwks": jwks}]


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    base = tmp_path_factory.mktemp("guests")
    on = apart(lambda: Group(base / "on", extra_env={"KONNECTD_ALLOW_CLIENT_GUESTS": "yes"}))
    off = apart(lambda: Group(base / "off"), on)
    for group in (on, off):
        write_state(group, users={}, clients=clients())
    with on, off:
        yield {"on": on, "off": off}


def request_object(group, client_id="guest-rp", alg="RS256", **extra):
    claims = {"iss": client_id, "aud": group.issuer, "client_id": client_id,
              "redirect_uri": RP, "response_type": "code", "state": "s", "nonce": "n",
              "scope": "openid profile email konnect/id konnect/guestok",
              "exp": int(time.time()) + 300,
              "claims": {"id_token": {"guest": {"value": "guest-4711"},
                                      "name": {"value": "Gina Guest"},
                                      "email": {"value": "gina@example.test"},
                                      "email_verified": {"value": True}}}}
    claims.update(extra)
    signer = SigningKey(kid="g1", public=KEY.public_key(), algs=frozenset({alg}), alg=alg,
                        private=KEY)
    return jose.sign({k: v for k, v in claims.items() if v is not None}, signer,
                     typ="oauth-authz-req+jwt")


def authorize(group, client_id="guest-rp", request=None, **query):
    b = Browser(group.ca)
    url = group.issuer + "/signin/v1/identifier/_/authorize?" + urlencode(
        {"client_id": client_id, "redirect_uri": RP, "response_type": "code", "scope": "openid",
         "request": request or request_object(group, client_id), **query})
    b.run(url, stop_at=RP)
    return b


def redeem(group, code, client_id="guest-rp"):
    resp = requests.post(group.issuer + "/konnect/v1/token", verify=group.ca, timeout=15,
                         data={"grant_type": "authorization_code", "code": code,
                               "redirect_uri": RP}, auth=(client_id, SECRET))
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_guest_the_client_vouches_for_is_signed_in_without_a_password(groups):
    on = groups["on"]
    b = authorize(on)
    answer = query_of(b.steps[-1])
    assert b.steps[-1].startswith(RP) and "code" in answer, b.steps
    assert not any("/signin/v1/identifier?" in s for s in b.steps)  # no sign-in page
    tokens = redeem(on, answer["code"])
    claims = jose.unverified_claims(tokens["id_token"])
    assert claims["sub"] == public_subject("guest-4711", "guest")  # Konnect's formula
    access = jose.unverified_claims(tokens["access_token"])
    assert access["kc.identity"]["kc.i.guest"] is True
    assert access["kc.identity"]["kc.i.id"] == "guest-4711"
    assert access["kc.identity"]["kc.i.dat"] == {"e": "gina@example.test", "n": "Gina Guest",
                                                 "ev": 1}
    assert "konnect/guestok" in access["scope"].split()
    info = requests.get(on.issuer + "/konnect/v1/userinfo", verify=on.ca, timeout=15,
                        headers={"Authorization": "Bearer " + tokens["access_token"]}).json()
    assert (info["sub"], info["name"], info["email"]) == (claims["sub"], "Gina Guest",
                                                          "gina@example.test")


def test_without_the_flag_a_guest_request_goes_to_the_sign_in_page(groups):
    b = authorize(groups["off"])
    assert any("/signin/v1/identifier?" in s for s in b.steps) and not b.steps[-1].startswith(RP)


@pytest.mark.parametrize("change", [
    {"scope": "openid profile"},                       # no konnect/guestok
    {"claims": {"id_token": {"name": {"value": "x"}}}},  # no guest named
    {"claims": {"id_token": {"guest": {"value": 17}}}},  # not a string
])
def test_a_request_without_guestok_or_a_guest_goes_to_the_sign_in_page(groups, change):
    on = groups["on"]
    b = authorize(on, request=request_object(on, **change))
    assert any("/signin/v1/identifier?" in s for s in b.steps) and not b.steps[-1].startswith(RP)


def test_an_unsigned_request_object_names_no_guest(groups):
    on = groups["on"]
    import base64
    import json
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    signed = jose.unverified_claims(request_object(on))
    b = authorize(on, request=f"{enc({'alg': 'none'})}.{enc(signed)}.")
    assert not any(s.startswith(RP) and "code=" in s for s in b.steps)


def test_a_client_without_guestok_in_its_trusted_scopes_gets_an_error(groups):
    on = groups["on"]
    b = authorize(on, client_id="no-guests", request=request_object(on, "no-guests"))
    answer = query_of(b.steps[-1])
    assert b.steps[-1].startswith(RP) and answer["error"] == "invalid_request" and "code" not in answer


def test_consent_is_not_available_for_guests(groups):
    on = groups["on"]
    b = authorize(on, request=request_object(on, prompt="consent"))
    assert query_of(b.steps[-1])["error"] == "interaction_required"


def test_offline_access_is_not_granted_to_guests(groups):
    on = groups["on"]
    b = authorize(on, request=request_object(
        on, scope="openid konnect/guestok offline_access"))
    tokens = redeem(on, query_of(b.steps[-1])["code"])
    assert "refresh_token" not in tokens
    assert "offline_access" not in jose.unverified_claims(tokens["access_token"])["scope"]
