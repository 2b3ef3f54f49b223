"""Sealing: authenticated encryption under the 32-byte `--encryption-secret`.

Used for the logon cookie, consent decisions and hand-offs between the identifier and
authorize services. AES-256-GCM (NIST SP 800-38D; RFC 5116 §5.2 AEAD_AES_256_GCM) with a
random 96-bit nonce; the purpose is the associated data, so a value sealed for one use
cannot be opened as another, and the expiry is inside the ciphertext.

Format (base64url, no padding): version byte 0x01 || nonce (12) || ciphertext+tag.
The plaintext is compact JSON `{"exp": <unix seconds>, "v": <payload>}`. Only this module
touches the secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_BYTES = 32
MAX_SEALED = 8 * 1024
_VERSION = b"\x01"
_NONCE = 12
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class SecretError(Exception):
    """The encryption secret cannot be used (never contains the secret)."""


class SealError(Exception):
    """A sealed value that cannot be opened. `reason`: malformed, invalid, expired, too_large."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"sealed value rejected ({reason})")
        self.reason = reason


def load_secret(path: Optional[str], *, logger: logging.Logger) -> bytes:
    """Exactly 32 raw bytes from `path` (Konnect: `openssl rand -out secret.key 32`).

    No other encoding is accepted: a hex or base64 file of the right length would silently
    weaken the key. Without a path, a random secret with a loud warning.
    """
    if not path:
        logger.warning("NO ENCRYPTION SECRET CONFIGURED: using a random one. Sign-ins will "
                       "not survive a restart and other services cannot open this one's "
                       "cookies; set --encryption-secret (make keys creates one)")
        return secrets.token_bytes(SECRET_BYTES)
    try:
        size = os.stat(path).st_size
        if size != SECRET_BYTES:
            raise SecretError(f"{path}: encryption secret must be exactly {SECRET_BYTES} bytes, "
                              f"the file has {size}")
        data = Path(path).read_bytes()
    except OSError as err:
        raise SecretError(f"{path}: cannot read encryption secret ({err.strerror or err})") from None
    if len(data) != SECRET_BYTES:
        raise SecretError(f"{path}: encryption secret must be exactly {SECRET_BYTES} bytes, "
                          f"the file has {len(data)}")
    return data


class Sealer:
    """Seal and unseal JSON values for a purpose with an expiry; `previous` secrets still open."""

    def __init__(self, secret: bytes, *, now: Callable[[], float] = time.time,
                 previous: Sequence[bytes] = ()) -> None:
        for key in (secret, *previous):
            if not isinstance(key, bytes) or len(key) != SECRET_BYTES:
                raise SecretError(f"encryption secret must be {SECRET_BYTES} bytes")
        self._current = AESGCM(secret)
        self._all = [self._current] + [AESGCM(key) for key in previous]
        self.now = now

    @staticmethod
    def _aad(purpose: str) -> bytes:
        if not purpose or not purpose.isascii():
            raise ValueError("purpose must be a non-empty ASCII string")
        return b"konnect-sealed-v1:" + purpose.encode("ascii")

    def seal(self, purpose: str, payload: Any, ttl: int) -> str:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        plain = json.dumps({"exp": int(self.now()) + ttl, "v": payload},
                           separators=(",", ":")).encode("utf-8")
        nonce = secrets.token_bytes(_NONCE)
        sealed = _VERSION + nonce + self._current.encrypt(nonce, plain, self._aad(purpose))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def unseal(self, purpose: str, token: Any) -> Any:
        if not isinstance(token, str) or not token:
            raise SealError("malformed")
        if len(token) > MAX_SEALED:
            raise SealError("too_large")
        if not _B64URL.fullmatch(token):
            raise SealError("malformed")
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise SealError("malformed") from None
        if len(raw) < 1 + _NONCE + 16 or raw[:1] != _VERSION:
            raise SealError("malformed")
        nonce, body, aad = raw[1:1 + _NONCE], raw[1 + _NONCE:], self._aad(purpose)
        for key in self._all:
            try:
                plain = key.decrypt(nonce, body, aad)
                break
            except InvalidTag:
                continue
        else:
            raise SealError("invalid")
        try:
            doc = json.loads(plain)
            exp, value = doc["exp"], doc["v"]
        except (ValueError, KeyError, TypeError):
            raise SealError("malformed") from None
        if not isinstance(exp, int) or exp <= self.now():
            raise SealError("expired")
        return value
