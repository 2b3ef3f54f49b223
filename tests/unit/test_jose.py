"""JWS signing and verification with the algorithm pinned by the key, and the parser of
untrusted JSON (shared/jose.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from shared import jose
from shared.keys import SigningKey, VerificationKey, client_key, public_jwk
from tests.support.clients import RSA_KEY
from tests.support.malformed import DEEP, MIDDLE, b64

EC_KEYS = {"ES256": ec.generate_private_key(ec.SECP256R1()),
           "ES384": ec.generate_private_key(ec.SECP384R1()),
           "ES512": ec.generate_private_key(ec.SECP521R1())}


ED_KEY = ed25519.Ed25519PrivateKey.generate()


HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(alg: str, kid: str = "k1") -> SigningKey:
    private = RSA_KEY if alg[:2] in ("RS", "PS") else ED_KEY if alg == "EdDSA" else EC_KEYS[alg]
    return SigningKey(kid=kid, public=private.public_key(), algs=frozenset({alg}), alg=alg,
                      private=private)


def ring(*keys: SigningKey):
    table = {k.kid: k.verifier() for k in keys}
    return table.get


def forge(header: dict, claims: dict, signature: bytes = b"sig") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)])


ALL_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_sign_and_verify_every_algorithm(alg):
    key = signing_key(alg)
    token = jose.sign({"sub": "alice", "n": 1}, key)
    header, claims = jose.verify(token, ring(key))
    assert claims == {"sub": "alice", "n": 1}
    assert header == {"alg": alg, "kid": "k1", "typ": "JWT"}


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512"])
def test_pss_signature_uses_salt_length_equal_to_hash_length(alg):
    token = jose.sign({"a": 1}, signing_key(alg))
    head, body, sig = token.split(".")
    digest = HASH[alg[-3:]]
    RSA_KEY.public_key().verify(unb64(sig), f"{head}.{body}".encode(),
                                padding.PSS(padding.MGF1(digest()), salt_length=digest.digest_size),
                                digest())


def test_pss_token_with_a_different_salt_length_is_refused():
    header = {"alg": "PS256", "kid": "k1", "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(b'{}')}"
    sig = RSA_KEY.sign(signing_input.encode(), padding.PSS(padding.MGF1(hashes.SHA256()), salt_length=0),
                       hashes.SHA256())
    with pytest.raises(jose.JoseError, match="signature"):
        jose.verify(f"{signing_input}.{b64(sig)}", ring(signing_key("PS256")))


def test_es256_signature_is_raw_r_s_and_verifies_independently():
    key = signing_key("ES256")
    head, body, sig = jose.sign({"a": 1}, key).split(".")
    raw = unb64(sig)
    assert len(raw) == 64
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    EC_KEYS["ES256"].public_key().verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))


def test_alg_none_is_refused():
    token = forge({"alg": "none", "kid": "k1"}, {"sub": "mallory"}, b"")
    with pytest.raises(jose.JoseError, match="not allowed"):
        jose.verify(token, ring(signing_key("PS256")))
    with_signature = forge({"alg": "none", "kid": "k1"}, {"sub": "mallory"}, b"x")
    with pytest.raises(jose.JoseError, match="not allowed"):
        jose.verify(with_signature, ring(signing_key("PS256")))


def test_hs256_signed_with_the_public_key_is_refused():
    public_pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "mallory"}).encode())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(jose.JoseError, match="not allowed"):
        jose.verify(f"{header}.{body}.{b64(mac)}", ring(signing_key("RS256")))


def test_header_alg_other_than_the_pinned_one_is_refused_even_in_family():
    rs = jose.sign({"a": 1}, signing_key("RS256"))
    with pytest.raises(jose.JoseError, match="not allowed"):
        jose.verify(rs, ring(signing_key("PS256")))


def test_es256_header_on_an_es384_key_is_refused():
    key = signing_key("ES384")
    token = jose.sign({"a": 1}, key)
    head, body, sig = token.split(".")
    header = json.loads(unb64(head))
    header["alg"] = "ES256"
    with pytest.raises(jose.JoseError, match="not allowed"):
        jose.verify(f"{b64(json.dumps(header).encode())}.{body}.{sig}", ring(key))


def test_unknown_and_missing_kid_are_refused():
    token = jose.sign({"a": 1}, signing_key("PS256", kid="other"))
    with pytest.raises(jose.JoseError, match="unknown kid"):
        jose.verify(token, ring(signing_key("PS256")))
    no_kid = forge({"alg": "PS256"}, {"a": 1})
    with pytest.raises(jose.JoseError, match="no kid"):
        jose.verify(no_kid, ring(signing_key("PS256")))
    numeric_kid = forge({"alg": "PS256", "kid": 1}, {"a": 1})
    with pytest.raises(jose.JoseError, match="no kid"):
        jose.verify(numeric_kid, ring(signing_key("PS256")))


@pytest.mark.parametrize("extra", [{"crit": ["exp"]}, {"jku": "https://evil.example/jwks"},
                                   {"x5u": "https://evil.example/cert"}, {"x5c": ["MIIB"]},
                                   {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}])
def test_headers_that_bring_their_own_keys_or_extensions_are_refused(extra):
    key = signing_key("PS256")
    token = jose.sign({"a": 1}, key, headers=extra)
    with pytest.raises(jose.JoseError, match="not accepted"):
        jose.verify(token, ring(key))


def test_tampered_payload_and_signature_are_refused():
    key = signing_key("ES256")
    head, body, sig = jose.sign({"sub": "alice"}, key).split(".")
    evil_body = b64(json.dumps({"sub": "admin"}).encode())
    with pytest.raises(jose.JoseError, match="signature"):
        jose.verify(f"{head}.{evil_body}.{sig}", ring(key))
    raw = bytearray(unb64(sig))
    raw[5] ^= 1
    with pytest.raises(jose.JoseError, match="signature"):
        jose.verify(f"{head}.{body}.{b64(bytes(raw))}", ring(key))


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d.e", "!!.??.##", "e30.e30.",
                                   ".".join([b64(b"[1]"), b64(b"{}"), "AA"]),
                                   ".".join([b64(b"not json"), b64(b"{}"), "AA"])])
def test_malformed_tokens_are_refused_cleanly(token):
    with pytest.raises(jose.JoseError):
        jose.verify(token, ring(signing_key("PS256")))


def test_non_object_claims_are_refused():
    key = signing_key("ES256")
    head = b64(json.dumps({"alg": "ES256", "kid": "k1", "typ": "JWT"}).encode())
    body = b64(b"[1,2]")
    der = EC_KEYS["ES256"].sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    r, s = decode_dss_signature(der)
    token = f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    with pytest.raises(jose.JoseError, match="JSON object"):
        jose.verify(token, ring(key))


def test_oversized_token_is_refused_before_parsing():
    key = signing_key("PS256")
    token = jose.sign({"pad": "x" * 20000}, key)
    with pytest.raises(jose.JoseError, match="too large"):
        jose.verify(token, ring(key))
    assert jose.verify(token, ring(key), max_size=64 * 1024)[1]["pad"] == "x" * 20000


def test_typ_is_checked_when_expected():
    key = signing_key("PS256")
    token = jose.sign({"a": 1}, key, typ="at+jwt")
    assert jose.verify(token, ring(key), typ="application/at+jwt")[1] == {"a": 1}
    with pytest.raises(jose.JoseError, match="type"):
        jose.verify(jose.sign({"a": 1}, key), ring(key), typ="at+jwt")


def test_client_key_verifies_with_the_header_alg_inside_its_family():
    client_private = rsa.generate_private_key(65537, 2048)
    verifier = client_key(dict(public_jwk(client_private), kid="c"))
    signer = SigningKey(kid="c", public=client_private.public_key(), algs=frozenset({"RS384"}),
                        alg="RS384", private=client_private)
    token = jose.sign({"iss": "client"}, signer)
    assert jose.verify_with_keys(token, {"c": verifier})[1] == {"iss": "client"}


def test_signing_with_an_alg_the_key_is_not_pinned_to_fails():
    with pytest.raises(jose.JoseError):
        jose.sign({"a": 1}, signing_key("PS256"), alg="RS256")


def test_verification_key_refuses_unpinned_alg():
    key = VerificationKey(kid="v", public=RSA_KEY.public_key(), algs=frozenset({"PS256"}), alg="PS256")
    with pytest.raises(jose.JoseError):
        key.backend("HS256")


@pytest.mark.parametrize("alg,name", [("RS256", "sha256"), ("ES384", "sha384"),
                                      ("PS512", "sha512"), ("EdDSA", "sha512")])
def test_left_hash_is_the_left_half_of_the_algs_hash(alg, name):
    value = "jHkWEdUXMU1BwAsC4vtUsZwnNgOoc4lg"
    digest = hashlib.new(name, value.encode()).digest()
    assert jose.left_hash(value, alg) == b64(digest[: len(digest) // 2])


def test_unverified_claims_reads_without_trusting():
    token = forge({"alg": "none"}, {"client_id": "c"})
    assert jose.unverified_claims(token) == {"client_id": "c"}
    with pytest.raises(jose.JoseError):
        jose.unverified_claims("x.y")


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_our_compact_serialization_verifies_with_an_independent_library(alg):
    """The JWS segments are built by shared.jose itself (RFC 7515 §7.1): joserfc, which
    shares no code with us or python-jose, must accept every token we sign."""
    from joserfc import jws as rfc_jws
    from joserfc.jwk import import_key

    key = signing_key(alg)
    token = jose.sign({"sub": "alice", "n": 1, "name": "Ünïcödé"}, key, typ="at+jwt")
    public = import_key(public_jwk(key.public))
    with warnings.catch_warnings():  # joserfc flags "EdDSA" as superseded (RFC 9864)
        warnings.simplefilter("ignore")
        result = rfc_jws.deserialize_compact(token, public, algorithms=[alg])
    assert json.loads(result.payload) == {"sub": "alice", "n": 1, "name": "Ünïcödé"}
    assert result.protected == {"alg": alg, "kid": "k1", "typ": "at+jwt"}


def test_a_truncated_ecdsa_signature_is_refused_not_an_error():
    key = signing_key("ES256")
    head, body, sig = jose.sign({"sub": "alice"}, key).split(".")
    with pytest.raises(jose.JoseError, match="signature"):
        jose.verify(f"{head}.{body}.{b64(unb64(sig)[:40])}", ring(key))


@pytest.mark.parametrize("text", [DEEP, "[" * 65 + "]" * 65, MIDDLE, '{"a": NaN}', "\"\\ud800\""])
def test_parse_json_refuses_nesting_and_malformed_input_with_a_value_error(text):
    with pytest.raises(ValueError):
        jose.parse_json(text.encode())
    with pytest.raises(ValueError):
        jose.parse_json(text)


def test_parse_json_takes_ordinary_documents():
    doc = {"id_token": {"sub": {"values": ["a", "b"]}}, "n": [[[1]]]}
    assert jose.parse_json(json.dumps(doc).encode()) == doc
    nested = "[" * jose.MAX_JSON_DEPTH + "]" * jose.MAX_JSON_DEPTH
    assert jose.parse_json(nested) is not None
    flat = json.dumps([[i] for i in range(500)])  # many brackets, shallow: parsed
    assert len(jose.parse_json(flat)) == 500
