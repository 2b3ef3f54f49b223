"""The group's shared ephemeral signing key and encryption secret.

Without `--signing-private-key` or `--encryption-secret`, Konnect (one process) makes a
random RSA key, signing PS256, and a random 32-byte secret at start-up, with a warning
for each (its bootstrap/bootstrap.go), and they live as long as that process. Here the
four services and every token process are ONE issuer: a key or secret of one process
alone would sign tokens the others cannot verify and seal cookies they cannot open. So
the group shares one of each, through Redis:

- The first process that finds none stores its own random key and secret under
  ``<prefix>ephemeral:<name>`` (atomically, `Store.shared_material`: of processes
  racing at start, exactly one record wins, and every process takes it). `name` says
  what is shared (`key-and-secret`, `secret`, or `key.<tag>`), so a record left by
  another configuration is never taken for this one.
- Before every request that may sign, verify, seal or open (`BaseHandler.prepare`), a
  process asks Redis whether the record is still the one it holds (one round trip, a
  SHA-1 of it goes, nothing comes back when it is). If Redis holds another one (it lost
  the record and another process stored a new one first), the process takes that one,
  in place (`Keyring.adopt_signer`, `Sealer.adopt`), and drops its own: every process
  signs with, and accepts, the same key. If Redis holds none (flushed, restarted without
  persistence, or the record expired), the process puts back the one it holds, so the
  group keeps its tokens and sign-ins; a process that starts then takes it.
- When Redis cannot answer, nothing is signed, verified, sealed or opened: 503 (fail
  closed). A process that has not confirmed its material yet refuses the same way
  (`keys.KeysUnavailable`), so no process ever signs with material the others do not
  hold. (A request already past this check when Redis loses the record and another
  process stores a new one finishes with the old key: a window of one request, only
  when Redis lost the record.)
- Lifetime: the record lives while the group runs (each process starts its lifetime
  again at most once a minute) and `lifetime` after its last use (the longest a token or
  sign-in sealed with it is honoured, at least a day); then the next process to start
  makes a new one. Restarting a process, or the whole group within that time, keeps
  every token and sign-in, unlike Konnect.
- The key is never logged. With a configured `--encryption-secret` (and no signing
  key), the key is stored sealed under that secret; with neither configured, the key
  and the secret are stored as they are: Redis (and its persistence files, the
  append-only file of `make run`) then holds what signs this issuer's tokens. Every
  process says so at start-up, loudly. Production configures both (docs/operations.md).
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from typing import Any, Callable, Optional

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from .keys import (KeyLoadError, Keyring, KeysUnavailable, check_policy, key_from_jwk,
                   private_jwk)
from .sealed import Sealer, SealError, SecretError

log = logging.getLogger("konnect.ephemeral")

RSA_BITS = 2048  # Konnect's random key (its bootstrap.go defaultSigningKeyBits)
REFRESH_EVERY = 60  # seconds: how often a process starts the record's lifetime again
MIN_LIFETIME = 24 * 3600
_SEALED_FOR = 10 * 365 * 86400  # the record's TTL in Redis bounds it, not the seal
_PURPOSE = "ephemeral-signing-key"


def new_signing_key() -> tuple[str, Any]:
    """(kid, RSA-2048 private key) for the group's shared ephemeral signing key."""
    return f"ephemeral-{secrets.token_hex(4)}", rsa.generate_private_key(65537, RSA_BITS)


class MaterialError(KeysUnavailable):
    """The record in Redis cannot be used by this process (written by a process with
    another encryption secret, or not a record at all): 503, never overwritten."""


class SharedMaterial:
    """What a process shares with its group: the signing key (`keyring`, when no signing key
    is configured) and/or the encryption secret (`sealer`, when none is configured)."""

    def __init__(self, store: Any, keyring: Keyring, sealer: Sealer, *, signing_method: str,
                 lifetime: int, secret: Optional[bytes] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`keyring` and `sealer` as `Core` built them: an `ephemeral` one holds this
        process's random candidate (`secret`: the sealer's), not usable until `ensure`."""
        self.store, self.keyring, self.sealer = store, keyring, sealer
        self.shares_key, self.shares_secret = keyring.ephemeral, sealer.ephemeral
        if not (self.shares_key or self.shares_secret):
            raise ValueError("nothing to share: the key and the secret are configured")
        if self.shares_secret and secret is None:
            raise ValueError("the sealer's random secret is needed to share it")
        self._secret = secret
        self.signing_method = signing_method
        self.lifetime = max(MIN_LIFETIME, int(lifetime))
        self._clock = clock
        self._refreshed = float("-inf")
        if self.shares_key and self.shares_secret:
            self.name = "key-and-secret"
        elif self.shares_secret:
            self.name = "secret"
        else:  # sealed under the configured secret: a record per secret
            self.name = "key." + sealer.tag(_PURPOSE)
        self.redis_key = store.key("ephemeral", self.name)
        self._held: Optional[bytes] = None  # the record this process uses (confirmed)
        self._refused: Optional[bytes] = None  # the last record it could not use (logged)
        self._candidate = self._record()     # what it stores when Redis has none

    def warn(self, logger: logging.Logger = log) -> None:
        """The loud warning every process logs at start-up."""
        what = " and ".join(w for w, shared in (("--signing-private-key", self.shares_key),
                                                 ("--encryption-secret", self.shares_secret))
                            if shared)
        made = " and ".join(w for w, shared in (
            (f"a random RSA-{RSA_BITS} signing key (PS256 by default)", self.shares_key),
            ("a random encryption secret", self.shares_secret)) if shared)
        where = ("sealed under the configured encryption secret" if self.name.startswith("key.")
                 else "as it is: whoever can read Redis or its persistence files can sign "
                      "tokens of this issuer" if self.shares_key
                 else "as it is: whoever can read Redis or its persistence files can open "
                      "sign-in cookies")
        logger.warning(
            "NO %s CONFIGURED: the processes of this group share %s through Redis (key %s, "
            "stored %s). It lives while the group runs and %d hours after; tokens and "
            "sign-ins end when Redis loses it. Not for production: configure %s "
            "(python -m shared.keytool generate; docs/operations.md)",
            what.upper(), made, self.redis_key, where, self.lifetime // 3600, what)

    # -- the record ---------------------------------------------------------------------

    def _record(self) -> bytes:
        """This process's own material as a record (compact JSON)."""
        doc: dict[str, Any] = {"v": 1}
        if self.shares_key:
            signer = self.keyring.signer
            jwk = private_jwk(signer.private)
            doc["kid"] = signer.kid
            if self.shares_secret:
                doc["key"] = jwk
            else:
                doc["sealed_key"] = self.sealer.seal(_PURPOSE, jwk, _SEALED_FOR)
        if self.shares_secret:
            doc["secret"] = base64.urlsafe_b64encode(self._secret).decode("ascii")
        return orjson.dumps(doc)

    def _adopt(self, record: bytes) -> None:
        """Use the group's record from now on (the key and/or secret swapped in place)."""
        try:
            doc = orjson.loads(record)
            if not isinstance(doc, dict) or doc.get("v") != 1:
                raise ValueError("not a version 1 record")
            secret = key = None
            if self.shares_secret:
                secret = base64.urlsafe_b64decode(doc["secret"])
            if self.shares_key:
                jwk = doc["key"] if self.shares_secret else self.sealer.unseal(
                    _PURPOSE, doc["sealed_key"])
                key = key_from_jwk(jwk, private=True)
                check_policy(key)
                kid = doc["kid"]
                if not isinstance(kid, str) or not kid:
                    raise ValueError("no kid")
        except (ValueError, KeyError, TypeError, KeyLoadError, SealError) as err:
            if record != self._refused:  # once per record, not once per request
                self._refused = record
                log.error("the shared ephemeral material in Redis (%s) cannot be used: %s. "
                          "Every process of a group needs the same --signing-private-key and "
                          "--encryption-secret settings; delete that key to start over",
                          self.redis_key, type(err).__name__)
            raise MaterialError("the shared ephemeral material cannot be used") from None
        if secret is not None:
            try:
                self.sealer.adopt(secret)
            except SecretError:
                raise MaterialError("the shared ephemeral secret has the wrong size") from None
        if key is not None:
            self.keyring.adopt_signer(kid, key, self.signing_method)
        if self._held is not None:
            log.warning("the group's shared ephemeral material changed in Redis (it was "
                        "lost and made again): tokens and sign-ins of the old one end")
        self._held = record

    # -- every request ------------------------------------------------------------------

    async def ensure(self) -> None:
        """Make sure this process uses the group's material (see the module docstring).
        Raises `StoreUnavailable` or `MaterialError` (both 503) when it cannot."""
        now = self._clock()
        refresh = now - self._refreshed >= REFRESH_EVERY
        store, name = self.store, self.name
        stored = await store.shared_material(name, ttl=self.lifetime, held=self._held,
                                             refresh=refresh)
        if stored is None:  # none in Redis: put back the one we hold, or store ours
            stored = await store.shared_material(
                name, ttl=self.lifetime, held=self._held,
                candidate=self._held or self._candidate)
            refresh = True
        if stored != self._held:
            self._adopt(stored)
        if refresh:
            self._refreshed = now
