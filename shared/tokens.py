"""Mint and validate tokens (the claims of Konnect's oidc/provider/tokens.go).

- ID token: OIDC Core §2 claims with `aud` = client id, `nonce`, `sid`, `auth_time`,
  `at_hash`/`c_hash` (§3.3.2.11, the hash of the signing alg's size); signed with the
  client's registered `id_token_signed_response_alg` (never another instead), else RS256.
- Access token: a JWT Kopano services can read (`kc.isAccessToken`, `kc.authorizedScopes`,
  `kc.identity`, `kc.provider`, `jti`), plus `kc.family` (the grant family, so revoking a
  grant reaches its access tokens), `client_id` and `scope` (RFC 9068 §2.2).
- Refresh token: an opaque 256-bit random string; its record lives in Redis (store.py) and
  is rotated on every use. Konnect's stateless refresh JWTs could not be revoked.

Validation (`validate_access_token`) checks signature (pinned alg, known kid), `iss`,
`exp`/`nbf`/`iat` with a small skew and `kc.isAccessToken`; `check_revocation` then asks
the revocation list in one round trip and fails closed (RFC 6750 §3.1 `invalid_token`).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from . import jose
from .identity import Identity
from .keys import Keyring


class TokenError(Exception):
    """A token that is not valid here; the message is for logs only."""


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def new_jti() -> str:
    """An access token's `jti` (RFC 7519 §4.1.7): 192 random bits."""
    return random_token(24)


@dataclass
class Minted:
    token: str
    jti: str
    exp: int


class Tokens:
    def __init__(self, keyring: Keyring, issuer: str, *, access_ttl: int = 600,
                 id_ttl: int = 3600, refresh_ttl: int = 94608000, skew: int = 60,
                 now: Callable[[], float] = time.time) -> None:
        self.keyring, self.issuer = keyring, issuer
        self.access_ttl, self.id_ttl, self.refresh_ttl = access_ttl, id_ttl, refresh_ttl
        self.skew, self.now = skew, now

    @classmethod
    def from_core(cls, core: Any) -> "Tokens":
        s = core.settings
        return cls(core.keyring, s.iss, access_ttl=s.access_token_expiration,
                   id_ttl=s.id_token_expiration, refresh_ttl=s.refresh_token_expiration,
                   skew=s.clock_skew, now=core.now)

    # -- how long a revocation lasts: until what it revokes is no longer accepted anywhere --

    def accepted_until(self, exp: float) -> int:
        """The last second a token expiring at `exp` is still accepted: its `exp` plus the
        tolerated clock skew (`validate_access_token`)."""
        return math.ceil(exp) + self.skew

    def family_until(self, last_refresh_exp: Optional[float] = None) -> int:
        """Until when a revoked grant family must stay revoked: its refresh tokens live until
        `last_refresh_exp` (unknown: a whole refresh lifetime from now) and every one of them
        can still mint an access token that lives an access lifetime."""
        now = self.now()
        last = now + self.refresh_ttl if last_refresh_exp is None else last_refresh_exp
        return self.accepted_until(max(last, now + self.access_ttl))

    def sign_out_ttl(self, logon_ttl: int) -> int:
        """How long a subject's not-before (a sign-out) is kept: as long as anything it ends
        can still be presented, its access tokens and its logon cookies (sealed for
        `logon_ttl`). Shorter, and a copy of an old logon cookie would be a session again."""
        return max(self.access_ttl, logon_ttl) + self.skew

    def access_token(self, *, client_id: str, identity: Identity, scopes: Iterable[str],
                     family: str, claims: Optional[Mapping[str, Any]] = None,
                     alg: Optional[str] = None, jti: Optional[str] = None) -> Minted:
        """`jti` is new unless given (a code redemption records it before signing)."""
        now = int(self.now())
        jti = jti or new_jti()
        scopes = list(scopes)
        payload: dict[str, Any] = {
            "iss": self.issuer, "sub": identity.sub, "aud": client_id, "exp": now + self.access_ttl,
            "iat": now, "nbf": now, "jti": jti, "client_id": client_id, "scope": " ".join(scopes),
            "kc.isAccessToken": True, "kc.authorizedScopes": scopes,
            "kc.identity": identity.kc_identity(), "kc.provider": identity.backend,
            "kc.family": family,
        }
        if claims:
            payload["kc.authorizedClaims"] = dict(claims)
        token = jose.sign(payload, self.keyring.access_token_signer(alg))
        return Minted(token, jti, payload["exp"])

    def kopano_sso_token(self, entry_id: str) -> str:
        """The access token of a single sign-on logon at the Kopano server (kc backend,
        per-user sessions; Konnect's identifier/backends/kc.go getSessionForUser): for the
        user's entry ID (as `sub` and `kc.i.id`, which the server reads), audience
        "konnect", with the `kopano/gc` scope the server requires. It goes to the Kopano
        server only, once, so it lives a minute at most."""
        now = int(self.now())
        payload = {"iss": self.issuer, "sub": entry_id, "aud": "konnect",
                   "exp": now + min(self.access_ttl, 60), "iat": now, "jti": new_jti(),
                   "kc.isAccessToken": True, "kc.authorizedScopes": ["openid", "kopano/gc"],
                   "kc.identity": {"kc.i.id": entry_id}}
        return self.keyring.sign(payload)

    def id_token(self, *, client_id: str, identity: Identity, sub: Optional[str] = None,
                 nonce: Optional[str] = None, sid: Optional[str] = None,
                 auth_time: Optional[int] = None, access_token: Optional[str] = None,
                 code: Optional[str] = None, extra: Optional[Mapping[str, Any]] = None,
                 alg: Optional[str] = None) -> str:
        """OIDC Core §2; `sub` overrides the public subject (konnect/raw_sub)."""
        now = int(self.now())
        signer = self.keyring.id_token_signer(alg)
        payload: dict[str, Any] = dict(extra or {})
        payload.update({"iss": self.issuer, "sub": sub or identity.sub, "aud": client_id,
                        "exp": now + self.id_ttl, "iat": now})
        if nonce:
            payload["nonce"] = nonce
        if sid:
            payload["sid"] = sid
        if auth_time is not None:
            payload["auth_time"] = int(auth_time)
        if access_token:
            payload["at_hash"] = jose.left_hash(access_token, signer.alg)
        if code:
            payload["c_hash"] = jose.left_hash(code, signer.alg)
        return jose.sign(payload, signer)

    def sign(self, payload: Mapping[str, Any], *, alg: Optional[str] = None, typ: str = "JWT") -> str:
        """`payload` signed with `alg` (a client's registered alg: `AlgorithmNotSigned` when
        no key signs it, never another alg), else the signer's default."""
        return self.keyring.sign(payload, alg=alg, typ=typ)

    def verify(self, token: str, **kwargs: Any) -> dict:
        """Signature only (pinned alg, known kid); claims are the caller's to check."""
        try:
            return self.keyring.verify(token, **kwargs)[1]
        except jose.JoseError as err:
            raise TokenError(str(err)) from None

    def open_id_token_hint(self, token: str) -> dict:
        """The claims of an `id_token_hint` we issued: signature and issuer checked, `exp`
        not (OIDC Core §3.1.2.1; RP-Initiated Logout §2). TokenError otherwise.

        Our access tokens and signed userinfo responses are signed by the same keys: one
        marked `kc.isAccessToken` is not an ID token, nor is one without the `exp` and
        `iat` every ID token has (OIDC Core §2; a signed userinfo JWT has neither); both
        are refused (RFC 8725 §2.8 cross-JWT confusion, §3.12 mutually exclusive
        validation rules)."""
        claims = self.verify(token)
        if claims.get("iss") != self.issuer:
            raise TokenError("id_token_hint is from another issuer")
        if "kc.isAccessToken" in claims:
            raise TokenError("id_token_hint is an access token")
        for name in ("exp", "iat"):
            value = claims.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TokenError(f"id_token_hint has no {name}: not an ID token")
        return claims

    def check_times(self, claims: Mapping[str, Any], *, require_exp: bool = True) -> None:
        """`exp`, `nbf`, `iat` with `skew` seconds of leeway (RFC 7519 §4.1.4-4.1.6)."""
        now = self.now()
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None:
                if name == "exp" and require_exp:
                    raise TokenError("exp missing")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TokenError(f"{name} is not a number")
        if "exp" in claims and claims["exp"] + self.skew <= now:
            raise TokenError("token expired")
        if "nbf" in claims and claims["nbf"] - self.skew > now:
            raise TokenError("token not yet valid")
        if "iat" in claims and claims["iat"] - self.skew > now:
            raise TokenError("token issued in the future")

    def validate_access_token(self, token: str) -> dict:
        """Claims of a valid access token of this issuer; raises TokenError otherwise."""
        claims = self.verify(token)
        self.check_times(claims)
        if claims.get("iss") != self.issuer:
            raise TokenError("wrong issuer")
        if claims.get("kc.isAccessToken") is not True:
            raise TokenError("not an access token")
        for name in ("sub", "jti", "aud"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise TokenError(f"{name} missing")
        if not isinstance(claims.get("kc.identity"), dict):
            raise TokenError("kc.identity missing")
        return claims


async def is_revoked(store: Any, claims: Mapping[str, Any]) -> bool:
    """One round trip to the revocation list for a token's jti, family and subject (and its
    bucket's generation: a token older than Redis's state is refused). `claims` are those
    of `Tokens.validate_access_token` (a `sub` is required there).

    Raises the store's `StoreUnavailable` when Redis cannot answer: callers answer 503,
    never a success without the check (fail closed).
    """
    family = claims.get("kc.family")
    return await store.is_revoked(jti=claims.get("jti") or None,
                                  family=family if isinstance(family, str) and family else None,
                                  sub=claims["sub"], iat=claims.get("iat", 0))
