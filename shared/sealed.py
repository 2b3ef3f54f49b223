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
import hashlib
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

from .keys import KeysUnavailable

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


def new_secret() -> bytes:
    """A random encryption secret (the group's shared ephemeral one, shared/ephemeral.py)."""
    return secrets.token_bytes(SECRET_BYTES)


def load_secret(path: str, *, logger: Optional[logging.Logger] = None) -> bytes:
    """Exactly 32 raw bytes from `path` (Konnect: `openssl rand -out secret.key 32`).

    No other encoding is accepted: a hex or base64 file of the right length would silently
    weaken the key. Without a path there is no secret to load: the group shares an
    ephemeral one (shared/ephemeral.py).
    """
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


def _check_secret(key: Any) -> None:
    if not isinstance(key, bytes) or len(key) != SECRET_BYTES:
        raise SecretError(f"encryption secret must be {SECRET_BYTES} bytes")


class Sealer:
    """Seal and unseal JSON values for a purpose with an expiry; `previous` secrets still open.

    `ephemeral`: the secret is the group's shared ephemeral one (no `--encryption-secret`,
    shared/ephemeral.py); such a sealer neither seals nor opens anything until that module
    has confirmed its secret with Redis (`KeysUnavailable`, a 503), and `adopt` swaps in the
    group's secret in place, for every holder of this object at once.
    """

    def __init__(self, secret: bytes, *, now: Callable[[], float] = time.time,
                 previous: Sequence[bytes] = (), ephemeral: bool = False) -> None:
        for key in (secret, *previous):
            _check_secret(key)
        self._secret = secret
        self._current = AESGCM(secret)
        self._all = [self._current] + [AESGCM(key) for key in previous]
        self.now = now
        self.ephemeral = ephemeral
        self.ready = not ephemeral

    def adopt(self, secret: bytes) -> None:
        """Seal and open with the group's shared ephemeral secret from now on."""
        _check_secret(secret)
        self._secret, self._current, self._all = secret, AESGCM(secret), [AESGCM(secret)]
        self.ready = True

    def tag(self, label: str) -> str:
        """A short name derived from the secret (keyed BLAKE2b of `label`): the same in
        every process with this secret, and it tells nothing about the secret."""
        return hashlib.blake2b(label.encode("ascii"), key=self._secret, digest_size=8).hexdigest()

    def _check_ready(self) -> None:
        if not self.ready:
            raise KeysUnavailable("the group's shared ephemeral encryption secret is not "
                                  "confirmed yet")

    @staticmethod
    def _aad(purpose: str) -> bytes:
        if not purpose or not purpose.isascii():
            raise ValueError("purpose must be a non-empty ASCII string")
        return b"konnect-sealed-v1:" + purpose.encode("ascii")

    def seal(self, purpose: str, payload: Any, ttl: int) -> str:
        self._check_ready()
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        plain = json.dumps({"exp": int(self.now()) + ttl, "v": payload},
                           separators=(",", ":")).encode("utf-8")
        nonce = secrets.token_bytes(_NONCE)
        sealed = _VERSION + nonce + self._current.encrypt(nonce, plain, self._aad(purpose))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def unseal(self, purpose: str, token: Any) -> Any:
        self._check_ready()
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
