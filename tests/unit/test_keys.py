"""Signing and validation keys, kids, the keyring and the key tool (shared/keys.py,
shared/keytool.py)."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from shared import jose, keytool
from shared.keys import (
    AlgorithmNotSigned,
    KeyLoadError,
    KeysUnavailable,
    SigningKey,
    client_key,
    load_key_file,
    load_keyring,
    private_jwk,
    public_jwk,
)

ROOT = Path(__file__).resolve().parents[2]


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(65537, 2048)


def write_pem(path: Path, key, fmt=serialization.PrivateFormat.PKCS8) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    return path


def write_public_pem(path: Path, key) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def run_tool(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "shared.keytool", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.PrivateFormat.PKCS8], ids=["pkcs1", "pkcs8"])
def test_rsa_pem_formats_load_with_kid_from_file_name(tmp_path, rsa_key, fmt):
    kid, key, alg = load_key_file(write_pem(tmp_path / "mykey.pem", rsa_key, fmt))
    assert kid == "mykey" and alg is None
    assert key.private_numbers() == rsa_key.private_numbers()


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.PrivateFormat.PKCS8], ids=["sec1", "pkcs8"])
def test_ec_pem_formats_load(tmp_path, fmt):
    ec_key = ec.generate_private_key(ec.SECP384R1())
    kid, key, _ = load_key_file(write_pem(tmp_path / "ec.pem", ec_key, fmt))
    assert kid == "ec" and key.private_numbers() == ec_key.private_numbers()


def test_ed25519_pem_loads(tmp_path):
    kid, key, _ = load_key_file(write_pem(tmp_path / "ed.key", ed25519.Ed25519PrivateKey.generate()))
    assert kid == "ed" and isinstance(key, ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize("make", [
    lambda: rsa.generate_private_key(65537, 2048),
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: ec.generate_private_key(ec.SECP521R1()),
    lambda: ed25519.Ed25519PrivateKey.generate(),
], ids=["rsa", "p256", "p384", "p521", "ed25519"])
def test_jwk_json_keys_load_with_their_kid(tmp_path, make):
    original = make()
    doc = dict(private_jwk(original), kid="from-jwk")
    path = tmp_path / "file-name.json"
    path.write_text(json.dumps(doc))
    kid, key, _ = load_key_file(path)
    assert kid == "from-jwk"
    assert public_jwk(key) == public_jwk(original)
    assert private_jwk(key) == private_jwk(original)


def test_rsa_jwk_with_only_d_recovers_the_primes(tmp_path, rsa_key):
    doc = {k: v for k, v in private_jwk(rsa_key).items() if k not in {"p", "q", "dp", "dq", "qi"}}
    path = tmp_path / "k.json"
    path.write_text(json.dumps(doc))
    _, key, _ = load_key_file(path)
    assert key.private_numbers() == rsa_key.private_numbers()


def test_kid_of_a_symlink_is_its_target_name(tmp_path, rsa_key):
    write_pem(tmp_path / "konnect-20260101-abcd.pem", rsa_key)
    (tmp_path / "konnectd-signing-private-key.pem").symlink_to("konnect-20260101-abcd.pem")
    kid, _, _ = load_key_file(tmp_path / "konnectd-signing-private-key.pem")
    assert kid == "konnect-20260101-abcd"


def test_small_rsa_key_is_refused(tmp_path):
    weak = rsa.generate_private_key(65537, 1024)
    with pytest.raises(KeyLoadError, match="1024 bits"):
        load_key_file(write_pem(tmp_path / "weak.pem", weak))


def test_small_rsa_exponent_is_refused(tmp_path):
    weak = rsa.generate_private_key(3, 2048)
    with pytest.raises(KeyLoadError, match="exponent"):
        load_key_file(write_pem(tmp_path / "e3.pem", weak))


def test_unsupported_curve_is_refused(tmp_path):
    key = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(KeyLoadError, match="secp256k1"):
        load_key_file(write_pem(tmp_path / "k1.pem", key))


@pytest.mark.parametrize("content", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_corrupt_pem_is_a_clear_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.pem"
    path.write_bytes(content)
    with pytest.raises(KeyLoadError) as info:
        load_key_file(path)
    assert "broken.pem" in str(info.value) and "PEM" in str(info.value)


@pytest.mark.parametrize("doc", ['{"kty": "RSA"', '[1]', '{"kty": "oct", "k": "AAAA", "d": "x"}',
                                 '{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}'])
def test_corrupt_jwk_is_a_clear_error(tmp_path, doc):
    path = tmp_path / "broken.json"
    path.write_text(doc)
    with pytest.raises(KeyLoadError, match="broken.json"):
        load_key_file(path)


def test_public_jwk_is_refused_as_signing_key(tmp_path, rsa_key):
    path = tmp_path / "pub.json"
    path.write_text(json.dumps(public_jwk(rsa_key)))
    with pytest.raises(KeyLoadError, match="not a private key"):
        load_key_file(path)


def test_jwk_alg_outside_the_key_family_is_refused(tmp_path, rsa_key):
    path = tmp_path / "k.json"
    path.write_text(json.dumps(dict(private_jwk(rsa_key), alg="HS256")))
    with pytest.raises(KeyLoadError, match="HS256"):
        load_key_file(path)


def test_missing_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(KeyLoadError, match="cannot read"):
        load_key_file(tmp_path / "nope.pem")


def test_keyring_reports_every_broken_file_at_once(tmp_path):
    (tmp_path / "a.pem").write_text("junk")
    (tmp_path / "b.pem").write_text("junk")
    with pytest.raises(KeyLoadError) as info:
        load_keyring([str(tmp_path / "a.pem"), str(tmp_path / "b.pem"), str(tmp_path / "c.pem")])
    text = str(info.value)
    assert "a.pem" in text and "b.pem" in text and "c.pem" in text


def test_first_key_signs_and_is_deterministic(tmp_path, rsa_key):
    first = write_pem(tmp_path / "first.pem", rsa_key)
    second = write_pem(tmp_path / "second.pem", rsa.generate_private_key(65537, 2048))
    for _ in range(3):
        ring = load_keyring([str(first), str(second)])
        assert ring.signer.kid == "first" and ring.signer.alg == "PS256"


def test_signing_kid_selects_a_loaded_key(tmp_path, rsa_key):
    first = write_pem(tmp_path / "first.pem", rsa_key)
    second = write_pem(tmp_path / "second.pem", rsa.generate_private_key(65537, 2048))
    ring = load_keyring([str(first), str(second)], signing_kid="second")
    assert ring.signer.kid == "second"
    header, _ = ring.verify(ring.sign({"sub": "x"}))
    assert header["kid"] == "second"


def test_signing_kid_not_loaded_aliases_the_first_key(tmp_path, rsa_key):
    first = write_pem(tmp_path / "first.pem", rsa_key)
    ring = load_keyring([str(first)], signing_kid="published")
    assert ring.signer.kid == "published"
    kids = {k["kid"] for k in ring.jwks()["keys"]}
    assert {"first", "published", "default"} <= kids
    header, claims = ring.verify(ring.sign({"sub": "x"}))
    assert header["kid"] == "published" and claims == {"sub": "x"}


def test_signing_method_must_fit_the_signing_key(tmp_path, rsa_key):
    path = write_pem(tmp_path / "rsa.pem", rsa_key)
    with pytest.raises(KeyLoadError, match="ES256"):
        load_keyring([str(path)], signing_method="ES256")


def test_signing_method_es_with_ec_key(tmp_path):
    path = write_pem(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    ring = load_keyring([str(path)], signing_method="ES256")
    assert ring.signer.alg == "ES256" and ring.signing_algs == ["ES256"]


def test_unsupported_signing_method_is_refused(tmp_path, rsa_key):
    path = write_pem(tmp_path / "rsa.pem", rsa_key)
    with pytest.raises(KeyLoadError, match="HS256"):
        load_keyring([str(path)], signing_method="HS256")


def test_validation_keys_verify_old_tokens_and_appear_in_jwks(tmp_path, rsa_key):
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old_ring = load_keyring([str(write_pem(tmp_path / "old-key.pem", rsa_key))])
    old_token = old_ring.sign({"sub": "before-rotation"})
    write_public_pem(old_dir / "old-key.pem", rsa_key)
    new = write_pem(tmp_path / "new-key.pem", rsa.generate_private_key(65537, 2048))
    ring = load_keyring([str(new)], validation_keys_path=str(old_dir))
    assert ring.signer.kid == "new-key"
    assert ring.verify(old_token)[1] == {"sub": "before-rotation"}
    assert {"old-key", "new-key", "default"} <= {k["kid"] for k in ring.jwks()["keys"]}


def test_validation_keys_path_must_be_a_directory(tmp_path, rsa_key):
    with pytest.raises(KeyLoadError, match="not a directory"):
        load_keyring([], validation_keys_path=str(tmp_path / "missing"))


def test_no_key_is_no_keyring_and_an_ephemeral_one_signs_nothing_until_confirmed(rsa_key):
    """A process never makes a random key of its own any more: without a signing key the
    group shares one (shared/ephemeral.py), and until it is confirmed nothing is signed,
    verified or published with the process's candidate."""
    with pytest.raises(KeyLoadError, match="no signing key"):
        load_keyring([])
    ring = load_keyring([], ephemeral_signer=("candidate", rsa_key))
    assert ring.ephemeral and not ring.ready
    for use in (lambda: ring.sign({"a": 1}), lambda: ring.verification_key("candidate"),
                ring.jwks, ring.id_token_signer, ring.access_token_signer):
        with pytest.raises(KeysUnavailable):
            use()
    assert ring.signing_algs[0] == "PS256" and "RS512" in ring.can_sign  # discovery's, known
    group_key = rsa.generate_private_key(65537, 2048)
    ring.adopt_signer("ephemeral-group", group_key, "PS256")
    assert ring.ready and ring.signer.kid == "ephemeral-group"
    header, claims = ring.verify(ring.sign({"a": 1}))
    assert header["kid"] == "ephemeral-group" and claims == {"a": 1}
    assert public_jwk(group_key)["n"] in {k["n"] for k in ring.jwks()["keys"]}
    assert public_jwk(rsa_key)["n"] not in {k["n"] for k in ring.jwks()["keys"]}
    assert ring.verification_key("candidate") is None


def test_jwks_holds_only_public_parts(tmp_path, rsa_key):
    paths = [write_pem(tmp_path / "r.pem", rsa_key),
             write_pem(tmp_path / "e.pem", ec.generate_private_key(ec.SECP256R1())),
             write_pem(tmp_path / "o.pem", ed25519.Ed25519PrivateKey.generate())]
    ring = load_keyring([str(p) for p in paths])
    keys = {k["kid"]: k for k in ring.jwks()["keys"]}
    # RFC 7517 §4.4: the RSA key signs every RSA alg, so it names none (as Konnect's JWKS);
    # EC and Ed25519 keys have one alg each, and say so
    assert "alg" not in keys["r"] and keys["e"]["alg"] == "ES256" and keys["o"]["alg"] == "EdDSA"
    for key in keys.values():
        assert key["use"] == "sig" and not PRIVATE_MEMBERS & key.keys()
    assert keys["default"]["n"] == keys["r"]["n"]
    assert set(keys) == {"r", "e", "o", "default"}  # one entry per key: no -rs256 copy
    assert ring.signing_algs == ["PS256", "RS256", "RS384", "RS512", "PS384", "PS512",
                                 "ES256", "EdDSA"]
    assert ring.signer_for("ES256").kid == "e"
    assert ring.signer_for("RS384").kid == "r" and ring.signer_for("RS384").alg == "RS384"
    with pytest.raises(AlgorithmNotSigned, match="ES384"):  # a P-256 key signs ES256 only
        ring.signer_for("ES384")


def test_an_rsa_key_signs_and_verifies_every_rsa_alg_unless_its_jwk_pins_one(tmp_path, rsa_key):
    """Konnect's oidc/provider/provider.go `SetSigningKey`: an RSA key signs RS256/384/512
    and PS256/384/512. A JWK with `alg` keeps its key to that one alg."""
    ring = load_keyring([str(write_pem(tmp_path / "r.pem", rsa_key))])
    for alg in sorted(jose.RSA_ALGS):
        header, claims = ring.verify(ring.sign({"a": alg}, alg=alg))
        assert header == {"alg": alg, "kid": "r", "typ": "JWT"} and claims == {"a": alg}
    with pytest.raises(AlgorithmNotSigned):
        ring.sign({"a": 1}, alg="ES256")
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps(dict(private_jwk(rsa_key), alg="RS256")))
    pinned_ring = load_keyring([str(pinned)], signing_method="RS256")
    assert pinned_ring.can_sign == {"RS256"} and pinned_ring.signing_algs == ["RS256"]
    assert {k["alg"] for k in pinned_ring.jwks()["keys"]} == {"RS256"}
    with pytest.raises(AlgorithmNotSigned):
        pinned_ring.sign({"a": 1}, alg="PS256")
    # what a pinned key does not sign, it does not accept either
    forged = jose.sign({"a": 1}, ring.signer.for_alg("PS256"), headers={"kid": "pinned"})
    with pytest.raises(jose.JoseError, match="algorithm not allowed"):
        pinned_ring.verify(forged)


@pytest.mark.parametrize("alg", ["HS256", "none", "ES256", "EdDSA"])
def test_an_rsa_keys_kid_never_accepts_an_alg_its_type_cannot_have(tmp_path, rsa_key, alg):
    ring = load_keyring([str(write_pem(tmp_path / "r.pem", rsa_key))])
    token = ring.sign({"a": 1})
    head = base64.urlsafe_b64encode(json.dumps({"alg": alg, "kid": "r"}).encode()).rstrip(b"=")
    with pytest.raises(jose.JoseError, match="algorithm not allowed"):
        ring.verify(head.decode() + token[token.index("."):])


def test_id_tokens_default_to_rs256_for_clients_that_registered_no_alg(tmp_path, rsa_key):
    ring = load_keyring([str(write_pem(tmp_path / "r.pem", rsa_key))])
    assert ring.id_token_signer().kid == "r" and ring.id_token_signer().alg == "RS256"
    assert ring.id_token_signer("PS512").kid == "r" and ring.id_token_signer("PS512").alg == "PS512"
    token = jose.sign({"a": 1}, ring.id_token_signer())
    assert ring.verify(token)[0]["alg"] == "RS256"
    ec_ring = load_keyring([str(write_pem(tmp_path / "e.pem", ec.generate_private_key(ec.SECP256R1())))],
                           signing_method="ES256")
    assert ec_ring.id_token_signer().alg == "ES256" and ec_ring.signing_algs == ["ES256"]
    with pytest.raises(AlgorithmNotSigned):  # never another alg than the one registered
        ec_ring.id_token_signer("RS256")


def test_id_tokens_of_earlier_versions_kid_rs256_still_verify(tmp_path, rsa_key):
    """Earlier versions signed RS256 ID tokens under `<kid>-rs256`: an `id_token_hint` may
    be one of them. It verifies (RS256 only), and is no longer published."""
    ring = load_keyring([str(write_pem(tmp_path / "r.pem", rsa_key))])
    old = SigningKey(kid="r-rs256", public=rsa_key.public_key(), algs=jose.RSA_ALGS,
                     alg="RS256", private=rsa_key)
    assert ring.verify(jose.sign({"a": 1}, old))[1] == {"a": 1}
    with pytest.raises(jose.JoseError, match="algorithm not allowed"):
        ring.verify(jose.sign({"a": 1}, old, alg="PS256"))
    assert "r-rs256" not in {k["kid"] for k in ring.jwks()["keys"]}


def test_signing_key_repr_hides_private_material(tmp_path, rsa_key):
    ring = load_keyring([str(write_pem(tmp_path / "r.pem", rsa_key))])
    text = repr(ring.signer)
    assert text.startswith("SigningKey(kid='r', algs=frozenset({") and text.endswith("alg='PS256')")
    assert str(rsa_key.private_numbers().d) not in text and "private" not in text


def test_client_key_without_alg_accepts_its_family_only(rsa_key):
    key = client_key(dict(public_jwk(rsa_key), kid="c1"))
    assert key.algs == jose.RSA_ALGS
    ec_key = client_key(public_jwk(ec.generate_private_key(ec.SECP384R1())))
    assert ec_key.algs == {"ES384"}
    with pytest.raises(KeyLoadError):
        client_key(dict(public_jwk(rsa_key), use="enc"))


def test_keytool_generate_creates_key_link_and_secret(tmp_path):
    result = run_tool("generate", "--type", "ec", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    link = tmp_path / keytool.LINK_NAME
    target = os.readlink(link)
    assert not os.path.isabs(target) and target.startswith("konnect-")
    assert stat.S_IMODE((tmp_path / target).stat().st_mode) == 0o600
    secret = tmp_path / keytool.SECRET_NAME
    assert len(secret.read_bytes()) == 32
    ring = load_keyring([str(link)], signing_method="ES256")
    assert ring.signer.kid == Path(target).stem and f"kid: {ring.signer.kid}" in result.stdout


def test_keytool_generate_keeps_an_existing_secret_and_moves_the_link(tmp_path):
    keytool.generate(tmp_path, "ed25519")
    secret = (tmp_path / keytool.SECRET_NAME).read_bytes()
    first = os.readlink(tmp_path / keytool.LINK_NAME)
    keytool.generate(tmp_path, "ed25519")
    assert (tmp_path / keytool.SECRET_NAME).read_bytes() == secret
    assert os.readlink(tmp_path / keytool.LINK_NAME) != first
    assert (tmp_path / first).exists()


def test_keytool_default_is_rsa_2048_with_an_ec_access_token_key(tmp_path):
    result = keytool.generate(tmp_path)  # the production keys (docs/operations.md)
    _, key, _ = load_key_file(result["key"])
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    _, at_key, _ = load_key_file(result["access_token_link"])
    assert isinstance(at_key, ec.EllipticCurvePrivateKey) and at_key.curve.name == "secp256r1"


def test_keytool_refuses_weak_rsa(tmp_path):
    result = run_tool("generate", "--bits", "1024", "--out-dir", str(tmp_path))
    assert result.returncode == 2 and "2048" in result.stderr and "Traceback" not in result.stderr


def test_keytool_secret_refuses_to_overwrite(tmp_path):
    path = tmp_path / "s.key"
    assert run_tool("secret", str(path)).returncode == 0
    before = path.read_bytes()
    again = run_tool("secret", str(path))
    assert again.returncode == 2 and "exists" in again.stderr
    assert path.read_bytes() == before and len(before) == 32


def test_keytool_jwk_from_pem_round_trips(tmp_path, rsa_key):
    pem = write_pem(tmp_path / "conv.pem", rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
    result = run_tool("jwk-from-pem", str(pem))
    assert result.returncode == 0, result.stderr
    jwk = json.loads(result.stdout)
    assert jwk["kid"] == "conv" and jwk["use"] == "sig" and "d" in jwk
    (tmp_path / "conv.json").write_text(result.stdout)
    _, key, _ = load_key_file(tmp_path / "conv.json")
    assert key.private_numbers() == rsa_key.private_numbers()
    public = run_tool("jwk-from-pem", "--public", "--kid", "k9", "--yaml", str(pem))
    assert public.returncode == 0 and "kid: k9" in public.stdout and "\nd:" not in public.stdout


def test_keytool_jwk_from_pem_bad_file_exits_2(tmp_path):
    (tmp_path / "bad.pem").write_text("nope")
    result = run_tool("jwk-from-pem", str(tmp_path / "bad.pem"))
    assert result.returncode == 2 and "bad.pem" in result.stderr


@pytest.mark.parametrize("member", [{"alg": ["RS256"]}, {"alg": {}}, {"kid": ["a"]},
                                    {"use": ["sig"]}, {"key_ops": "sign"}])
def test_jwk_members_of_the_wrong_type_are_a_clear_error(tmp_path, rsa_key, member):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({**private_jwk(rsa_key), **member}))
    with pytest.raises(KeyLoadError, match=rf"k\.json: JWK member '{next(iter(member))}' must be"):
        load_keyring([str(path)])
    with pytest.raises(KeyLoadError):  # a client's registered key: refused, not a TypeError
        client_key({**public_jwk(rsa_key), **member})


def test_jwk_for_encryption_is_refused_as_signing_and_validation_key(tmp_path, rsa_key, caplog):
    """RFC 7517 §4.2: "use": "enc" is a key for encryption, never for signatures."""
    (tmp_path / "val").mkdir()
    enc = tmp_path / "enc.json"
    enc.write_text(json.dumps(dict(private_jwk(rsa_key), use="enc")))
    (tmp_path / "val" / "old.json").write_text(json.dumps(dict(public_jwk(rsa_key), use="enc")))
    with pytest.raises(KeyLoadError, match=r"enc\.json: JWK has \"use\": 'enc'"):
        load_keyring([str(enc)])
    with caplog.at_level(logging.WARNING, logger="konnect.keys"):  # skipped, as Konnect
        ring = load_keyring([str(write_pem(tmp_path / "s.pem", rsa_key))],
                            validation_keys_path=str(tmp_path / "val"))
    assert "old" not in {k["kid"] for k in ring.jwks()["keys"]}
    assert any("old.json: JWK has \"use\": 'enc'" in r.getMessage() for r in caplog.records)
    verify_only = tmp_path / "verify.json"          # RFC 7517 §4.3 key_ops without "sign"
    verify_only.write_text(json.dumps(dict(private_jwk(rsa_key), key_ops=["verify"])))
    with pytest.raises(KeyLoadError, match="does not allow signing"):
        load_keyring([str(verify_only)])
    sig = tmp_path / "sig.json"
    sig.write_text(json.dumps(dict(private_jwk(rsa_key), use="sig", key_ops=["sign"])))
    assert load_keyring([str(sig)]).signer.kid == "sig"


@pytest.mark.parametrize("kind", ["/dev/zero", "directory", "fifo"])
def test_a_key_path_that_is_not_a_regular_file_is_refused_before_reading(tmp_path, kind, caplog):
    """A symlink to /dev/zero read without end (the size check trusted
    st_size, which is 0); a FIFO blocked the start waiting for a writer."""
    link = tmp_path / "konnectd-signing-private-key.pem"
    if kind == "/dev/zero":
        link.symlink_to("/dev/zero")
    elif kind == "directory":
        link.mkdir()
    else:
        os.mkfifo(link)
    with pytest.raises(KeyLoadError, match="not a regular file"):
        load_key_file(link)
    validation = tmp_path / "val"
    validation.mkdir()
    (validation / "zero.pem").symlink_to("/dev/zero")
    signing = write_pem(tmp_path / "s.pem", rsa.generate_private_key(65537, 2048))
    with caplog.at_level(logging.WARNING, logger="konnect.keys"):  # skipped, never read
        ring = load_keyring([str(signing)], validation_keys_path=str(validation))
    assert "zero" not in {k["kid"] for k in ring.jwks()["keys"]}
    assert any("zero.pem: not a regular file" in r.getMessage() for r in caplog.records)


def test_a_key_file_over_64_kib_is_refused(tmp_path):
    path = tmp_path / "big.pem"
    path.write_bytes(b"-" * (64 * 1024 + 1))
    with pytest.raises(KeyLoadError, match="too large"):
        load_key_file(path)


@pytest.mark.parametrize("mode,who", [(0o666, "group and others"), (0o644, "group and others"),
                                      (0o640, "group"), (0o602, "others")])
def test_a_private_key_open_to_group_or_others_loads_with_a_loud_warning(tmp_path, rsa_key,
                                                                       caplog, mode, who):
    """Refuse (as OpenSSH) or warn loudly: we warn (existing Konnect keys may
    be 0640/0644), naming the file and its mode. 0600 and 0400 are quiet."""
    path = write_pem(tmp_path / "exposed.pem", rsa_key)
    os.chmod(path, mode)
    with caplog.at_level(logging.WARNING, logger="konnect.keys"):
        assert load_keyring([str(path)]).signer.kid == "exposed"
    [record] = [r for r in caplog.records if "PRIVATE KEY FILE" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and f"{mode:04o}" in record.getMessage()
    assert who in record.getMessage()
    caplog.clear()
    for quiet in (0o600, 0o400):
        os.chmod(path, quiet)
        with caplog.at_level(logging.WARNING, logger="konnect.keys"):
            load_keyring([str(path)])
        assert not [r for r in caplog.records if "PRIVATE KEY FILE" in r.getMessage()]


def test_a_public_validation_key_readable_by_all_is_quiet(tmp_path, rsa_key, caplog):
    (tmp_path / "val").mkdir()
    os.chmod(write_public_pem(tmp_path / "val" / "old.pem", rsa_key), 0o644)
    signing = write_pem(tmp_path / "s.pem", rsa_key)
    os.chmod(signing, 0o600)
    with caplog.at_level(logging.WARNING, logger="konnect.keys"):
        load_keyring([str(signing)], validation_keys_path=str(tmp_path / "val"))
    assert not [r for r in caplog.records if "PRIVATE KEY FILE" in r.getMessage()]
