"""The token endpoint's grants: authorization_code and refresh_token (RFC 6749 §4.1.3, §6).

- Codes are redeemed atomically (GETDEL); a code presented a second time fails AND
  revokes what its first redemption issued (RFC 6749 §4.1.2, RFC 9700 §4.5).
- PKCE S256 (RFC 7636 §4.6); a public client must have used it.
- Refresh tokens are rotated on every use; presenting a rotated one revokes the whole
  family, access tokens included (RFC 9700 §4.14.2). Scope may narrow, never widen (§6).
- A dynamically registered client may use only the `grant_types` it registered (RFC 6749
  §5.2 `unauthorized_client`; RFC 7591 §2, OIDC Registration §2) and gets a refresh token
  only if they include `refresh_token`. Static and implicit clients: every grant, as in
  Konnect (`grant_types` in the YAML is informational there).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import re
from typing import Any, Optional

from shared import scopes as scopelib
from shared.clients import Client
from shared.errors import INVALID_GRANT, INVALID_REQUEST, INVALID_SCOPE, OAuth2Error, Unavailable
from shared.grants import Grant
from shared.store import REDEEM_UNCHECKED, REDEEM_WITH_REFRESH
from shared.tokens import Tokens, new_jti, random_token

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


def grant_type_allowed(client: Client, grant_type: str) -> bool:
    """Whether `client` may use `grant_type` at the token endpoint.

    Enforced for dynamically registered clients, which declared their own `grant_types`
    (RFC 7591 §2; konnect.md quirk Q16). In the static registry the key stays
    informational, as in Konnect (konnect.md §5.1): a Konnect YAML that lists only
    `authorization_code` for an app that refreshes keeps working after the switch.
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


def check_pkce(grant: Grant, verifier: Optional[str], challenge: str, client: Client) -> None:
    """`challenge` is `s256(verifier)`, computed once by the caller."""
    if not grant.code_challenge:
        if verifier:
            raise _grant_error("code_verifier given but no code_challenge was sent")
        if client.is_public:
            raise _grant_error("PKCE is required for public clients")
        return
    if not challenge:
        raise _grant_error("code_verifier missing or malformed")
    if not hmac.compare_digest(challenge.encode("ascii"), grant.code_challenge.encode("ascii")):
        raise _grant_error("code_verifier does not match the code_challenge")


class Issuer:
    """Builds the token response for a grant and records what it issued."""

    def __init__(self, tokens: Tokens, store: Any, users: Any = None) -> None:
        self.tokens, self.store, self.users = tokens, store, users

    async def _current_identity(self, grant: Grant):
        if self.users is None:
            return grant.identity
        identity = await self.users.current(grant.identity.raw_sub, grant.identity.kc_identity())
        if identity is None:
            raise _grant_error("the user is no longer available")
        return identity

    async def respond(self, client: Client, grant: Grant, scopes: list, *, id_token: bool,
                      refresh: bool, pending: Optional[list] = None,
                      jti: Optional[str] = None) -> tuple[dict, dict]:
        """(response body, issued ids) for `grant`, narrowed to `scopes`.

        With `pending`, the new refresh token's record is not stored here but appended to
        it as ``(token, record, ttl)``, for the caller to store together with its own
        write in one round trip. `jti`: the access token's, when the caller chose it.
        """
        identity = await self._current_identity(grant)
        alg = client.id_token_signed_response_alg or None
        # RFC 6749 §6: tokens of a narrower refresh are limited to its scopes, their claims
        # request too (konnect.md §6.9); the grant itself keeps what was authorized.
        claims = scopelib.narrow_claims(grant.claims, scopes, within=grant.scopes)
        access = self.tokens.access_token(client_id=client.id, identity=identity, scopes=scopes,
                                          family=grant.family, claims=claims, alg=alg, jti=jti)
        body: dict[str, Any] = {"access_token": access.token, "token_type": "Bearer",
                                "expires_in": self.tokens.access_ttl, "scope": " ".join(scopes)}
        issued = {"family": grant.family, "jti": access.jti, "exp": access.exp}
        if id_token and scopelib.OPENID in scopes:
            body["id_token"] = self.tokens.id_token(
                client_id=client.id, identity=identity, sub=scopelib.subject(identity, scopes),
                nonce=grant.nonce or None, sid=grant.sid or None,
                auth_time=grant.auth_time or None, access_token=access.token,
                extra=_id_token_claims(claims, scopes, identity), alg=alg)
        if refresh and scopelib.OFFLINE in grant.scopes \
                and grant_type_allowed(client, "refresh_token"):
            token = random_token(32)
            remaining = grant.created + self.tokens.refresh_ttl - int(self.tokens.now())
            if remaining > 0:
                record = grant.to_record()
                if pending is not None:
                    pending.append((token, record, remaining))
                else:
                    await self.store.put_refresh(token, record, remaining)
                body["refresh_token"] = token
        return body, issued


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


async def authorization_code(handler: Any, client: Client, issuer: Issuer) -> dict:
    code = handler.param("code")
    redirect_uri = handler.param("redirect_uri")
    if not code:
        raise OAuth2Error(INVALID_REQUEST, "code is required")
    verifier = handler.param("code_verifier")
    challenge = s256(verifier)
    store, tokens = issuer.store, issuer.tokens
    now, jti, refresh = int(tokens.now()), new_jti(), random_token(32)
    # One round trip: the code is taken and, if it matches this request, what its
    # redemption issues is recorded at once (the marker, the refresh token's record).
    record, outcome, not_before = await store.redeem_code(
        code, client_id=client.id, redirect_uri=redirect_uri or "", challenge=challenge,
        jti=jti, refresh_token=refresh, now=now, access_ttl=tokens.access_ttl,
        refresh_ttl=tokens.refresh_ttl, provisional=True)
    if record is None:
        used = await store.code_redemption(code)
        if used:
            # as long as any token of the family is accepted: exp + the tolerated skew
            until = max(used["exp"], now + tokens.access_ttl) + tokens.skew
            await store.revoke_family(used["family"], until)
            await store.revoke_jti(used["jti"], until)
            raise _grant_error("code already used", "code replayed: issued tokens revoked")
        raise _grant_error("code is invalid or expired")
    try:
        grant = _checked_grant(record, client, redirect_uri, verifier, challenge)
        if not_before is not None and grant.auth_time <= not_before:
            # Signed out since: a sign-out revokes what was issued so far (signout.py), and
            # a code is a grant (RFC 6749 §5.2 invalid_grant: "revoked").
            raise _grant_error("the authorization was ended by a sign-out",
                               "code issued before its subject's sign-out")
        if outcome == REDEEM_UNCHECKED:
            # a record without `created` (an older version): only its marker is written
            return await _redeem_in_two_steps(issuer, code, client, grant, jti)
        body, _ = await issuer.respond(client, grant, grant.scopes, id_token=True,
                                       refresh=False, jti=jti)
    except Exception:
        # refused (or failed) after the writes (REDEEM_UNCHECKED: perhaps the provisional
        # marker; only this request, which took the code, can have written one): nobody
        # holds these tokens, remove them
        if outcome != REDEEM_UNCHECKED or (isinstance(record, dict)
                                           and record.get("client_id") == client.id):
            try:
                await store.undo_code_redemption(code, refresh)
            except Unavailable:
                pass  # unreachable refresh token (256 random bits) until its TTL; marker harmless
        raise
    if outcome == REDEEM_WITH_REFRESH:
        if grant_type_allowed(client, "refresh_token"):
            body["refresh_token"] = refresh
        else:
            # the one round trip stored it (the store knows no grant_types): nobody gets it
            try:
                await store.take_refresh(refresh)
            except Unavailable:
                pass  # unreachable (256 random bits) until its TTL
    return body


def _checked_grant(record: dict, client: Client, redirect_uri: Optional[str],
                   verifier: Optional[str], challenge: str) -> Grant:
    """The grant behind a code, if this request may redeem it (RFC 6749 §4.1.3)."""
    grant = Grant.from_record(record)
    if grant.client_id != client.id:
        raise _grant_error("code was issued to another client")
    if grant.redirect_uri and redirect_uri != grant.redirect_uri:
        raise _grant_error("redirect_uri does not match the authorization request")
    check_pkce(grant, verifier, challenge, client)
    return grant


async def _redeem_in_two_steps(issuer: Issuer, code: str, client: Client, grant: Grant,
                               jti: str) -> dict:
    """A checked grant whose code record `redeem_code` could not vouch for: the tokens
    first, then the writes (refresh record, redemption marker) in a second round trip.

    The access token carries `jti`, the one `redeem_code(provisional=True)` already put
    in the code's marker: a replay in between revokes it (RFC 6749 §4.1.2)."""
    tokens = issuer.tokens
    if not grant.created:
        grant.created = int(tokens.now())
    pending: list = []
    body, issued = await issuer.respond(client, grant, grant.scopes, id_token=True, refresh=True,
                                        pending=pending, jti=jti)
    lifetime = tokens.refresh_ttl if "refresh_token" in body else tokens.access_ttl
    issued["exp"] = max(issued["exp"], int(tokens.now()) + lifetime)
    await issuer.store.finish_code_redemption(code, issued, lifetime,
                                              refresh=pending[0] if pending else None)
    return body


async def _after_not_before(tokens: Tokens, not_before: int) -> None:
    """Wait, if need be, until this second is past the subject's not-before (a sign-out,
    whole seconds, `Store.revoke_subject`). An offline_access grant outlives a browser
    sign-out, but an access token with an `iat` at or before the not-before is revoked
    (userinfo refuses it): refreshed in the sign-out's second, it would be dead on
    arrival. As `LogonHandler.auth_time`: at most about two seconds, and a not-before
    further ahead (another host's clock) is not waited for."""
    for _ in range(3):
        now = tokens.now()
        if int(now) > not_before or not_before - int(now) > 1:
            return
        await asyncio.sleep(min(1.0, max(0.02, math.floor(now) + 1 - now)))


async def refresh_token(handler: Any, client: Client, issuer: Issuer) -> dict:
    token = handler.param("refresh_token")
    if not token:
        raise OAuth2Error(INVALID_REQUEST, "refresh_token is required")
    # read before the token is taken: a malformed request (RFC 6749 §3.2) spends nothing
    requested = scopelib.parse(handler.param("scope"))
    store, now = issuer.store, int(issuer.tokens.now())
    new_token = random_token(32)
    # one round trip: the token is taken, its family's revocation read and, for this
    # client, the grant stored again behind the new token
    # (keep_refused: another client's token, or a wider scope, is refused in the script
    # WITHOUT taking the token: no put-back window, see `put_back`)
    record, family_revoked, stored, not_before = await store.rotate_refresh(
        token, new_token, client_id=client.id, now=now, refresh_ttl=issuer.tokens.refresh_ttl,
        keep_refused=True, scopes=requested)
    if record is None:
        family = await store.spent_refresh_family(token)
        if family:
            await store.revoke_family(family, now + issuer.tokens.refresh_ttl)
            raise _grant_error("refresh token already used",
                               "refresh token reuse: family revoked")
        raise _grant_error("refresh token is invalid or expired")
    grant = Grant.from_record(record)
    if stored is None:
        # refused by the script, the token left in place (RFC 6749 §6: bound to its client,
        # scope never wider)
        if record.get("client_id") != client.id:
            raise _grant_error("refresh token was issued to another client")
        raise OAuth2Error(INVALID_SCOPE, "scope exceeds the original grant")

    async def put_back() -> None:
        """A refused or failed request is not a use: the token goes back (and the new one
        nobody received goes), so that the rightful client's next request is not taken
        for reuse (which revokes the family).

        Only for what the script cannot refuse by itself (the user directory down): while
        the token is out, a concurrent refresh is taken for reuse, and a revocation (RFC
        7009) finds it spent and revokes its family, so the token put back is of no use
        (`RevokeHandler`). Another client's token and a wider scope are refused without
        being taken (`rotate_refresh(keep_refused=True)`)."""
        if stored:
            await store.take_refresh(new_token)
        remaining = grant.created + issuer.tokens.refresh_ttl - now
        if remaining > 0:
            await store.put_refresh(token, record, remaining)

    if grant.client_id != client.id:
        await put_back()
        raise _grant_error("refresh token was issued to another client")
    # The family only: signing out of the browser ends access tokens (subject not-before),
    # while offline_access grants live on until revoked (RFC 7009) or reused.
    if family_revoked:
        raise _grant_error("grant has been revoked")
    if requested and not set(requested) <= set(grant.scopes):
        await put_back()
        raise OAuth2Error(INVALID_SCOPE, "scope exceeds the original grant")
    if not_before is not None:
        await _after_not_before(issuer.tokens, not_before)
    try:
        body, _ = await issuer.respond(client, grant, requested or grant.scopes, id_token=True,
                                       refresh=not stored)
    except Unavailable:
        await put_back()
        raise
    except OAuth2Error:
        if stored:  # e.g. the user is gone: the new token must not outlive the refusal
            await store.take_refresh(new_token)
        raise
    if stored:
        body["refresh_token"] = new_token
    return body
