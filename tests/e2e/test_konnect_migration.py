"""docs/konnect-compatibility.md, "Migrating from konnectd", walked through against the
group as `make run` starts it: konnectd's files as its package laid them out (the signing
key in /etc/kopano/konnectkeys/ behind the konnectd-signing-private-key.pem symlink, that
directory as validation keys, the encryption secret, the client registry), its LDAP
backend with DN subjects, and what konnectd issued before the switch, minted the way it
minted it (tests/support/konnect_tokens.py): access and refresh tokens, a `dyn.<JWT>`
client, a browser's logon cookie."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.support import konnect_tokens as kt
from tests.support.agent import Agent
from tests.support.group import Group
from tests.support.services import PASSWORD, add_person, ldap_env

pytestmark = pytest.mark.group

KID = "konnect-20210920-a1b2"           # the binscript's `konnect-$(date)-$(rand).pem`
RP = {"id": "konnect-rp", "secret": secrets.token_urlsafe(24), "name": "Konnect RP",
      "redirect_uris": ["https://rp.example.test/cb"]}
SCOPES = ["openid", "profile", "email", "offline_access"]
BACKEND = "identifier-ldap"


def _private(path: Path, data: bytes) -> None:
    """A file only its owner reads (konnectd's package made them so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(data)


def konnectd_files(etc: Path, demo: dict, demo_origin: str) -> Any:
    """/etc/kopano as konnectd's package left it (scripts/kopano-konnectd.binscript
    `setup`): the key, the symlink that names it, the secret, the registry."""
    key = kt.rsa_key()
    _private(etc / "konnectkeys" / f"{KID}.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (etc / "konnectd-signing-private-key.pem").symlink_to(etc / "konnectkeys" / f"{KID}.pem")
    secret = os.urandom(32)
    _private(etc / "konnectd-encryption-secret.key", secret)
    _private(etc / "konnectd-identifier-registration.yaml", yaml.safe_dump({"clients": [
        {"id": demo["client_id"], "name": "Konnect demo app", "secret": demo["client_secret"],
         "redirect_uris": [demo_origin + "/callback"]},
        RP]}).encode())
    return key, secret


@dataclass
class Migrated:
    group: Group
    key: Any
    secret: bytes
    user_dn: str

    @property
    def issuer(self) -> str:
        return self.group.issuer

    def refresh_token(self, client_id: str = RP["id"], **kwargs) -> str:
        return kt.refresh_token(self.key, KID, issuer=self.issuer, client_id=client_id,
                                raw_sub=self.user_dn, backend=BACKEND, scopes=SCOPES,
                                identity=kt.identifier_identity(self.user_dn, "lena",
                                                                "Lena Example"), **kwargs)

    def token(self, form: dict, auth: tuple = (RP["id"], RP["secret"])):
        with self.group.session() as s:
            resp = s.post(self.issuer + "/konnect/v1/token", data=form, auth=auth, timeout=10)
        return resp.status_code, resp.json()


@pytest.fixture(scope="module")
def migrated(tmp_path_factory, slapd_server):
    """The checklist of "Migrating from konnectd", step by step."""
    if not slapd_server.running:
        slapd_server.start()
    state = tmp_path_factory.mktemp("group-migrated")
    etc = tmp_path_factory.mktemp("etc-kopano")
    with slapd_server.temporary_ou("konnect-migration") as ou:
        user_dn = add_person(slapd_server, ou, "lena")
        group = Group(state, token_procs=2, extra_env={
            # 1. the issuer is the group's (the tokens below are minted for it)
            # 2. the identity manager and its settings as konnectd had them; konnectd's
            #    LDAP subjects are DNs unless LDAP_SUB_ATTRIBUTES says otherwise
            **ldap_env(slapd_server, ou), "LDAP_SUB_ATTRIBUTES": "",
        })
        demo = {"client_id": "konnect-demo", "client_secret": secrets.token_urlsafe(24),
                "username": "demo", "password": secrets.token_urlsafe(12)}
        _private(state / "demo.json", json.dumps(demo).encode())
        key, secret = konnectd_files(etc, demo, group.demo_url)
        group.env.update({
            # 3. konnectd's signing key, by the same name (its kid: the symlink's target),
            #    and its validation keys directory (the package's konnectkeys)
            "KONNECTD_SIGNING_PRIVATE_KEY": str(etc / "konnectd-signing-private-key.pem"),
            "KONNECTD_VALIDATION_KEYS_PATH": str(etc / "konnectkeys"),
            # 4. the encryption secret, 5. the client registry (6. lifetimes: defaults;
            # 7. Redis and the proxy: make run's)
            "KONNECTD_ENCRYPTION_SECRET": str(etc / "konnectd-encryption-secret.key"),
            "KONNECTD_IDENTIFIER_REGISTRATION_CONF":
                str(etc / "konnectd-identifier-registration.yaml"),
        })
        with group:
            yield Migrated(group, key, secret, user_dn)


def test_konnectds_key_signs_and_is_published_under_its_kid(migrated):
    """8. Check: the issuer, konnectd's kid in the JWKS."""
    with migrated.group.session() as s:
        meta = s.get(migrated.issuer + "/.well-known/openid-configuration", timeout=10).json()
        jwks = s.get(meta["jwks_uri"], timeout=10).json()
    assert meta["issuer"] == migrated.issuer
    (published,) = [k for k in jwks["keys"] if k["kid"] == KID]
    numbers = migrated.key.public_key().public_numbers()
    assert kt.b64(numbers.n.to_bytes(512, "big")) == published["n"]
    # as konnectd's JWKS (oidc/provider/handlers.go): use "sig", no alg (an RSA key signs
    # the RSA family: PS256 access tokens, RS256 ID tokens)
    assert published["use"] == "sig" and "alg" not in published


def test_konnectds_access_tokens_work_at_userinfo(migrated):
    access = kt.access_token(migrated.key, KID, issuer=migrated.issuer, client_id=RP["id"],
                             raw_sub=migrated.user_dn, backend=BACKEND, scopes=["openid", "email"],
                             identity=kt.identifier_identity(migrated.user_dn, "lena", "Lena"))
    with migrated.group.session() as s:
        resp = s.get(migrated.issuer + "/konnect/v1/userinfo", timeout=10,
                     headers={"Authorization": "Bearer " + access})
    assert resp.status_code == 200, resp.text
    assert resp.json()["sub"] == kt.public_subject(migrated.user_dn, BACKEND)
    assert resp.json()["email"] == "lena@example.test"


def test_a_konnectd_refresh_token_is_exchanged_once(migrated):
    rt = migrated.refresh_token()
    status, body = migrated.token({"grant_type": "refresh_token", "refresh_token": rt})
    assert status == 200, body
    ours = body["refresh_token"]
    assert "." not in ours and body["scope"].split() == SCOPES
    # ours rotate from now on, on any token process
    status, rotated = migrated.token({"grant_type": "refresh_token", "refresh_token": ours})
    assert status == 200, rotated
    # konnectd's token a second time: refused, and what it became is revoked
    status, again = migrated.token({"grant_type": "refresh_token", "refresh_token": rt})
    assert status == 400 and again["error"] == "invalid_grant"
    status, gone = migrated.token({"grant_type": "refresh_token",
                                   "refresh_token": rotated["refresh_token"]})
    assert status == 400 and gone["error"] == "invalid_grant"


def test_a_konnectd_dynamic_client_keeps_its_id_and_secret(migrated):
    client_id, secret = kt.dynamic_client(migrated.key, KID, name="Konnect Dyn RP",
                                          redirect_uris=["https://dyn.example.test/cb"])
    rt = migrated.refresh_token(client_id=client_id)
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    status, body = migrated.token(form, auth=(client_id, "not-" + secret))
    assert status == 401 and body["error"] == "invalid_client"
    status, body = migrated.token(form, auth=(client_id, secret))
    assert status == 200, body
    assert "refresh_token" in body


def test_a_konnectd_logon_cookie_is_no_session_the_user_signs_in_again(migrated):
    cookie = kt.logon_cookie(migrated.secret, backend=BACKEND, raw_sub=migrated.user_dn,
                             identity=kt.identifier_identity(migrated.user_dn, "lena", "Lena"))
    params = {"client_id": RP["id"], "redirect_uri": RP["redirect_uris"][0],
              "response_type": "code", "scope": "openid", "state": "st"}
    authorize = migrated.issuer + "/signin/v1/identifier/_/authorize?"
    with migrated.group.session() as s:
        for prompt, expected in (("none", RP["redirect_uris"][0]),
                                 ("", migrated.issuer + "/signin/v1/identifier?")):
            resp = s.get(authorize + urlencode(dict(params, prompt=prompt)), timeout=10,
                         headers={"Cookie": "__Secure-KKT=" + cookie}, allow_redirects=False)
            assert resp.status_code == 302, resp.text
            assert urljoin(resp.url, resp.headers["Location"]).startswith(expected)
            if prompt == "none":
                query = parse_qs(urlsplit(resp.headers["Location"]).query)
                assert query["error"] == ["login_required"]
    # signing in again, the user has the subject konnectd gave them
    agent = Agent(migrated.issuer, migrated.group.ca)
    try:
        outcome = agent.run(authorize + urlencode(params), "lena", PASSWORD, stop_outside=True)
    finally:
        agent.session.close()
    assert outcome.url.startswith(RP["redirect_uris"][0]), outcome
    status, body = migrated.token({"grant_type": "authorization_code",
                                   "code": outcome.params["code"],
                                   "redirect_uri": RP["redirect_uris"][0]})
    assert status == 200, body
    id_token = body["id_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(id_token + "=" * (-len(id_token) % 4)))
    assert claims["sub"] == kt.public_subject(migrated.user_dn, BACKEND)
