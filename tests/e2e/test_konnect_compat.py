"""What a Konnect deployment relies on, against the running group
(docs/konnect-compatibility.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional
from urllib.parse import urlencode, urlsplit

import pytest
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from services.userinfo.handlers import userinfo_claims
from shared import discovery
from shared import scopes as scopelib
from shared.clients import ClientRegistry
from shared.identity import Identity, public_subject
from shared.tokens import Tokens
from tests.support.agent import Agent, Outcome
from tests.support.group import Group, free_port

# every field of Konnect's discovery document, oidc/provider/provider.go (registration_endpoint
# only with --allow-dynamic-client-registration)
KONNECT_FIELDS = {
    "issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint",
    "end_session_endpoint", "check_session_iframe", "jwks_uri", "scopes_supported",
    "response_types_supported", "subject_types_supported",
    "id_token_signing_alg_values_supported", "userinfo_signing_alg_values_supported",
    "request_object_signing_alg_values_supported", "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported", "claims_parameter_supported",
    "claims_supported", "request_parameter_supported", "request_uri_parameter_supported",
}


# what we add (what Konnect accepted without advertising it, the endpoints it lacks);
# docs/konnect-compatibility.md
OUR_ADDITIONS = {
    "revocation_endpoint", "introspection_endpoint", "response_modes_supported",
    "grant_types_supported", "code_challenge_methods_supported",
    "revocation_endpoint_auth_methods_supported", "introspection_endpoint_auth_methods_supported",
    "revocation_endpoint_auth_signing_alg_values_supported",
    "introspection_endpoint_auth_signing_alg_values_supported",
    "require_request_uri_registration", "authorization_response_iss_parameter_supported",
    "frontchannel_logout_supported", "backchannel_logout_supported", "ui_locales_supported",
}


# Konnect's paths (bootstrap/bootstrap.go, bootstrap/ldap.go: no --uri-base-path)
KONNECT_PATHS = {
    "authorization_endpoint": "/signin/v1/identifier/_/authorize",
    "token_endpoint": "/konnect/v1/token",
    "userinfo_endpoint": "/konnect/v1/userinfo",
    "end_session_endpoint": "/signin/v1/identifier/_/endsession",
    "check_session_iframe": "/konnect/v1/session/check-session.html",
    "jwks_uri": "/konnect/v1/jwks.json",
}


KONNECT_REGISTRATION_PATH = "/konnect/v1/register"


KONNECT_RESPONSE_TYPES = {"id_token token", "id_token", "code id_token", "code id_token token"}


KONNECT_CLAIMS = {"iss", "sub", "aud", "exp", "iat", "name", "family_name", "given_name",
                  "email", "email_verified"}


# each manager's ScopesSupported in Konnect (before --allow-scope); `openid` comes first in
# scopes_supported
KONNECT_SCOPES = {
    "kc": {"offline_access", "profile", "email", "konnect/id", "konnect/uuid",
           "konnect/raw_sub", "kopano/gc"},
    "ldap": {"offline_access", "profile", "email", "konnect/uuid", "konnect/raw_sub",
             "konnect/id"},   # konnect/id: Konnect only with LDAP_UIDNUMBER_ATTRIBUTE
    "cookie": {"profile", "email", "konnect/id"},
    "dummy": {"profile", "email"},
}


# Konnect's oidc/oidc.go (KonnectIDTokenSubjectSaltV1)
SUBJECT_KEY = b"konnect-IDToken-v1"


USERS_BACKEND = "identifier-users"   # ours; Konnect's are identifier-kc, identifier-ldap, ...


USER = "demo"


PROFILE_AND_EMAIL = {"name", "family_name", "given_name", "preferred_username", "email",
                     "email_verified"}


def konnect_subject(raw_sub: str, salt: str) -> str:
    """Konnect's getPublicSubject (identity/managers/utils.go), written independently: keyed
    BLAKE2b-512 over `raw + " " + backend`, base64url without padding, then `@konnect`."""
    digest = hashlib.new("blake2b", (raw_sub + " " + salt).encode(), key=SUBJECT_KEY,
                         digest_size=64).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=") + "@konnect"


def _rsa_public_jwk(kid: str) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAKey.import_key(key.public_key()).as_dict()
    return dict(jwk, kid=kid, use="sig", alg="RS256")


def registry_document(redirect_uri: str, secret_of: dict, demo_origin: str, demo: dict) -> dict:
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(redirect_uri))
    return {
        "clients": [
            {"id": demo["client_id"], "name": "Konnect demo app", "secret": demo["client_secret"],
             "insecure": True, "redirect_uris": [demo_origin + "/callback"]},
            # every key of Konnect's ClientRegistration (identity/clients/models.go)
            {"id": "compat-all", "secret": secret_of["compat-all"], "name": "Compat (every key)",
             "application_type": "web", "redirect_uris": [redirect_uri], "origins": [origin],
             "trusted": False, "trusted_scopes": ["kopano/kwm"], "insecure": True,
             "jwks": {"keys": [_rsa_public_jwk("compat-all-1")]},
             "request_object_signing_alg": "RS256", "id_token_signed_response_alg": "PS256",
             "userinfo_signed_response_alg": "RS256",
             "token_endpoint_auth_method": "client_secret_basic",
             "token_endpoint_auth_signing_alg": "RS256",
             "post_logout_redirect_uris": [origin + "/bye"], "contacts": ["ops@example.test"],
             "uri": "https://rp.example.test/", "grant_types": ["authorization_code",
                                                               "refresh_token"]},
            {"id": "compat-trusted", "secret": secret_of["compat-trusted"], "trusted": True,
             "insecure": True, "redirect_uris": [redirect_uri]},
            {"id": "compat-native", "application_type": "native",
             "redirect_uris": ["http://127.0.0.1/cb", "my.app://callback"]},
        ],
        # Konnect's sample file holds the external authorities in the same file (its
        # identifier-registration.yaml.in)
        "authorities": [{"id": "upstream", "name": "Upstream", "authority_type": "oidc",
                         "iss": "https://upstream.example.test", "client_id": "konnect",
                         "default": False}],
    }


@dataclass
class Compat:
    group: Group
    password: str
    secrets: dict
    redirect_uri: str
    meta: dict
    uuid: str

    @property
    def issuer(self) -> str:
        return self.group.issuer

    def session(self) -> requests.Session:
        return self.group.session()


@pytest.fixture(scope="module")
def compat(tmp_path_factory):
    group = Group(tmp_path_factory.mktemp("group-compat"), proxy="caddy", token_procs=2)
    redirect_uri = f"http://127.0.0.1:{free_port()}/cb"
    secret_of = {c: f"{c}-{secrets.token_urlsafe(18)}" for c in ("compat-all", "compat-trusted")}
    demo = {"client_id": "konnect-demo", "client_secret": secrets.token_urlsafe(24),
            "username": USER, "password": secrets.token_urlsafe(12)}
    state = group.state
    for name, text in (
            ("demo.json", json.dumps(demo)),
            ("identifier-registration.yaml", yaml.safe_dump(registry_document(
                redirect_uri, secret_of, group.demo_url, demo)))):
        fd = os.open(state / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    with group:
        with group.session() as s:
            meta = s.get(group.issuer + "/.well-known/openid-configuration", timeout=10).json()
        users = yaml.safe_load((state / "users.yaml").read_text())["users"]
        (user,) = [u for u in users if u["username"] == USER]
        yield Compat(group, demo["password"], secret_of, redirect_uri, meta, str(user["uuid"]))


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


@dataclass
class Flow:
    outcome: Outcome
    params: dict
    nonce: str
    verifier: str


def authorize(env: Compat, client_id: str, *, response_type: str = "code",
              scope: str = "openid profile email", claims: Optional[dict] = None) -> Flow:
    verifier, challenge = pkce()
    nonce, state = secrets.token_hex(8), secrets.token_hex(8)
    params = {"client_id": client_id, "redirect_uri": env.redirect_uri,
              "response_type": response_type, "scope": scope, "state": state, "nonce": nonce,
              "code_challenge": challenge, "code_challenge_method": "S256"}
    if claims:
        params["claims"] = json.dumps(claims)
    agent = Agent(env.issuer, env.group.ca)
    try:
        outcome = agent.run(f"{env.meta['authorization_endpoint']}?{urlencode(params)}",
                            USER, env.password, stop_outside=True)
    finally:
        agent.session.close()
    assert outcome.url.startswith(env.redirect_uri), outcome
    assert outcome.params["state"] == state, outcome.params
    return Flow(outcome, outcome.params, nonce, verifier)


def redeem(env: Compat, client_id: str, flow: Flow) -> dict:
    with env.session() as s:
        resp = s.post(env.meta["token_endpoint"], timeout=10, auth=(client_id, env.secrets[client_id]),
                      data={"grant_type": "authorization_code", "code": flow.params["code"],
                            "redirect_uri": env.redirect_uri, "code_verifier": flow.verifier})
    assert resp.status_code == 200, resp.text
    return resp.json()


def verified(env: Compat, token: str) -> tuple[dict, dict]:
    """(header, claims) of a JWT verified with the published JWKS (joserfc, not our code)."""
    with env.session() as s:
        jwks = s.get(env.meta["jwks_uri"], timeout=10).json()
    result = jwt.decode(token, KeySet.import_key_set(jwks),
                        algorithms=["RS256", "PS256", "ES256", "EdDSA"])
    return dict(result.header), dict(result.claims)


def userinfo(env: Compat, access_token: str) -> requests.Response:
    with env.session() as s:
        return s.get(env.meta["userinfo_endpoint"], timeout=10,
                     headers={"Authorization": "Bearer " + access_token})


@pytest.mark.group
def test_discovery_has_konnects_fields_and_paths(compat):
    doc, issuer = compat.meta, compat.issuer
    assert doc["issuer"] == issuer
    missing = KONNECT_FIELDS - doc.keys()
    assert not missing, f"fields Konnect has and we lack: {missing}"
    added = doc.keys() - KONNECT_FIELDS
    assert added == OUR_ADDITIONS, ("discovery fields beyond Konnect's must be listed in "
                                    "docs/konnect-compatibility.md and OUR_ADDITIONS: "
                                    f"new {added - OUR_ADDITIONS}, gone {OUR_ADDITIONS - added}")
    for name, path in KONNECT_PATHS.items():   # issuer origin + Konnect's path, exactly
        assert doc[name] == issuer + path, name
    assert "registration_endpoint" not in doc   # off by default, as in Konnect
    assert doc["revocation_endpoint"] == issuer + "/konnect/v1/revoke"
    assert doc["introspection_endpoint"] == issuer + "/konnect/v1/introspect"
    # values: Konnect's, or a superset where Konnect under-advertised (it left out `code`, ...)
    assert KONNECT_RESPONSE_TYPES <= set(doc["response_types_supported"])
    assert {"code", "code token"} <= set(doc["response_types_supported"])
    assert doc["subject_types_supported"] == ["public"]
    assert {"client_secret_basic", "none"} <= set(doc["token_endpoint_auth_methods_supported"])
    assert "client_secret_post" in doc["token_endpoint_auth_methods_supported"]
    assert doc["claims_parameter_supported"] is True
    assert doc["request_uri_parameter_supported"] is False
    assert KONNECT_CLAIMS | {"preferred_username"} <= set(doc["claims_supported"])
    assert doc["scopes_supported"][0] == "openid"
    assert set(doc["scopes_supported"][1:]) == KONNECT_SCOPES["ldap"]   # users: as ldap
    assert doc["id_token_signing_alg_values_supported"] == doc["userinfo_signing_alg_values_supported"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert "PS256" in doc["id_token_signing_alg_values_supported"]   # Konnect's default alg
    assert doc["code_challenge_methods_supported"] == ["S256"]   # the only one Konnect takes


def test_registration_endpoint_path_when_enabled():
    settings = SimpleNamespace(iss="https://idp.example.com", identity_manager="kc",
                               allow_scope=(), allow_dynamic_client_registration=True)
    keyring = SimpleNamespace(signing_algs=["PS256", "RS256"])
    doc = discovery.document(settings, keyring)
    assert doc["registration_endpoint"] == "https://idp.example.com" + KONNECT_REGISTRATION_PATH
    assert doc["scopes_supported"][0] == "openid"
    assert set(doc["scopes_supported"][1:]) == KONNECT_SCOPES["kc"]


@pytest.mark.group
def test_every_advertised_endpoint_is_served_through_the_proxy(compat):
    doc = compat.meta
    with compat.session() as s:
        def status(method: str, url: str, **kw) -> int:
            return s.request(method, url, timeout=10, allow_redirects=False, **kw).status_code
        assert status("GET", doc["jwks_uri"]) == 200
        assert status("GET", doc["check_session_iframe"]) == 200
        assert status("GET", doc["authorization_endpoint"]) == 400   # an error page, no redirect
        assert status("POST", doc["token_endpoint"], data={"grant_type": "x"}) == 400
        assert status("GET", doc["userinfo_endpoint"]) == 401
        for name in ("revocation_endpoint", "introspection_endpoint"):
            assert status("POST", doc[name], data={"token": "x"}) == 401, name   # no client
        assert status("GET", doc["end_session_endpoint"]) != 404


@pytest.mark.group
def test_jwks_as_konnect_publishes_it(compat):
    with compat.session() as s:
        resp = s.get(compat.meta["jwks_uri"], timeout=10)
    assert resp.headers["Content-Type"].startswith("application/jwk-set+json")   # as Konnect
    doc = resp.json()
    assert set(doc) == {"keys"}   # no stray top-level `kty` (fixed in Konnect 0.33.6)
    for key in doc["keys"]:
        assert key["kid"] and key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "private key material"
    # the default signer's alias (Konnect's bootstrap/bootstrap.go)
    assert "default" in {k["kid"] for k in doc["keys"]}


@pytest.mark.group
def test_cors_as_konnect_with_authorization_allowed_at_the_token_endpoint(compat):
    doc = compat.meta
    origin = {"Origin": "https://app.example.test"}
    with compat.session() as s:
        for url in (compat.issuer + discovery.DISCOVERY_PATH, doc["jwks_uri"]):
            assert s.get(url, headers=origin, timeout=10).headers["Access-Control-Allow-Origin"] == "*"
        answer = s.post(doc["token_endpoint"], headers=origin, timeout=10, data={"grant_type": "x"})
        assert answer.headers.get("Access-Control-Allow-Origin") == "*"
        preflight = s.options(doc["token_endpoint"], timeout=10, headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code in (200, 204)
        allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed   # Konnect's did not
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Credentials" not in preflight.headers
        info = s.get(doc["userinfo_endpoint"], headers=origin, timeout=10)   # "allow all"
        assert info.headers["Access-Control-Allow-Origin"] == "*"


def test_registry_accepts_every_konnect_key():
    redirect = "https://rp.example.test/cb"
    doc = registry_document(redirect, {"compat-all": "a-secret", "compat-trusted": "t"},
                            "http://127.0.0.1:9", {"client_id": "demo", "client_secret": "s"})
    registry = ClientRegistry.from_document(doc, issuer="https://idp.example.test")
    full = registry.get("compat-all")
    assert full is not None and full.name == "Compat (every key)"
    assert full.application_type == "web" and full.origins == ("https://rp.example.test",)
    assert not full.trusted and full.trusted_scopes == ("kopano/kwm",) and full.insecure
    assert full.jwks["keys"][0]["kid"] == "compat-all-1"
    assert (full.request_object_signing_alg, full.id_token_signed_response_alg,
            full.userinfo_signed_response_alg) == ("RS256", "PS256", "RS256")
    assert full.token_endpoint_auth_method == "client_secret_basic"
    assert full.post_logout_redirect_uris == ("https://rp.example.test/bye",)
    assert full.contacts == ("ops@example.test",) and full.uri == "https://rp.example.test/"
    assert full.check_secret("a-secret") and not full.check_secret("A-secret")
    assert registry.get("compat-trusted").trusted
    native = registry.get("compat-native")
    assert native.is_public   # no secret: a public client (Konnect: any secret or none)
    # Konnect's identity/clients/registry.go: a native client's http loopback URI matches any
    # port and any loopback host
    assert native.redirect_uri_ok("http://localhost:51234/cb")
    assert native.redirect_uri_ok("http://[::1]:8080/cb")
    assert native.redirect_uri_ok("my.app://callback")
    # Web clients keep the first redirect URI's origin when `origins` is empty (Konnect's
    # identity/clients/registry.go)
    plain = ClientRegistry.from_document({"clients": [{"id": "w", "secret": "x",
                                                       "redirect_uris": [redirect]}]},
                                         issuer="https://idp.example.test").get("w")
    assert plain.origins == ("https://rp.example.test",)
    # Konnect's identity/clients/registry.go: an unregistered id is a trusted client when it
    # redirects to the issuer's origin
    implicit = registry.lookup("any-id", "https://idp.example.test/app/cb")
    assert implicit is not None and implicit.trusted
    assert registry.lookup("any-id", "https://elsewhere.example.test/cb") is None


@pytest.mark.group
def test_registry_keys_take_effect_in_the_running_group(compat):
    # compat-all: not trusted (consent page), id_token_signed_response_alg PS256 for the
    # tokens of the token endpoint, userinfo_signed_response_alg RS256 (a JWT, OIDC Core §5.3.2)
    flow = authorize(compat, "compat-all")
    assert any(urlsplit(step).path == "/signin/v1/consent" for step in flow.outcome.steps)
    tokens = redeem(compat, "compat-all", flow)
    header, _ = verified(compat, tokens["id_token"])
    assert header["alg"] == "PS256"
    resp = userinfo(compat, tokens["access_token"])
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/jwt")
    header, claims = verified(compat, resp.text)
    assert header["alg"] == "RS256"
    assert claims["iss"] == compat.issuer and claims["aud"] == "compat-all"
    # compat-trusted: `trusted: yes` skips the consent page
    trusted = authorize(compat, "compat-trusted")
    assert not any(urlsplit(step).path == "/signin/v1/consent" for step in trusted.outcome.steps)


def test_supported_scopes_per_identity_manager():
    for manager, expected in KONNECT_SCOPES.items():
        supported = scopelib.supported(manager)
        assert supported[0] == "openid" and set(supported[1:]) == expected, manager
    # scopes.yaml keys become supported for the identifier managers (Konnect's
    # identifier/identifier.go)
    defs = scopelib.ScopeDefinitions({}, {"kopano/kwm": {"description": "Meet"}})
    assert "kopano/kwm" in scopelib.supported("ldap", definitions=defs)
    assert "kopano/kwm" not in scopelib.supported("dummy", definitions=defs)
    # --allow-scope replaces the list, offline_access included (Konnect's
    # setupSupportedScopes, identity/managers/utils.go)
    assert scopelib.supported("kc", allow_scope=["profile"]) == ["openid", "profile"]


def test_kopano_gc_scope_releases_the_raw_subject():
    kc_user = Identity(raw_sub="AAAAAExID", backend="identifier-kc", username="alice")
    claims = userinfo_claims(kc_user, {"kc.authorizedScopes": ["openid", "kopano/gc"]})
    assert claims["kopano/gc/id"] == "AAAAAExID"
    assert claims["sub"] == konnect_subject("AAAAAExID", "identifier-kc")


@pytest.mark.group
def test_konnect_scopes_in_a_real_flow(compat):
    scope = "openid profile email konnect/id konnect/uuid konnect/raw_sub kopano/gc made/up"
    flow = authorize(compat, "compat-trusted", scope=scope)
    # unsupported scopes are dropped silently, and `scope` says what was granted (RFC 6749 §3.3)
    granted = flow.params["scope"].split()
    assert set(granted) == {"openid", "profile", "email", "konnect/id", "konnect/uuid",
                            "konnect/raw_sub"}
    tokens = redeem(compat, "compat-trusted", flow)
    assert set(tokens["scope"].split()) == set(granted)
    _, id_claims = verified(compat, tokens["id_token"])
    _, access = verified(compat, tokens["access_token"])
    # konnect/raw_sub: ID token and userinfo carry the raw subject, the access token not
    assert id_claims["sub"] == compat.uuid
    assert access["sub"] == konnect_subject(compat.uuid, USERS_BACKEND)
    info = userinfo(compat, tokens["access_token"]).json()
    assert info["sub"] == compat.uuid
    assert info["id"] == 1000 and info["username"] == USER   # konnect/id (Konnect's UserInfoHandler)
    assert info["kc.uuid"] == compat.uuid                     # konnect/uuid
    assert info["preferred_username"] == USER and info["email"] == "demo@example.test"


def test_public_subject_is_konnects():
    # no published pair of a raw subject and Konnect's public one: the reference is the
    # formula of Konnect's identity/managers/utils.go, computed here independently
    for raw, backend in (("alice", "identifier-kc"), ("uid=alice,ou=people,dc=example,dc=test",
                                                      "identifier-ldap"),
                         ("AAAAAKwhqVBA0-5Isxn7p1MwRCUBAAAABgAAAAQAAABNVEU9AAAAAA==", "identifier-kc"),
                         ("ümlaut user", "cookie"), ("dummy", "dummy"), ("", "guest")):
        sub = public_subject(raw, backend)
        assert sub == konnect_subject(raw, backend)
        assert re.fullmatch(r"[A-Za-z0-9_-]{86}@konnect", sub)
    assert public_subject("alice", "identifier-kc") != public_subject("alice", "identifier-ldap")
    assert Identity(raw_sub="x", backend="identifier-ldap", username="x").sub == \
        konnect_subject("x", "identifier-ldap")


@pytest.mark.group
def test_subject_of_the_running_group(compat):
    flow = authorize(compat, "compat-trusted")
    tokens = redeem(compat, "compat-trusted", flow)
    _, id_claims = verified(compat, tokens["id_token"])
    assert id_claims["sub"] == konnect_subject(compat.uuid, USERS_BACKEND)
    assert userinfo(compat, tokens["access_token"]).json()["sub"] == id_claims["sub"]


@pytest.mark.group
def test_access_token_has_konnects_kc_claims(compat):
    scope = "openid profile email offline_access"
    flow = authorize(compat, "compat-trusted", scope=scope,
                     claims={"userinfo": {"email": None}})
    tokens = redeem(compat, "compat-trusted", flow)
    header, claims = verified(compat, tokens["access_token"])
    # make run's production keys: access tokens ES256 (docs/operations.md, "Signing keys")
    assert header["alg"] == "ES256" and header["kid"] and header.get("typ") == "JWT"
    assert claims["iss"] == compat.issuer
    assert claims["sub"] == konnect_subject(compat.uuid, USERS_BACKEND)
    assert claims["aud"] == "compat-trusted"   # a string, as Konnect
    assert claims["exp"] - claims["iat"] == 600 == tokens["expires_in"]   # Konnect's default
    assert isinstance(claims["jti"], str) and claims["jti"]
    assert claims["kc.isAccessToken"] is True
    assert claims["kc.authorizedScopes"] == scope.split()
    assert claims["kc.authorizedClaims"] == {"userinfo": {"email": None}}
    assert claims["kc.identity"] == {"kc.i.id": compat.uuid, "kc.i.un": USER,
                                     "kc.i.dn": "Demo User"}
    assert claims["kc.provider"] == USERS_BACKEND
    # ours in addition (docs/konnect-compatibility.md): RFC 9068 names and the grant family
    assert claims["client_id"] == "compat-trusted" and claims["scope"] == scope
    assert claims["nbf"] == claims["iat"] and claims["kc.family"]
    # without a claims request, kc.authorizedClaims is left out (omitempty)
    plain = redeem(compat, "compat-trusted", authorize(compat, "compat-trusted"))
    assert "kc.authorizedClaims" not in verified(compat, plain["access_token"])[1]


def test_kc_identity_of_the_kopano_backend_is_konnects():
    entry_id = base64.b64encode(b"\0" * 4 + b"entry-id-of-alice").decode()
    alice = Identity(raw_sub="QUxJQ0U", backend="identifier-kc", username="alice",
                     name="Alice Example", extra={"entry_id": entry_id})
    # Konnect's identifier/backends/kc.go: kc.i.id is the user's entry ID (Kopano services log
    # on with it), kc.i.us the raw subject (base64url ExID)
    assert alice.kc_identity() == {"kc.i.id": entry_id, "kc.i.us": "QUxJQ0U", "kc.i.un": "alice",
                                   "kc.i.dn": "Alice Example"}
    assert Identity.raw_sub_of(alice.kc_identity()) == "QUxJQ0U"
    ldap = Identity(raw_sub="uid=bob,dc=example", backend="identifier-ldap", username="bob")
    assert ldap.kc_identity() == {"kc.i.id": "uid=bob,dc=example", "kc.i.un": "bob",
                                  "kc.i.dn": ""}  # always, as Konnect's identifier/user.go
    assert Identity.raw_sub_of(ldap.kc_identity()) == "uid=bob,dc=example"


def test_access_token_of_the_kopano_backend(tmp_path):
    from shared import keytool
    from shared.keys import load_keyring
    keytool.generate(tmp_path, "rsa", bits=2048)
    keyring = load_keyring([str(tmp_path / keytool.LINK_NAME)])
    entry_id = base64.b64encode(b"entry").decode()
    alice = Identity(raw_sub="QUxJQ0U", backend="identifier-kc", username="alice",
                     extra={"entry_id": entry_id})
    tokens = Tokens(keyring, "https://idp.example.com")
    minted = tokens.access_token(client_id="kapi", identity=alice, scopes=["openid", "kopano/gc"],
                                 family="f")
    claims = tokens.validate_access_token(minted.token)
    assert claims["kc.identity"]["kc.i.id"] == entry_id
    assert claims["kc.identity"]["kc.i.us"] == "QUxJQ0U"
    assert claims["kc.provider"] == "identifier-kc"
    assert claims["sub"] == konnect_subject("QUxJQ0U", "identifier-kc")


@pytest.mark.group
def test_id_token_of_the_code_flow(compat):
    flow = authorize(compat, "compat-trusted", scope="openid profile email")
    tokens = redeem(compat, "compat-trusted", flow)
    header, claims = verified(compat, tokens["id_token"])
    assert header.get("typ") == "JWT" and header["kid"]
    assert claims["iss"] == compat.issuer and claims["aud"] == "compat-trusted"   # a string
    assert claims["exp"] - claims["iat"] == 3600   # Konnect's --id-token-expiration default
    assert claims["nonce"] == flow.nonce and claims["sid"] and claims["at_hash"]
    assert "c_hash" not in claims
    # copied from Konnect: no profile or email claims from the token endpoint (RPs call userinfo)...
    assert not PROFILE_AND_EMAIL & claims.keys()
    # ...unless asked for with the claims parameter (OIDC Core §5.5)
    asked = authorize(compat, "compat-trusted", scope="openid profile email",
                      claims={"id_token": {"name": None, "email": None}})
    _, with_claims = verified(compat, redeem(compat, "compat-trusted", asked)["id_token"])
    assert with_claims["name"] == "Demo User" and with_claims["email"] == "demo@example.test"
    assert "family_name" not in with_claims


@pytest.mark.group
def test_id_token_of_implicit_and_hybrid_flows(compat):
    # response_type=id_token: profile and email claims in the token, no at_hash (OIDC Core
    # §5.4, §3.2.2.10)
    implicit = authorize(compat, "compat-trusted", response_type="id_token")
    assert "#" in implicit.outcome.url and "code" not in implicit.params
    _, claims = verified(compat, implicit.params["id_token"])
    assert claims["nonce"] == implicit.nonce and claims["sid"]
    assert claims["name"] == "Demo User" and claims["preferred_username"] == USER
    assert claims["email"] == "demo@example.test" and "at_hash" not in claims
    # response_type="code id_token": c_hash and the profile claims
    hybrid = authorize(compat, "compat-trusted", response_type="code id_token")
    _, claims = verified(compat, hybrid.params["id_token"])
    assert claims["c_hash"] and claims["name"] == "Demo User" and "at_hash" not in claims
    # "id_token token": at_hash, and no profile claims since an access token comes along
    both = authorize(compat, "compat-trusted", response_type="id_token token")
    _, claims = verified(compat, both.params["id_token"])
    assert claims["at_hash"] and not PROFILE_AND_EMAIL & claims.keys()
    assert both.params["token_type"].lower() == "bearer"
    # fixed (Konnect's returned none): the token endpoint returns an ID token for the hybrid flows too
    tokens = redeem(compat, "compat-trusted", hybrid)
    assert "id_token" in tokens


@pytest.mark.group
def test_max_age_zero_asks_for_a_fresh_sign_in(compat):
    """Fixed: Konnect took max_age=0 as "not set"; here it means a new sign-in, which
    then satisfies it (and auth_time is in the ID token)."""
    import time
    agent = Agent(compat.issuer, compat.group.ca)
    try:
        def run(**extra: str) -> tuple[Outcome, str]:
            verifier, challenge = pkce()
            params = {"client_id": "compat-trusted", "redirect_uri": compat.redirect_uri,
                      "response_type": "code", "scope": "openid", "state": "s", "nonce": "n",
                      "code_challenge": challenge, "code_challenge_method": "S256", **extra}
            outcome = agent.run(f"{compat.meta['authorization_endpoint']}?{urlencode(params)}",
                                USER, compat.password, stop_outside=True)
            assert outcome.url.startswith(compat.redirect_uri), outcome
            return outcome, verifier
        first, _ = run()
        assert any(urlsplit(s).path == "/signin/v1/identifier" for s in first.steps)
        again, _ = run()   # signed in: straight back with a code
        assert not any(urlsplit(s).path == "/signin/v1/identifier" for s in again.steps)
        time.sleep(1.1)
        started = int(time.time())
        fresh, verifier = run(max_age="0")
        assert any(urlsplit(s).path == "/signin/v1/identifier" for s in fresh.steps)
    finally:
        agent.session.close()
    tokens = redeem(compat, "compat-trusted",
                    Flow(fresh, fresh.params, "n", verifier))
    _, claims = verified(compat, tokens["id_token"])
    assert claims["auth_time"] >= started


@pytest.mark.group
def test_token_endpoint_konnect_behaviour(compat):
    flow = authorize(compat, "compat-trusted", scope="openid offline_access")
    tokens = redeem(compat, "compat-trusted", flow)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 600
    assert tokens["scope"] == "openid offline_access"   # Konnect sent no scope
    assert tokens["refresh_token"]   # offline_access, trusted client (OIDC Core §11)
    with compat.session() as s:
        # client_id + secret in the form (client_secret_post) work, as in Konnect
        refreshed = s.post(compat.meta["token_endpoint"], timeout=10, data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": "compat-trusted", "client_secret": compat.secrets["compat-trusted"]})
        assert refreshed.status_code == 200, refreshed.text
        # fixed: a wrong secret is 401 invalid_client (Konnect: 400 access_denied)
        wrong = s.post(compat.meta["token_endpoint"], timeout=10, auth=("compat-trusted", "nope"),
                       data={"grant_type": "refresh_token", "refresh_token": "x"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        # Konnect sent `application/json; encoding=utf-8`
        assert wrong.headers["Content-Type"] == "application/json; charset=utf-8"
        # only these two grants, as Konnect
        other = s.post(compat.meta["token_endpoint"], timeout=10,
                       auth=("compat-trusted", compat.secrets["compat-trusted"]),
                       data={"grant_type": "client_credentials"})
        assert other.status_code == 400 and other.json()["error"] == "unsupported_grant_type"
    # fixed (Konnect's had none): the Bearer scheme in WWW-Authenticate
    bad = userinfo(compat, "not-a-token")
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"].startswith("Bearer ")
