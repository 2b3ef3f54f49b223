"""Refresh tokens konnectd issued before the switch, exchanged ONCE for a family of ours
(docs/konnect-compatibility.md, "Migrating from konnectd").

konnectd's refresh token (its oidc/provider/tokens.go `makeRefreshToken`, claims.go
`RefreshTokenClaims`) is a JWT signed with its signing key (its default signing method, the
key's `kid`): `iss`, `sub` (the public subject), `aud` (the client id), `exp` (`iat` +
`--refresh-token-expiration`, three years by default), `iat`, `jti`,
`kc.isRefreshToken: true`, `kc.approvedScopes`, `kc.approvedClaims` (when there was a claims
request), `kc.ref`, `kc.identity` and `kc.provider`. Its token endpoint
(oidc/provider/handlers.go `TokenHandler`, oidc/payload/token.go, session.go,
identity.go) accepted one with a valid signature under a known kid, `exp` and `iat` not
violated, `kc.isRefreshToken`, `aud` equal to the authenticated client, a `kc.identity`
naming a user (`kc.i.id`), a `kc.provider` that is its identity manager's, a non-empty
`kc.ref`, requested scopes within `kc.approvedScopes`, and the user still found by the
backend; it never rotated it.

Here the same checks are made (plus `iss`, a TODO in Konnect), with the key's pinned
algorithm (shared/keys.py); the user is looked up as our own refresh does
(`UserBackend.current`) and must still have the token's `sub`. The answer is the normal
token response with one of our opaque refresh tokens, rotated from then on; the family
ends when the Konnect token would have (its `exp`), or earlier when our
`--refresh-token-expiration` counted from its `iat` says so.

Accepted once: the Konnect token has no state of its own, so its signed part (header and
claims, what the signature covers: an ECDSA signature made malleable or re-encoded is the
same token) is kept as a replay marker (`Store.first_use`) for the rest of its life. A
second presentation is refused and revokes the family issued from the first, as the reuse
of a rotated token of ours does (RFC 9700 §4.14.2: the client or a thief holds a copy).
The family id is derived from the token, so a replay needs no lookup.

The new refresh token is stored before the marker is set: if Redis fails in between, the
client's retry is not taken for a replay (the stored token, which nobody received, is
removed again or expires).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from typing import Any, Optional

from shared import scopes as scopelib
from shared.clients import Client
from shared.errors import INVALID_GRANT, INVALID_SCOPE, OAuth2Error, Unavailable
from shared.grants import Grant
from shared.identity import Identity
from shared.session import wait_past
from shared.store import new_token as new_refresh_token
from shared.tokens import TokenError

log = logging.getLogger("konnect.token")

REPLAY_KIND = "konnect-refresh"   # the replay markers' kind (Store.first_use)
_CLAIMS_MEMBERS = ("userinfo", "id_token")  # what our claims requests keep (OIDC Core §5.5)


class Refused(Exception):
    """Not a Konnect refresh token this request may use; the message is for the log."""


def is_jwt(token: str) -> bool:
    """A compact JWS. Our refresh tokens are opaque base64url strings without dots, so a
    token of this form is never one of ours and the store is not asked about it."""
    return token.count(".") == 2


def family_of(signed_part: str) -> str:
    """The grant family issued from a Konnect refresh token (its `kc.family`)."""
    digest = hashlib.sha256(b"konnect-refresh\0" + signed_part.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode("ascii")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def opened(token: str, tokens: Any, client: Client) -> tuple[dict, str]:
    """(claims, signed part) of a Konnect refresh token issued to `client`; `Refused`
    otherwise. Signature (kid, pinned alg), type, issuer, client, times: no state read."""
    try:
        claims = tokens.verify(token)
    except TokenError as err:
        raise Refused(f"not verified: {err}") from None
    # only konnectd's refresh tokens say this; none of our tokens carries the claim
    if claims.get("kc.isRefreshToken") is not True:
        raise Refused("not a Konnect refresh token")
    if claims.get("iss") != tokens.issuer:
        raise Refused("issued by another issuer")
    if not isinstance(claims.get("aud"), str) or claims["aud"] != client.id:
        raise Refused("issued to another client")
    try:
        tokens.check_times(claims)  # exp required, iat not in the future (with the skew)
    except TokenError as err:
        raise Refused(str(err)) from None
    if not _number(claims.get("iat")):  # konnectd always set it; our lifetime counts from it
        raise Refused("no iat")
    return claims, token.rpartition(".")[0]


def family_end(claims: dict, tokens: Any) -> int:
    """When the family issued from the token ends: konnectd's `exp`, or earlier when our
    refresh lifetime counted from its `iat` says so. Also how long its replay marker lives
    (after that the token is refused anyway)."""
    return math.floor(min(claims["exp"], claims["iat"] + tokens.refresh_ttl))


def _grant_parts(claims: dict, provider: str) -> tuple[dict, list, Optional[dict]]:
    """(kc.identity, approved scopes, approved claims request) as Konnect read them."""
    identity = claims.get("kc.identity")
    if not isinstance(identity, dict) or not Identity.raw_sub_of(identity) \
            or not isinstance(identity.get("kc.i.id"), str):
        raise Refused("missing data in kc.identity")
    if identity.get("kc.i.guest") is not None:
        raise Refused("a guest's token (Konnect gave guests no offline_access)")
    if claims.get("kc.provider", "") not in ("", provider):
        raise Refused("identity provider mismatch")
    if not isinstance(claims.get("kc.ref"), str) or not claims["kc.ref"]:
        raise Refused("invalid kc.ref")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise Refused("no sub")
    scopes = claims.get("kc.approvedScopes")
    if not isinstance(scopes, list) or not all(scopelib.is_scope_token(s) for s in scopes):
        raise Refused("malformed kc.approvedScopes")
    request = claims.get("kc.approvedClaims")
    if request is not None and not isinstance(request, dict):
        raise Refused("malformed kc.approvedClaims")
    # Konnect's `passthru` member is not kept: our authorization requests drop it too
    kept = {k: v for k, v in (request or {}).items() if k in _CLAIMS_MEMBERS and isinstance(v, dict)}
    return identity, list(dict.fromkeys(scopes)), kept or None


def _invalid(detail: str) -> OAuth2Error:
    return OAuth2Error(INVALID_GRANT, "refresh token is invalid or expired", detail=detail)


async def exchange(token: str, requested: list, client: Client, issuer: Any) -> dict:
    """The token response for a Konnect refresh token presented by `client` (RFC 6749 §6),
    with a refresh token of ours; `invalid_grant` for anything else."""
    tokens, store, users = issuer.tokens, issuer.store, issuer.users
    if users is None:
        raise _invalid("Konnect refresh token: no user backend to ask")
    try:
        claims, signed = opened(token, tokens, client)
        kc_identity, approved, claims_request = _grant_parts(claims, users.provider)
    except Refused as err:
        raise _invalid(f"Konnect refresh token: {err}") from None
    if not set(requested) <= set(approved):
        raise OAuth2Error(INVALID_SCOPE, "scope exceeds the original grant")
    now, end = int(tokens.now()), family_end(claims, tokens)
    if end <= now:
        raise _invalid("Konnect refresh token: older than --refresh-token-expiration")
    identity = await users.current(Identity.raw_sub_of(kc_identity), kc_identity)
    if identity is None or identity.sub != claims["sub"]:
        raise OAuth2Error(INVALID_GRANT, "the user is no longer available",
                          detail="Konnect refresh token: user not found")
    family = family_of(signed)
    grant = Grant(client_id=client.id, identity=identity, scopes=approved, family=family,
                  claims=claims_request, created=max(1, end - tokens.refresh_ttl))
    not_before = await store.subject_not_before(identity.sub)
    if not_before is not None:  # a sign-out in this very second would revoke the answer
        await wait_past(tokens.now, not_before)
    body = await issuer.respond(client, grant, requested or approved)
    new_token = None
    if "offline_access" in approved:
        new_token = new_refresh_token(identity.sub)
        # the family began at konnectd, before this Redis's generation: `stored` dates it
        # here (shared/store.py)
        await store.put_refresh(new_token, {**grant.to_record(), "stored": now}, end - now)
    marker_ttl = end + tokens.skew - now
    try:
        first = await store.first_use(REPLAY_KIND, signed, marker_ttl)
    except Unavailable:
        await _forget(store, new_token)
        raise
    if not first:
        await _forget(store, new_token)
        await store.revoke_family(family, tokens.family_until(), sub=identity.sub)
        raise OAuth2Error(INVALID_GRANT, "refresh token already used",
                          detail="Konnect refresh token replayed: the family issued from it "
                                 "is revoked")
    log.info("Konnect refresh token of client %s exchanged for a refresh token family of ours",
             client.id[:80])
    if new_token:
        body["refresh_token"] = new_token
    return body


async def revoke(token: str, client: Client, tokens: Any, store: Any) -> bool:
    """RFC 7009 for a Konnect refresh token of `client`: it can no longer be exchanged, and
    what it was exchanged for is revoked. False when it is not one (nothing done)."""
    try:
        claims, signed = opened(token, tokens, client)
    except Refused:
        return False
    ttl = max(1, math.ceil(family_end(claims, tokens) + tokens.skew - tokens.now()))
    await store.first_use(REPLAY_KIND, signed, ttl)
    if isinstance(claims.get("sub"), str) and claims["sub"]:
        await store.revoke_family(family_of(signed), tokens.family_until(), sub=claims["sub"])
    return True


async def _forget(store: Any, new_token: Optional[str]) -> None:
    """Remove the refresh token nobody received; if Redis cannot, it expires unused."""
    if new_token:
        try:
            await store.take_refresh(new_token)
        except Unavailable:
            pass
