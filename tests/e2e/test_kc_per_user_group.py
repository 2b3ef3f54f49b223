"""The kc backend in Konnect's usual set-up, without a global session (no
KOPANO_SERVER_USERNAME, no client certificate), in the whole group as `make run` starts it:
the identifier process signs the user in on their own Kopano session, the authorize
process, two token processes and the userinfo process look the user up later on that
session, or on a single sign-on (KCOIDC) session when the server has ended it.

The Kopano server is the SOAP stand-in (tests/support/kopano_standin.py); like
kopano-server with libkcoidc it trusts the keys the group publishes in its JWKS."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode

import pytest

from tests.support.agent import Agent
from tests.support.group import Group
from tests.support.kopano_standin import KopanoStandIn, KopanoUser

pytestmark = pytest.mark.group


@pytest.fixture(scope="module")
def kc():
    with KopanoStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def group(tmp_path_factory, kc):
    env = {"KONNECTD_IDENTITY_MANAGER": "kc", "KOPANO_SERVER_DEFAULT_URI": kc.url}
    with Group(tmp_path_factory.mktemp("group-kc"), token_procs=2, extra_env=env) as g:
        demo = g.demo
        kc.add_user(KopanoUser(demo["username"], demo["password"], 7, "Demo Kopano",
                               "demo@kopano.test", exid=b"demo-exid"))
        s = g.session()
        doc = s.get(g.issuer + "/.well-known/openid-configuration", timeout=10).json()
        kc.trust_issuer(s.get(doc["jwks_uri"], timeout=10).json(),
                        doc["id_token_signing_alg_values_supported"])
        yield g


def client_auth(demo: dict) -> dict:
    pair = f"{demo['client_id']}:{demo['client_secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def sign_in_and_redeem(group, agent) -> dict:
    """The demo client's code flow with PKCE through the proxy: the token response."""
    demo, redirect_uri = group.demo, group.demo_url + "/callback"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {"client_id": demo["client_id"], "redirect_uri": redirect_uri,
              "response_type": "code", "scope": "openid profile email offline_access",
              "state": "st", "nonce": "n", "code_challenge": challenge.rstrip(b"=").decode(),
              "code_challenge_method": "S256"}
    outcome = agent.run(f"{group.issuer}/signin/v1/identifier/_/authorize?{urlencode(params)}",
                        demo["username"], demo["password"], stop_outside=True)
    assert outcome.url.startswith(redirect_uri), (outcome.status, outcome.body[:300])
    resp = agent.session.post(group.issuer + "/konnect/v1/token", timeout=10, data={
        "grant_type": "authorization_code", "code": outcome.params["code"],
        "redirect_uri": redirect_uri, "code_verifier": verifier}, headers=client_auth(demo))
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_sign_in_tokens_userinfo_and_refresh_work_on_per_user_sessions(group, kc):
    agent = Agent(group.issuer, group.ca)
    demo, s = group.demo, agent.session
    tokens = sign_in_and_redeem(group, agent)
    assert tokens["expires_in"] == 240                  # KOPANO_SERVER_SESSION_TIMEOUT - 60 s
    [logon] = [entry for entry in kc.state.logons if entry[0] == demo["username"]]
    assert logon[2] == 0x0001 and logon[3] == 0            # NO_UID_AUTH, a registered session
    [sid] = kc.live_sessions(demo["username"])
    assert kc.state.sso_logons == []                     # authorize used the logon's session
    info = s.get(group.issuer + "/konnect/v1/userinfo", timeout=10,
                 headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert info.status_code == 200, info.text
    assert info.json()["email"] == "demo@kopano.test" and info.json()["name"] == "Demo Kopano"
    assert kc.state.sso_logons == [] and kc.live_sessions(demo["username"]) == [sid]

    kc.end_sessions()                                    # the server restarted
    refreshed = s.post(group.issuer + "/konnect/v1/token", headers=client_auth(demo), timeout=10,
                       data={"grant_type": "refresh_token",
                             "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    [sso] = kc.state.sso_logons                          # a token process signed on once
    assert sso.er == 0 and sso.claims["iss"] == group.issuer
    again = s.get(group.issuer + "/konnect/v1/userinfo", timeout=10,
                  headers={"Authorization": "Bearer " + refreshed.json()["access_token"]})
    assert again.status_code == 200 and len(kc.state.sso_logons) == 1  # shared, not per process

    kc.set_active(demo["username"], False)               # disabled in Kopano
    kc.end_sessions()
    gone = s.get(group.issuer + "/konnect/v1/userinfo", timeout=10,
                 headers={"Authorization": "Bearer " + refreshed.json()["access_token"]})
    assert gone.status_code == 401
    kc.set_active(demo["username"], True)


def test_sign_out_logs_the_kopano_session_off(group, kc):
    agent = Agent(group.issuer, group.ca)
    sign_in_and_redeem(group, agent)
    username = group.demo["username"]
    [sid] = kc.live_sessions(username)
    out = agent.api("logoff", {"state": "s"})
    assert out.status_code == 200
    assert sid in kc.state.logoffs and kc.live_sessions(username) == []
