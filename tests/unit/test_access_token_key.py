"""The production keys: `keytool generate` makes RSA-2048 for ID tokens and an EC P-256
key that signs access tokens (`--access-token-signing-key`); Konnect's key files keep
working unchanged; what Kopano's libkcoidc needs to accept ES256 access tokens (the alg
in discovery's id_token_signing_alg_values_supported, the EC key in the JWKS) is there."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared import discovery, jose, keytool
from shared.config import load_settings
from shared.identity import Identity
from shared.keys import KeyLoadError, load_key_file, load_keyring
from shared.tokens import Tokens

ISSUER = "https://idp.example.test"
ALICE = Identity(raw_sub="alice", backend="identifier-ldap", username="alice")


def tokens_of(keyring) -> Tokens:
    return Tokens(keyring, ISSUER)


def access_token(tokens: Tokens, alg=None) -> str:
    return tokens.access_token(client_id="rp", identity=ALICE, scopes=["openid"],
                               family="f1", alg=alg).token


@pytest.fixture
def production(tmp_path) -> dict:
    return keytool.generate(tmp_path)


def test_access_tokens_are_es256_with_the_access_token_key_and_id_tokens_rs256(production):
    keyring = load_keyring([production["link"]], access_token_key=production["access_token_link"])
    tokens = tokens_of(keyring)
    header = jose.unverified_header(access_token(tokens))
    assert header == {"alg": "ES256", "kid": production["access_token_kid"], "typ": "JWT"}
    assert tokens.validate_access_token(access_token(tokens))["sub"] == ALICE.sub
    id_token = tokens.id_token(client_id="rp", identity=ALICE, access_token=access_token(tokens))
    assert jose.unverified_header(id_token)["alg"] == "RS256"
    assert tokens.verify(id_token)["sub"] == ALICE.sub


def test_what_libkcoidc_checks_is_published(production, tmp_path):
    """libkcoidc (Kopano's services) accepts a token whose alg is in the discovery
    document's id_token_signing_alg_values_supported and whose kid is in the JWKS."""
    settings = load_settings(["--iss", ISSUER, "--signing-private-key", production["link"],
                              "--access-token-signing-key", production["access_token_link"]],
                             {}, service="token")
    keyring = load_keyring(settings.signing_private_key,
                           access_token_key=settings.access_token_signing_key)
    doc = discovery.document(settings, keyring)
    assert {"ES256", "RS256"} <= set(doc["id_token_signing_alg_values_supported"])
    jwks = {k["kid"]: k for k in keyring.jwks()["keys"]}
    ec_jwk = jwks[production["access_token_kid"]]
    assert (ec_jwk["kty"], ec_jwk["crv"], ec_jwk["alg"], ec_jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in ec_jwk   # public parts only
    kid = jose.unverified_header(access_token(tokens_of(keyring)))["kid"]
    assert kid in jwks


def test_a_clients_registered_alg_still_signs_its_access_tokens(production):
    keyring = load_keyring([production["link"]], access_token_key=production["access_token_link"])
    assert jose.unverified_header(access_token(tokens_of(keyring), "RS256"))["alg"] == "RS256"
    assert jose.unverified_header(access_token(tokens_of(keyring), "HS256"))["alg"] == "ES256"


def test_konnects_key_files_are_unchanged_one_rsa_key_signs_access_tokens_ps256(tmp_path):
    keys = keytool.generate(tmp_path, "rsa", bits=2048, access_token_key=False)
    assert not (tmp_path / keytool.ACCESS_TOKEN_LINK_NAME).exists()
    keyring = load_keyring([keys["link"]], signing_method="PS256")
    header = jose.unverified_header(access_token(tokens_of(keyring)))
    assert header["alg"] == "PS256" and header["kid"] == keys["kid"]   # kid from the file name


def test_an_access_token_key_with_a_signing_keys_kid_is_refused(production, tmp_path):
    clash = tmp_path / "clash"
    clash.mkdir()
    same = clash / f"{production['kid']}.pem"   # the EC key under the RSA key's kid
    same.write_bytes((tmp_path / os.readlink(production["access_token_link"])).read_bytes())
    os.chmod(same, 0o600)
    with pytest.raises(KeyLoadError, match="kid of its own"):
        load_keyring([production["link"]], access_token_key=str(same))


def test_keytool_makes_the_access_token_key_once_and_rotates_it_on_request(tmp_path):
    first = keytool.generate(tmp_path)
    again = keytool.generate(tmp_path)            # a new signing key: the old EC key stays
    assert "access_token_key" not in again
    assert os.readlink(tmp_path / keytool.ACCESS_TOKEN_LINK_NAME) == \
        os.path.basename(first["access_token_key"])
    rotated = keytool.generate(tmp_path, access_token=True)
    assert os.readlink(tmp_path / keytool.ACCESS_TOKEN_LINK_NAME) == \
        os.path.basename(rotated["key"])
    assert os.readlink(tmp_path / keytool.LINK_NAME) == os.path.basename(again["key"])
    _, key, _ = load_key_file(rotated["key"])
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    _, key, _ = load_key_file(again["key"])
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
