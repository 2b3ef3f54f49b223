"""Browser state shared by identifier and authorize: the cookies and their sealed contents.

Konnect's cookies (its identifier/cookie.go), renamed from `__Secure-` to `__Host-` and set
at `Path=/` (docs/konnect-compatibility.md, "Cookies"): a `__Host-` cookie is accepted by a
browser only from this very host, with `Secure`, `Path=/` and no `Domain` (RFC 6265bis
§4.1.3.2), so no sibling subdomain can plant one and no other path can hold a second one
of the same name. The contents are sealed (sealed.py) instead of JWE; cookies need not
survive a switch from Konnect. Every cookie is read through `BaseHandler.get_cookie`
(shared/web.py), which refuses a name the request carries more than once.

- `__Host-KKT`, the logon: identity, auth_time, sid, a random browser-state key. A browser
  session cookie, as Konnect's; its sealed contents last `logon_ttl` (at most
  `--logon-cookie-expiration`), and it is a session only while no sign-out of its subject
  came after it (`Logon.open_live`: the subject's not-before in the store).
- `__Host-KKTC-<hash>`, a consent decision for one authorization request, 60 s, used once.
- `__Host-KKBS`, the browser state for Session Management 1.0 (not HttpOnly: the
  check-session iframe reads it). Keyed by a random per-logon value, so no third party can
  compute it for a user it knows (Konnect's unkeyed hash could be: `browser_state`).
- `__Host-KKAF-<hash>`, the hop of a sign-in through an external authority
  (services/identifier/authorities.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import secrets
from dataclasses import dataclass, replace
from typing import Any, Optional

from .identity import Identity
from .options import BY_NAME
from .sealed import SealError, Sealer

HOST_PREFIX = "__Host-"
LOGON_COOKIE = HOST_PREFIX + "KKT"
CONSENT_PREFIX = HOST_PREFIX + "KKTC-"
BROWSER_STATE_COOKIE = HOST_PREFIX + "KKBS"
CONSENT_TTL = 60
#: how long a logon lasts without `--logon-cookie-expiration` (its maximum): as long as the
#: browser keeps its session cookie (Konnect's), bounded so that a sign-out need not be
#: remembered for ever (its not-before lives as long as a logon can: `signout.py`). 400
#: days is the longest a browser keeps a cookie it was told to keep (RFC 6265bis §5.5).
LOGON_TTL_MAX = BY_NAME["logon_cookie_expiration"].maximum


def logon_ttl(settings: Any) -> int:
    """How long a logon's sealed contents last: `--logon-cookie-expiration`, or (0)
    `LOGON_TTL_MAX`."""
    return int(getattr(settings, "logon_cookie_expiration", 0) or 0) or LOGON_TTL_MAX


@dataclass
class Logon:
    identity: Identity
    auth_time: int
    sid: str
    # the key of this logon's browser state (`browser_state`); "" for a logon that is not
    # the identifier's own (the cookie identity manager), whose sid is then the key
    state_key: str = ""
    # a sign-in through an external authority (shared/authorities): its id, and what
    # signing out there needs (the upstream's ID token, or the SAML2 NameID and session)
    authority: str = ""
    authority_ref: Any = None

    def seal(self, sealer: Sealer, ttl: int) -> str:
        """The cookie's value, sealed for `ttl` seconds (`logon_ttl`)."""
        doc = {"identity": self.identity.to_record(), "auth_time": self.auth_time, "sid": self.sid}
        if self.state_key:
            doc["bsk"] = self.state_key
        if self.authority:
            doc["ext"] = {"a": self.authority, "r": self.authority_ref}
        return sealer.seal("logon", doc, ttl)

    @classmethod
    def open(cls, sealer: Sealer, value: Optional[str]) -> Optional["Logon"]:
        """The sealed contents only: use `open_live` to know whether it is still a session."""
        if not value:
            return None
        try:
            doc = sealer.unseal("logon", value)
            key = doc.get("bsk", "")
            ext = doc.get("ext") if isinstance(doc.get("ext"), dict) else {}
            return cls(Identity.from_record(doc["identity"]), int(doc["auth_time"]),
                       str(doc["sid"]), key if isinstance(key, str) else "",
                       str(ext.get("a") or ""), ext.get("r"))
        except (SealError, KeyError, TypeError, ValueError, AttributeError):
            return None

    @classmethod
    async def open_live(cls, sealer: Sealer, store: Any, value: Optional[str]) -> Optional["Logon"]:
        """The logon cookie's session, or None. The one way every service opens the logon
        cookie: a sealed logon is a session only while no sign-out of its subject came after
        it. Signing out (services/identifier/signout.py) writes the subject's not-before;
        a logon whose auth_time is at or before it is over (OIDC RP-Initiated Logout 1.0
        §2: the OP logs the End-User out; the sealed cookie alone would live on).
        Fails closed: Redis unreachable raises `StoreUnavailable` (503), never a session."""
        logon = cls.open(sealer, value)
        if logon is None:
            return None
        if await store.is_revoked(sub=logon.identity.sub, iat=logon.auth_time):
            return None
        return logon


async def current_logon(users: Any, logon: Optional[Logon]) -> Optional[Logon]:
    """The logon with its user as the backend knows them now, or None when the backend no
    longer returns them (disabled or removed after signing in). The OP issues tokens only
    for an End-User it can authenticate now (OIDC Core §3.1.2.3), as the token endpoint
    and userinfo already do (`UserBackend.current`); tokens then carry the fresh claims.
    Backend unreachable: `Unavailable` (503), never a session. For authorize and the
    identifier's `_/hello`."""
    if logon is None or users is None:
        return logon
    identity = await users.current(logon.identity.raw_sub, logon.identity.kc_identity())
    return None if identity is None else replace(logon, identity=identity)


async def wait_past(now: Any, not_before: Optional[int]) -> None:
    """Wait, if need be, until the current second is past a subject's not-before.

    A sign-out writes its second as the not-before (whole seconds, `Store.revoke_subject`)
    and ends every logon and access token of that second, so what is issued in the same
    second afterwards (a sign-in's auth_time, a refreshed access token's iat) would be dead
    on arrival. At most about two seconds; a not-before further ahead (another host's
    clock) is not waited for."""
    if not_before is None:
        return
    for _ in range(3):
        t = now()
        if int(t) > not_before or not_before - int(t) > 1:
            return
        await asyncio.sleep(min(1.0, max(0.02, math.floor(t) + 1 - t)))


def new_sid() -> str:
    return secrets.token_urlsafe(24)


def consent_cookie_name(state: str, client_id: str, redirect_uri: str, ref: str, nonce: str) -> str:
    """Konnect's per-request consent cookie name (its identifier/cookie.go
    `getConsentCookieName`), with our prefix."""
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


def new_state_key() -> str:
    return secrets.token_urlsafe(32)


def browser_state(logon: Logon, issuer: str) -> str:
    """The browser state of OIDC Session Management 1.0 §3 (the `__Secure-KKBS` cookie the
    check-session iframe hashes, §4.1): BLAKE2b keyed with the logon's random state key.
    Konnect hashed only sub and issuer, with no secret, so any site framing the iframe could
    test whether its visitor is signed in as a user it knows; without the key nobody can
    compute it. It changes with every sign-in, which the iframe reports as `changed` (§4.1:
    the RP then re-authenticates with prompt=none)."""
    key = hashlib.sha256((logon.state_key or logon.sid).encode("utf-8")).digest()
    data = f"{logon.identity.sub} {issuer} kopano-konnect-1".encode("utf-8")
    digest = hashlib.blake2b(data, key=key, digest_size=32, person=b"konnect-KKBS").digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def session_state(client_id: str, origin: str, state: str) -> str:
    """OIDC Session Management 1.0 §3: hash(client_id origin browser_state salt).salt."""
    salt = secrets.token_urlsafe(16)
    digest = hashlib.sha256(f"{client_id} {origin} {state} {salt}".encode("utf-8")).hexdigest()
    return f"{digest}.{salt}"


def set_cookie(handler: Any, name: str, value: str, *, http_only: bool = True,
               max_age: Optional[int] = None) -> None:
    """Every cookie the services set: `__Host-` (Secure, Path=/, no Domain), SameSite=None
    (the check-session iframe and `form_post` answers are cross-site); without `max_age` a
    browser session cookie."""
    if not name.startswith(HOST_PREFIX):
        raise ValueError(f"cookie {name!r}: every cookie of the OP is a {HOST_PREFIX} cookie")
    handler.set_cookie(name, value, path="/", secure=True, httponly=http_only, samesite="None",
                       **({"max_age": max_age} if max_age is not None else {}))


def clear_cookie(handler: Any, name: str) -> None:
    handler.clear_cookie(name, path="/", secure=True, samesite="None")


def set_logon(handler: Any, sealed: str) -> None:
    """A new logon in this browser (any kind of sign-in): the logon cookie, and the browser
    state of the previous one cleared (authorize sets the new one)."""
    set_cookie(handler, LOGON_COOKIE, sealed)
    clear_cookie(handler, BROWSER_STATE_COOKIE)
