"""An issuer URL with a path (https://host:port/some/path), through the real proxy of a
group started as `make run` starts it. As Konnect: every endpoint is the issuer's origin
plus the endpoint's path, the issuer's own path dropped (Konnect's oidc/provider/provider.go
`makeIssURL`, bootstrap/bootstrap.go `makeURIPath`), and the discovery document is at the
origin's `/.well-known/openid-configuration`; tokens carry the issuer as configured. Beyond
Konnect, the document is also under the issuer's path (OpenID Connect Discovery 1.0 §4.1),
so relying-party libraries that discover from the issuer find it."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode, urlsplit

import pytest
from jose import jwt

from tests.support.agent import Agent
from tests.support.group import Group
from tests.support.op import pkce_pair

pytestmark = pytest.mark.group
PATH = "/some/path"


@pytest.fixture(scope="module", params=["caddy", "apache"])
def group(request, tmp_path_factory):
    with Group(tmp_path_factory.mktemp(f"group-path-{request.param}"), proxy=request.param,
               token_procs=1, issuer_path=PATH) as g:
        yield g


def test_discovery_advertises_the_origins_paths_and_the_issuer_with_its_path(group):
    with group.session() as s:
        root = s.get(group.origin + "/.well-known/openid-configuration", timeout=10)
        under_path = s.get(group.issuer + "/.well-known/openid-configuration", timeout=10)
    assert root.status_code == 200 and under_path.status_code == 200
    assert root.json() == under_path.json()
    doc = root.json()
    assert doc["issuer"] == group.origin + PATH
    expected = {"authorization_endpoint": "/signin/v1/identifier/_/authorize",
                "token_endpoint": "/konnect/v1/token", "userinfo_endpoint": "/konnect/v1/userinfo",
                "end_session_endpoint": "/signin/v1/identifier/_/endsession",
                "check_session_iframe": "/konnect/v1/session/check-session.html",
                "jwks_uri": "/konnect/v1/jwks.json"}
    for name, path in expected.items():
        assert doc[name] == group.origin + path, name
    for name, value in doc.items():
        if name.endswith(("_endpoint", "_uri", "_iframe")) and isinstance(value, str):
            assert PATH not in value, name


def test_every_advertised_endpoint_is_served_through_the_proxy(group):
    with group.session() as s:
        doc = s.get(group.origin + "/.well-known/openid-configuration", timeout=10).json()
        assert s.get(doc["jwks_uri"], timeout=10).status_code == 200
        assert s.get(doc["check_session_iframe"], timeout=10).status_code == 200
        assert s.get(doc["authorization_endpoint"], timeout=10).status_code == 400  # a page
        assert s.post(doc["token_endpoint"], data={"grant_type": "x"}, timeout=10).status_code == 400
        assert s.get(doc["userinfo_endpoint"], timeout=10).status_code == 401
        assert s.get(doc["end_session_endpoint"], timeout=10, allow_redirects=False).status_code == 302
        # the issuer's path itself is no prefix of anything
        assert s.get(group.issuer + "/konnect/v1/jwks.json", timeout=10).status_code == 404


def test_a_code_flow_gets_tokens_of_the_issuer_with_its_path(group):
    demo = group.demo
    with group.session() as s:
        doc = s.get(group.issuer + "/.well-known/openid-configuration", timeout=10).json()
        redirect_uri = group.demo_url + "/callback"
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_hex(8), secrets.token_hex(8)
        agent = Agent(group.origin, group.ca)  # the sign-in pages are at the origin
        try:
            outcome = agent.run(doc["authorization_endpoint"] + "?" + urlencode({
                "client_id": demo["client_id"], "redirect_uri": redirect_uri,
                "response_type": "code", "scope": "openid profile", "state": state,
                "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}),
                demo["username"], demo["password"], stop_outside=True)
        finally:
            agent.session.close()
        assert outcome.url.startswith(redirect_uri), outcome
        assert outcome.params["state"] == state and outcome.params["iss"] == group.issuer
        tokens = s.post(doc["token_endpoint"], timeout=10,
                        auth=(demo["client_id"], demo["client_secret"]),
                        data={"grant_type": "authorization_code", "code": outcome.params["code"],
                              "redirect_uri": redirect_uri, "code_verifier": verifier})
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        claims = jwt.get_unverified_claims(body["id_token"])
        assert claims["iss"] == group.issuer and claims["nonce"] == nonce
        assert jwt.get_unverified_claims(body["access_token"])["iss"] == group.issuer
        info = s.get(doc["userinfo_endpoint"], timeout=10,
                     headers={"Authorization": "Bearer " + body["access_token"]})
        assert info.status_code == 200 and info.json()["sub"] == claims["sub"]
    assert urlsplit(doc["authorization_endpoint"]).path == "/signin/v1/identifier/_/authorize"
