"""Crypto floors: `openssl speed` and the Python signing path of the services."""

from __future__ import annotations

import re
import subprocess
import time
from typing import Callable, Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding


def openssl_rsa2048(seconds: int = 3) -> dict:
    """`openssl speed -seconds N rsa2048`: RSA-2048 sign/s and verify/s (one core)."""
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "rsa2048"],
                         capture_output=True, text=True, timeout=seconds * 4 + 60).stdout
    m = re.search(r"^rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out, re.M)
    if not m:
        raise RuntimeError(f"unexpected openssl speed output:\n{out}")
    return {"sign_per_s": float(m.group(1)), "verify_per_s": float(m.group(2))}


def openssl_version() -> str:
    return subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn` in a tight loop for about `seconds`."""
    fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def python_signing(key_path: str, seconds: float = 3.0,
                   access_key_path: Optional[str] = None) -> dict:
    """sign/s of the services' own signing path with the group's keys (shared.tokens'
    access-token signer, shared.jose.sign with the RS256 ID-token signer), and of raw
    `cryptography` for the same RSA key (RS256 and PS256) and a P-256 key (ES256: the
    access-token key, when the group has one)."""
    from shared import jose
    from shared.keys import load_keyring

    keyring = load_keyring([key_path], signing_method="PS256", access_token_key=access_key_path)
    claims = {"iss": "https://localhost:8443", "sub": "x" * 88 + "@konnect", "aud": "konnect-demo",
              "exp": 2_000_000_000, "iat": 1_700_000_000, "nonce": "bench-nonce",
              "sid": "bench-sid", "auth_time": 1_700_000_000, "at_hash": "a" * 22,
              "azp": "konnect-demo"}
    id_signer = keyring.id_token_signer("RS256")
    access_signer = keyring.access_token_signer()
    private = keyring.signer.private
    ec_private = access_signer.private if isinstance(access_signer.private, ec.EllipticCurvePrivateKey) \
        else ec.generate_private_key(ec.SECP256R1())
    message = b"h" * 60 + b"." + b"c" * 300
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return {
        "keyring_sign_access_per_s": rate(lambda: jose.sign(claims, access_signer), seconds),
        "keyring_alg": access_signer.alg,
        "jose_sign_id_token_per_s": rate(lambda: jose.sign(claims, id_signer), seconds),
        "id_token_alg": id_signer.alg,
        "raw_rs256_per_s": rate(lambda: private.sign(message, padding.PKCS1v15(), hashes.SHA256()),
                                seconds),
        "raw_ps256_per_s": rate(lambda: private.sign(message, pss, hashes.SHA256()), seconds),
        "raw_es256_per_s": rate(lambda: ec_private.sign(message, ec.ECDSA(hashes.SHA256())),
                                seconds),
    }
