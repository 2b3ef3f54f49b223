"""Password hashing for the users file: scrypt (RFC 7914) from the standard library.

Format: `scrypt$<log2 N>$<r>$<p>$<salt b64>$<hash b64>`. Verification never raises on a
malformed hash (it is simply wrong) and compares in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

LOG2_N, R, P, DKLEN = 15, 8, 1, 32
_MAXMEM = 128 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** LOG2_N, r=R, p=P,
                            dklen=DKLEN, maxmem=_MAXMEM)
    return f"scrypt${LOG2_N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, log2n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt" or not (10 <= int(log2n) <= 20) or not (1 <= int(r) <= 32) \
                or not (1 <= int(p) <= 16):
            return False
        want = base64.b64decode(expected, validate=True)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt, validate=True),
                             n=2 ** int(log2n), r=int(r), p=int(p), dklen=len(want), maxmem=_MAXMEM)
    except (ValueError, TypeError, AttributeError):
        return False
    return hmac.compare_digest(got, want)


DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
