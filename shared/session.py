"""Browser state shared by identifier and authorize: the cookies and their sealed contents.

Names and paths are Konnect's (konnect.md §7.8). The contents are sealed (sealed.py)
instead of JWE; cookies need not survive a switch from Konnect (Appendix B).

- `__Secure-KKT`, the logon: identity, auth_time, sid; path `/signin/v1/identifier/_/`.
- `__Secure-KKTC-<hash>`, a consent decision for one authorization request, 60 s, used once.
- `__Secure-KKBS`, the browser state for Session Management 1.0 (not HttpOnly: the
  check-session iframe reads it).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Optional

from .identity import Identity
from .sealed import SealError, Sealer

LOGON_COOKIE = "__Secure-KKT"
CONSENT_PREFIX = "__Secure-KKTC-"
BROWSER_STATE_COOKIE = "__Secure-KKBS"
API_PATH = "/signin/v1/identifier/_/"
SESSION_PATH = "/konnect/v1/session/"
LOGON_TTL = 24 * 3600
CONSENT_TTL = 60


@dataclass
class Logon:
    identity: Identity
    auth_time: int
    sid: str

    def seal(self, sealer: Sealer) -> str:
        return sealer.seal("logon", {"identity": self.identity.to_record(),
                                     "auth_time": self.auth_time, "sid": self.sid}, LOGON_TTL)

    @classmethod
    def open(cls, sealer: Sealer, value: Optional[str]) -> Optional["Logon"]:
        if not value:
            return None
        try:
            doc = sealer.unseal("logon", value)
            return cls(Identity.from_record(doc["identity"]), int(doc["auth_time"]), str(doc["sid"]))
        except (SealError, KeyError, TypeError, ValueError):
            return None


def new_sid() -> str:
    return secrets.token_urlsafe(24)


def consent_cookie_name(state: str, client_id: str, redirect_uri: str, ref: str, nonce: str) -> str:
    """Konnect's per-request consent cookie name (konnect.md §7.6)."""
    data = f"{state}h{client_id}e{redirect_uri}l{ref}o{nonce}".encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=32).digest()
    return CONSENT_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def seal_consent(sealer: Sealer, *, allow: bool, scopes: list, sub: str) -> str:
    return sealer.seal("consent", {"allow": bool(allow), "scope": list(scopes), "sub": sub},
                       CONSENT_TTL)


def open_consent(sealer: Sealer, value: Optional[str]) -> Optional[dict]:
    if not value:
        return None
    try:
        doc = sealer.unseal("consent", value)
    except SealError:
        return None
    return doc if isinstance(doc, dict) else None


def browser_state(sub: Optional[str], issuer: str) -> str:
    data = f"{sub or ' '} {issuer} kopano-konnect-1".encode("utf-8")
    return base64.urlsafe_b64encode(hashlib.blake2b(data, digest_size=32).digest()).rstrip(b"=").decode()


def session_state(client_id: str, origin: str, state: str) -> str:
    """OIDC Session Management 1.0 §3: hash(client_id origin browser_state salt).salt."""
    salt = secrets.token_urlsafe(16)
    digest = hashlib.sha256(f"{client_id} {origin} {state} {salt}".encode("utf-8")).hexdigest()
    return f"{digest}.{salt}"


def set_cookie(handler: Any, name: str, value: str, *, path: str, http_only: bool = True,
               max_age: Optional[int] = None) -> None:
    handler.set_cookie(name, value, path=path, secure=True, httponly=http_only, samesite="None",
                       **({"max_age": max_age} if max_age is not None else {}))


def clear_cookie(handler: Any, name: str, *, path: str) -> None:
    handler.clear_cookie(name, path=path, secure=True, samesite="None")
