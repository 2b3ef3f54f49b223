"""Minting and validating ID and access tokens (shared/tokens.py), Konnect's public subject
(shared/identity.py), and the revocation check that fails closed."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import tornado.web

from shared import jose, keytool
from shared.errors import OAuth2Error
from shared.identity import Identity, public_subject
from shared.keys import Keyring, load_keyring
from shared.store import Store
from shared.tokens import TokenError, Tokens, is_revoked
from shared.web import BaseHandler

ISSUER = "https://idp.example.com"


ALICE = Identity(raw_sub="uid=alice,ou=people,dc=example,dc=test", backend="identifier-ldap",
                 username="alice", name="Alice Example", given_name="Alice", family_name="Example",
                 email="alice@example.test", email_verified=True, numeric_id=1001, uuid="u-1")


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def random_keyring(directory) -> Keyring:
    """A keyring of its own: a new RSA key file, its kid `test-kid`."""
    keytool.generate(directory, bits=2048, access_token_key=False)
    return load_keyring([str(directory / keytool.LINK_NAME)], signing_kid="test-kid")


@pytest.fixture(scope="module")
def keyring(tmp_path_factory):
    return random_keyring(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tokens(keyring, clock):
    return Tokens(keyring, ISSUER, access_ttl=600, id_ttl=3600, skew=30, now=clock)


class RevocationHandler(BaseHandler):
    """A handler that needs the revocation list: what userinfo and introspection do."""

    def initialize(self, deps):
        self.deps = deps

    async def get(self):
        claims = self.deps["tokens"].validate_access_token(self.get_argument("t"))
        if await is_revoked(self.deps["store"], claims):
            raise OAuth2Error("invalid_token", "revoked")
        self.write_json({"active": True})


@pytest.fixture
def app(private_redis, tokens, clock):
    store = Store.from_url(private_redis.url, socket_timeout=0.5, connect_timeout=0.5,
                           now=clock)
    deps = {"tokens": tokens, "store": store, "redis": private_redis}
    application = tornado.web.Application([(r"/check", RevocationHandler, {"deps": deps})])
    application.deps = deps
    return application


def test_public_subject_is_konnects_keyed_blake2b():
    expected = base64.urlsafe_b64encode(hashlib.blake2b(
        b"alice identifier-ldap", key=b"konnect-IDToken-v1", digest_size=64).digest()).rstrip(b"=")
    assert public_subject("alice", "identifier-ldap") == expected.decode() + "@konnect"
    assert len(public_subject("alice", "x")) == 86 + 8
    assert public_subject("alice", "identifier-ldap") != public_subject("alice", "identifier-kc")


def test_identity_record_round_trip():
    record = ALICE.to_record()
    assert json.loads(json.dumps(record)) == record
    assert Identity.from_record(record) == ALICE
    with pytest.raises(ValueError):
        Identity.from_record({"raw_sub": "x"})


def test_access_token_carries_konnect_claims(tokens, keyring, clock):
    minted = tokens.access_token(client_id="rp", identity=ALICE, scopes=["openid", "profile"],
                                 family="fam-1")
    header, claims = keyring.verify(minted.token)
    assert header["kid"] == "test-kid" and header["alg"] == "PS256"
    assert claims["sub"] == ALICE.sub and claims["aud"] == "rp" and claims["iss"] == ISSUER
    assert claims["kc.isAccessToken"] is True and claims["kc.authorizedScopes"] == ["openid", "profile"]
    assert claims["kc.identity"] == {"kc.i.id": ALICE.raw_sub, "kc.i.un": "alice", "kc.i.dn": "Alice Example"}
    assert claims["kc.provider"] == "identifier-ldap" and claims["kc.family"] == "fam-1"
    assert claims["exp"] == int(clock.t) + 600 == minted.exp and claims["jti"] == minted.jti
    assert tokens.validate_access_token(minted.token)["jti"] == minted.jti


def test_id_token_hashes_follow_the_signing_alg(tokens, keyring):
    token = tokens.id_token(client_id="rp", identity=ALICE, nonce="n-1", sid="s-1", auth_time=5,
                            access_token="AT", code="CODE")
    header, claims = keyring.verify(token)
    assert header["alg"] == "RS256"  # OIDC Registration §2 default
    ps = keyring.verify(tokens.id_token(client_id="rp", identity=ALICE, access_token="AT", alg="PS256"))
    assert ps[1]["at_hash"] == jose.left_hash("AT", "PS256")
    # OIDC Core §3.3.2.11: the left half of the hash of the alg's size (SHA-384, SHA-512)
    for alg, size in (("RS384", 48), ("PS512", 64), ("RS512", 64)):
        header, signed = keyring.verify(tokens.id_token(client_id="rp", identity=ALICE,
                                                        access_token="AT", code="C", alg=alg))
        assert header["alg"] == alg
        assert signed["at_hash"] == jose.left_hash("AT", alg) and signed["c_hash"] == jose.left_hash("C", alg)
        assert len(base64.urlsafe_b64decode(signed["at_hash"] + "==")) == size // 2
    assert claims["nonce"] == "n-1" and claims["sid"] == "s-1" and claims["auth_time"] == 5
    assert claims["at_hash"] == jose.left_hash("AT", "RS256")
    assert claims["c_hash"] == jose.left_hash("CODE", "RS256")
    assert claims["aud"] == "rp" and claims["exp"] - claims["iat"] == 3600


def test_expired_access_token_is_refused_after_the_skew(tokens, clock):
    minted = tokens.access_token(client_id="rp", identity=ALICE, scopes=["openid"], family="f")
    clock.t += 600 + 29
    tokens.validate_access_token(minted.token)
    clock.t += 1
    with pytest.raises(TokenError, match="expired"):
        tokens.validate_access_token(minted.token)


def test_token_from_the_future_is_refused(tokens, clock):
    minted = tokens.access_token(client_id="rp", identity=ALICE, scopes=["openid"], family="f")
    clock.t -= 31
    with pytest.raises(TokenError, match="not yet valid|future"):
        tokens.validate_access_token(minted.token)


def test_id_token_is_not_an_access_token(tokens):
    with pytest.raises(TokenError, match="not an access token"):
        tokens.validate_access_token(tokens.id_token(client_id="rp", identity=ALICE))


def test_other_issuer_is_refused(keyring, clock):
    other = Tokens(keyring, "https://other.example", now=clock)
    minted = other.access_token(client_id="rp", identity=ALICE, scopes=["openid"], family="f")
    with pytest.raises(TokenError, match="issuer"):
        Tokens(keyring, ISSUER, now=clock).validate_access_token(minted.token)


def test_token_signed_by_an_unknown_key_is_refused(tokens, clock, tmp_path):
    stranger = Tokens(random_keyring(tmp_path), ISSUER, now=clock)
    minted = stranger.access_token(client_id="rp", identity=ALICE, scopes=["openid"], family="f")
    with pytest.raises(TokenError, match="signature"):
        tokens.validate_access_token(minted.token)


@pytest.mark.gen_test
async def test_revocation_by_jti_family_and_subject(tokens, store, clock):
    minted = tokens.access_token(client_id="rp", identity=ALICE, scopes=["openid"], family="fam-9")
    claims = tokens.validate_access_token(minted.token)
    assert not await is_revoked(store, claims)
    await store.revoke_family("fam-9", clock.t + 600, sub=claims["sub"])
    assert await is_revoked(store, claims)
    other = tokens.validate_access_token(tokens.access_token(
        client_id="rp", identity=ALICE, scopes=["openid"], family="fam-10").token)
    assert not await is_revoked(store, other)
    await store.revoke_jti(other["jti"], clock.t + 600, sub=other["sub"])
    assert await is_revoked(store, other)
    third = tokens.validate_access_token(tokens.access_token(
        client_id="rp", identity=ALICE, scopes=["openid"], family="fam-11").token)
    await store.revoke_subject(ALICE.sub, int(clock.t), 600)
    assert await is_revoked(store, third)


@pytest.mark.gen_test(timeout=30)
async def test_redis_down_is_503_never_an_answer_without_the_check(http_client, base_url, app):
    deps = app.deps
    token = deps["tokens"].access_token(client_id="rp", identity=ALICE, scopes=["openid"],
                                        family="f").token
    ok = await http_client.fetch(f"{base_url}/check?t={token}")
    assert json.loads(ok.body) == {"active": True}
    deps["redis"].stop()
    down = await http_client.fetch(f"{base_url}/check?t={token}", raise_error=False)
    assert down.code == 503
    assert json.loads(down.body)["error"] == "temporarily_unavailable"
    assert token not in down.body.decode()
    deps["redis"].start()
    again = await http_client.fetch(f"{base_url}/check?t={token}", raise_error=False)
    assert again.code == 200
    await deps["store"].close()


@pytest.mark.gen_test(timeout=30)
async def test_paused_redis_times_out_to_503(http_client, base_url, app):
    deps = app.deps
    token = deps["tokens"].access_token(client_id="rp", identity=ALICE, scopes=["openid"],
                                        family="f").token
    deps["redis"].pause()
    try:
        resp = await http_client.fetch(f"{base_url}/check?t={token}", raise_error=False,
                                       request_timeout=20)
        assert resp.code == 503
    finally:
        deps["redis"].resume()
    await deps["store"].close()


@pytest.mark.parametrize("kind,alg,half", [("ec384", "ES384", 24), ("ed25519", "EdDSA", 32),
                                           ("ec256", "ES256", 16)])
def test_an_ec_or_ed25519_key_signs_its_alg_when_a_client_registered_it(tmp_path, clock, kind,
                                                                        alg, half):
    """With an EC or Ed25519 key beside the RSA one, a client's registered ES*/EdDSA signs
    its tokens, at_hash of that alg's hash (SHA-512 for EdDSA over Ed25519); the RSA key
    signs the rest."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    keytool.generate(tmp_path, bits=2048, access_token_key=False)
    other = {"ec384": lambda: ec.generate_private_key(ec.SECP384R1()),
             "ec256": lambda: ec.generate_private_key(ec.SECP256R1()),
             "ed25519": ed25519.Ed25519PrivateKey.generate}[kind]()
    (tmp_path / "other.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ring = load_keyring([str(tmp_path / keytool.LINK_NAME), str(tmp_path / "other.pem")])
    tokens = Tokens(ring, ISSUER, now=clock)
    header, claims = ring.verify(tokens.id_token(client_id="rp", identity=ALICE,
                                                 access_token="AT", alg=alg))
    assert header["alg"] == alg and header["kid"] == "other"
    assert claims["at_hash"] == jose.left_hash("AT", alg)
    assert len(base64.urlsafe_b64decode(claims["at_hash"] + "==")) == half
    assert ring.verify(tokens.id_token(client_id="rp", identity=ALICE))[0]["alg"] == "RS256"
    assert alg in ring.signing_algs and len({a for a in ring.signing_algs if a[:2] == alg[:2]}) == 1
