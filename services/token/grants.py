"""The token endpoint's grants: authorization_code and refresh_token (RFC 6749 §4.1.3, §6).

Each grant is one Redis round trip: the store's script decides whether this request may
redeem the code or rotate the refresh token (its rules: `shared.store`, `_REDEEM_CODE` and
`_ROTATE_REFRESH`) and records what is issued in the same step. A grant here reads the
request, translates the outcome into the OAuth answer, asks the user backend whether the
user still exists, and mints the tokens:

- a code presented a second time fails AND revokes what its first redemption issued (RFC
  6749 §4.1.2, RFC 9700 §4.5);
- refresh tokens are rotated on every use; presenting a rotated one revokes the whole
  family, access tokens included (RFC 9700 §4.14.2); scope may narrow, never widen (§6);
  a refresh token konnectd issued (a JWT) is exchanged once for a family of ours
  (konnect_refresh.py);
- a dynamically registered client may use only the `grant_types` it registered (RFC 6749
  §5.2 `unauthorized_client`; RFC 7591 §2) and gets a refresh token only if they include
  `refresh_token`. Static and implicit clients: every grant, as in Konnect (the YAML's
  `grant_types` is informational there).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Callable, Optional

from shared import scopes as scopelib
from shared.clients import Client
from shared.errors import INVALID_GRANT, INVALID_REQUEST, INVALID_SCOPE, OAuth2Error, Unavailable
from shared.grants import Grant
from shared.session import wait_past
from shared.store import CodeOutcome, RotationOutcome
from shared.tokens import Tokens, new_jti

from . import konnect_refresh
from .request import FormRequest

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")

# what a refused code redemption tells the client (RFC 6749 §5.2: invalid_grant)
_CODE_REFUSALS = {
    CodeOutcome.UNKNOWN: "code is invalid or expired",
    CodeOutcome.INVALID: "code is invalid or expired",
    CodeOutcome.STALE: "code is invalid or expired",
    CodeOutcome.WRONG_CLIENT: "code was issued to another client",
    CodeOutcome.WRONG_REDIRECT_URI: "redirect_uri does not match the authorization request",
    CodeOutcome.VERIFIER_WITHOUT_CHALLENGE: "code_verifier given but no code_challenge was sent",
    CodeOutcome.PKCE_REQUIRED: "PKCE is required for public clients",
    CodeOutcome.PKCE_MISMATCH: "code_verifier missing, malformed or not matching the "
                               "code_challenge",
    # a sign-out revokes what was issued so far, and a code is a grant ("revoked")
    CodeOutcome.SIGNED_OUT: "the authorization was ended by a sign-out",
}


def grant_type_allowed(client: Client, grant_type: str) -> bool:
    """Whether `client` may use `grant_type` at the token endpoint.

    Enforced for dynamically registered clients, which declared their own `grant_types`
    (RFC 7591 §2). In the static registry the key stays informational, as in Konnect: a
    Konnect YAML that lists only `authorization_code` for an app that refreshes keeps
    working after the switch.
    """
    return not client.dynamic or not client.grant_types or grant_type in client.grant_types


def _grant_error(description: str, detail: str = "") -> OAuth2Error:
    return OAuth2Error(INVALID_GRANT, description, detail=detail or description)


def s256(verifier: Optional[str]) -> str:
    """BASE64URL(SHA256(verifier)) (RFC 7636 §4.2) of a well-formed verifier (§4.1), else ""."""
    if not verifier or not _VERIFIER.match(verifier):
        return ""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Issuer:
    """Mints the tokens of a grant the store let through."""

    def __init__(self, tokens: Tokens, store: Any, users: Any = None, *,
                 requires_pkce: Callable[[Client], bool]) -> None:
        """`requires_pkce`: `Core.requires_pkce`, whether a client's code needs PKCE."""
        self.tokens, self.store, self.users = tokens, store, users
        self.requires_pkce = requires_pkce

    async def _current_identity(self, grant: Grant):
        if self.users is None:
            return grant.identity
        identity = await self.users.current(grant.identity.raw_sub, grant.identity.kc_identity())
        if identity is None:
            raise _grant_error("the user is no longer available")
        return identity

    async def respond(self, client: Client, grant: Grant, scopes: list, *,
                      jti: Optional[str] = None) -> dict:
        """The token response for `grant`, narrowed to `scopes` (no refresh token: the
        store's script decides and stores that one). `jti`: the access token's, when the
        caller chose it (a code's redemption marker names it)."""
        identity = await self._current_identity(grant)
        alg = client.id_token_signed_response_alg or None
        # RFC 6749 §6: tokens of a narrower refresh are limited to its scopes, their claims
        # request too; the grant itself keeps what was authorized.
        claims = scopelib.narrow_claims(grant.claims, scopes, within=grant.scopes)
        access = self.tokens.access_token(client_id=client.id, identity=identity, scopes=scopes,
                                          family=grant.family, claims=claims, alg=alg, jti=jti)
        body: dict[str, Any] = {"access_token": access.token, "token_type": "Bearer",
                                "expires_in": self.tokens.access_ttl, "scope": " ".join(scopes)}
        if scopelib.OPENID in scopes:
            body["id_token"] = self.tokens.id_token(
                client_id=client.id, identity=identity, sub=scopelib.subject(identity, scopes),
                nonce=grant.nonce or None, sid=grant.sid or None,
                auth_time=grant.auth_time or None, access_token=access.token,
                extra=_id_token_claims(claims, scopes, identity), alg=alg)
        return body


def _id_token_claims(claims: Optional[dict], scopes: list, identity: Any) -> dict:
    """Claims asked for in `claims.id_token` (OIDC Core §5.5) that the token's `scopes`
    (narrowed at a refresh, RFC 6749 §6) allow."""
    wanted = (claims or {}).get("id_token") or {}
    if not isinstance(wanted, dict):
        return {}
    values = scopelib.standard_claims(identity)
    out = {}
    for claim in wanted:
        if claim in values and scopelib.SCOPE_OF_CLAIM.get(claim, "profile") in scopes \
                and values[claim] not in ("", None):
            out[claim] = values[claim]
    return out


async def authorization_code(request: FormRequest, client: Client, issuer: Issuer) -> dict:
    """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6)."""
    code = request.get("code")
    if not code:
        raise OAuth2Error(INVALID_REQUEST, "code is required")
    verifier = request.get("code_verifier")
    store, tokens = issuer.store, issuer.tokens
    jti = new_jti()
    redemption = await store.redeem_code(
        code, client_id=client.id, redirect_uri=request.get("redirect_uri") or "",
        challenge=s256(verifier), verifier_sent=bool(verifier),
        public=issuer.requires_pkce(client),  # the script's "public client needs PKCE" rule
        refresh_allowed=grant_type_allowed(client, "refresh_token"), jti=jti,
        now=int(tokens.now()), access_ttl=tokens.access_ttl, refresh_ttl=tokens.refresh_ttl)
    refresh = redemption.refresh_token
    if redemption.outcome is CodeOutcome.REPLAYED:
        spent = redemption.spent
        until = tokens.family_until(spent["exp"])
        await store.revoke_family(spent["family"], until, sub=spent["sub"])
        await store.revoke_jti(spent["jti"], until, sub=spent["sub"])
        raise _grant_error("code already used", "code replayed: issued tokens revoked")
    if not redemption.issued:
        raise _grant_error(_CODE_REFUSALS[redemption.outcome])
    grant = Grant.from_record(redemption.record)
    try:
        body = await issuer.respond(client, grant, grant.scopes, jti=jti)
    except Exception:
        # refused or failed after the writes (the user is gone, the directory is down):
        # nobody holds these tokens, remove them
        try:
            await store.undo_code_redemption(code, refresh)
        except Unavailable:
            pass  # an unreachable refresh token (256 random bits) until its TTL; marker harmless
        raise
    if refresh is not None:
        body["refresh_token"] = refresh
    return body


async def refresh_token(request: FormRequest, client: Client, issuer: Issuer) -> dict:
    """RFC 6749 §6 with rotation and reuse detection (RFC 9700 §4.14.2)."""
    token = request.get("refresh_token")
    if not token:
        raise OAuth2Error(INVALID_REQUEST, "refresh_token is required")
    requested = scopelib.parse(request.get("scope"))
    if konnect_refresh.is_jwt(token):  # konnectd's, from before the switch: exchanged once
        return await konnect_refresh.exchange(token, requested, client, issuer)
    store, tokens = issuer.store, issuer.tokens
    now = int(tokens.now())
    rotation = await store.rotate_refresh(token, client_id=client.id, now=now,
                                          refresh_ttl=tokens.refresh_ttl, scopes=requested)
    outcome, new_token = rotation.outcome, rotation.token
    if outcome is RotationOutcome.REUSED:
        await store.revoke_family(rotation.family, tokens.family_until(), sub=rotation.sub)
        raise _grant_error("refresh token already used", "refresh token reuse: family revoked")
    if outcome in (RotationOutcome.UNKNOWN, RotationOutcome.INVALID, RotationOutcome.STALE):
        raise _grant_error("refresh token is invalid or expired")
    if outcome is RotationOutcome.WRONG_CLIENT:
        raise _grant_error("refresh token was issued to another client")
    if outcome is RotationOutcome.WIDER_SCOPE:
        raise OAuth2Error(INVALID_SCOPE, "scope exceeds the original grant")
    if outcome is RotationOutcome.REVOKED:
        # the family only: signing out of the browser ends access tokens (the subject's
        # not-before), while offline_access grants live on until revoked or reused
        raise _grant_error("grant has been revoked")
    grant = Grant.from_record(rotation.record)
    if rotation.not_before is not None:
        # refreshed in a sign-out's own second, the access token would be dead on arrival
        await wait_past(tokens.now, rotation.not_before)
    try:
        body = await issuer.respond(client, grant, requested or grant.scopes)
    except Unavailable:
        # The user directory is down: not a use. The token goes back and the new one, which
        # nobody received, goes, so that the rightful client's retry is not taken for reuse.
        # (While it was out, a concurrent refresh was taken for reuse and a revocation
        # ended its family: the token put back is then of no use.)
        if rotation.stored:
            await store.take_refresh(new_token)
        remaining = grant.created + tokens.refresh_ttl - now
        if remaining > 0:
            await store.put_refresh(token, rotation.record, remaining)
        raise
    except OAuth2Error:
        if rotation.stored:  # e.g. the user is gone: the new token must not outlive the refusal
            await store.take_refresh(new_token)
        raise
    if rotation.stored:
        body["refresh_token"] = new_token
    return body
